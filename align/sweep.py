"""Hyper-parameter sweep: a grid of aligner settings x seeds, mean and spread per setting.

The study ran 24 configurations x 5 runs but did not publish the grid. Ours (GRID) spans
the study's defaults along the four settings that matter most for a contrastive
aligner of this size:

    layers      {2, 5}              depth (5 is the study's; 2 = one hidden block)
    hidden      {128, 256}          width (256 is the study's)
    tau         {0.05, 0.1, 0.2}    temperature (0.1 is the study's)
    batch_size  {64, 256}           negatives per step (64 is the study's)

= 2 x 2 x 3 x 2 = 24 configurations; everything else is TrainConfig's default (the
symmetric loss; ``--grid '{"loss": ["symmetric", "code_to_audio"]}'`` compares the
authors' one direction) except the sweep's epoch budget (SWEEP_DEFAULTS). The best
configuration is chosen by mean *validation* linear CKA, never by test numbers; test
metrics are reported for all.

Speed: each configuration trains its seeds together (align.train.fit_seeds stacks them),
tensors stay in memory, stopped seeds leave the stack, the costliest configurations
start first, and configurations run in ``workers`` processes with one torch thread each
(on a 2-core CPU two single-threaded workers beat one two-threaded process for matrices
this small).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from align import __version__
from align.config import DEFAULT_DEVICE
from align.data import PairedSplits, read_embeddings, select_splits
from sonicpi_gen.folders import replace_dir, write_atomically

logger = logging.getLogger(__name__)

GRID: dict[str, list] = {
    "layers": [2, 5],
    "hidden": [128, 256],
    "tau": [0.05, 0.1, 0.2],
    "batch_size": [64, 256],
}
N_SEEDS = 5
# The sweep's epoch budget. 120 runs in 10 minutes on a 2-core CPU leave ~5 s per run:
# 10 epochs of 10,800 pairs (12 took 516 s of idle-machine time for the grid, 10.4 min
# beside other jobs). The cosine schedule anneals over max_epochs, so a short run still
# ends at a low learning rate. On a GPU use --set max_epochs=100 --set patience=10.
SWEEP_DEFAULTS = {"max_epochs": 10, "patience": 4}
SELECT_BY = "val_cka"  # validation metric that picks the best configuration
RESULTS_JSONL = "results.jsonl"
RESULTS_MD = "results.md"
RUNS_JSONL = "runs.jsonl"
SWEEP_CONFIG = "sweep.json"
BEST_DIR = "best"
CONFIGS_DIR = "configs"  # configs/<key>/: each configuration's best seed, kept for best/
TABLE_METRICS = ("cka", "cka_debiased", "cca", "knn10_jaccard", "knn10_overlap", "dist_spearman")


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Cartesian product of the grid's axes, in a fixed order (first axis slowest)."""
    if not grid:
        return [{}]
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid axis {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def estimated_cost(settings: dict, base: dict, in_dim: int = 768) -> float:
    """Relative training cost of a configuration: multiply-adds per pair per epoch, plus
    a per-step overhead that small batches pay more often. Only orders the work."""
    from align.train import TrainConfig

    cfg = TrainConfig().replace(**{**base, **settings})
    dims = [in_dim] + [cfg.hidden] * (cfg.layers - 1) + [cfg.out]
    flops = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return cfg.max_epochs * flops * (1.0 + 16.0 / cfg.batch_size)


def config_key(settings: dict) -> str:
    """Deterministic name of one configuration ("hidden=256,layers=5,...")."""
    return ",".join(f"{k}={settings[k]}" for k in sorted(settings))


_WORKER: dict = {}  # per-process data and settings, set once by _init_worker


def _init_worker(data: PairedSplits, base: dict, seeds: list[int], device, threads) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    _WORKER.update(data=data, base=base, seeds=seeds, device=device)


def _run_config(settings: dict) -> list[dict]:
    """Train one configuration for all seeds, score val and test (in a worker or here)."""
    from align import metrics
    from align.evaluate import evaluate_pairs
    from align.train import TrainConfig, build_aligner, embed_pairs, fit_seeds

    data, base, seeds, device = (_WORKER[k] for k in ("data", "base", "seeds", "device"))
    cfg = TrainConfig(**{**base, **settings}).validate()
    t0 = time.perf_counter()
    results = fit_seeds(cfg, data, seeds, device=device)
    train_s = time.perf_counter() - t0
    rows = []
    for res in results:
        model = build_aligner(cfg, data.code_dim, data.audio_dim, res.state_dict)
        vc, va = embed_pairs(model, *data.validation)
        tc, ta = embed_pairs(model, *data.test)
        rows.append(
            {
                "key": config_key(settings),
                "settings": settings,
                "seed": res.seed,
                "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
                "best_val_loss": res.best_val_loss,
                "val_cka": metrics.linear_cka(vc, va),
                "test": evaluate_pairs(tc, ta),
                "train_seconds": round(train_s, 2),
                "state_dict": res.state_dict,
            }
        )
    return rows


def _torch_threads(n: int | None = None) -> int:
    """Get torch's thread count, setting it first when n is given."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _summarise(key: str, settings: dict, runs: list[dict]) -> dict:
    out = {"key": key, "settings": settings, "n_seeds": len(runs)}
    for name in ("val_cka", "best_epoch", "epochs_run"):
        vals = np.array([r[name] for r in runs], dtype=float)
        out[name] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    for name in runs[0]["test"]:
        vals = np.array([r["test"][name] for r in runs], dtype=float)
        out[f"test_{name}"] = {
            "mean": float(np.nanmean(vals)),
            "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "min": float(np.nanmin(vals)),
            "max": float(np.nanmax(vals)),
        }
    out["train_seconds"] = runs[0]["train_seconds"]
    return out


def results_markdown(results: list[dict], raw: dict | None = None, best_key: str | None = None) -> str:
    """The sweep table: one row per configuration, test metrics as mean +- std over seeds."""
    if not results:
        return "_no sweep results_\n"
    axes = sorted({k for r in results for k in r["settings"]})
    head = ["#"] + axes + ["seeds", "epochs", "val CKA"] + [f"test {m}" for m in TABLE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if raw:
        cells = ["raw"] + ["" for _ in axes] + ["", "", ""] + [f"{raw.get(m, float('nan')):.3f}" for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    for i, r in enumerate(results, 1):
        mark = f"{i} (best)" if r["key"] == best_key else str(i)
        cells = [mark] + [str(r["settings"].get(a, "")) for a in axes]
        cells += [str(r["n_seeds"]), f"{r['epochs_run']['mean']:.1f}", f"{r['val_cka']['mean']:.3f}"]
        for m in TABLE_METRICS:
            s = r.get(f"test_{m}")
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_config_best(out: Path, base: dict, rows: list[dict], data: PairedSplits, source: dict) -> Path:
    """Write configs/<key>/checkpoint.pt + config.json: the seed with the best validation
    CKA of one configuration's rows (each still holding its state_dict)."""
    from align.train import SeedResult, TrainConfig, save_checkpoint

    top = max(rows, key=lambda r: r[SELECT_BY])
    cfg = TrainConfig().replace(**{**base, **top["settings"], "seed": top["seed"]})
    res = SeedResult(top["seed"], top["state_dict"], top["best_epoch"], top["best_val_loss"], top["epochs_run"])
    folder = out / CONFIGS_DIR / top["key"]
    tmp = out / CONFIGS_DIR / f".{top['key']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(tmp / "checkpoint.pt", cfg, res, data.code_dim, data.audio_dim, source)
    meta = {"settings": cfg.to_dict(), "key": top["key"], "seed": top["seed"], "selected_by": SELECT_BY,
            SELECT_BY: top[SELECT_BY], "best_epoch": top["best_epoch"], "best_val_loss": top["best_val_loss"],
            "seeds": [r["seed"] for r in rows], "embeddings": source.get("path"), "version": __version__}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    replace_dir(tmp, folder)
    return folder


def _write_atomic(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def run_sweep(
    embeddings: str | Path,
    out: str | Path,
    grid: dict[str, list] | None = None,
    seeds: int | list[int] = N_SEEDS,
    base: dict | None = None,
    device: str | None = DEFAULT_DEVICE,
    workers: int = 0,
    threads: int | None = None,
    data: PairedSplits | None = None,
) -> list[dict]:
    """Train every grid configuration for every seed and write the results table.

    Args:
        embeddings: embeddings folder (read unless ``data`` is given).
        out: sweep folder: runs.jsonl (one line per configuration x seed, appended as
            they finish, so a rerun skips finished configurations), results.jsonl and
            results.md (mean and spread per configuration), sweep.json (grid, settings,
            timing), best/ (checkpoint of the best configuration's best seed, both
            chosen by validation CKA; always written), configs/<key>/ (each
            configuration's best seed, so a resumed sweep can still write best/).
        grid: axis -> values (GRID when None).
        seeds: number of seeds (0..n-1) or an explicit list (default 5).
        base: TrainConfig settings shared by every configuration (after SWEEP_DEFAULTS).
        device: "cpu", "cuda" or "auto".
        workers: processes for configurations (0: in this process).
        threads: torch threads per process (1 when workers > 1, torch's default otherwise).
        data: ready splits (skips reading; for benchmarks and tests).
    Returns:
        The per-configuration summaries (also in results.jsonl).
    """
    from align.evaluate import evaluate_pairs

    grid = GRID if grid is None else grid
    seed_list, base, configs = plan_sweep(grid, seeds, base)
    source = {}
    if data is None:
        table = read_embeddings(embeddings)
        data = select_splits(table, base.get("config", "default"))
        source = table.source
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = read_runs(out / RUNS_JSONL)
    todo = [s for s in configs if len(done.get(config_key(s), [])) < len(seed_list)]
    for s in todo:
        done.pop(config_key(s), None)  # a configuration is redone whole, never half
    logger.info("sweep: %d configurations x %d seeds (%d to run) on %s", len(configs), len(seed_list), len(todo), data.sizes())
    if threads is None and workers > 1:
        threads = 1
    # costliest first, so two workers do not end with one idle beside a long job
    jobs = sorted(todo, key=lambda st: -estimated_cost(st, base, data.code_dim))
    started = time.perf_counter()
    init_args = (data, base, seed_list, device, threads)
    done.update(train_configurations(out, jobs, init_args, source, workers))
    wall = time.perf_counter() - started

    results = [_summarise(config_key(s), s, done[config_key(s)]) for s in configs]
    best = max(results, key=lambda r: r[SELECT_BY]["mean"])
    best_dir = write_best(out, best, init_args, source)
    write_results(out, results, best["key"], evaluate_pairs(*data.test), {
        "grid": grid,
        "seeds": seed_list,
        "base": base,
        "embeddings": source.get("path"),
        "embeddings_provenance": source.get("provenance") or {},
        "split_sizes": data.sizes(),
        "wall_seconds": round(wall, 1),
        "runs_trained": len(jobs) * len(seed_list),
        "workers": workers,
        "threads": threads,
        "device": device,
    })
    logger.info("sweep done in %.1f s; best %s -> %s", wall, best["key"], best_dir / "checkpoint.pt")
    return results


def plan_sweep(grid: dict[str, list], seeds: int | list[int], base: dict | None) -> tuple[list[int], dict, list[dict]]:
    """The sweep's seeds, shared settings (SWEEP_DEFAULTS under ``base``) and
    configurations, each checked against TrainConfig before anything trains."""
    from align.train import TrainConfig

    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("need at least one seed")
    base = {**SWEEP_DEFAULTS, **(base or {})}
    TrainConfig().replace(**base).validate()  # fail early on unknown or bad settings
    configs = expand_grid(grid)
    for settings in configs:
        TrainConfig().replace(**{**base, **settings}).validate()
    return seed_list, base, configs


def read_runs(runs_file: Path) -> dict[str, list[dict]]:
    """runs.jsonl's rows by configuration key (empty when there is no file yet)."""
    done: dict[str, list[dict]] = {}
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done.setdefault(row["key"], []).append(row)
    return done


def train_configurations(out: Path, jobs: list[dict], init_args: tuple, source: dict,
                         workers: int) -> dict[str, list[dict]]:
    """Train ``jobs`` (each one configuration, all its seeds) in ``workers`` processes
    (here when 0 or 1). Each finished configuration is appended to runs.jsonl and its
    best seed saved to configs/<key>/ as it comes, so a killed sweep resumes. Returns
    the new runs by key."""
    data, base = init_args[0], init_args[1]
    done: dict[str, list[dict]] = {}
    started = time.perf_counter()
    executor = None
    if workers > 1 and jobs:
        # spawn, not fork: a forked child of a process that already ran OpenMP can hang
        ctx = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init_args)
    else:
        saved_threads = _torch_threads()
        _init_worker(*init_args)
    try:
        if executor:  # finished configurations are logged as they come, for resuming
            results_iter = (f.result() for f in as_completed([executor.submit(_run_config, j) for j in jobs]))
        else:
            results_iter = map(_run_config, jobs)
        with open(out / RUNS_JSONL, "a") as log:
            for i, rows in enumerate(results_iter, 1):
                key = rows[0]["key"]
                # every configuration keeps its own best seed: which configuration wins
                # is known only at the end, and its best seed need not be the sweep's
                _save_config_best(out, base, rows, data, source)
                for row in rows:
                    row.pop("state_dict")
                    log.write(json.dumps(row) + "\n")
                log.flush()
                done[key] = rows
                elapsed = time.perf_counter() - started
                logger.info(
                    "[%d/%d] %s: test CKA %.3f, %.1f epochs, %.1f s (%.0f s elapsed)",
                    i, len(jobs), key, float(np.mean([r["test"]["cka"] for r in rows])),
                    float(np.mean([r["epochs_run"] for r in rows])), rows[0]["train_seconds"], elapsed,
                )
    finally:
        if executor:
            executor.shutdown()
        else:
            _WORKER.clear()
            _torch_threads(saved_threads)
    return done


def write_best(out: Path, best: dict, init_args: tuple, source: dict) -> Path:
    """Copy configs/<best key>/ to best/ (atomically), first training that configuration
    again when an earlier call finished it without keeping its weights."""
    data, base = init_args[0], init_args[1]
    best_src = out / CONFIGS_DIR / best["key"]
    if not (best_src / "checkpoint.pt").exists():
        # finished in an earlier call that kept no weights: train it again (same seeds)
        logger.info("no saved checkpoint for %s; retraining it to write %s/", best["key"], BEST_DIR)
        _init_worker(*init_args)
        try:
            _save_config_best(out, base, _run_config(best["settings"]), data, source)
        finally:
            _WORKER.clear()
    best_dir = out / BEST_DIR
    tmp_best = out / f".{BEST_DIR}.tmp"
    shutil.rmtree(tmp_best, ignore_errors=True)
    shutil.copytree(best_src, tmp_best)
    replace_dir(tmp_best, best_dir)
    return best_dir


def write_results(out: Path, results: list[dict], best_key: str, raw: dict, record: dict) -> None:
    """Write results.jsonl, results.md and sweep.json (``record`` plus the best
    configuration, its checkpoint's config.json, the raw test metrics and the version)."""
    n_seeds = len(record["seeds"])
    _write_atomic(out / RESULTS_JSONL, "".join(json.dumps({**r, "best": r["key"] == best_key}) + "\n" for r in results))
    md = (
        f"# Aligner sweep\n\n{len(results)} configurations x {n_seeds} seeds, "
        f"split sizes {record['split_sizes']}; best by mean validation CKA marked. "
        f"Test metrics: mean ± std over seeds; raw = the encoders' own spaces.\n\n"
        + results_markdown(results, raw, best_key)
    )
    _write_atomic(out / RESULTS_MD, md)
    _write_atomic(
        out / SWEEP_CONFIG,
        json.dumps(
            {
                **record,
                "best": best_key,
                "best_checkpoint": json.loads((out / BEST_DIR / "config.json").read_text()),
                "raw_test": raw,
                "version": __version__,
            },
            indent=2,
        )
        + "\n",
    )
