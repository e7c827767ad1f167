"""A bubblewrap sandbox for one Sonic Pi server stack.

Sonic Pi evaluates every program inside its own Ruby process, so a program can do
whatever the server's user can: checking its text protects nothing. Each server stack
(jackd, scsynth, Erlang, Ruby) therefore runs inside a sandbox of its own:

- its own user (as root: an unprivileged uid of its own, in a user namespace; otherwise
  the renderer's uid, in a user namespace), every capability dropped;
- its own PID, IPC, network, UTS and mount namespaces: it sees no other process, its
  network is a loopback of its own (no route out), its /dev/shm and /tmp are private
  and vanish with it;
- a read-only view of /usr and /etc (less the machine's name and id), and one writable
  folder, its scratch (bound at SCRATCH_MOUNT), which nothing else can reach;
- none of the renderer's environment, and resource limits per process (LIMITS).

The renderer talks to the server through two Unix sockets in the scratch folder (see
renderer/osc_bridge.rb), reads the server's logs and recordings there, and writes the
output folder itself. Ending the sandbox's first process ends every process inside it
(the PID namespace dies with its init), and the sandbox also dies with the renderer
(bubblewrap's --die-with-parent), so nothing it started outlives the render.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

BWRAP = "bwrap"
# Where the scratch folder appears inside the sandbox.
SCRATCH_MOUNT = "/spg"
# Sandboxes run as uids from here on when the renderer is root: a uid of their own
# each, so that the process limit counts one sandbox's processes, not all of them.
# Far above the ranges Debian hands to users and to /etc/subuid.
SANDBOX_UID_BASE = 2_000_000_000
SANDBOX_UIDS = 1 << 20
# Per-process limits (prlimit names). A booted server runs some 150 threads (Erlang's
# schedulers, Ruby's threads, scsynth's), all counted by nproc; a fork bomb stops at
# the limit. as: a program that allocates without bound fails in its own Ruby (Ruby's
# virtual size is 1.1 GB booted; Erlang reserves 1.1 GB). fsize bounds one file a
# program writes into its scratch (a clip's recording is 3 MB). rtprio lets jackd and
# scsynth take the real-time priority the renderer asks of them (see JACK_PRIORITY),
# and rttime ends any real-time thread that runs a second without blocking (the audio
# threads block every period, a few ms).
LIMITS = {"nproc": 1024, "as": 4 << 30, "fsize": 256 << 20, "nofile": 4096, "core": 0,
          "rtprio": 80, "rttime": 1_000_000}
# The private /dev/shm and /tmp, in bytes: JACK's and scsynth's shared memory (scsynth's
# segment is 8 MB) and what a program writes there.
SHM_BYTES = 256 << 20
TMP_BYTES = 256 << 20
PATH = "/usr/bin:/bin"
# Files of /etc a sandbox sees empty
HIDDEN_FILES = ("/etc/hostname", "/etc/machine-id", "/etc/mailname")

_UID_COUNTER = itertools.count()


class SandboxError(RuntimeError):
    """The sandbox could not be made (bubblewrap missing or refused)."""


def bubblewrap_installed() -> bool:
    return shutil.which(BWRAP) is not None


@functools.lru_cache(maxsize=1)
def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """One thread, alive as long as the renderer, that starts every sandbox.

    bubblewrap's --die-with-parent ends the sandbox when the thread that started it
    exits (Linux's parent-death signal follows the thread, not the process), so the
    sandboxes are not started from worker threads, which end before the render does."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")


def scratch_root() -> Path:
    """This process's folder of sandbox scratch folders, in the system's temporary
    folder (which every sandbox uid can traverse, where a user's home may not be).
    Those of renderers that are no longer running (killed) are removed."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"sonicpi-gen-{os.getuid()}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    root = base / f"sonicpi-gen-{os.getuid()}-{os.getpid()}"
    if not root.exists():
        root.mkdir(mode=0o711, exist_ok=True)
        root.chmod(0o711)  # the umask may have taken bits away
    return root


def _read_only_system() -> list[str]:
    """bubblewrap arguments for the system's programs and libraries, read-only."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for private in HIDDEN_FILES:  # the machine's identity: a program has no need of it
        if os.path.exists(private):
            args += ["--ro-bind", "/dev/null", private]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


class Sandbox:
    """One sandbox: a scratch folder, and the process tree started in it by `start`.

    `stop` ends every process inside and removes the scratch folder; it is safe to call
    more than once."""

    def __init__(self, name: str):
        self.root = os.geteuid() == 0
        self.uid = SANDBOX_UID_BASE + (os.getpid() * 64 + next(_UID_COUNTER)) % SANDBOX_UIDS \
            if self.root else os.getuid()
        self.scratch = scratch_root() / f"{name}-{next(_UID_COUNTER)}"
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(mode=0o700)
        if self.root:
            os.chown(self.scratch, self.uid, self.uid)
        self.process: subprocess.Popen | None = None
        self._namespace: str | None = None

    def inside(self, path: Path | str) -> str:
        """A path under the scratch folder as the sandbox sees it."""
        return f"{SCRATCH_MOUNT}/{Path(path).relative_to(self.scratch)}".rstrip("/")

    def give(self, path: Path) -> None:
        """Hand a file or folder the renderer made in the scratch folder to the sandbox's uid."""
        if self.root:
            os.chown(path, self.uid, self.uid)

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """The full command line that runs `argv` in this sandbox with exactly `env`."""
        if not bubblewrap_installed():
            raise SandboxError("rendering runs each server in a bubblewrap sandbox: apt-get install "
                               "bubblewrap (scripts/setup.sh installs it)")
        limits = [f"--{name}={value}" for name, value in LIMITS.items()
                  if name != "rtprio" or _may_raise_rtprio(value)]
        user = (["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--"]
                if self.root else [])
        bwrap = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                 "--clearenv", "--hostname", "sonicpi-gen", *_read_only_system(),
                 "--proc", "/proc", "--dev", "/dev",
                 "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
                 "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
                 "--bind", str(self.scratch), SCRATCH_MOUNT, "--chdir", SCRATCH_MOUNT]
        for key, value in sorted({"PATH": PATH, **env}.items()):
            bwrap += ["--setenv", key, value]
        return ["prlimit", *limits, "--", *user, *bwrap, "--", *argv]

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Run `argv` in the sandbox, its output to `log` (a host path)."""
        command = self.command(argv, env)
        with open(log, "wb") as out:
            self.process = _spawner().submit(
                subprocess.Popen, command, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True).result()
        deadline = time.monotonic() + 5.0
        while self._pid_namespace() is None and self.alive() and time.monotonic() < deadline:
            time.sleep(0.005)  # bubblewrap makes its namespaces in milliseconds
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """Live processes inside the sandbox (those of its PID namespace), as host pids."""
        namespace = self._pid_namespace()
        if namespace is None:
            return []
        return [pid for pid in _live_pids() if _pid_namespace_of(pid) == namespace]

    def _pid_namespace(self) -> str | None:
        """The sandbox's PID namespace, read from bubblewrap's child (its init) once."""
        if self._namespace is None and self.alive():
            own = _pid_namespace_of(os.getpid())
            for pid in _live_pids():
                if _parent_of(pid) == self.process.pid and _pid_namespace_of(pid) not in (None, own):
                    self._namespace = _pid_namespace_of(pid)
        return self._namespace

    def stop(self, timeout_s: float = 10.0) -> None:
        """End every process in the sandbox and remove its scratch folder."""
        if self.process is not None:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("sandbox %s: bubblewrap (pid %d) did not end", self.scratch, self.process.pid)
            # the namespace's init is killed with bubblewrap, and the kernel then ends the
            # rest: wait until they have left the process table
            deadline = time.monotonic() + timeout_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _may_raise_rtprio(value: int) -> bool:
    """Whether the real-time priority limit can be set to `value`: it is within the hard
    limit already, or this process may raise hard limits (CAP_SYS_RESOURCE, which
    containers often withhold). Without it the stack runs at normal priority."""
    if resource.getrlimit(resource.RLIMIT_RTPRIO)[1] >= value:
        return True
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(status.split("CapEff:")[1].split()[0], 16)
    except (OSError, IndexError, ValueError):
        return False
    return bool(effective >> 24 & 1)  # CAP_SYS_RESOURCE


def _live_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...); None if it is gone
    or a zombie (exited, holding nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields


def _parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _pid_namespace_of(pid: int) -> str | None:
    if _stat_fields(pid) is None:
        return None
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
