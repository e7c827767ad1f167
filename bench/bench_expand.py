"""Time `expand` of 27 templates x N programs (default 500 = 13,500) and print programs/s.

    .venv/bin/python bench/bench_expand.py [--n 500] [--check]

Target: 13,500 programs in under 10 s on the project's 2-core machine.
"""

import argparse
import tempfile
import time
from pathlib import Path

from sonicpi_gen.expand import expand_templates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="also syntax-check every program with Ruby")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        programs = expand_templates(Path(tmp) / "programs", n=args.n, seed=args.seed, check=args.check)
        wall = time.perf_counter() - started
    print(f"expand: {len(programs)} programs from {len({p.template for p in programs})} templates "
          f"in {wall:.2f} s = {len(programs) / wall:.0f} programs/s (check={args.check})")


if __name__ == "__main__":
    main()
