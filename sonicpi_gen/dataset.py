"""Renders folders to a Hugging Face dataset folder (`build_dataset`), and readers that
need no torchcodec (`load_local`; `decode_audio` and `iter_rows` are sonicpi_gen.folders',
importable from here too). The renders folder is read through sonicpi_gen.folders, never
through the renderer.

Output (docs/contracts.md, docs/dataset.md):

    <out>/README.md                                      card: dataset_card.md + YAML
    <out>/data/<config>/<split>-NNNNN-of-NNNNN.parquet   shards, FLAC bytes embedded
    <out>/provenance.json

Building streams: clips are read one at a time and written in row groups through one
pyarrow ParquetWriter per (config, split), so memory stays bounded by a few row groups
whatever the number of clips. Splits are a function of the manifest only and rows are
sorted, so the same input gives byte-identical shards on any machine.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sonicpi_gen import __version__
# decode_audio, iter_rows and shard_files are the dataset folder's readers, importable from here too.
from sonicpi_gen.folders import (DATASET_SCHEMA, MANIFEST_SCHEMA, decode_audio,  # noqa: F401
                                 dataset_row, is_renders_dir, iter_rows, make_provenance,
                                 manifest_key, read_manifest, read_provenance, read_status,
                                 replace_dir, shard_files, write_provenance)
from sonicpi_gen.tutorial import TUTORIAL_LICENSE

logger = logging.getLogger(__name__)

CONFIGS = ("default", "unseen_templates", "tutorial", "families", "scenarios")
SPLITS = ("train", "validation", "test")
EVAL_SPLIT = "test"  # the single split of `families` and `scenarios` (evaluation sets)
SPLIT_CUTS = (0.8, 0.9)  # cumulative: the first 80% of a template's ranking train, next 10% validation
HELD_OUT_FRACTION = 0.1  # of the templates, for each of validation and test in unseen_templates
MB = 10**6  # as datasets' "500MB"
DEFAULT_MAX_SHARD_MB = 500.0  # datasets' push_to_hub default
ROW_GROUP_ROWS = 100  # datasets' row group size for audio datasets
# ...but also at most this much audio per row group: it bounds the memory of each open
# writer (at most four at a time) and keeps row groups small enough for the Hub viewer.
ROW_GROUP_BYTES = 32 * MB
ROW_OVERHEAD_BYTES = 256  # estimate of a row's non-audio, non-code bytes in a shard
FOOTER_RESERVE_BYTES = 16_384  # kept free in each shard for the Parquet footer (schema, row groups)
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
DEFAULT_LICENSE = "mit"
# The Hub id of the tutorial's licence (the `tutorial` rows carry it; sonicpi_gen.tutorial).
TUTORIAL_LICENSE_ID = "cc-by-sa-4.0"
# Stands for the Hub id in a card built without --repo-id; `dataset publish` puts the
# real id in its place before the upload (sonicpi_gen.publish).
REPO_ID_PLACEHOLDER = "ORG/NAME"
PRETTY_NAME = "Sonic Pi code-audio pairs"
TASK_CATEGORIES = ["text-to-audio", "feature-extraction"]
TAGS = ["music", "audio", "code", "sonic-pi", "live-coding"]
CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "dataset_card.md"
CONFIG_DESCRIPTIONS = {
    "default": "base programs, 80/10/10 by template (stratified), fixed by the id",
    "unseen_templates": "the same base programs; whole templates held out for validation and test",
    "tutorial": "programs expanded from templates lifted from Sonic Pi's tutorial; whole templates held out",
    "families": "perturbation families: a base and variants differing in one parameter",
    "scenarios": "code-completion scenarios: candidates differing in one part",
}
LEFT_OUT_REASONS = {
    "syntax_error": "the program does not parse (the server's error is in the renders' status.parquet)",
    "runtime_error": "the program raised an error while running",
    "silent": "the program ran but made no sound",
    "not_rendered": "no render status (the render was not run or not finished)",
    "missing_audio": "status ok but the FLAC file is missing",
    "audio_mismatch": "the FLAC file's sha256 differs from the one recorded at render time",
    "clipped": "too many samples at full scale (dropped by --drop-clipped)",
}
COMMAND = "sonicpi-gen dataset build"


class DatasetBuildError(ValueError):
    """The input cannot make a dataset (no renders, nothing usable, a bad --out)."""


def dataset_features(sample_rate: int | None = None):
    """The datasets.Features of every configuration: folders.DATASET_SCHEMA, the audio
    column an Audio feature (FLAC bytes, decoded on access)."""
    from datasets import Audio, Features

    plain = Features.from_arrow_schema(DATASET_SCHEMA.remove(DATASET_SCHEMA.get_field_index("audio")))
    return Features({name: Audio(sampling_rate=sample_rate) if name == "audio" else plain[name]
                     for name in DATASET_SCHEMA.names})


# --- splits: functions of the manifest alone ---------------------------------------------

def _rank_key(name: str) -> tuple[str, str]:
    return hashlib.sha256(name.encode()).hexdigest(), name


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def split_by_rank(ids: list[str], cuts: tuple[float, float] = SPLIT_CUTS) -> dict[str, str]:
    """Split one template's ids: rank by sha256(id) (ties by id), cut at cuts[0] and cuts[1]
    of the ranking (halves rounded up). 10 or more ids put at least one in each split."""
    ranked = sorted(set(ids), key=_rank_key)
    train_end, val_end = (_round_half_up(c * len(ranked)) for c in cuts)
    return {id_: "train" if i < train_end else "validation" if i < val_end else "test"
            for i, id_ in enumerate(ranked)}


def held_out_templates(templates: list[str], fraction: float = HELD_OUT_FRACTION) -> dict[str, str]:
    """Split of each template in `unseen_templates`: rank names by sha256(name); the first
    k validation, the next k test, the rest train, k = max(1, round(fraction x count)).
    Empty (no such configuration) with fewer than 3 templates."""
    ranked = sorted(set(templates), key=_rank_key)
    if len(ranked) < 3:
        return {}
    k = max(1, _round_half_up(fraction * len(ranked)))
    return {t: "validation" if i < k else "test" if i < 2 * k else "train" for i, t in enumerate(ranked)}


def plan_rows(manifest: list[dict], configs: tuple[str, ...] = CONFIGS,
              tutorial_templates: frozenset = frozenset()
              ) -> list[tuple[dict, tuple[tuple[str, str], ...]]]:
    """(manifest row, its (config, split) targets) in writing order: base programs by
    (template, id), then the tutorial's, then families and scenarios by (template,
    group_id, index, id). Base programs of `tutorial_templates` go to the `tutorial`
    configuration only, split by whole templates as unseen_templates is. Only `configs`
    are planned; the splits do not depend on which."""
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        raise DatasetBuildError(f"unknown configurations {unknown or list(configs)}; choose among {list(CONFIGS)}")
    base, families, scenarios = {}, [], []
    for row in manifest:
        if row["family"] is None and row["scenario"] is None:
            base.setdefault(row["id"], row)
        elif row["family"] is not None:
            families.append(row)
        else:
            scenarios.append(row)
    tutorial = {i: r for i, r in base.items() if r["template"] in tutorial_templates}
    base = {i: r for i, r in base.items() if i not in tutorial}
    by_template = defaultdict(list)
    for row in base.values():
        by_template[row["template"]].append(row["id"])
    split_of = {}
    for ids in by_template.values():
        split_of.update(split_by_rank(ids))
    held = held_out_templates(list(by_template))
    plan = []
    for row in sorted(base.values(), key=lambda r: (r["template"], r["id"])):
        targets = [("default", split_of[row["id"]])]
        if held:
            targets.append(("unseen_templates", held[row["template"]]))
        plan.append((row, tuple(targets)))
    held_tutorial = held_out_templates(sorted({r["template"] for r in tutorial.values()}))
    for row in sorted(tutorial.values(), key=lambda r: (r["template"], r["id"])):
        # Fewer than 3 templates cannot hold one out for each split: all train.
        plan.append((row, (("tutorial", held_tutorial.get(row["template"], "train")),)))
    group_order = lambda r: (r["template"], r["group_id"] or "", r["index"] or 0, r["id"])  # noqa: E731
    plan += [(r, (("families", EVAL_SPLIT),)) for r in sorted(families, key=group_order)]
    plan += [(r, (("scenarios", EVAL_SPLIT),)) for r in sorted(scenarios, key=group_order)]
    plan = [(row, tuple(t for t in targets if t[0] in configs)) for row, targets in plan]
    return [(row, targets) for row, targets in plan if targets]


# --- input ---------------------------------------------------------------------------------

def read_renders(in_dirs: list[Path]) -> tuple[list[dict], dict[str, dict]]:
    """The union of the renders folders' manifests (first row per (id, group_id, family,
    scenario)) and one status per id (an `ok` one if any folder has it, else the first).
    Each status row gains `_dir` (its renders folder) and `_toolkit` (the version that
    rendered it, from that folder's provenance.json)."""
    manifest, statuses = {}, {}
    for in_dir in map(Path, in_dirs):
        if not is_renders_dir(in_dir):
            raise FileNotFoundError(f"{in_dir} has no status.parquet: not a renders folder; run "
                                    f"`sonicpi-gen render --out {in_dir}` first")
        try:
            rows = read_manifest(in_dir).to_pylist()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{in_dir}/manifest.parquet not found: renders folders made by "
                                    "`sonicpi-gen render` carry the programs' manifest; render "
                                    "again into this folder to add it") from err
        for row in rows:
            row = {name: row.get(name) for name in MANIFEST_SCHEMA.names}
            manifest.setdefault(manifest_key(row), row)
        version = _render_tool_version(in_dir)
        for id_, status in read_status(in_dir).items():
            previous = statuses.get(id_)
            if previous is None or (previous["status"] != "ok" and status["status"] == "ok"):
                statuses[id_] = {**status, "_dir": in_dir, "_toolkit": version}
            elif status["status"] == "ok" and status.get("audio_sha256") != previous.get("audio_sha256"):
                logger.warning("%s is rendered in %s and %s with different audio; keeping %s",
                               id_, previous["_dir"], in_dir, previous["_dir"])
    return list(manifest.values()), statuses


def render_checks(in_dirs: list[Path]) -> dict | None:
    """The accelerated-clock rules the renders were made under, as their provenance.json
    records them (`settings.checks`); None when a folder predates that record or the
    folders disagree (the card then says so rather than quote another version's rules)."""
    found = [read_provenance(d).get("settings", {}).get("checks") for d in in_dirs]
    return found[0] if found and found[0] and all(c == found[0] for c in found) else None


def _render_tool_version(in_dir: Path) -> str:
    return read_provenance(in_dir).get("tool_version", __version__)


def _audio_or_reason(status: dict | None, drop_clipped: bool) -> bytes | str:
    """The clip's FLAC bytes, or why the program has no row."""
    if status is None:
        return "not_rendered"
    if status["status"] != "ok":
        return status["status"]
    if drop_clipped and status.get("clipped"):
        return "clipped"
    path = status["_dir"] / status["path"] if status.get("path") else None
    if path is None or not path.is_file():
        return "missing_audio"
    data = path.read_bytes()
    if status.get("audio_sha256") and hashlib.sha256(data).hexdigest() != status["audio_sha256"]:
        return "audio_mismatch"
    return data


# --- output --------------------------------------------------------------------------------

def _leaf_columns(schema: pa.Schema) -> list[str]:
    return [f"{f.name}.{c.name}" if pa.types.is_struct(f.type) else f.name
            for f in schema for c in (f.type if pa.types.is_struct(f.type) else [f])]


class _SplitWriter:
    """The shards of one (config, split): row groups of at most ROW_GROUP_ROWS rows (or
    about ROW_GROUP_BYTES), a new shard before the estimated size passes max_shard_bytes.
    Files are named <split>-NNNNN.parquet.part until close() knows their count."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_shard_bytes: float):
        self.folder, self.split, self.schema = folder, split, schema
        self.max_shard_bytes = max(max_shard_bytes - FOOTER_RESERVE_BYTES, 1)
        self.parts: list[Path] = []
        self.rows: list[dict] = []
        self.buffered = self.shard_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.num_examples = self.num_bytes = 0
        leaves = _leaf_columns(schema)
        # FLAC does not compress further; everything else is text that does.
        self.options = dict(
            compression={c: "none" if c == "audio.bytes" else "zstd" for c in leaves},
            use_dictionary=[c for c in leaves if c != "audio.bytes"],
            write_statistics=[c for c in leaves if c != "audio.bytes"])

    def add(self, row: dict, size: int) -> None:
        if self.shard_bytes and self.shard_bytes + size > self.max_shard_bytes:
            self._flush()
            self._close_shard()
        self.rows.append(row)
        self.buffered += size
        self.shard_bytes += size
        if len(self.rows) >= ROW_GROUP_ROWS or self.buffered >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        if self.writer is None:
            self.parts.append(self.folder / f"{self.split}-{len(self.parts):05d}.parquet.part")
            self.writer = pq.ParquetWriter(self.parts[-1], self.schema, **self.options)
        self.writer.write_table(table, row_group_size=len(self.rows))
        self.num_examples += len(self.rows)
        self.num_bytes += table.nbytes
        self.rows, self.buffered = [], 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.shard_bytes = 0

    def close(self) -> dict:
        """Write what is buffered, give the shards their final names, return their sizes."""
        self._flush()
        self._close_shard()
        final = [p.with_name(f"{self.split}-{i:05d}-of-{len(self.parts):05d}.parquet")
                 for i, p in enumerate(self.parts)]
        for part, path in zip(self.parts, final):
            part.rename(path)
        return {"files": final, "num_examples": self.num_examples, "num_bytes": self.num_bytes,
                "download_size": sum(p.stat().st_size for p in final)}


@dataclass
class DatasetSummary:
    """What build_dataset wrote."""

    out_dir: Path
    rows: dict  # config -> split -> rows
    clips: int  # distinct clips (ids) in the dataset
    programs: int  # distinct programs in the input manifests
    left_out: dict  # reason (render status, not_rendered, clipped, ...) -> distinct programs
    clipped: int  # clips flagged clipped (kept, or left out with drop_clipped)
    shards: list = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s else 0.0


def build_dataset(in_dirs: list[Path] | Path, out_dir: Path, *,
                  max_shard_mb: float = DEFAULT_MAX_SHARD_MB, drop_clipped: bool = False,
                  license: str = DEFAULT_LICENSE, repo_id: str | None = None, card_template: Path | None = None,
                  configs: tuple[str, ...] = CONFIGS, progress: bool = False,
                  tutorial_dirs: list[Path] = ()) -> DatasetSummary:
    """Build the dataset folder from one or more renders folders (atomically).

    Args:
        in_dirs: renders folders (manifest.parquet, status.parquet, <template>/<id>.flac);
            several are merged (manifests unioned; an id's `ok` render wins).
        out_dir: the dataset folder; replaced only once complete.
        max_shard_mb: upper bound on a Parquet shard's size in MB (10^6 bytes); a single
            clip larger than that gets a shard of its own.
        drop_clipped: leave out clips the render flagged clipped (they are counted either way).
        license: the card's licence id (Hub vocabulary: mit, cc-by-4.0, ...).
        repo_id: the Hub id in the card's examples and citation; None leaves ORG/NAME and
            a paragraph saying so (`publish_dataset` writes the id in before uploading).
        card_template: the Jinja2 card template (default: the repository's dataset_card.md).
        configs: the configurations to write (default all: default, unseen_templates,
            tutorial, families, scenarios); unseen_templates repeats default's audio, so
            leaving it out halves the size of a dataset of base programs (the card states
            its size and how to rebuild its splits from default).
        progress: show a tqdm bar (clips/s).
        tutorial_dirs: renders folders of programs expanded from templates lifted from
            Sonic Pi's tutorial (`sonicpi-gen templatize`); their base programs make the
            `tutorial` configuration (whole templates held out), and the card says where
            they come from and under what licence (the tutorial's, CC BY-SA 4.0).
    """
    started = time.monotonic()
    in_dirs = [Path(d) for d in ([in_dirs] if isinstance(in_dirs, (str, Path)) else in_dirs)]
    tutorial_dirs = [Path(d) for d in tutorial_dirs]
    if not in_dirs and not tutorial_dirs:
        raise DatasetBuildError("no renders folder given: pass at least one --in RENDERS_DIR")
    out_dir = Path(out_dir)
    _check_out(out_dir, in_dirs + tutorial_dirs)
    if max_shard_mb <= 0:
        raise DatasetBuildError(f"max_shard_mb must be positive, got {max_shard_mb}")
    tutorial_templates = frozenset()
    if tutorial_dirs:
        tutorial_templates = frozenset(r["template"] for r in read_renders(tutorial_dirs)[0])
        clash = sorted(tutorial_templates & {r["template"] for r in read_renders(in_dirs)[0]}) \
            if in_dirs else []
        if clash:
            raise DatasetBuildError(f"templates {clash} are in both --in and --tutorial-in folders; "
                                    "a template belongs to one configuration")
    manifest, statuses = read_renders(in_dirs + tutorial_dirs)
    plan = plan_rows(manifest, tuple(configs), tutorial_templates)
    rates = {s["sample_rate"] for s in statuses.values() if s["status"] == "ok"}
    features = dataset_features(rates.pop() if len(rates) == 1 else None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    writers: dict[tuple[str, str], _SplitWriter] = {}
    try:
        splits, reasons, included = _write_shards(plan, statuses, features.arrow_schema, tmp,
                                                  max_shard_mb * MB, drop_clipped, writers, progress)
        if not included:
            raise DatasetBuildError(f"no usable clip in {[str(d) for d in in_dirs]}: of "
                                    f"{len({p['id'] for p, _ in plan})} programs, left out "
                                    f"{dict(Counter(reasons.values()))}; render them first "
                                    "(`sonicpi-gen render`)")
        stats = dataset_stats(plan, reasons, included, splits, drop_clipped)
        settings = {"max_shard_mb": max_shard_mb, "drop_clipped": drop_clipped, "license": license,
                    "repo_id": repo_id, "configs": list(configs), "split_cuts": list(SPLIT_CUTS),
                    "held_out_fraction": HELD_OUT_FRACTION,
                    "tutorial_inputs": [str(d.resolve()) for d in tutorial_dirs],
                    "render_checks": render_checks(in_dirs + tutorial_dirs)}
        write_card(tmp / "README.md", card_context(stats, features, splits, settings),
                   card_template or CARD_TEMPLATE)
        wall_s = time.monotonic() - started
        write_provenance(tmp, make_provenance(
            "dataset", COMMAND, settings, [d.resolve() for d in in_dirs + tutorial_dirs],
            stats["versions"]["sonic_pi"], statistics=stats, wall_s=round(wall_s, 3)))
        files = [out_dir / p.relative_to(tmp) for v in splits.values() for p in v["files"]]
        replace_dir(tmp, out_dir)
    finally:
        for writer in writers.values():  # an error mid-build: release the open files
            writer._close_shard()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = defaultdict(dict)
    for (config, split), info in splits.items():
        rows[config][split] = info["num_examples"]
    return DatasetSummary(out_dir, dict(rows), len(included), stats["n_programs"],
                          stats["left_out"], stats["clipped"]["count"], files, wall_s)


def _write_shards(plan, statuses, schema, tmp, max_shard_bytes, drop_clipped, writers, progress):
    """Stream the plan into shards under tmp/data/. Returns ({(config, split): sizes},
    {id: why left out}, {id: status of an included clip})."""
    from tqdm import tqdm

    splits, reasons, included = {}, {}, {}
    phase = None
    for program, targets in tqdm(plan, unit="clip", disable=not progress, dynamic_ncols=True):
        if targets[0][0] != phase:  # base programs, families, scenarios: close finished writers
            for key in list(writers):
                splits[key] = writers.pop(key).close()
            phase = targets[0][0]
        id_ = program["id"]
        if id_ in reasons:
            continue
        status = statuses.get(id_)
        audio = _audio_or_reason(status, drop_clipped)
        if isinstance(audio, str):
            reasons[id_] = audio
            continue
        included[id_] = status
        size = len(audio) + len(program["code"]) + len(program["params"]) \
            + len(program["prompt"] or "") + ROW_OVERHEAD_BYTES
        for config, split in targets:
            if (config, split) not in writers:
                folder = tmp / "data" / config
                folder.mkdir(parents=True, exist_ok=True)
                writers[config, split] = _SplitWriter(folder, split, schema, max_shard_bytes)
            writers[config, split].add(dataset_row(program, status, audio, split, status["_toolkit"]), size)
    for key in list(writers):
        splits[key] = writers.pop(key).close()
    order = {(c, s): i for i, (c, s) in enumerate((c, s) for c in CONFIGS for s in SPLITS)}
    return dict(sorted(splits.items(), key=lambda kv: order[kv[0]])), reasons, included


# --- statistics and card ---------------------------------------------------------------------

def dataset_stats(plan, reasons: dict, included: dict, splits: dict, drop_clipped: bool) -> dict:
    """The card's numbers (JSON-able): rows, left-out counts, durations, versions, templates."""
    rows = defaultdict(dict)
    for (config, split), info in splits.items():
        rows[config][split] = info["num_examples"]
    per_template = defaultdict(Counter)
    template_of, held_out = {}, {"validation": set(), "test": set()}
    tutorial = {"train": set(), "validation": set(), "test": set()}
    for program, targets in plan:
        template_of[program["id"]] = program["template"]
        per_template[program["template"]]  # every template gets a line, even with no rows
        for config, split in targets:
            if config == "unseen_templates" and split != "train":
                held_out[split].add(program["template"])
            if config == "tutorial":
                tutorial[split].add(program["template"])
            if program["id"] not in included:
                continue
            if config in ("default", "tutorial"):
                per_template[program["template"]][split] += 1
            elif config in ("families", "scenarios"):
                per_template[program["template"]][config] += 1
    left_by_template = Counter(template_of[id_] for id_ in reasons)
    columns = [s for s in SPLITS if ("default", s) in splits or ("tutorial", s) in splits]
    columns += [c for c in ("families", "scenarios") if (c, EVAL_SPLIT) in splits]
    durations = [s["duration_s"] for s in included.values()]
    clipped = sum(bool(s.get("clipped")) for s in included.values()) \
        + sum(r == "clipped" for r in reasons.values())
    clips = included.values()  # one status row per distinct clip; the rows copy these columns
    common = Counter((s["bpm"], s["bars"]) for s in clips).most_common(1)[0][0]
    return {
        "n_programs": len(template_of), "n_clips": len(included),
        "n_rows": sum(info["num_examples"] for info in splits.values()),
        "rows": dict(rows), "n_left_out": len(reasons),
        "left_out": dict(sorted(Counter(reasons.values()).items(), key=lambda kv: (-kv[1], kv[0]))),
        "clipped": {"count": clipped, "dropped": drop_clipped},
        "durations": {"min_s": min(durations), "mean_s": sum(durations) / len(durations),
                      "max_s": max(durations), "total_h": sum(durations) / 3600},
        "versions": {key: dict(sorted(Counter(s[col] for s in included.values()).items()))
                     for key, col in (("sonic_pi", "sonic_pi_version"), ("toolkit", "_toolkit"))},
        "bpm": common[0], "bars": common[1],
        "tempo": {key: _counts(s.get(key) for s in clips) for key in ("bpm", "bars", "acceleration", "attempts")},
        "held_out": {split: sorted(names) for split, names in held_out.items()},
        "tutorial_templates": {split: sorted(names) for split, names in tutorial.items()},
        "template_columns": columns,
        "templates": [{"name": t, "counts": {c: per_template[t][c] for c in columns},
                       "left_out": left_by_template[t]} for t in sorted(per_template)],
    }


def _counts(values) -> dict:
    """{value: clips}, sorted by value; a missing value (an old renders folder) is "unknown"."""
    counts = Counter("unknown" if v is None else v for v in values)
    return dict(sorted(counts.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def size_category(n: int) -> str:
    """The Hub's size_categories label for n examples."""
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "10M<n<100M")


def card_front_matter(features, splits: dict, license: str, n_examples: int) -> str:
    """The card's YAML: licence, task categories, size, configs with data_files per split,
    and dataset_info (features, split sizes), written with datasets' own card helpers."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    configs = [c for c in CONFIGS if any(key[0] == c for key in splits)]
    licenses = [license]
    if "tutorial" in configs and license != TUTORIAL_LICENSE_ID:  # its rows carry the tutorial's
        licenses.append(TUTORIAL_LICENSE_ID)
    card = DatasetCardData(license=licenses if len(licenses) > 1 else license,
                           task_categories=TASK_CATEGORIES, tags=TAGS,
                           size_categories=[size_category(n_examples)], pretty_name=PRETTY_NAME)
    MetadataConfigs({c: {"data_files": [{"split": s, "path": f"data/{c}/{s}-*"}
                                        for (cc, s) in splits if cc == c],
                         **({"default": True} if c == configs[0] else {})}
                     for c in configs}).to_dataset_card_data(card)
    infos = {}
    for config in configs:
        split_dict = SplitDict()
        for (c, split), info in splits.items():
            if c == config:
                split_dict.add(SplitInfo(split, info["num_bytes"], info["num_examples"]))
        infos[config] = DatasetInfo(
            features=features, splits=split_dict,
            download_size=sum(i["download_size"] for (c, _), i in splits.items() if c == config),
            dataset_size=sum(i["num_bytes"] for (c, _), i in splits.items() if c == config))
    DatasetInfosDict(infos).to_dataset_card_data(card)
    return card.to_yaml() + "\n"


def card_context(stats: dict, features, splits: dict, settings: dict) -> dict:
    """Everything the card template (dataset_card.md) may use."""
    configs = []
    for config in CONFIGS:
        counts = {s: info["num_examples"] for (c, s), info in splits.items() if c == config}
        if counts:
            size = sum(info["download_size"] for (c, _), info in splits.items() if c == config)
            configs.append({"name": config, "description": CONFIG_DESCRIPTIONS[config],
                            "splits": counts, "mb": size / MB})
    total_mb = sum(c["mb"] for c in configs)
    repo_id = settings["repo_id"] or REPO_ID_PLACEHOLDER
    return {
        **stats,
        "front_matter": card_front_matter(features, splits, settings["license"], stats["n_clips"]),
        "pretty_name": PRETTY_NAME, "configs": configs,
        "config_names": [c["name"] for c in configs],
        "config_mb": {c["name"]: c["mb"] for c in configs}, "total_mb": total_mb,
        "configs_but_unseen": ",".join(c["name"] for c in configs if c["name"] != "unseen_templates"),
        "bpm_text": _tempo_text(stats["tempo"]["bpm"], stats["tempo"]["bars"]),
        "acceleration_text": _acceleration_text(stats["tempo"]["acceleration"]),
        "clip_text": _clip_text(stats["durations"]),
        "cuts": [round(100 * c) for c in SPLIT_CUTS],
        "held_out_percent": round(100 * HELD_OUT_FRACTION),
        "status_reasons": LEFT_OUT_REASONS, "license": settings["license"],
        "tutorial_license": TUTORIAL_LICENSE,
        "repo_id": repo_id, "repo_id_known": bool(settings["repo_id"]),
        "repo_id_placeholder": REPO_ID_PLACEHOLDER,
        "bibtex_key": "".join(ch if ch.isalnum() else "_" for ch in repo_id.split("/")[-1]).strip("_").lower()
        if settings["repo_id"] else "sonicpi_code_audio",
        "render": {"clip_s": stats["durations"]["max_s"], "checks": settings["render_checks"]},
        "build": {"tool_version": __version__, "max_shard_mb": settings["max_shard_mb"]},
    }


def _tempo_text(bpm: dict, bars: dict) -> str:
    """The tempos and clip lengths in bars of the clips, most common first, in words."""
    def spread(counts: dict, unit: str) -> str:
        known = {v: n for v, n in counts.items() if v != "unknown"}
        if not known:
            return f"{unit} not recorded"
        top = max(known, key=lambda v: (known[v], -v))
        if len(known) == 1:
            return f"{top:g} {unit}"
        rest = sorted(v for v in known if v != top)
        others = f"{rest[0]:g}" if len(rest) == 1 else f"{rest[0]:g}-{rest[-1]:g}"
        n_others = sum(known.values()) - known[top]
        return f"{top:g} {unit} for {known[top]} clips, {others} for the other {n_others}"
    return f"{spread(bpm, 'BPM')}; {spread(bars, 'bars of 4/4')}"


def _acceleration_text(factors: dict) -> str:
    """How fast the clips were rendered, in words: "all 38 clips on a clock accelerated x8"."""
    known = {f: n for f, n in factors.items() if f != "unknown"}
    if not known:
        return "at a clock factor not recorded"
    total, top = sum(factors.values()), max(known, key=lambda f: (known[f], f))
    where = "in real time" if top == 1 else f"on a clock accelerated x{top:g}"
    if known[top] == total:
        return f"all {total} clips {where}"
    return f"{known[top]} of {total} clips {where}, the others at other factors"


def _clip_text(durations: dict) -> str:
    if durations["min_s"] == durations["max_s"]:
        return f"{durations['min_s']:g}-second stereo"
    return f"{durations['min_s']:g}- to {durations['max_s']:g}-second stereo"


def write_card(path: Path, context: dict, template: Path = CARD_TEMPLATE) -> None:
    """Render the Jinja2 card template with `context` into path."""
    import jinja2

    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"dataset card template {template} not found; pass card_template= "
                                "(--card-template) pointing at a copy of the repository's dataset_card.md")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    Path(path).write_text(env.get_template(template.name).render(**context))


# --- the output folder -----------------------------------------------------------------------

def _is_dataset_dir(path: Path) -> bool:
    stage = read_provenance(path).get("stage")
    if stage is not None:
        return stage == "dataset"
    return (path / "README.md").is_file() and (path / "data").is_dir()


def _check_out(out_dir: Path, in_dirs: list[Path]) -> None:
    out = out_dir.resolve()
    for in_dir in in_dirs:
        source = in_dir.resolve()
        if out == source or out in source.parents:
            raise DatasetBuildError(f"--out {out_dir} would replace the renders folder {in_dir}; "
                                    "choose an --out outside the renders folders")
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_dataset_dir(out_dir):
        raise DatasetBuildError(f"{out_dir} exists and is not a dataset folder (no README.md and "
                                "data/); choose another --out or empty it")


# --- reading (no torchcodec) -----------------------------------------------------------------

def load_local(dataset_dir: Path, config: str = "default", split: str = "train",
               streaming: bool = False, cache_dir: Path | None = None):
    """One split of a local dataset folder through datasets' Parquet reader, the audio
    column left undecoded ({"bytes", "path"}: decode with decode_audio).

    Returns a datasets.Dataset (converted once into datasets' memory-mapped cache, in
    cache_dir or the default cache) or, with streaming, an IterableDataset that reads
    the shards as it goes.
    """
    import datasets

    files = shard_files(dataset_dir, config, split)
    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    features["audio"] = datasets.Audio(sampling_rate=features["audio"].sampling_rate, decode=False)
    return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split,
                                 features=features, streaming=streaming,
                                 cache_dir=str(cache_dir) if cache_dir else None)
