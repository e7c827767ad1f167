"""--engine ray beside --engine local on the same programs, in the same run: Ray's overhead.

    .venv/bin/python bench/bench_ray.py [--programs 24] [--workers 6] [--acceleration 8]
        [--rounds 2] [--nodes 2] [--address HOST:PORT] [--out DIR]

Renders the same template programs (bench_render.make_programs, no metronomes) into a
fresh folder each time, alternating local and ray `--rounds` times (local first), with
the same workers and factor; without --address it starts a LocalRayCluster of --nodes
nodes on this machine, the machine's cores split between them (so the Ray run uses the
same cores as the local one). Prints per run: wall seconds, audio-seconds per
wall-second (boots included), the same per server, clips retried, and the driver's
own CPU seconds per clip (on Ray the driver receives every clip and writes it: its
ceiling in clips per second of one core is 1 / that). Then each engine's mean and Ray's
overhead, (local - ray) / local of the mean throughput.
"""

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench_render import make_programs  # run as bench/bench_ray.py: its folder is on the path
from renderer.render import RenderSettings, render_programs


def driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(programs: Path, out: Path, engine: str, workers: int, acceleration: float,
            address: str | None) -> dict:
    cpu, started = driver_cpu_s(), time.perf_counter()
    render_programs(programs, out, RenderSettings(workers=workers, acceleration=acceleration, engine=engine,
                                                  address=address), progress=False)
    wall, cpu = time.perf_counter() - started, driver_cpu_s() - cpu
    rows = pq.read_table(out / "status.parquet").to_pylist()
    ok = sum(r["status"] == "ok" for r in rows)
    audio_s = 18.0 * ok
    return {"engine": engine, "wall_s": wall, "clips": len(rows), "ok": ok,
            "audio_s_per_s": audio_s / wall, "per_server": audio_s / wall / workers,
            "retried": sum(r["attempts"] > 1 for r in rows),
            "factors": sorted({r["acceleration"] for r in rows}),
            "driver_cpu_s_per_clip": cpu / max(len(rows), 1),
            "mean_render_s": sum(r["render_s"] for r in rows) / max(len(rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--acceleration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the local cluster")
    parser.add_argument("--address", default=None, help="use this cluster instead of a local one")
    parser.add_argument("--out", type=Path, default=None, help="keep renders here (default: temp)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-ray-"))
    make_programs(root / "programs", args.programs, 0, 0)
    plain = root / "programs" / "plain"

    cluster = None
    address = args.address
    if address is None:
        from renderer.ray_cluster import LocalRayCluster
        cluster = LocalRayCluster(nodes=args.nodes, cpus_per_node=max(1, (os.cpu_count() or 1) // args.nodes))
        cluster.start()
        address = cluster.address
    runs = []
    try:
        for round_ in range(args.rounds):
            for engine in ("local", "ray"):
                run = one_run(plain, root / f"{engine}-{round_}", engine, args.workers,
                              args.acceleration, address if engine == "ray" else None)
                runs.append(run)
                print(f"{engine:5s} round {round_}: {run['wall_s']:6.1f} s, {run['audio_s_per_s']:6.2f} "
                      f"audio-s/s ({run['per_server']:.2f} per server), {run['ok']}/{run['clips']} ok, "
                      f"{run['retried']} retried, factors {run['factors']}, driver "
                      f"{run['driver_cpu_s_per_clip'] * 1000:.0f} ms CPU per clip, mean render "
                      f"{run['mean_render_s']:.2f} s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    means = {e: sum(r["audio_s_per_s"] for r in runs if r["engine"] == e) / args.rounds
             for e in ("local", "ray")}
    print(f"\n{args.programs} programs, {args.workers} servers at x{args.acceleration:g}, {args.rounds} "
          f"rounds; Ray: {'a local cluster of ' + str(args.nodes) + ' nodes' if cluster else address}")
    print(f"local: {means['local']:.2f} audio-s/s; ray: {means['ray']:.2f} audio-s/s; Ray's overhead "
          f"{(means['local'] - means['ray']) / means['local']:+.1%} of the local throughput")
    (root / "bench_ray.json").write_text(json.dumps({"runs": runs, "means": means}, indent=1))
    if args.out:
        print(f"renders kept in {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
