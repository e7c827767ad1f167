"""Safety net: ends the renderer's server sessions if the renderer itself dies.

Started by `render_programs` in its own session, so Ctrl-C in the terminal does not
reach it. It reads one session id (or a /dev/shm path of a server's) per line on stdin as
servers start; when stdin closes (the renderer exited, was killed with SIGKILL, or
crashed) it ends every process still in those sessions, by pid, and removes their
libfaketime and scsynth shared memory.
On a clean exit the renderer has already ended them and this finds nothing to do.

    python -m renderer.watchdog < pipe
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from renderer.server import end_sessions, remove_faketime_shm


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # outlive a Ctrl-C aimed at the renderer
    sids: list[int] = []
    segments: list[Path] = []
    for line in sys.stdin:
        line = line.strip()
        if line.isdigit():
            sids.append(int(line))
        elif line.startswith("/dev/shm/SuperColliderServer_"):
            segments.append(Path(line))
    # In the order they started: a server's Ruby session before its jackd.
    for sid in sids:
        end_sessions({sid}, grace_s=5.0)
        remove_faketime_shm(sid)
    for segment in segments:
        segment.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
