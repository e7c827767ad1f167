"""Real time vs accelerated rendering on the same programs: speed and fidelity.

    .venv/bin/python bench/bench_render.py [--programs 27] [--offset 0] [--workers N]
        [--acceleration auto|X] [--spread 6] [--out DIR]

Renders one program of each template (indices from --offset, so runs with different
offsets cover other programs; --programs above 27 takes more per template) plus a
metronome:
  1. in real time on 1 worker,
  2. accelerated with the default settings (or the given ones),
  3. the first --spread programs a second time in real time, for the spread between
     two real-time renders.
Prints audio-seconds per wall-second for both, their ratio, the worst onset error of
the metronome on the accelerated run, and per program the accelerated-vs-realtime
spectrum and envelope similarity next to the realtime-vs-realtime spread.
Targets (issue 3): >= 30x real time in aggregate on the 2-core machine, onset error
< 5 ms, accelerated-vs-realtime within the realtime spread.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from renderer.fidelity import METRONOME, envelope_correlation, grid_error, onset_times, spectrum_similarity
from renderer.render import DEFAULT_WORKERS, render_programs
from sonicpi_gen.expand import expand_templates, program_id
from sonicpi_gen.grammar import list_templates


def make_programs(folder: Path, count: int, offset: int) -> list[tuple[str, str]]:
    """(name, code) of `count` template programs plus the metronome, as plain .rb files."""
    templates = list_templates()
    per_template = offset + -(-count // len(templates))
    programs = expand_templates(folder / "expanded", n=per_template, seed=0)
    chosen = [p for p in programs if p.index >= offset]
    chosen.sort(key=lambda p: (p.index, p.template))
    picked = [(f"{p.template}-{p.index}", p.code) for p in chosen[:count]]
    picked.append(("metronome", METRONOME))
    plain = folder / "plain"
    plain.mkdir(parents=True)
    for name, code in picked:
        (plain / f"{name}.rb").write_text(code)
    return picked


def timed_render(programs: Path, out: Path, workers: int, acceleration) -> tuple[float, dict]:
    started = time.perf_counter()
    summary = render_programs(programs, out, workers=workers, acceleration=acceleration, progress=True)
    wall = time.perf_counter() - started
    rows = {r["source"]: r for r in pq.read_table(out / "status.parquet").to_pylist()}
    return wall, rows


def audio(out: Path, row: dict) -> np.ndarray | None:
    return sf.read(out / row["path"], dtype="int16")[0] if row and row["status"] == "ok" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=27)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--acceleration", default="auto")
    parser.add_argument("--spread", type=int, default=6, help="programs rendered twice in real time")
    parser.add_argument("--out", type=Path, default=None, help="keep renders here (default: temp)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-render-"))
    programs = make_programs(root / "programs", args.programs, args.offset)
    plain = root / "programs" / "plain"
    audio_s = 18.0 * len(programs)

    rt_wall, rt = timed_render(plain, root / "realtime", 1, 1.0)
    fast_wall, fast = timed_render(plain, root / "accelerated", args.workers, args.acceleration)
    spread_dir = root / "programs" / "spread"
    spread_dir.mkdir()
    for name, _ in programs[: args.spread]:
        shutil.copy(plain / f"{name}.rb", spread_dir / f"{name}.rb")
    _, rt2 = timed_render(spread_dir, root / "realtime2", 1, 1.0) if args.spread else (0, {})

    factors = sorted({r["acceleration"] for r in fast.values()})
    print(f"\nprograms: {len(programs)} ({len(programs) - 1} from templates, offset {args.offset}, + metronome)")
    print(f"real time, 1 worker : {audio_s / rt_wall:6.2f} audio-s per wall-s ({rt_wall:.1f} s wall)")
    print(f"accelerated, {args.workers} workers, factor {factors}: "
          f"{audio_s / fast_wall:6.2f} audio-s per wall-s ({fast_wall:.1f} s wall)")
    print(f"speed-up over real time: {rt_wall / fast_wall:.1f}x")
    statuses = {}
    for r in fast.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"accelerated status: {statuses}; retried clips: {sum(r['attempts'] > 1 for r in fast.values())}")
    metro = audio(root / "accelerated", fast.get("metronome.rb"))
    if metro is not None:
        onsets = onset_times(metro)
        print(f"metronome worst onset error (accelerated): {grid_error(onsets) * 1000:.2f} ms, "
              f"first onset at {onsets[0] * 1000:.2f} ms, {int(np.sum(onsets < 17.995))} onsets")
    rt_metro = audio(root / "realtime", rt.get("metronome.rb"))
    if rt_metro is not None:
        print(f"metronome worst onset error (real time):   {grid_error(onset_times(rt_metro)) * 1000:.2f} ms")

    print("\nprogram                      spec acc-vs-rt  spec rt-vs-rt  env acc-vs-rt  env rt-vs-rt  within")
    results = []
    for name, _ in programs:
        source = f"{name}.rb"
        a, r1 = audio(root / "accelerated", fast.get(source)), audio(root / "realtime", rt.get(source))
        if a is None or r1 is None:
            print(f"{name:28s} not comparable (status {fast.get(source, {}).get('status')} / {rt.get(source, {}).get('status')})")
            continue
        row = {"program": name, "spec_acc": spectrum_similarity(a, r1), "env_acc": envelope_correlation(a, r1)}
        r2 = audio(root / "realtime2", rt2.get(source))
        if r2 is not None:
            row.update(spec_rt=spectrum_similarity(r2, r1), env_rt=envelope_correlation(r2, r1))
            row["within"] = row["spec_acc"] >= row["spec_rt"] - 0.01 and row["env_acc"] >= row["env_rt"] - 0.05
        results.append(row)
        fmt = lambda k: f"{row[k]:.4f}" if k in row else "   -  "
        print(f"{name:28s} {fmt('spec_acc'):>14s} {fmt('spec_rt'):>14s} {fmt('env_acc'):>14s} "
              f"{fmt('env_rt'):>13s}  {row.get('within', '-')}")
    print(f"\nmean spectrum similarity acc-vs-rt: {np.mean([r['spec_acc'] for r in results]):.4f}; "
          f"mean envelope correlation acc-vs-rt: {np.mean([r['env_acc'] for r in results]):.4f}")
    spread = [r for r in results if "spec_rt" in r]
    if spread:
        print(f"on the {len(spread)} programs rendered twice in real time: rt-vs-rt envelope "
              f"{np.mean([r['env_rt'] for r in spread]):.4f}, acc-vs-rt envelope "
              f"{np.mean([r['env_acc'] for r in spread]):.4f}; within spread: "
              f"{sum(r['within'] for r in spread)}/{len(spread)}")
    (root / "bench_render.json").write_text(json.dumps(
        {"realtime_wall_s": rt_wall, "accelerated_wall_s": fast_wall, "audio_s": audio_s,
         "workers": args.workers, "factors": factors, "results": results}, indent=1))
    print(f"renders kept in {root}" if args.out else "")
    if not args.out:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
