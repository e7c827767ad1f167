"""Read the dataset stage's output: rows to embed, and their FLAC bytes on demand.

Input (docs/contracts.md): a folder in Hugging Face layout,
data/<config>/<split>-NNNNN-of-NNNNN.parquet, columns id, template, split, code, family,
scenario, group_id, audio = {bytes: FLAC, path}, ...; or a Hub dataset id, read with
datasets.load_dataset and the Audio column cast to decode=False (datasets' decoder needs
torchcodec, which fails on CPU torch builds; the bytes are decoded with soundfile).

The index (metadata and code of every row) is read up front; audio bytes are read later,
a row group at a time, by whoever consumes `AudioUnit`s (DataLoader workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from sonicpi_gen.folders import EMBEDDINGS_META_COLUMNS, dataset_shards

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "code", "audio")
# Dataset columns carried into embeddings.parquet as they are: folders.EMBEDDINGS_META_COLUMNS
# but the row's own id, config and split, so a column added there needs no change here.
CARRIED_COLUMNS = tuple(c for c in EMBEDDINGS_META_COLUMNS if c not in ("id", "config", "split"))
OPTIONAL_COLUMNS = ("split", *CARRIED_COLUMNS, "sonic_pi_version")
HUB_UNIT_ROWS = 64  # rows per work unit for Hub datasets (no row groups to follow)


@dataclass
class DatasetRow:
    """One (config, split, id) row: what is written beside the embeddings."""

    config: str
    split: str
    id: str
    code: str
    source: int  # index into DatasetIndex.sources
    position: int  # row number inside that source
    sonic_pi_version: str | None = None
    carried: dict = field(default_factory=dict)  # CARRIED_COLUMNS -> value (template, family, ...)

    def column(self, name: str) -> str | None:
        """The value of an embeddings.parquet meta column (EMBEDDINGS_META_COLUMNS)."""
        return getattr(self, name) if name in ("id", "config", "split") else self.carried.get(name)


@dataclass
class ParquetSource:
    """One parquet shard; row group boundaries let workers read only what they need."""

    path: str
    root: str
    row_group_rows: list[int]

    def read_audio(self, positions: Sequence[int]) -> Iterator[tuple[int, bytes | None, str | None]]:
        """(position, FLAC bytes or None, path) for the wanted rows, streamed in small batches."""
        import pyarrow.parquet as pq

        wanted = set(positions)
        pf = pq.ParquetFile(self.path)
        start = 0
        for rg, n_rows in enumerate(self.row_group_rows):
            if not any(start <= p < start + n_rows for p in wanted):
                start += n_rows
                continue
            pos = start
            for batch in pf.iter_batches(batch_size=16, row_groups=[rg], columns=["audio"]):
                for value in batch.column(0).to_pylist():
                    if pos in wanted:
                        yield (pos, *_audio_value(value))
                    pos += 1
            start += n_rows


@dataclass
class HubSource:
    """One split of a datasets.Dataset with the audio column left undecoded."""

    dataset: Any = field(repr=False)

    def read_audio(self, positions: Sequence[int]) -> Iterator[tuple[int, bytes | None, str | None]]:
        positions = list(positions)
        for start in range(0, len(positions), 16):
            chunk = positions[start:start + 16]
            values = self.dataset.select(chunk)["audio"]
            for pos, value in zip(chunk, values):
                yield (pos, *_audio_value(value))


@dataclass
class AudioUnit:
    """A piece of audio work: some rows of one source (one row group for parquet)."""

    source: int
    positions: list[int]
    ids: list[str]


@dataclass
class DatasetIndex:
    """Everything read up front: the rows, their sources, and where they came from."""

    rows: list[DatasetRow]
    sources: list[Any]
    reader: str
    location: str
    shards: list[dict[str, Any]]


def _audio_value(value: Any) -> tuple[bytes | None, str | None]:
    """Unpack an audio cell: {"bytes": ..., "path": ...} (HF Audio) or raw bytes."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    raise ValueError(f"audio cell should be {{'bytes', 'path'}} or bytes, got {type(value).__name__}")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _rows_from_columns(cols: dict[str, list], config: str, split_default: str, source: int,
                       where: str) -> list[DatasetRow]:
    missing = [c for c in REQUIRED_COLUMNS if c not in cols and c != "audio"]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {missing} (it has {sorted(cols)}); embed needs id and "
            f"code beside audio: is this a sonicpi-gen dataset folder?")
    n = len(cols["id"])
    none = [None] * n
    rows = []
    for i in range(n):
        rows.append(DatasetRow(
            config=config, split=_text(cols.get("split", none)[i]) or split_default,
            id=str(cols["id"][i]), code=str(cols["code"][i] or ""), source=source, position=i,
            carried={c: _text(cols.get(c, none)[i]) for c in CARRIED_COLUMNS},
            sonic_pi_version=_text(cols.get("sonic_pi_version", none)[i])))
    return rows


def _read_parquet_folder(root: Path, configs: Sequence[str] | None,
                         splits: Sequence[str] | None) -> DatasetIndex:
    import pyarrow.parquet as pq

    rows: list[DatasetRow] = []
    sources: list[Any] = []
    shards = []
    for config, split, path in dataset_shards(root):
        if configs and config not in configs:
            continue
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if "audio" not in names:
            raise ValueError(f"shard '{path}' has no 'audio' column (columns: {names})")
        wanted = [c for c in ("id", "code", *OPTIONAL_COLUMNS) if c in names]
        cols = pf.read(columns=wanted).to_pydict()
        source = len(sources)
        shard_rows = _rows_from_columns(cols, config, split, source, f"shard '{path}'")
        shard_rows = [r for r in shard_rows if not splits or r.split in splits]
        if not shard_rows:
            continue
        sources.append(ParquetSource(str(path), str(root), [
            pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]))
        rows += shard_rows
        shards.append({"path": str(path.relative_to(root)), "bytes": path.stat().st_size,
                       "rows": len(cols["id"])})
    return DatasetIndex(rows, sources, "parquet", str(root), shards)


def _read_hub(repo_id: str, configs: Sequence[str] | None,
              splits: Sequence[str] | None) -> DatasetIndex:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading a Hub dataset needs the datasets package") from err
    try:
        names = list(configs) if configs else datasets.get_dataset_config_names(repo_id)
        rows: list[DatasetRow] = []
        sources: list[Any] = []
        shards = []
        for config in names:
            for split, ds in datasets.load_dataset(repo_id, config).items():
                if splits and split not in splits:
                    continue
                if "audio" not in ds.column_names:
                    raise ValueError(f"{repo_id} [{config}/{split}] has no 'audio' column")
                ds = ds.cast_column("audio", datasets.Audio(decode=False))
                cols = ds.select_columns([c for c in ("id", "code", *OPTIONAL_COLUMNS)
                                          if c in ds.column_names]).to_dict()
                source = len(sources)
                rows += _rows_from_columns(cols, config, split, source, f"{repo_id} [{config}/{split}]")
                sources.append(HubSource(ds))
                shards.append({"config": config, "split": split, "rows": len(ds),
                               "fingerprint": getattr(ds, "_fingerprint", None)})
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise FileNotFoundError(
            f"dataset '{repo_id}' could not be loaded: {str(err).splitlines()[0] if str(err) else err}. "
            f"Pass a local dataset folder instead: on a connected machine run `huggingface-cli "
            f"download --repo-type dataset {repo_id} --local-dir DIR`, copy DIR here and use "
            f"--dataset DIR.") from err
    return DatasetIndex(rows, sources, "datasets", repo_id, shards)


def read_dataset_index(dataset: str | Path, configs: Sequence[str] | None = None,
                       splits: Sequence[str] | None = None, reader: str = "auto") -> DatasetIndex:
    """Read every row's metadata and code (not its audio) from a folder or Hub id.

    reader: "auto" (a folder -> "parquet", else "datasets"), "parquet" (pyarrow over
    data/<config>/*.parquet, no torchcodec) or "datasets" (datasets.load_dataset; a local
    folder works too when its README declares the configs).
    """
    path = Path(str(dataset)).expanduser()
    if reader == "auto":
        reader = "parquet" if path.is_dir() else "datasets"
    if reader == "parquet":
        if not path.is_dir():
            raise FileNotFoundError(f"dataset folder '{dataset}' does not exist")
        index = _read_parquet_folder(path, configs, splits)
    elif reader == "datasets":
        index = _read_hub(str(dataset), configs, splits)
    else:
        raise ValueError(f"reader must be 'auto', 'parquet' or 'datasets', got {reader!r}")
    if not index.rows:
        raise ValueError(f"no rows in '{dataset}' for configs={list(configs or [])} "
                         f"splits={list(splits or [])}")
    return index


def audio_units(index: DatasetIndex, rows: Sequence[DatasetRow]) -> list[AudioUnit]:
    """Group rows into work units: one per parquet row group, HUB_UNIT_ROWS rows for Hub data."""
    by_source: dict[int, list[DatasetRow]] = {}
    for row in rows:
        by_source.setdefault(row.source, []).append(row)
    units = []
    for source, members in sorted(by_source.items()):
        members.sort(key=lambda r: r.position)
        src = index.sources[source]
        if isinstance(src, ParquetSource):
            bounds, start = [], 0
            for n in src.row_group_rows:
                bounds.append((start, start + n))
                start += n
            for lo, hi in bounds:
                inside = [r for r in members if lo <= r.position < hi]
                if inside:
                    units.append(AudioUnit(source, [r.position for r in inside], [r.id for r in inside]))
        else:
            for s in range(0, len(members), HUB_UNIT_ROWS):
                part = members[s:s + HUB_UNIT_ROWS]
                units.append(AudioUnit(source, [r.position for r in part], [r.id for r in part]))
    return units


def load_audio_bytes(data: bytes | None, path: str | None, root: str | None, row_id: str) -> bytes:
    """The row's encoded audio; falls back to a readable path, else a clear error."""
    if data:
        return data
    if path:
        for candidate in (Path(path), Path(root or ".") / path):
            if candidate.is_file():
                return candidate.read_bytes()
    raise ValueError(
        f"row {row_id} has no audio bytes (path={path!r} is not readable): the shard is not "
        f"self-contained; rebuild the dataset with the FLAC bytes embedded in the audio column")
