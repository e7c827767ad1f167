"""Benchmark `align sweep`: the full 24-configuration grid x 5 seeds on 13,500 pairs of
768-d embeddings (synthetic, as in align.synthetic, unless --embeddings is given).

    .venv/bin/python bench/bench_align_sweep.py                      # synthetic, 2 workers
    .venv/bin/python bench/bench_align_sweep.py --embeddings embeddings/X__Y --workers 1

Prints wall time, time per run (configuration x seed), epochs per run and the load
average before and after, since other processes on the machine slow it down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.sweep import GRID, N_SEEDS, RESULTS_JSONL, SWEEP_CONFIG, run_sweep  # noqa: E402
from align.synthetic import write_synthetic_embeddings  # noqa: E402


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", type=Path, default=None, help="embeddings folder (default: synthetic)")
    ap.add_argument("--out", type=Path, default=None, help="sweep folder (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2 = this CPU's cores)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    ap.add_argument("--seeds", type=int, default=N_SEEDS)
    ap.add_argument("--grid", default=None, help="JSON grid (default: the 24-configuration GRID)")
    ap.add_argument("--per-template", type=int, default=500, help="synthetic: pairs per template (27 templates)")
    ap.add_argument("--dim", type=int, default=768, help="synthetic: embedding size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench_align_"))
    emb = args.embeddings
    if emb is None:
        emb = write_synthetic_embeddings(work / "embeddings", per_template=args.per_template, dim=args.dim, seed=0)
    out = args.out or work / "sweep"
    grid = json.loads(args.grid) if args.grid else GRID
    load0 = os.getloadavg()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    results = run_sweep(emb, out, grid=grid, seeds=args.seeds, device=args.device, workers=args.workers, threads=args.threads)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    cpu = _cpu_seconds() - cpu0
    info = json.loads((out / SWEEP_CONFIG).read_text())
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r["epochs_run"] for r in runs]
    best = [r for r in (json.loads(x) for x in (out / RESULTS_JSONL).read_text().splitlines()) if r["best"]][0]
    n_runs = len(results) * args.seeds
    print(f"embeddings: {emb} split sizes {info['split_sizes']}")
    print(f"grid: {len(results)} configurations x {args.seeds} seeds = {n_runs} runs; workers {info['workers']}, torch threads per worker {info['threads'] or 'default'}")
    print(f"wall time: {wall:.1f} s ({wall / 60:.2f} min) incl. reading; {wall / n_runs:.2f} s per run")
    print(f"epochs per run: mean {sum(epochs) / len(epochs):.1f}, min {min(epochs)}, max {max(epochs)}")
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; cores {os.cpu_count()}")
    print(f"CPU time of this process and its workers: {cpu:.0f} s = {cpu / (os.cpu_count() or 1):.0f} s "
          f"of wall time on {os.cpu_count()} otherwise idle cores")
    print(f"raw test CKA {info['raw_test']['cka']:.3f}; best config {best['key']}: "
          f"test CKA {best['test_cka']['mean']:.3f} ± {best['test_cka']['std']:.3f}, "
          f"CCA {best['test_cca']['mean']:.3f}, 10-NN Jaccard {best['test_knn10_jaccard']['mean']:.3f}")
    print(f"results: {out / 'results.md'}")


if __name__ == "__main__":
    main()
