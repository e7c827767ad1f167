"""Throughput and peak memory of `build_dataset` on a synthetic renders folder.

    .venv/bin/python bench/bench_dataset.py                       # 2,000 clips, all configs
    .venv/bin/python bench/bench_dataset.py --clips 500 --configs default
    .venv/bin/python bench/bench_dataset.py --copy --keep /tmp/ds  # real copies; keep output

The renders folder holds one real FLAC (18 s, stereo, 44.1 kHz, 16-bit: decaying notes
over a noise floor, about the size of a rendered Sonic Pi clip) under --clips ids
(hard links, or byte copies with --copy), a manifest written with expand's writer and
render's merge, and a status.parquet with a few failed renders, so the whole stage runs:
splits, per-clip sha256 check, streaming Parquet writes, the card. Peak memory is the
process's maximum resident set (getrusage), measured after the folder is made; the
target is under 1 GB whatever the number of clips.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonicpi_gen.folders import STATUS_SCHEMA, read_manifest, write_manifest, write_status  # noqa: E402
from sonicpi_gen import __version__  # noqa: E402
from sonicpi_gen.dataset import build_dataset, decode_audio, iter_rows  # noqa: E402
from sonicpi_gen.expand import Program, write_programs  # noqa: E402

SAMPLE_RATE = 44100
CLIP_S = 18.0  # 120 BPM x 9 bars of 4/4 (docs/contracts.md)
TEMPLATES = 27
FAILED_EVERY = 50  # one program in 50 gets runtime_error (the card must count them)


def write_clip(path: Path, seed: int = 0) -> bytes:
    """An 18 s stereo FLAC of decaying sine notes on the beat over a quiet noise floor."""
    rng = np.random.default_rng(seed)
    n = int(CLIP_S * SAMPLE_RATE)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = rng.normal(0, 0.01, size=(n, 2))
    for beat in range(36):
        note = 440 * 2 ** (rng.integers(-12, 12) / 12)
        tone = 0.3 * np.sin(2 * np.pi * note * t) * np.exp(-6 * t)
        start = beat * len(t)
        audio[start:start + len(t)] += tone[:, None] * [1.0, rng.uniform(0.5, 1)]
    sf.write(path, np.clip(audio, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path.read_bytes()


def program_code(i: int, template: str) -> str:
    """About 1.5 KB of plausible Sonic Pi, distinct per i."""
    lines = [f"# {template} program {i}", "use_bpm 120"]
    for loop in range(4):
        lines += [f"live_loop :part{loop} do", "  with_fx :reverb, room: 0.6 do"]
        for k in range(4):
            lines += [f"    play {40 + (i + loop + k) % 40}, release: {0.1 + k / 10:.1f}, "
                      f"cutoff: {60 + (i * 7 + k) % 60}", f"    sleep {0.25 * (1 + k % 2)}"]
        lines += ["  end", "end"]
    return "\n".join(lines) + "\n"


def make_renders(root: Path, clips: int, copy: bool) -> Path:
    programs = [Program(f"template_{i % TEMPLATES:02d}", i // TEMPLATES, i, 0, {"i": i},
                        program_code(i, f"template_{i % TEMPLATES:02d}")) for i in range(clips)]
    write_programs(root / "programs", programs, {"command": "bench"})
    renders = root / "renders"
    renders.mkdir()
    write_manifest(renders, read_manifest(root / "programs").to_pylist())
    source = root / "clip.flac"
    data = write_clip(source)
    digest = hashlib.sha256(data).hexdigest()
    rows = {}
    for i, program in enumerate(programs):
        row = {name: None for name in STATUS_SCHEMA.names}
        row.update(id=program.id, template=program.template, sample_rate=SAMPLE_RATE, bpm=120,
                   bars=9, code_sha256=hashlib.sha256(program.code.encode()).hexdigest(),
                   sonic_pi_version="3.2.2", clipped=False,
                   status="runtime_error" if i % FAILED_EVERY == FAILED_EVERY - 1 else "ok")
        if row["status"] == "ok":
            path = renders / program.template / f"{program.id}.flac"
            path.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, path) if copy else os.link(source, path)
            row.update(path=f"{program.template}/{program.id}.flac", duration_s=CLIP_S,
                       audio_sha256=digest)
        rows[program.id] = row
    write_status(renders, rows)
    (renders / "provenance.json").write_text(json.dumps({"tool_version": __version__}))
    return renders


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--configs", default="default,unseen_templates,families,scenarios")
    parser.add_argument("--max-shard-mb", type=float, default=500.0)
    parser.add_argument("--copy", action="store_true", help="byte copies instead of hard links")
    parser.add_argument("--keep", type=Path, default=None, help="move the dataset here afterwards")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dataset-", dir=args.work))
    try:
        t0 = time.monotonic()
        renders = make_renders(work, args.clips, args.copy)
        clip_mb = (work / "clip.flac").stat().st_size / 1e6
        rss_before = peak_rss_mb()
        print(f"renders folder: {args.clips} programs, one {CLIP_S:g} s stereo FLAC of {clip_mb:.2f} MB "
              f"({'copies' if args.copy else 'hard links'}), made in {time.monotonic() - t0:.1f} s; "
              f"peak RSS so far {rss_before:.0f} MB")
        summary = build_dataset(renders, work / "dataset", max_shard_mb=args.max_shard_mb,
                                configs=tuple(args.configs.split(",")))
        peak = peak_rss_mb()
        out_mb = sum(p.stat().st_size for p in summary.shards) / 1e6
        audio_h = summary.clips * CLIP_S / 3600
        print(f"built {summary.clips} clips ({summary.rows}) into {len(summary.shards)} shards, "
              f"{out_mb:.0f} MB, in {summary.wall_s:.1f} s")
        print(f"throughput: {summary.clips_per_s:.1f} clips/s, {out_mb / summary.wall_s:.0f} MB/s written, "
              f"{audio_h * 3600 / summary.wall_s:.0f} audio-s/s")
        print(f"left out: {summary.left_out}")
        print(f"peak RSS: {peak:.0f} MB (target < 1024 MB)")
        first = next(iter_rows(work / "dataset", "default", "train"))
        wave, sr = decode_audio(first)
        print(f"check: first train row decodes to {wave.shape} at {sr} Hz")
        if args.keep:
            shutil.move(str(work / "dataset"), args.keep)
            print(f"dataset kept in {args.keep}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
