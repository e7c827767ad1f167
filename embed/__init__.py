"""embed: code and audio embeddings of a sonicpi-gen dataset (stage 4 of 5).

    from embed import embed_dataset, load_code_encoder, load_audio_encoder
    embed_dataset("dataset", "embeddings")   # -> embeddings/<code>__<audio>/embeddings.parquet

Importing this package needs no torch; loading a model does (the `embed` extra).
"""

from embed.encoders import (DEFAULT_AUDIO_MODEL, DEFAULT_CODE_MODEL, ENCODERS, LOGMEL_ID,
                            ModelUnavailableError, load_audio_encoder, load_code_encoder)
from embed.pipeline import EmbedResult, EmbedSettingsError, embed_dataset, read_embeddings

__all__ = [
    "DEFAULT_AUDIO_MODEL", "DEFAULT_CODE_MODEL", "ENCODERS", "LOGMEL_ID", "EmbedResult",
    "EmbedSettingsError", "ModelUnavailableError", "embed_dataset", "load_audio_encoder",
    "load_code_encoder", "read_embeddings",
]
