"""Real time vs accelerated rendering on the same programs: speed and fidelity.

    .venv/bin/python bench/bench_render.py [--programs 54] [--metronomes 6] [--offset 0]
        [--workers N] [--acceleration auto|X] [--spread 4] [--spread-renders 3] [--out DIR]

Renders template programs (indices from --offset, so runs with different offsets cover
other programs; 54 = two of each template) plus --metronomes copies of a metronome
(each its own file, so each is rendered, spread through the batch):
  1. in real time on 1 worker,
  2. accelerated with the default settings (or the given ones),
  3. the first --spread programs again in real time, --spread-renders times in all, for
     the spread between real-time renders.
Prints audio-seconds per wall-second for both (whole runs, server boots included), their
ratio, the accelerated run's pace once its servers were up, the worst onset error over
all metronomes of the accelerated run (rendered among the other programs, under the
full load), and per program the accelerated-vs-realtime
spectrum and envelope similarity next to the realtime-vs-realtime spread.
Targets (issue 3): >= 30x real time in aggregate on the 2-core machine, onset error
< 5 ms, accelerated-vs-realtime within the realtime spread.

Real pieces are not repeatable, even in real time: scsynth's random generators are
seeded anew at every boot, and a piece that chooses among a few voicings may land on
the same one in two renders or not. Over 12 real-time and 6 accelerated renders of
ambient_experiment-0 kept from six benches, envelope correlations ranged 0.71-1.00
(mean 0.839) between real-time renders and 0.72-1.00 (mean 0.838) between accelerated
and real-time ones: one pair of real-time renders says little about the spread. So
a program is "within" when its accelerated render's mean similarity to the real-time
renders is at least the lowest similarity between two of them, less a tolerance
(spectrum 0.01, envelope 0.05, as in renderer.fidelity).
"""

import argparse
import contextlib
import fcntl
import itertools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from renderer.fidelity import (ENVELOPE_TOLERANCE, METRONOME, SPECTRUM_TOLERANCE,
                               envelope_correlation, grid_error, onset_times,
                               resolve_acceleration, spectrum_similarity)
from renderer.render import DEFAULT_WORKERS, RenderSettings, render_programs
from sonicpi_gen.expand import expand_templates
from sonicpi_gen.grammar import list_templates


def make_programs(folder: Path, count: int, offset: int, metronomes: int) -> list[tuple[str, str]]:
    """(name, code) of `count` template programs and the metronomes, as plain .rb files
    whose names interleave them."""
    templates = list_templates()
    per_template = offset + -(-count // len(templates))
    programs = expand_templates(folder / "expanded", n=per_template, seed=0)
    chosen = [p for p in programs if p.index >= offset]
    chosen.sort(key=lambda p: (p.index, p.template))
    picked = [(f"{p.template}-{p.index}", p.code) for p in chosen[:count]]
    step = max(1, len(picked) // max(metronomes, 1))
    for m in range(metronomes):
        # a comment makes each copy a program of its own (ids are hashes of the text)
        picked.insert(m * (step + 1), (f"metronome-{m}", f"# metronome {m}\n{METRONOME}"))
    plain = folder / "plain"
    plain.mkdir(parents=True)
    for order, (name, code) in enumerate(picked):
        (plain / f"{order:03d}-{name}.rb").write_text(code)
    return [(f"{order:03d}-{name}", code) for order, (name, code) in enumerate(picked)]


@contextlib.contextmanager
def quiet(lock_path: Path | None):
    """Hold an exclusive flock on `lock_path` (if given) for the block."""
    if lock_path is None:
        yield
        return
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def timed_render(programs: Path, out: Path, workers: int, acceleration) -> tuple[float, dict, float]:
    """Wall seconds of the whole run, status rows by source, and seconds until the first
    clip was written (the servers' boot)."""
    started = time.perf_counter()
    first = []
    watcher = threading.Thread(target=_first_clip, args=(out, started, first), daemon=True)
    watcher.start()
    render_programs(programs, out, RenderSettings(workers=workers, acceleration=acceleration), progress=True)
    wall = time.perf_counter() - started
    rows = {r["source"]: r for r in pq.read_table(out / "status.parquet").to_pylist()}
    return wall, rows, first[0] if first else wall


def _first_clip(out: Path, started: float, first: list) -> None:
    journal = out / "status.jsonl"
    while not (journal.exists() and journal.stat().st_size):
        time.sleep(0.05)
    first.append(time.perf_counter() - started)


def audio(out: Path, row: dict) -> np.ndarray | None:
    return sf.read(out / row["path"], dtype="int16")[0] if row and row["status"] == "ok" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=54)
    parser.add_argument("--metronomes", type=int, default=6)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--acceleration", default="auto")
    parser.add_argument("--spread", type=int, default=4, help="programs rendered again in real time")
    parser.add_argument("--spread-renders", type=int, default=3,
                        help="real-time renders of each of those programs, the first pass included")
    parser.add_argument("--out", type=Path, default=None, help="keep renders here (default: temp)")
    parser.add_argument("--quiet-lock", type=Path, default=None,
                        help="on a shared machine: a lock file (flock) the other heavy jobs take, held "
                             "during the calibration and the accelerated render, whose figures "
                             "a busy CPU would change; the real-time renders do not need it")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-render-"))
    programs = make_programs(root / "programs", args.programs, args.offset, args.metronomes)
    plain = root / "programs" / "plain"
    audio_s = 18.0 * len(programs)

    rt_wall, rt, _ = timed_render(plain, root / "realtime", 1, 1.0)
    with quiet(args.quiet_lock):
        # "auto" calibrates once per machine (cached): done before the clock starts
        factor = resolve_acceleration(args.acceleration, root / "calibration")
        fast_wall, fast, fast_boot = timed_render(plain, root / "accelerated", args.workers, factor)
    spread_dir = root / "programs" / "spread"
    spread_dir.mkdir()
    for name, _ in [p for p in programs if "metronome" not in p[0]][: args.spread]:
        shutil.copy(plain / f"{name}.rb", spread_dir / f"{name}.rb")
    again = [timed_render(spread_dir, root / f"realtime{k}", 1, 1.0)[1]
             for k in range(2, args.spread_renders + 1)] if args.spread else []

    factors = sorted({r["acceleration"] for r in fast.values()})
    metronomes = [name for name, _ in programs if "metronome" in name]
    print(f"\nprograms: {len(programs)} ({len(programs) - len(metronomes)} from templates, offset "
          f"{args.offset}, + {len(metronomes)} metronomes)")
    print(f"real time, 1 worker : {audio_s / rt_wall:6.2f} audio-s per wall-s ({rt_wall:.1f} s wall)")
    print(f"accelerated, {args.workers} workers, factor {factors}: "
          f"{audio_s / fast_wall:6.2f} audio-s per wall-s ({fast_wall:.1f} s wall, boots included)")
    print(f"speed-up over real time: {rt_wall / fast_wall:.1f}x")
    print(f"accelerated, once the servers were up ({fast_boot:.1f} s to the first clip): "
          f"{(audio_s - 18.0) / (fast_wall - fast_boot):6.2f} audio-s per wall-s")
    statuses = {}
    for r in fast.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"accelerated status: {statuses}; retried clips: {sum(r['attempts'] > 1 for r in fast.values())}")
    errors = []
    for name in metronomes:
        metro = audio(root / "accelerated", fast.get(f"{name}.rb"))
        if metro is not None:
            onsets = onset_times(metro)
            ok = int(np.sum(onsets < 17.995)) == 36
            errors.append(grid_error(onsets) if ok else float("inf"))
    if errors:
        print(f"metronome worst onset error (accelerated, {len(errors)} renders under load): "
              f"{max(errors) * 1000:.2f} ms; all: {sorted(round(e * 1000, 2) for e in errors)}")
    rt_errors = [grid_error(onset_times(a)) for a in
                 (audio(root / "realtime", rt.get(f"{name}.rb")) for name in metronomes) if a is not None]
    if rt_errors:
        print(f"metronome worst onset error (real time):   {max(rt_errors) * 1000:.2f} ms")

    print("\nprogram                      spec acc-vs-rt  spec rt-vs-rt  env acc-vs-rt  env rt-vs-rt  within")
    print("(with several real-time renders: acc-vs-rt is the mean over them, rt-vs-rt the lowest..highest pair)")
    results = []
    for name, _ in programs:
        source = f"{name}.rb"
        a, r1 = audio(root / "accelerated", fast.get(source)), audio(root / "realtime", rt.get(source))
        if a is None or r1 is None:
            print(f"{name:28s} not comparable (status {fast.get(source, {}).get('status')} / {rt.get(source, {}).get('status')})")
            continue
        realtimes = [r1] + [r for r in (audio(root / f"realtime{k}", rows.get(source))
                                        for k, rows in enumerate(again, 2)) if r is not None]
        row = {"program": name,
               "spec_acc": float(np.mean([spectrum_similarity(a, r) for r in realtimes])),
               "env_acc": float(np.mean([envelope_correlation(a, r) for r in realtimes]))}
        if len(realtimes) > 1:
            pairs = list(itertools.combinations(realtimes, 2))
            row.update(spec_rt=[spectrum_similarity(x, y) for x, y in pairs],
                       env_rt=[envelope_correlation(x, y) for x, y in pairs])
            row["within"] = (row["spec_acc"] >= min(row["spec_rt"]) - SPECTRUM_TOLERANCE
                             and row["env_acc"] >= min(row["env_rt"]) - ENVELOPE_TOLERANCE)
        results.append(row)
        fmt = lambda k: (f"{row[k]:.4f}" if isinstance(row[k], float) else
                         f"{min(row[k]):.4f}..{max(row[k]):.4f}") if k in row else "   -  "
        print(f"{name:28s} {fmt('spec_acc'):>14s} {fmt('spec_rt'):>14s} {fmt('env_acc'):>14s} "
              f"{fmt('env_rt'):>13s}  {row.get('within', '-')}")
    print(f"\nmean spectrum similarity acc-vs-rt: {np.mean([r['spec_acc'] for r in results]):.4f}; "
          f"mean envelope correlation acc-vs-rt: {np.mean([r['env_acc'] for r in results]):.4f}")
    spread = [r for r in results if "spec_rt" in r]
    if spread:
        print(f"on the {len(spread)} programs rendered {args.spread_renders} times in real time: "
              f"rt-vs-rt envelope {np.mean([np.mean(r['env_rt']) for r in spread]):.4f} (mean of "
              f"all pairs), acc-vs-rt envelope {np.mean([r['env_acc'] for r in spread]):.4f}; "
              f"within spread: {sum(r['within'] for r in spread)}/{len(spread)}")
    (root / "bench_render.json").write_text(json.dumps(
        {"realtime_wall_s": rt_wall, "accelerated_wall_s": fast_wall, "accelerated_boot_s": fast_boot,
         "audio_s": audio_s, "workers": args.workers, "factors": factors,
         "metronome_errors_s": errors, "results": results}, indent=1))
    print(f"renders kept in {root}" if args.out else "")
    if not args.out:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
