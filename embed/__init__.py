"""embed: code and audio embeddings of a sonicpi-gen dataset (stage 4 of 5).

    from embed import EmbedSettings, embed_dataset, load_code_encoder, load_audio_encoder
    embed_dataset("dataset", "embeddings")   # -> embeddings/<code>__<audio>/embeddings.parquet
    embed_dataset("dataset", "embeddings", EmbedSettings(audio_model="clap", device="cpu"))

Importing this package needs no torch; loading a model does (the `embed` extra).
"""

from embed.encoders import (DEFAULT_AUDIO_MODEL, DEFAULT_CODE_MODEL, ENCODERS, LOGMEL_ID,
                            ModelUnavailableError, load_audio_encoder, load_code_encoder)
from embed.pipeline import EmbedResult, EmbedSettings, EmbedSettingsError, embed_dataset
from sonicpi_gen.folders import read_embeddings

__all__ = [
    "DEFAULT_AUDIO_MODEL", "DEFAULT_CODE_MODEL", "ENCODERS", "LOGMEL_ID", "EmbedResult",
    "EmbedSettings", "EmbedSettingsError", "ModelUnavailableError", "embed_dataset", "load_audio_encoder",
    "load_code_encoder", "read_embeddings",
]
