"""Read an embeddings folder (the embed stage's output) into numpy arrays.

Input contract (docs/contracts.md): ``embeddings/<code-model>__<audio-model>/`` holds
``embeddings.parquet`` with columns id, config, split, template (string), family,
scenario, group_id (string or null), code_emb, audio_emb (list<float32>), model ids in
the file's key-value metadata, and ``provenance.json`` beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sonicpi_gen import folders
from sonicpi_gen.folders import EMBEDDINGS_FILE, EMBEDDINGS_META_COLUMNS, read_provenance

logger = logging.getLogger(__name__)

SPLIT_NAMES = {  # accepted spellings -> canonical split
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
# Metadata keys that may name the code encoder, most specific first; the embed stage is
# written separately, so several spellings are accepted.
CODE_MODEL_KEYS = ("code_model", "code_model_id", "code_encoder", "code_model_name")
AUDIO_MODEL_KEYS = ("audio_model", "audio_model_id", "audio_encoder", "audio_model_name")


@dataclass
class EmbeddingTable:
    """One embeddings folder in memory: row metadata plus the two embedding matrices."""

    meta: pd.DataFrame  # EMBEDDINGS_META_COLUMNS, one row per pair, index 0..n-1
    code: np.ndarray  # (n, code_dim) float32
    audio: np.ndarray  # (n, audio_dim) float32
    source: dict = field(default_factory=dict)  # path, parquet metadata, provenance

    def __len__(self) -> int:
        return len(self.meta)

    def subset(self, mask: np.ndarray) -> "EmbeddingTable":
        idx = np.flatnonzero(np.asarray(mask))
        return EmbeddingTable(
            self.meta.iloc[idx].reset_index(drop=True), self.code[idx], self.audio[idx], self.source
        )

    @property
    def code_model(self) -> str | None:
        return find_model_id(self.source, CODE_MODEL_KEYS)

    @property
    def audio_model(self) -> str | None:
        return find_model_id(self.source, AUDIO_MODEL_KEYS)


@dataclass
class PairedSplits:
    """Train / validation / test pairs as float32 arrays."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_meta: pd.DataFrame | None = None

    @property
    def code_dim(self) -> int:
        return self.train[0].shape[1]

    @property
    def audio_dim(self) -> int:
        return self.train[1].shape[1]

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)[0]) for k in ("train", "validation", "test")}


def find_model_id(source: dict, keys: tuple[str, ...]) -> str | None:
    """First of ``keys`` found in an embeddings source's parquet metadata, then in its
    provenance (nested dicts searched depth-first)."""
    for section in ("metadata", "provenance"):
        found = _search(source.get(section) or {}, keys)
        if found:
            return found
    return None


def _search(obj, keys: tuple[str, ...]):
    """Depth-first look-up of the first of ``keys`` in nested dicts (settings, models)."""
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), str) and obj[k]:
                return obj[k]
        for v in obj.values():
            found = _search(v, keys)
            if found:
                return found
    return None


def _decode_metadata(raw: dict | None) -> dict:
    out = {}
    for k, v in (raw or {}).items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if key in ("pandas", "ARROW:schema", "huggingface"):
            continue
        val = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def read_embeddings(path: str | Path) -> EmbeddingTable:
    """Read ``<path>/embeddings.parquet`` (or a parquet file given directly).

    Returns:
        EmbeddingTable with ``source`` = {"path", "metadata" (parquet key-value
        metadata, JSON-decoded where possible), "provenance" (provenance.json or {})}.
    Raises:
        FileNotFoundError when the file is missing; ValueError naming the missing columns.
    """
    path = Path(path)
    file = path / EMBEDDINGS_FILE if path.is_dir() else path
    table, code, audio, metadata = folders.read_embeddings(path)
    meta = pd.DataFrame(
        {
            c: (table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows)
            for c in EMBEDDINGS_META_COLUMNS
        }
    )
    provenance = read_provenance(file.parent)
    source = {
        "path": str(file.parent.resolve()),
        "metadata": _decode_metadata(metadata),
        "provenance": provenance,
    }
    logger.info("read %d pairs (code %s, audio %s) from %s", len(meta), code.shape[1:], audio.shape[1:], file)
    return EmbeddingTable(meta, code, audio, source)


def base_rows(table: EmbeddingTable, config: str | None = "default") -> np.ndarray:
    """Mask of plain programs: rows of ``config`` (all configs when None) with no family
    and no scenario."""
    meta = table.meta
    mask = meta["family"].isna().to_numpy() & meta["scenario"].isna().to_numpy()
    if config is not None and meta["config"].notna().any():
        mask &= (meta["config"] == config).to_numpy()
    return mask


def select_splits(table: EmbeddingTable, config: str | None = "default") -> PairedSplits:
    """The train / validation / test pairs of ``config`` (base programs only).

    Raises:
        ValueError naming the splits found when one of the three is missing or too small.
    """
    mask = base_rows(table, config)
    sub = table.subset(mask)
    split = sub.meta["split"].map(lambda s: SPLIT_NAMES.get(str(s).lower()) if s is not None else None)
    parts = {}
    for name in ("train", "validation", "test"):
        idx = np.flatnonzero((split == name).to_numpy())
        if len(idx) < 4:
            found = sorted(set(sub.meta["split"].dropna()))
            raise ValueError(
                f"split {name!r} has {len(idx)} rows in config {config!r} (need at least 4); "
                f"splits found: {found}. Accepted names: {sorted(SPLIT_NAMES)}. The dataset "
                f"stage splits each template's programs 80/10/10, so expand 10 or more per "
                f"template (`sonicpi-gen expand --n 10`), or train on a config that holds "
                f"out whole templates (--config unseen_templates)"
            )
        parts[name] = idx
    test_meta = sub.meta.iloc[parts["test"]].reset_index(drop=True)
    return PairedSplits(
        *((sub.code[parts[k]], sub.audio[parts[k]]) for k in ("train", "validation", "test")),
        test_meta=test_meta,
    )
