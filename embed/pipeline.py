"""embed_dataset: dataset folder (or Hub id) -> embeddings/<code>__<audio>/embeddings.parquet.

Order of work: read the index (ids, code, metadata; no audio), drop rows already in the
output, embed the code of what is left (windows sorted by token length), then stream the
audio through DataLoader workers (decode FLAC, mono, resample, features) into batched
model calls. Work is checkpointed to <out>/.parts every `checkpoint_every` items, so an
interrupted run resumes where it stopped; the final file is written to a temporary
name and renamed. Every id is embedded once even when several configs hold it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embed.dataset import (AudioUnit, DatasetIndex, DatasetRow, audio_units,
                           load_audio_bytes, read_dataset_index)
from sonicpi_gen.folders import (EMBEDDINGS_FILE, EMBEDDINGS_META_COLUMNS, EMBEDDINGS_SCHEMA,
                                 decode_audio, embedding_array, embeddings_table,
                                 make_provenance, read_provenance, write_atomically,
                                 write_embeddings, write_json_atomically, write_provenance)
from embed.encoders import (DEFAULT_AUDIO_BATCH, DEFAULT_AUDIO_MODEL, DEFAULT_CODE_BATCH,
                            DEFAULT_CODE_MODEL, AudioEncoder, CodeEncoder, hub_id_of,
                            load_audio_encoder, load_code_encoder, resolve_alias,
                            resolve_device)

logger = logging.getLogger(__name__)

PARTS_DIR = ".parts"
CHECKPOINT_EVERY = 512  # items between checkpoint files: ~1 min of GPU work, little to redo
ENGINES = ("local", "ray")  # where the models run (see EmbedSettings.engine)
FINGERPRINT_KEYS = ("model", "revision", "pooling", "sample_rate", "long_input", "max_length",
                    "dim", "precision")


class EmbedSettingsError(ValueError):
    """The output folder holds embeddings made with other settings than this run's."""


@dataclass
class EmbedResult:
    """What a run did: where it wrote, how much, how fast."""

    path: Path
    rows: int
    new_rows: int
    code_computed: int = 0
    audio_computed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    code_seconds: float = 0.0
    audio_seconds: float = 0.0
    audio_duration_s: float = 0.0

    @property
    def clips_per_s(self) -> float:
        return self.audio_computed / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def audio_seconds_per_s(self) -> float:
        return self.audio_duration_s / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class EmbedSettings:
    """How `embed_dataset` embeds: which models, which rows, how it batches, where it runs.

    code_model, audio_model: hub ids, aliases or local folders (embed.encoders.ENCODERS).
    configs, splits: only these (None: all). limit: only the first N rows (sorted by
        config, split, id), for a quick look. reader: "auto", "parquet" or "datasets"
        (see embed.dataset.read_dataset_index).
    device: "auto" (cuda if available), "cpu", "cuda", "cuda:N". precision: "auto" =
        bf16/fp16 autocast on GPU, fp32 on CPU; or fp32/fp16/bf16.
    code_batch_size: token windows per forward; audio_batch_size: clips per forward.
    num_workers: audio decoding processes (None: up to 8 beside a GPU, 1 beside a CPU
        model; 0 decodes in this process).
    long_input: "chunk" (whole program, 512-token windows) or "truncate".
    code_revision, audio_revision, cache_dir, trust_remote_code: passed to the loaders;
        local_files_only: never download (implied by model folders and HF_HUB_OFFLINE=1).
    checkpoint_every: programs / clips between checkpoint files in <out>/.parts.
    threads: torch CPU threads (None: every core this process may use).
    engine: "local" (this process), or "ray": the model work on Ray actors, one code
        and one audio encoder each, a GPU each when the cluster has one per actor
        (embed.ray_engine); resume, checkpoints and the output are the same.
    address: the Ray cluster's head, HOST:PORT (None: RAY_ADDRESS, else the cluster
        `ray start` made on this machine); actors: how many (None: one per GPU, else
        one per CPU of the cluster).
    """

    code_model: str = DEFAULT_CODE_MODEL
    audio_model: str = DEFAULT_AUDIO_MODEL
    configs: Sequence[str] | None = None
    splits: Sequence[str] | None = None
    limit: int | None = None
    reader: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    code_batch_size: int = DEFAULT_CODE_BATCH
    audio_batch_size: int = DEFAULT_AUDIO_BATCH
    num_workers: int | None = None
    long_input: str = "chunk"
    code_revision: str | None = None
    audio_revision: str | None = None
    cache_dir: str | None = None
    local_files_only: bool | None = None
    trust_remote_code: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY
    threads: int | None = None
    engine: str = "local"
    address: str | None = None
    actors: int | None = None

    def record(self, workers: int, pool=None) -> dict[str, Any]:
        """The settings provenance.json records (`workers`: the decode processes used)."""
        out = {"configs": list(self.configs or []), "splits": list(self.splits or []),
               "device": self.device, "precision": self.precision,
               "code_batch_size": self.code_batch_size,
               "audio_batch_size": self.audio_batch_size, "num_workers": workers,
               "long_input": self.long_input, "limit": self.limit, "reader": self.reader,
               "checkpoint_every": self.checkpoint_every, "engine": "ray" if pool else "local"}
        if pool is not None:
            out.update(actors=len(pool.actors), actor_gpus=pool.gpu, actors_replaced=pool.replaced)
        return out


def model_slug(model_id_or_path: str) -> str:
    """Folder-name part for a model: the hub id's last component or the folder's name."""
    name = resolve_alias(model_id_or_path)
    hub = hub_id_of(name)
    return (hub or Path(name).expanduser().resolve().name).rstrip("/").split("/")[-1]


def output_dir(out_dir: str | Path, code_model: str, audio_model: str) -> Path:
    """<out_dir>/<code-model>__<audio-model> (docs/contracts.md)."""
    return Path(out_dir) / f"{model_slug(code_model)}__{model_slug(audio_model)}"


# ---------------------------------------------------------------- reading and writing


def _emb_matrix(column: pa.ChunkedArray) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float32) for v in column.to_pylist()]


def _fingerprint(code_enc: CodeEncoder, audio_enc: AudioEncoder) -> dict[str, dict[str, Any]]:
    """The settings that change the numbers: a resumed file must match them."""
    def pick(desc):
        return {k: desc[k] for k in FINGERPRINT_KEYS if k in desc}

    return {"code": pick(code_enc.describe()), "audio": pick(audio_enc.describe())}


def _check_fingerprint(found: dict, wanted: dict, where: Path) -> None:
    diffs = [f"{side}.{k}: file has {found.get(side, {}).get(k)!r}, this run {v!r}"
             for side in ("code", "audio") for k, v in wanted[side].items()
             if found.get(side, {}).get(k) != v]
    if diffs:
        raise EmbedSettingsError(
            f"'{where}' was made with other settings ({'; '.join(diffs)}). Resume with the "
            f"same settings, or write to another --out (or delete that folder) to start over.")


class _Store:
    """The output folder: finished rows, checkpoint parts, and the final atomic write."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.parts = folder / PARTS_DIR
        self.path = folder / EMBEDDINGS_FILE
        self.existing: pa.Table | None = None
        self.meta: dict[str, str] = {}
        if self.path.exists():
            self.existing = pq.read_table(self.path)
            self.meta = {k.decode(): v.decode()
                         for k, v in (self.existing.schema.metadata or {}).items()}

    def existing_meta(self) -> dict[tuple[str, str], tuple]:
        """(config, id) -> the row's dataset columns (EMBEDDINGS_META_COLUMNS), as written."""
        if self.existing is None:
            return {}
        table, n = self.existing, self.existing.num_rows
        columns = [table.column(c).to_pylist() if c in table.column_names else [None] * n
                   for c in EMBEDDINGS_META_COLUMNS]  # a column added since reads as null
        config_at, id_at = EMBEDDINGS_META_COLUMNS.index("config"), EMBEDDINGS_META_COLUMNS.index("id")
        return {(row[config_at], row[id_at]): row for row in zip(*columns)}

    def existing_vectors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.existing is None:
            return {}
        ids = self.existing.column("id").to_pylist()
        return dict(zip(ids, zip(_emb_matrix(self.existing.column("code_emb")),
                                 _emb_matrix(self.existing.column("audio_emb")))))

    def check(self, fingerprint: dict) -> None:
        if self.existing is not None and "fingerprint" in self.meta:
            _check_fingerprint(json.loads(self.meta["fingerprint"]), fingerprint, self.path)
        settings = self.parts / "fingerprint.json"
        if settings.exists() and json.loads(settings.read_text()) != fingerprint:
            logger.warning("discarding checkpoint parts in %s made with other settings", self.parts)
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        write_json_atomically(settings, fingerprint, sort_keys=True)

    def load_parts(self, kind: str) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for part in sorted(self.parts.glob(f"{kind}-*.parquet")) if self.parts.exists() else []:
            table = pq.read_table(part)
            found.update(zip(table.column("id").to_pylist(), _emb_matrix(table.column("emb"))))
        return found

    def write_part(self, kind: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        number = len(list(self.parts.glob(f"{kind}-*.parquet")))
        ids = sorted(vectors)
        table = pa.table({"id": pa.array(ids, pa.string()),
                          "emb": embedding_array([vectors[i] for i in ids])})
        write_atomically(self.parts / f"{kind}-{number:05d}.parquet", lambda tmp: pq.write_table(table, tmp))


def _meta_of(row: DatasetRow) -> tuple:
    return tuple(row.column(c) for c in EMBEDDINGS_META_COLUMNS)


def _output_table(rows: Sequence[DatasetRow], vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                  existing: pa.Table | None, dropped: set[tuple[str, str]],
                  metadata: dict[str, str]) -> pa.Table:
    """The rows of `existing` but those keyed (config, id) in `dropped`, plus `rows`."""
    cols: dict[str, list] = {c: [r.column(c) for r in rows] for c in EMBEDDINGS_META_COLUMNS}
    schema = EMBEDDINGS_SCHEMA
    new = embeddings_table(cols, [vectors[r.id][0] for r in rows], [vectors[r.id][1] for r in rows])
    if existing is not None:
        keys = zip(existing.column("config").to_pylist(), existing.column("id").to_pylist())
        kept = existing.filter(pa.array([key not in dropped for key in keys], pa.bool_()))
        table = pa.concat_tables([kept.select(schema.names).cast(schema), new])
    else:
        table = new
    order = sorted(range(table.num_rows), key=lambda i: (
        table.column("config")[i].as_py(), table.column("split")[i].as_py() or "",
        table.column("id")[i].as_py()))
    table = table.take(pa.array(order, pa.int64()))
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})


# ---------------------------------------------------------------- audio streaming


def _stack_batch(keys: list[str], arrays: list[np.ndarray], seconds: float):
    import torch

    return {"keys": keys, "x": torch.from_numpy(np.stack(arrays)), "seconds": seconds, "failed": []}


def _audio_iterable_class():
    """AudioStream is built lazily so importing this module needs no torch."""
    import torch

    class AudioStream(torch.utils.data.IterableDataset):
        """Decodes and prepares clips in DataLoader workers; yields same-shape batches."""

        def __init__(self, index: DatasetIndex, units: list[AudioUnit], preparer,
                     batch_size: int):
            super().__init__()
            self.sources, self.units = index.sources, units
            self.preparer, self.batch_size = preparer, batch_size

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = torch.utils.data.get_worker_info()
            mine = self.units if info is None else self.units[info.id::info.num_workers]
            buffers: dict[tuple, tuple[list, list, list]] = {}
            for unit in mine:
                source = self.sources[unit.source]
                ids = dict(zip(unit.positions, unit.ids))
                for pos, data, path in source.read_audio(unit.positions):
                    row_id = ids[pos]
                    try:
                        raw = load_audio_bytes(data, path, getattr(source, "root", None), row_id)
                        wave, sr = decode_audio(raw)
                        x = self.preparer(wave, sr)
                    except Exception as err:  # one bad clip never sinks the batch
                        yield {"keys": [], "x": None, "seconds": 0.0,
                               "failed": [(row_id, f"{type(err).__name__}: {err}")]}
                        continue
                    keys, arrays, secs = buffers.setdefault(x.shape, ([], [], []))
                    keys.append(row_id)
                    arrays.append(x)
                    secs.append(len(wave) / sr)
                    if len(keys) >= self.batch_size:
                        yield _stack_batch(keys, arrays, float(sum(secs)))
                        buffers.pop(x.shape)
            for keys, arrays, secs in buffers.values():
                yield _stack_batch(keys, arrays, float(sum(secs)))

    return AudioStream


def default_workers(device) -> int:
    """Decode workers: most cores when a GPU does the model work, one beside a CPU model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores >= 2 else 0


# ---------------------------------------------------------------- the stage


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def _embed_code(code_enc: CodeEncoder, todo: dict[str, str], store: _Store, batch_size: int,
                checkpoint_every: int, progress: bool,
                failed: list) -> tuple[dict[str, np.ndarray], int]:
    """Code vectors for `todo` (id -> program), reusing checkpoint parts; and how many were new."""
    done = store.load_parts("code")
    ids = [i for i in todo if i not in done]
    # length-sorted across the whole run, so each checkpoint chunk is evenly padded
    lengths = dict(zip(ids, map(len, code_enc.token_ids([todo[i] for i in ids]))))
    ids.sort(key=lambda i: -lengths[i])
    bar = _progress(len(ids), "code", "prog", progress)
    computed = 0
    for start in range(0, len(ids), checkpoint_every):
        chunk = ids[start:start + checkpoint_every]
        part: dict[str, np.ndarray] = {}
        try:
            part = dict(zip(chunk, code_enc.encode([todo[i] for i in chunk], batch_size)))
        except Exception as err:  # retry one by one so one bad program fails alone
            logger.warning("code batch failed (%s); retrying programs one at a time", err)
            for i in chunk:
                try:
                    part[i] = code_enc.encode([todo[i]], 1)[0]
                except Exception as one_err:
                    failed.append({"id": i, "stage": "code", "error": f"{type(one_err).__name__}: {one_err}"})
        store.write_part("code", part)
        done.update(part)
        computed += len(part)
        bar.update(len(chunk))
    bar.close()
    return done, computed


def _embed_audio(audio_enc: AudioEncoder, index: DatasetIndex, rows: list[DatasetRow],
                 store: _Store, batch_size: int, num_workers: int, checkpoint_every: int,
                 progress: bool, failed: list, result: EmbedResult) -> dict[str, np.ndarray]:
    """Audio vectors for `rows`, decoded in DataLoader workers, reusing checkpoint parts."""
    import torch

    done = store.load_parts("audio")
    todo = [r for r in rows if r.id not in done]
    if not todo:
        return done
    stream = _audio_iterable_class()(index, audio_units(index, todo), audio_enc.preparer, batch_size)
    device = getattr(audio_enc, "device", None)
    pin = bool(device is not None and getattr(device, "type", "") == "cuda")
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=pin,
        prefetch_factor=4 if num_workers else None)
    bar = _progress(len(todo), "audio", "clip", progress)
    pending: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    for item in loader:
        for row_id, message in item["failed"]:
            failed.append({"id": row_id, "stage": "audio", "error": message})
            bar.update(1)
        if item["x"] is None:
            continue
        try:
            emb = audio_enc.encode_prepared(item["x"])
        except Exception as err:  # e.g. out of memory: retry clip by clip
            logger.warning("audio batch failed (%s); retrying clips one at a time", err)
            emb = []
            for k in range(len(item["keys"])):
                try:
                    emb.append(audio_enc.encode_prepared(item["x"][k:k + 1])[0])
                except Exception as one_err:
                    failed.append({"id": item["keys"][k], "stage": "audio",
                                   "error": f"{type(one_err).__name__}: {one_err}"})
                    emb.append(None)
        for row_id, vec in zip(item["keys"], emb):
            if vec is not None:
                pending[row_id] = np.asarray(vec, dtype=np.float32)
                result.audio_computed += 1
        result.audio_duration_s += item["seconds"]
        bar.update(len(item["keys"]))
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{result.audio_duration_s / max(elapsed, 1e-9):.1f} audio-s/s")
        if len(pending) >= checkpoint_every:
            store.write_part("audio", pending)
            done.update(pending)
            pending = {}
    store.write_part("audio", pending)
    done.update(pending)
    bar.close()
    result.audio_seconds = time.perf_counter() - start
    return done


def _embed_code_ray(pool, todo: dict[str, str], store: _Store, batch_size: int,
                    checkpoint_every: int, progress: bool,
                    failed: list) -> tuple[dict[str, np.ndarray], int]:
    """_embed_code on the pool's actors: each checkpoint chunk is one batch sent, and
    written as a part when it comes back."""
    done = store.load_parts("code")
    ids = sorted((i for i in todo if i not in done), key=lambda i: -len(todo[i]))  # see _embed_code
    chunks = [ids[s:s + checkpoint_every] for s in range(0, len(ids), checkpoint_every)]
    bar = _progress(len(ids), "code", "prog", progress)
    computed = 0

    def arrived(index, result):
        nonlocal computed
        part, errors = result
        failed.extend(errors)
        store.write_part("code", part)
        done.update(part)
        computed += len(part)
        bar.update(len(chunks[index]))

    lost = pool.run([("encode_code", (chunk, [todo[i] for i in chunk], batch_size)) for chunk in chunks],
                    arrived)
    for batch in lost:
        failed.extend({"id": i, "stage": "code", "error": batch["error"]} for i in chunks[batch["index"]])
    bar.close()
    return done, computed


def _embed_audio_ray(pool, index: DatasetIndex, rows: list[DatasetRow], store: _Store,
                     batch_size: int, checkpoint_every: int, progress: bool, failed: list,
                     result: EmbedResult) -> dict[str, np.ndarray]:
    """_embed_audio on the pool's actors: the driver reads each clip's bytes and sends
    them in batches; the actors decode, prepare and encode."""
    from embed.ray_engine import MIN_CLIPS_PER_SEND

    done = store.load_parts("audio")
    todo = [r for r in rows if r.id not in done]
    if not todo:
        return done
    per_send = max(batch_size, MIN_CLIPS_PER_SEND)
    sends: list[list[tuple[str, bytes]]] = [[]]
    for unit in audio_units(index, todo):
        source = index.sources[unit.source]
        ids = dict(zip(unit.positions, unit.ids))
        for pos, data, path in source.read_audio(unit.positions):
            row_id = ids[pos]
            try:
                raw = load_audio_bytes(data, path, getattr(source, "root", None), row_id)
            except Exception as err:  # one unreadable clip never sinks the batch
                failed.append({"id": row_id, "stage": "audio", "error": f"{type(err).__name__}: {err}"})
                continue
            if len(sends[-1]) >= per_send:
                sends.append([])
            sends[-1].append((row_id, raw))
    bar = _progress(len(todo), "audio", "clip", progress)
    pending: dict[str, np.ndarray] = {}
    start = time.perf_counter()

    def arrived(number, reply):
        nonlocal pending
        vectors, errors, seconds = reply
        failed.extend(errors)
        pending.update(vectors)
        result.audio_computed += len(vectors)
        result.audio_duration_s += seconds
        bar.update(len(sends[number]))
        if len(pending) >= checkpoint_every:
            store.write_part("audio", pending)
            done.update(pending)
            pending = {}

    lost = pool.run([("encode_audio", (clips, batch_size)) for clips in sends if clips], arrived)
    for batch in lost:
        failed.extend({"id": i, "stage": "audio", "error": batch["error"]} for i, _ in sends[batch["index"]])
    store.write_part("audio", pending)
    done.update(pending)
    bar.close()
    result.audio_seconds = time.perf_counter() - start
    return done


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__}
    for name in ("torch", "transformers", "datasets", "scipy", "soundfile"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


def _tool_version() -> str:
    from sonicpi_gen import __version__
    return __version__


def embed_dataset(dataset: str | Path, out_dir: str | Path, settings: EmbedSettings | None = None, *,
                  code_encoder: CodeEncoder | None = None, audio_encoder: AudioEncoder | None = None,
                  progress: bool = True, command: str | None = None) -> EmbedResult:
    """Embed every (config, split, id) row of a dataset not yet in the output.

    Args:
        dataset: dataset folder (data/<config>/<split>-*.parquet) or Hub dataset id.
        out_dir: embeddings root; writes <out_dir>/<code>__<audio>/embeddings.parquet and
            provenance.json (<code>, <audio>: the models' last id component / folder name).
        settings: models, rows, batching and engine (EmbedSettings(): its defaults).
        code_encoder, audio_encoder: already loaded encoders (then the settings' model
            ids only name the output folder).
        progress: show tqdm bars. command: the command line provenance.json records
            (default: this process's argv).
    """
    s = settings or EmbedSettings()
    if s.engine not in ENGINES:
        raise ValueError(f"engine {s.engine!r} is not known; choose 'local' or 'ray'")
    if s.engine == "ray" and (code_encoder is not None or audio_encoder is not None):
        raise ValueError("engine 'ray' loads the encoders on its actors: pass model ids, not "
                         "loaded encoders")
    start = time.perf_counter()
    index = read_dataset_index(dataset, s.configs, s.splits, s.reader)
    all_rows = sorted(index.rows, key=lambda r: (r.config, r.split, r.id))
    rows = all_rows[:s.limit] if s.limit is not None else all_rows
    code_name = code_encoder.name if code_encoder is not None else s.code_model
    audio_name = audio_encoder.name if audio_encoder is not None else s.audio_model
    folder = output_dir(out_dir, code_name, audio_name)
    folder.mkdir(parents=True, exist_ok=True)
    store = _Store(folder)
    # A resumed file follows the dataset as it is now: a row whose split or other column
    # changed there (a rebuild with more programs re-splits them) is rewritten with its
    # vectors kept, and a row of a config read here that the dataset no longer has is
    # dropped. Vectors are keyed by the program id, whose text it hashes.
    written = store.existing_meta()
    in_dataset = {(r.config, r.id) for r in all_rows}
    read_configs = {r.config for r in all_rows}
    missing = [r for r in rows if (r.config, r.id) not in written]
    changed = [r for r in rows if (r.config, r.id) in written and written[r.config, r.id] != _meta_of(r)]
    stale = {key for key in written if key[0] in read_configs and key not in in_dataset}
    result = EmbedResult(path=store.path, rows=len(written), new_rows=0)
    if changed or stale:
        logger.warning("%s: %d rows changed split or columns in the dataset since they were "
                       "embedded (rewritten, vectors kept); %d rows are no longer in it (dropped)",
                       store.path, len(changed), len(stale))
    if not missing and not changed and not stale and store.existing is not None:
        logger.info("nothing to do: all %d rows already in %s", len(rows), store.path)
        return result

    pool = None
    if s.engine == "ray":
        from embed.ray_engine import EmbedPool
        pool = EmbedPool(s.code_model, s.audio_model, {
            "device": s.device, "precision": s.precision, "code_batch_size": s.code_batch_size,
            "audio_batch_size": s.audio_batch_size, "long_input": s.long_input,
            "revision_code": s.code_revision, "revision_audio": s.audio_revision,
            "cache_dir": s.cache_dir, "local_files_only": s.local_files_only,
            "trust_remote_code": s.trust_remote_code},
            s.address, s.actors)
        code_encoder, audio_encoder = pool.encoders()
    elif s.threads or s.device in ("cpu", "auto"):
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(s.threads or cores or 1)
    try:
        return _embed_rows(dataset, index, rows, missing, changed, stale, store, result, folder, s,
                           code_encoder, audio_encoder, pool, start, progress=progress,
                           command=command)
    finally:
        if pool is not None:
            pool.close()


def _embed_rows(dataset, index, rows, missing, changed, stale, store, result, folder,
                s: EmbedSettings, code_encoder, audio_encoder, pool, start, *, progress,
                command) -> EmbedResult:
    """embed_dataset once the rows to do are known (`missing` to embed, `changed` to
    rewrite, `stale` keys to drop): load the encoders (unless given, or on `pool`'s
    actors), embed, write."""
    if code_encoder is None:
        code_encoder = load_code_encoder(s.code_model, s.device, revision=s.code_revision,
                                         cache_dir=s.cache_dir, local_files_only=s.local_files_only,
                                         precision=s.precision, batch_size=s.code_batch_size,
                                         long_input=s.long_input, trust_remote_code=s.trust_remote_code)
    if audio_encoder is None:
        audio_encoder = load_audio_encoder(s.audio_model, s.device, revision=s.audio_revision,
                                           cache_dir=s.cache_dir, local_files_only=s.local_files_only,
                                           precision=s.precision, batch_size=s.audio_batch_size,
                                           trust_remote_code=s.trust_remote_code)
    fingerprint = _fingerprint(code_encoder, audio_encoder)
    store.check(fingerprint)

    known = store.existing_vectors()
    todo_rows: dict[str, DatasetRow] = {}
    for row in missing:
        if row.id not in known:
            todo_rows.setdefault(row.id, row)
    failed: list[dict[str, str]] = []

    t0 = time.perf_counter()
    programs = {i: r.code for i, r in todo_rows.items()}
    if pool is None:
        code_vecs, result.code_computed = _embed_code(
            code_encoder, programs, store, s.code_batch_size, s.checkpoint_every, progress, failed)
    else:
        code_vecs, result.code_computed = _embed_code_ray(
            pool, programs, store, s.code_batch_size, s.checkpoint_every, progress, failed)
    result.code_seconds = time.perf_counter() - t0
    if pool is None:
        workers = default_workers(resolve_device(s.device)) if s.num_workers is None else s.num_workers
        audio_vecs = _embed_audio(audio_encoder, index, list(todo_rows.values()), store,
                                  s.audio_batch_size, workers, s.checkpoint_every, progress, failed,
                                  result)
    else:
        workers = 0  # the actors decode
        audio_vecs = _embed_audio_ray(pool, index, list(todo_rows.values()), store,
                                      s.audio_batch_size, s.checkpoint_every, progress, failed, result)

    for i in todo_rows:
        if i in code_vecs and i in audio_vecs:
            known[i] = (code_vecs[i], audio_vecs[i])
    new_rows = [r for r in missing if r.id in known]
    result.new_rows = len(new_rows)
    dropped = stale | {(r.config, r.id) for r in changed}
    result.failed = failed
    sonic_pi = sorted({r.sonic_pi_version for r in rows if r.sonic_pi_version})
    code_desc, audio_desc = code_encoder.describe(), audio_encoder.describe()
    metadata = {
        "code_model": code_desc["model"], "code_revision": code_desc["revision"],
        "code_pooling": code_desc["pooling"], "code_dim": str(code_desc["dim"]),
        "code_licence": code_desc["licence"], "audio_model": audio_desc["model"],
        "audio_revision": audio_desc["revision"], "audio_pooling": audio_desc["pooling"],
        "audio_sample_rate": str(audio_desc["sample_rate"]), "audio_dim": str(audio_desc["dim"]),
        "audio_licence": audio_desc["licence"], "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "tool_version": _tool_version(), "sonic_pi_version": ",".join(sonic_pi),
    }
    table = _output_table(new_rows + changed, known, store.existing, dropped, metadata)
    write_embeddings(store.folder, table)
    result.rows = table.num_rows
    provenance = make_provenance(
        "embed", command or " ".join(sys.argv), s.record(workers, pool), [dataset], sonic_pi, seed=None,
        cwd=os.getcwd(),  # relative model folders in the record are relative to this
        dataset={"source": str(dataset), "reader": index.reader, "shards": index.shards},
        code_encoder=code_desc, audio_encoder=audio_desc, fingerprint=fingerprint,
        counts={"rows": result.rows, "new_rows": result.new_rows,
                "code_computed": result.code_computed,
                "audio_computed": result.audio_computed, "failed": len(failed)},
        failed=failed,
        timing={"total_s": round(time.perf_counter() - start, 3),
                "code_s": round(result.code_seconds, 3),
                "audio_s": round(result.audio_seconds, 3),
                "clips_per_s": round(result.clips_per_s, 3),
                "audio_seconds_per_s": round(result.audio_seconds_per_s, 3)},
        versions=_versions())
    old = read_provenance(folder)
    if old:  # a resumed run keeps a short record of the runs before it
        provenance["history"] = old.get("history", []) + [
            {k: old.get(k) for k in ("created", "command", "counts", "timing")}]
    write_provenance(folder, provenance)
    if not failed:
        shutil.rmtree(store.parts, ignore_errors=True)
    return result
