"""The folder contracts of docs/contracts.md in one module: each folder's file names,
schema, reader and writer, the one atomic write (file and folder) and the one
provenance record.

    programs/    manifest.parquet (MANIFEST_SCHEMA), <template>/<id>.rb, provenance.json
    renders/     status.parquet (STATUS_SCHEMA) + status.jsonl journal, manifest.parquet,
                 <template>/<id>.flac, provenance.json
    dataset/     data/<config>/<split>-NNNNN-of-NNNNN.parquet (DATASET_SCHEMA), README.md,
                 provenance.json
    embeddings/  <code-model>__<audio-model>/embeddings.parquet (EMBEDDINGS_SCHEMA),
                 provenance.json

Every stage reads its input through this module, never through the stage that wrote
it, so it imports only the standard library, pyarrow, numpy and soundfile (checked in
tests/test_folders.py). A new column is added to its schema here, and its value where
it is computed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sonicpi_gen import __version__

logger = logging.getLogger(__name__)

TOOL = "sonicpi-gen"
PROVENANCE_FILE = "provenance.json"
MANIFEST_FILE = "manifest.parquet"
STATUS_FILE = "status.parquet"
STATUS_JOURNAL = "status.jsonl"  # one line per finished clip, compacted into STATUS_FILE
DATA_DIR = "data"
EMBEDDINGS_FILE = "embeddings.parquet"


# --- atomic writes -------------------------------------------------------------------------

def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Call write(tmp) on a temporary name beside `path` (`.<name>.tmp-<pid>`, which a
    killed writer's cleanup recognises), then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomically(path: Path, obj: Any, sort_keys: bool = False) -> None:
    """Write obj as indented JSON to path, atomically."""
    text = json.dumps(obj, indent=1, sort_keys=sort_keys, default=str) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, replacing what was there.

    Both live in the same parent folder, so each step is a rename: at every moment
    `target` is either the old complete folder or the new complete one.
    """
    new, target = Path(new), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{new.name.rsplit('-', 1)[-1]}")
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed between the renames
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


# --- provenance.json: one shape for every folder ---------------------------------------------

PROVENANCE_KEYS = ("tool", "tool_version", "stage", "command", "inputs", "settings",
                   "sonic_pi_version", "created")


def make_provenance(stage: str, command: str, settings: dict, inputs: Sequence = (),
                    sonic_pi_version: Sequence[str] | str | None = None, timestamp: bool = True,
                    **extra) -> dict:
    """The provenance record: PROVENANCE_KEYS first (always all of them), then what the
    stage adds (`extra`: statistics, counts, timing, ...).

    Args:
        stage: "expand", "render", "dataset", "embed", "templatize".
        command: the command that made the folder (`sonicpi-gen render`, or sys.argv).
        settings: the resolved settings (JSON-able).
        inputs: the folders (or Hub ids) read, as given.
        sonic_pi_version: the Sonic Pi version(s) involved (a list: a folder may mix).
        timestamp: `created` is the UTC time; False leaves it null, for folders that are
            byte-identical on rerun (programs/ is a pure function of templates and seed).
    """
    if isinstance(sonic_pi_version, str):
        sonic_pi_version = [sonic_pi_version]
    record = {"tool": TOOL, "tool_version": __version__, "stage": stage, "command": command,
              "inputs": [str(i) for i in inputs], "settings": settings,
              "sonic_pi_version": sorted(sonic_pi_version or []),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if timestamp else None}
    clash = sorted(set(extra) & set(record))
    if clash:
        raise ValueError(f"provenance extras {clash} would replace the record's own keys {list(PROVENANCE_KEYS)}")
    return {**record, **extra}


def write_provenance(folder: Path, record: dict) -> None:
    """Write folder/provenance.json (atomically)."""
    write_json_atomically(Path(folder) / PROVENANCE_FILE, record)


def read_provenance(folder: Path) -> dict:
    """folder/provenance.json, or {} when it is missing or not a JSON object."""
    try:
        record = json.loads((Path(folder) / PROVENANCE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


# --- programs/ -------------------------------------------------------------------------------

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("template", pa.string()), ("index", pa.int64()),
    ("draw", pa.int64()), ("seed", pa.int64()), ("params", pa.string()), ("code", pa.string()),
    ("family", pa.string()), ("scenario", pa.string()), ("group_id", pa.string()),
    ("varied", pa.string()), ("prompt", pa.string()), ("source", pa.string()),
])


def program_id(code: str) -> str:
    """Content-derived id: the first 16 hex digits of sha256 of the program text (UTF-8)."""
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def manifest_key(row: dict) -> tuple:
    """A manifest row's key: a program may be in several groups (a family's base). A
    column a row lacks (a plain .rb folder's rows have no groups) is null."""
    return row["id"], row.get("group_id"), row.get("family"), row.get("scenario")


def read_manifest(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """folder/manifest.parquet (a programs folder's, or the copy in a renders folder)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `sonicpi-gen expand --out {folder}` first")
    return pq.read_table(path, columns=columns)


def write_manifest(folder: Path, rows: Iterable[dict]) -> None:
    """Write folder/manifest.parquet (atomically); columns a row lacks are null."""
    rows = [{name: row.get(name) for name in MANIFEST_SCHEMA.names} for row in rows]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    write_atomically(Path(folder) / MANIFEST_FILE, lambda tmp: pq.write_table(table, tmp))


# --- renders/ --------------------------------------------------------------------------------

STATUS_SCHEMA = pa.schema([
    ("id", pa.string()), ("template", pa.string()), ("source", pa.string()),
    ("code_sha256", pa.string()), ("status", pa.string()), ("message", pa.string()),
    ("path", pa.string()), ("audio_sha256", pa.string()), ("duration_s", pa.float64()),
    ("sample_rate", pa.int64()), ("bpm", pa.float64()), ("bars", pa.float64()),
    ("peak_dbfs", pa.float64()), ("rms_dbfs", pa.float64()),
    ("full_scale_fraction", pa.float64()), ("longest_silence_s", pa.float64()),
    ("clipped", pa.bool_()), ("render_s", pa.float64()),
    ("attempts", pa.int64()), ("worker", pa.int64()), ("acceleration", pa.float64()),
    ("sonic_pi_version", pa.string()),
])
# Statuses of input files that are not programs to render (status rows keyed by source).
INPUT_STATUSES = ("duplicate", "unreadable")
# A top-level (unindented) `use_bpm` with a number: `use_bpm 80`, `use_bpm(92.5)`.
_TOP_LEVEL_BPM = re.compile(r"^use_bpm[ \t]*\(?[ \t]*(\d+(?:\.\d+)?)[ \t]*\)?[ \t]*(?:#.*)?$",
                            re.MULTILINE)


def status_row(**values) -> dict:
    """A status row: every STATUS_SCHEMA column, null unless given."""
    unknown = sorted(set(values) - set(STATUS_SCHEMA.names))
    if unknown:
        raise KeyError(f"{unknown} are not status columns; add them to STATUS_SCHEMA in sonicpi_gen/folders.py")
    return {name: values.get(name) for name in STATUS_SCHEMA.names}


def played_tempo(code: str, clip_seconds: float, default_bpm: float) -> dict:
    """The status row's `bpm` and `bars` for a program: bpm is the tempo its first
    top-level `use_bpm <number>` line sets, else `default_bpm` (the tempo the renderer's
    prelude sets before the program); bars = clip_seconds x bpm / 240 (4/4), a float
    (6.0 at 80 BPM, 9.75 at 130 for an 18 s clip).

    Known limit: a tempo set inside a block (`live_loop`, `with_bpm`), by an expression,
    or changed later in the program is not seen.
    """
    match = _TOP_LEVEL_BPM.search(code)
    bpm = float(match.group(1)) if match else float(default_bpm)
    return {"bpm": bpm, "bars": round(clip_seconds * bpm / 240, 6)}


def status_key(row: dict) -> str:
    """The key of a status row: the program id, or for an input file that is not a
    program to render (INPUT_STATUSES), its source path."""
    return f"source:{row['source']}" if row["status"] in INPUT_STATUSES else row["id"]


def read_status(folder: Path) -> dict[str, dict]:
    """Latest status row per key (see status_key): status.parquet, then the journal's
    later lines. A journal line that is not a status row is skipped with a warning
    (a line cut by a kill: that clip is simply rendered again)."""
    rows = {}
    parquet = Path(folder) / STATUS_FILE
    if parquet.exists():
        table = pq.read_table(parquet)
        rows.update({status_key(r): status_row(**{k: v for k, v in r.items() if k in STATUS_SCHEMA.names})
                     for r in table.to_pylist()})
    journal = Path(folder) / STATUS_JOURNAL
    if journal.exists():
        with open(journal, "rb") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                    rows[status_key(row)] = {name: row.get(name) for name in STATUS_SCHEMA.names}
                except (ValueError, TypeError, KeyError, AttributeError):
                    logger.warning("%s, line %d: not a status row, skipped (its clip is rendered "
                                   "again if it has no other)", journal, number)
    return rows


def append_status(folder: Path, row: dict) -> None:
    """Append one status row to the journal (a kill loses at most the clip in flight)."""
    with open(Path(folder) / STATUS_JOURNAL, "a") as journal:
        journal.write(json.dumps(row) + "\n")


def write_status(folder: Path, rows: dict[str, dict]) -> None:
    """Compact the status rows into status.parquet (atomically) and empty the journal."""
    ordered = sorted(rows.values(), key=lambda r: (r["template"], r["id"], r["source"] or ""))
    # Rows journalled before bpm and bars were floats carry ints: cast, do not reject.
    table = pa.Table.from_pylist([{n: r.get(n) for n in STATUS_SCHEMA.names} for r in ordered],
                                 schema=STATUS_SCHEMA)
    write_atomically(Path(folder) / STATUS_FILE, lambda tmp: pq.write_table(table, tmp))
    (Path(folder) / STATUS_JOURNAL).unlink(missing_ok=True)


def is_renders_dir(folder: Path) -> bool:
    return (Path(folder) / STATUS_FILE).exists() or (Path(folder) / STATUS_JOURNAL).exists()


# --- dataset/ --------------------------------------------------------------------------------

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Audio
DATASET_SCHEMA = pa.schema([
    ("id", pa.string()), ("template", pa.string()), ("split", pa.string()),
    ("code", pa.string()), ("params", pa.string()), ("seed", pa.int64()),
    ("family", pa.string()), ("scenario", pa.string()), ("group_id", pa.string()),
    ("varied", pa.string()), ("prompt", pa.string()), ("audio", AUDIO_TYPE),
    ("sample_rate", pa.int64()), ("duration_s", pa.float64()), ("bpm", pa.float64()),
    ("bars", pa.float64()), ("acceleration", pa.float64()), ("attempts", pa.int64()),
    ("audio_sha256", pa.string()), ("sonic_pi_version", pa.string()),
    ("toolkit_version", pa.string()),
])
# Dataset columns not taken by name from the manifest row or the status row.
_DATASET_OWN_COLUMNS = ("split", "audio", "toolkit_version")


def dataset_row(program: dict, status: dict, audio: bytes, split: str, toolkit_version: str) -> dict:
    """One dataset row: each DATASET_SCHEMA column from the manifest row (program) if it
    has it, else from the status row; split, audio and toolkit_version are given."""
    own = {"split": split, "audio": {"bytes": audio, "path": status["path"]},
           "toolkit_version": toolkit_version}
    return {name: own[name] if name in own else program[name] if name in MANIFEST_SCHEMA.names
            else status[name] for name in DATASET_SCHEMA.names}


def dataset_shards(folder: Path) -> list[tuple[str, str, Path]]:
    """(config, split, path) of every shard: data/<config>/<split>-*.parquet, or
    data/*.parquet (config `default`); also a folder of shards given directly."""
    root = Path(folder)
    data = root / DATA_DIR if (root / DATA_DIR).is_dir() else root
    shards = [(p.parent.name, p) for p in sorted(data.glob("*/*.parquet"))]
    shards += [("default", p) for p in sorted(data.glob("*.parquet"))]
    if not shards:
        raise FileNotFoundError(
            f"no parquet shards under '{data}': expected the dataset stage's folder "
            f"(data/<config>/<split>-NNNNN-of-NNNNN.parquet), e.g. the output of "
            f"`sonicpi-gen dataset build`")
    # "<split>-00000-of-00003.parquet" -> "<split>"
    return [(config, path.stem.split("-")[0], path) for config, path in shards]


def shard_files(dataset_dir: Path, config: str = "default", split: str = "train") -> list[Path]:
    """The Parquet shards of one split: data/<config>/<split>-NNNNN-of-NNNNN.parquet."""
    files = sorted((Path(dataset_dir) / DATA_DIR / config).glob(f"{split}-*.parquet"))
    if not files:
        have = sorted({f"{p.parent.name}/{p.name.split('-')[0]}"
                       for p in Path(dataset_dir).glob(f"{DATA_DIR}/*/*.parquet")})
        raise FileNotFoundError(f"no shards for config {config!r}, split {split!r} in {dataset_dir}; "
                                f"it has (config/split): {have or 'none'}")
    return files


def iter_rows(dataset_dir: Path, config: str = "default", split: str = "train",
              columns: list[str] | None = None) -> Iterator[dict]:
    """Rows of one split as dicts, one Parquet row group in memory at a time (pyarrow only)."""
    for path in shard_files(dataset_dir, config, split):
        shard = pq.ParquetFile(path)
        for i in range(shard.num_row_groups):
            yield from shard.read_row_group(i, columns=columns).to_pylist()


def decode_audio(example_or_bytes, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """Decode a row's audio with soundfile, without torchcodec.

    Accepts a row (a dict with an "audio" key), the audio value ({"bytes", "path"}, as
    given by a column cast to Audio(decode=False)), or the encoded bytes themselves
    (FLAC, WAV, OGG: whatever libsndfile reads). Returns (samples of shape (frames,
    channels), sample_rate); dtype "int16" gives the FLAC's exact integers, "float32"
    (default) those divided by 32768.
    """
    import soundfile as sf

    value = example_or_bytes
    if isinstance(value, dict) and "audio" in value:
        value = value["audio"]
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path") and Path(value["path"]).is_file():
            value = Path(value["path"]).read_bytes()
        else:
            raise ValueError(f"an audio value needs 'bytes' (or the 'path' of a file that exists); "
                             f"got keys {sorted(value)} with path {value.get('path')!r}. Was the "
                             "audio column decoded already? Cast it with Audio(decode=False).")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_audio takes a row, an audio dict or bytes, not {type(value).__name__}")
    if not len(value):
        raise ValueError("the audio bytes are empty; the row has no embedded audio")
    samples, sample_rate = sf.read(io.BytesIO(bytes(value)), dtype=dtype, always_2d=True)
    return samples, int(sample_rate)


# --- embeddings/<code-model>__<audio-model>/ -------------------------------------------------

EMBEDDINGS_META_COLUMNS = ("id", "config", "split", "template", "family", "scenario", "group_id")
EMBEDDING_COLUMNS = ("code_emb", "audio_emb")
EMBEDDINGS_SCHEMA = pa.schema([(name, pa.string()) for name in EMBEDDINGS_META_COLUMNS]
                              + [(name, pa.list_(pa.float32())) for name in EMBEDDING_COLUMNS])


def embedding_array(vectors: Sequence[np.ndarray] | np.ndarray) -> pa.Array:
    """A list<float32> column from vectors (one per row)."""
    if not len(vectors):
        return pa.array([], type=pa.list_(pa.float32()))
    lengths = np.array([len(v) for v in vectors], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in vectors])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))


def embeddings_table(meta: dict[str, Sequence], code: Sequence[np.ndarray] | np.ndarray,
                     audio: Sequence[np.ndarray] | np.ndarray, metadata: dict[str, str] | None = None
                     ) -> pa.Table:
    """An embeddings table in EMBEDDINGS_SCHEMA: `meta` maps each meta column to its
    values (a missing column is null), code and audio hold one vector per row."""
    n = len(code)
    columns = [pa.array(list(meta[c]) if c in meta else [None] * n, type=pa.string())
               for c in EMBEDDINGS_META_COLUMNS] + [embedding_array(code), embedding_array(audio)]
    table = pa.Table.from_arrays(columns, schema=EMBEDDINGS_SCHEMA)
    return table.replace_schema_metadata(metadata) if metadata else table


def write_embeddings(folder: Path, table: pa.Table) -> Path:
    """Write folder/embeddings.parquet (atomically); returns its path."""
    path = Path(folder) / EMBEDDINGS_FILE
    write_atomically(path, lambda tmp: pq.write_table(table, tmp))
    return path


def _embedding_matrix(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{path}: column {name!r} has {column.null_count} null rows; every pair needs both embeddings")
    n = len(column)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if n == 0:
        return flat.reshape(0, 0)
    if flat.size % n:
        raise ValueError(f"{path}: column {name!r} has rows of different lengths; expected one fixed dimension")
    return flat.reshape(n, flat.size // n)


def read_embeddings(path: str | Path) -> tuple[pa.Table, np.ndarray, np.ndarray, dict[str, str]]:
    """Read an embeddings.parquet (or its folder).

    Returns (metadata table without the embedding columns, code (n, d_code) float32,
    audio (n, d_audio) float32, key-value metadata as str -> str).
    Raises FileNotFoundError when the file is missing, ValueError naming a missing
    column, null embeddings or rows of different lengths.
    """
    path = Path(path)
    file = path / EMBEDDINGS_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no {EMBEDDINGS_FILE} in {path}; pass the folder written by "
                                "`sonicpi-gen embed` (embeddings/<code-model>__<audio-model>/)")
    table = pq.read_table(file)
    missing = [c for c in ("id", "split", *EMBEDDING_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{file}: missing column(s) {missing}; found {table.column_names}")
    meta = {k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in (table.schema.metadata or {}).items()}
    code = _embedding_matrix(table.column("code_emb"), "code_emb", file)
    audio = _embedding_matrix(table.column("audio_emb"), "audio_emb", file)
    return table.drop_columns(list(EMBEDDING_COLUMNS)), code, audio, meta
