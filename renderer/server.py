"""One isolated, headless Sonic Pi server: boot, talk OSC, watch, tear down by pid.

Each server gets its own ports, HOME, TMPDIR (where Sonic Pi keeps its pid store) and
JACK server name, so several run side by side without touching a user's own Sonic Pi.
The stack is JACK's dummy backend (no sound card) + scsynth + the Ruby server + erlang,
optionally under libfaketime so the whole stack runs N times faster than real time:
one launcher shell is started under the preload with FAKETIME_DONT_RESET, so every
process of the stack shares one accelerated clock (Ruby timestamps OSC bundles that
scsynth schedules, so their clocks must agree). scsynth also gets the sample clock
(renderer/sample_clock.c), which ties the times it places events by to its samples.

Everything started here is ended here, by pid: the Ruby server's session (scsynth,
erlang, osmid) and jackd's own session (jackd calls setsid). Nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import queue
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

logger = logging.getLogger(__name__)

SERVER_RB = Path("/usr/lib/sonic-pi/app/server/ruby/bin/sonic-pi-server.rb")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
# coreutils' stdbuf preload: scsynth reports late events ("late 0.12") on stdout, which
# goes to a file block-buffered, so a line could surface clips later and be blamed on
# the wrong clip. Line-buffered, each line is in the log when it happens.
STDBUF_LIB = Path("/usr/libexec/coreutils/libstdbuf.so")
SAMPLE_RATE = 44100
# scsynth's sample clock (see the C file's head): built once per source version, into
# the user's cache, with the system's C compiler.
SAMPLE_CLOCK_SOURCE = Path(__file__).with_name("sample_clock.c")
SAMPLE_CLOCK_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sonicpi-gen"
# jackd's real-time priority. Its clients' process threads (scsynth's audio) get 5 less;
# at jackd's default 10 they sat below scsynth's own helper threads (50), so any
# server's helpers could delay every server's audio callback. Measured: clips drifting
# more than 2.5 ms (see CLOCK_POLL_S), 15 and 21 of 80 at 10, 11 and 13 of 80 at 70.
JACK_PRIORITY = 70
# JACK period in frames. Latency does not matter offline, while every period is a
# deadline scsynth must meet: at x8 a 1024-frame period is 2.9 ms of real time, and
# a loaded 2-core machine misses that now and then (an xrun); 4096 gives 5.8 ms at
# x16. Measured: 4 servers at x16 on 2 cores had frequent xruns at 2048, and
# onsets stayed within 1.4 ms at 4096 (8192 gave late events and 3 ms errors).
# With the sample clock an xrun shifts nothing (scsynth's reset on an xrun starts its
# loop on the same line), so it is not a fault. Measured, one server rendering
# metronomes beside 5 rendering heavy programs: of 14 metronomes with 1-3 xruns (x8,
# x12, x16), 12 had onsets within 1.75 ms; the other 2 had onsets 14-41 ms late in
# steps, a fault that also came without xruns, only at x12 and x16 and among the first
# 7 clips after the boots (25 of 25 metronomes clean at x8). Without the sample clock,
# 5 of 7 clips with xruns had onsets 135-248 ms off.
JACK_PERIOD = 4096
# Real seconds to wait for "successfully booted": a boot took 12 s in real time and
# 4 s at x8 here, alone (up to 17 s among rendering servers), and Sonic Pi gives scsynth
# 60 s of its clock. A bench batch lost 90 s to one x8 boot that hung.
BOOT_TIMEOUT_S = 30.0  # plus 60 s of the server's clock
MIN_SCHED_AHEAD_S = 1.0
# scsynth logs every bundle that arrives after its time, by how much (s); lateness below
# the onset tolerance does not change the clip and is not counted as a fault.
LATE_TOLERANCE_S = 0.005  # in scsynth's own (accelerated) seconds, as it logs them
# scsynth places each event on its samples by the event's time stamp, through a clock
# it derives from the times its JACK callback runs, smoothed by a delay-locked loop of
# 0.012 Hz bandwidth in the server's time (a 13 s time constant: 1.7 real s at x8).
# When the callback's wake-up latency shifts (it waits for a busy core), the loop
# follows slowly and meanwhile runs fast or slow against the samples, so events drift;
# acceleration multiplies the latency. scsynth's /status reply holds the loop's current
# sample rate, so the drift over a span is the integral of that rate's error. Measured
# at x8 with 6 servers on 2 cores, 80 clips per run: 11-21 drifted more than 2.5 ms, up
# to 16.5 ms, with no xrun and no late event to tell. On 26 metronomes among them the
# integral matched the spread of the onsets (less their 1.45 ms control-block steps)
# within 0.8 ms. The sample clock feeds that loop the samples' own times, so its rate
# holds (measured: within 5e-7 of nominal, drift 0.001-0.002 ms per clip from the first
# clip on, where without it the loop rang after a boot, 2.5-6.9 ms over the first
# clips, and servers waited 5 s before rendering); the drift check stays as a guard.
CLOCK_POLL_S = 0.05  # real seconds between /status requests
_STATUS_REQUEST = OscMessageBuilder("/status").build().dgram
# scsynth's reply, as it lays it out: address, type tags, then [1, ugens, synths, groups,
# synthdefs, average DSP load %, peak DSP load %, nominal sample rate, measured rate]
_STATUS_REPLY_HEAD = b"/status.reply\0\0\0,iiiiiffdd\0\0"
_STATUS_REPLY_VALUES = struct.Struct(">5i2f2d")
BOOTED_LINE = "Sonic Pi Server successfully booted."
# What the warm-up's second run logs after its sleeps (see SonicPiServer._warm_up)
WARMED_UP_INFO = "sonicpi-gen: warmed up"
# What the stop's run logs once it has ended the others (see SonicPiServer.stop_runs)
STOPPED_INFO = "sonicpi-gen: stopped"
# scsynth is asked about nodes from this id on, which never exist (Sonic Pi counts its
# nodes from 1), so that its "not found" line marks a point in its log
LOG_SENTINEL_NODE = 2_000_000_000
# scsynth's JACK client name, one per JACK server name. JACK 2 gives each client a
# notification socket named after the client alone (/dev/shm/jack_<client>_<uid>_0),
# not after its server: when two scsynths of the default name "SuperCollider" opened
# their clients at once on two servers, each unlinked the other's socket and one server
# could not reach its client ("Cannot connect to client name = SuperCollider"). Measured:
# 4 of 6 first boots of a bench batch lost that way, 1 of 18 boots when 6 boot at once;
# two jack_lsp clients started together on two servers failed 33 of 40 times, one after
# the other 0 of 80. scsynth takes the name from -H "server:client"; see SCSYNTH_SHIM.
SCSYNTH_CLIENT_PREFIX = "scsynth-"
# jackd's lines when scsynth's JACK client could not be opened all the same
SCSYNTH_REFUSED_RE = re.compile(r"(Cannot connect to client|new_client fails) name = "
                                + SCSYNTH_CLIENT_PREFIX)
BOOT_FAILED_LINES = ("Failed to start server", "Unable to connect to SuperCollider",
                     "Port unavailable", "Exception when opening")
CLIENT_ID = "sonicpi-gen"
# JACK keeps its servers in a shared registry of 8 slots and frees the slot of a killed
# jackd only when a server of the same name starts again. So servers take their names
# from a pool of 8, each held with a lock file for the server's lifetime: a name whose
# jackd was killed is reused, and its stale slot reclaimed, by the next server.
JACK_SLOTS = 8
JACK_NAME_LOCKS = Path(os.environ.get("TMPDIR", "/tmp"))
# Bash launcher: jackd first (the server only boots scsynth against a running JACK),
# then exec the Ruby server so its pid is the launcher's pid. JACK is probed with
# jack_lsp, one probe at a time machine-wide: all are JACK clients named "lsp", which
# collide like scsynth's (see SCSYNTH_CLIENT_PREFIX) when servers boot side by side.
LAUNCHER = r"""
jackd -P %(priority)d -n "$JACK_DEFAULT_SERVER" -d dummy -r %(rate)d -p %(period)d > "$SPG_DIR/jackd.log" 2>&1 &
echo $! > "$SPG_DIR/jackd.pid"
for i in $(seq 200); do flock "$SPG_JACK_PROBE_LOCK" jack_lsp > /dev/null 2>&1 && break; sleep 0.05; done
exec "%(ruby)s" "%(server_rb)s" -u "$@"
"""
# Sonic Pi records the pid of every process it starts by running a second Ruby,
# `ruby task-register.rb PID`, and waits for it: four per boot, each loading Sonic Pi's
# core and gems (0.17 s each). The record is a file in $TMPDIR/sonic-pi-pids named by
# the pid and holding its command line, read back only to check a pid before killing
# it. This stand-in, first on the server's PATH, writes the same file from the shell;
# every other Ruby command goes to Ruby. It touches nothing that makes sound. Measured
# at x8: one boot from 2.4 to 1.7 CPU-s, six side by side from 10.3 to 8.4 s.
RUBY_SHIM = r"""#!/bin/sh
case "$1" in
  */task-register.rb)
    store="${TMPDIR:-/tmp}/sonic-pi-pids"
    cmdline=$(tr '\0' ' ' < "/proc/$2/cmdline")
    [ -n "$cmdline" ] || cmdline=$(cat "/proc/$2/comm")  # o2m and m2o blank theirs
    mkdir -p "$store" && echo "$cmdline" > "$store/$2"
    exit 0 ;;
esac
exec "%(ruby)s" "$@"
"""
# Sonic Pi starts `scsynth` from the PATH, where this stand-in gives it its JACK client
# name (see SCSYNTH_CLIENT_PREFIX). Sonic Pi then connects "SuperCollider:out_1" and
# "out_2" to JACK's playback ports, and "in_1" and "in_2" to its capture ports, with
# four jack_connect runs; under the new name scsynth makes those connections itself,
# from the SC_JACK_DEFAULT_* variables set for the stack, so jack_connect's stand-in
# does nothing (each run would open a JACK client that fails, and that collides).
# It also preloads the sample clock into scsynth alone, in front of libfaketime.
SCSYNTH_SHIM = r"""#!/bin/sh
export LD_PRELOAD="%(sample_clock)s${LD_PRELOAD:+:$LD_PRELOAD}"
exec "%(scsynth)s" "$@" -H "$JACK_DEFAULT_SERVER:%(client)s"
"""
JACK_CONNECT_SHIM = "#!/bin/sh\nexit 0\n"


class ServerError(RuntimeError):
    """The server failed to boot, died, or stopped answering."""


def _claim_jack_name(wait_s: float = 30.0) -> tuple[str, object]:
    """A free name from the pool and its held lock (released when the file is closed).

    The lock file holds the pid of the name's last jackd (see _release): a name whose
    jackd is still in the process table, if only as a zombie, is not free to JACK. When
    only such names are left, this waits up to `wait_s` for init to reap them."""
    deadline = time.monotonic() + wait_s
    while True:
        reaping = False
        for slot in range(JACK_SLOTS):
            lock = open(JACK_NAME_LOCKS / f"sonicpi-gen-jack-{slot}.lock", "a+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                reaping |= slot in _RELEASING  # this render's, waiting in _release_when_gone
                continue
            lock.seek(0)
            last = lock.read().strip()
            if last.isdigit() and _is_jackd(int(last)):
                lock.close()
                reaping = True
                continue
            return f"sonicpi-gen-{slot}", lock
        if not reaping or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise ServerError(f"all {JACK_SLOTS} JACK server names are in use by running renders "
                      f"(JACK allows {JACK_SLOTS} servers per machine): use fewer --workers")


@functools.lru_cache(maxsize=1)
def sample_clock_library() -> Path:
    """scsynth's sample clock as a shared library, built from SAMPLE_CLOCK_SOURCE the
    first time a version of it is needed."""
    source = SAMPLE_CLOCK_SOURCE.read_bytes()
    library = SAMPLE_CLOCK_CACHE / f"sample-clock-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.exists():
        return library
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ServerError("building scsynth's sample clock needs a C compiler: apt-get install "
                          "gcc libc6-dev (scripts/setup.sh installs them)")
    library.parent.mkdir(parents=True, exist_ok=True)
    # servers boot side by side: each builds under its own name, the rename is atomic
    partial = library.with_name(f"{library.name}.{os.getpid()}-{threading.get_ident()}")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial),
                            str(SAMPLE_CLOCK_SOURCE), "-ldl", "-lpthread"],
                           capture_output=True, text=True)
    if built.returncode:
        partial.unlink(missing_ok=True)
        raise ServerError(f"could not build scsynth's sample clock from {SAMPLE_CLOCK_SOURCE} "
                          f"with {compiler}:\n{built.stderr.strip()[-800:]}")
    os.replace(partial, library)
    return library


def ruby_string(text: str | Path) -> str:
    """Text (a path, a log line) as a single-quoted Ruby string literal."""
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"


def sonic_pi_installed() -> bool:
    return SERVER_RB.exists() and shutil.which("jackd") is not None and shutil.which("scsynth") is not None


# Port blocks handed to this process's servers and not yet given back. Several workers
# boot at once: a block that is free when checked is bound by its server's processes
# only seconds later, and one worker's check sockets could meanwhile sit on another
# worker's ports (a CI run failed its GUI bind on exactly that).
_PORTS_LOCK = threading.Lock()
_PORTS_TAKEN: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Where server ports are drawn: below the kernel's ephemeral range where it leaves
    room, since a port free when checked could otherwise be handed to any new socket
    (the other servers' OSC clients) before this server binds it."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    return 20000, ephemeral_low if ephemeral_low > 20000 + 1000 else 60000


def _take_port_block(count: int) -> list[int]:
    """`count` consecutive UDP ports on 127.0.0.1 that nobody holds right now and no
    other server of this process was given; `_give_back_ports` returns them."""
    low, high = _port_range()
    with _PORTS_LOCK:
        for _ in range(200):
            start = random.randrange(low, high - count)
            block = range(start, start + count)
            if _PORTS_TAKEN.intersection(block):
                continue
            sockets = []
            try:
                for port in block:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                for s in sockets:
                    s.close()
            _PORTS_TAKEN.update(block)
            return list(block)
    raise ServerError("no free block of UDP ports on 127.0.0.1")


def _give_back_ports(ports) -> None:
    with _PORTS_LOCK:
        _PORTS_TAKEN.difference_update(ports)


def _session_members(sids: set[int]) -> list[int]:
    """Pids of live processes whose session id is one of `sids`.

    Zombies are left out: they have exited and hold nothing. The stack's processes are
    orphaned when the Ruby server exits, and a container's init may reap them seconds
    later (measured here: 2 s per session), which a wait for them would spend idle."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # after the command name: state, ppid, process group, session, ...
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[0] != b"Z" and int(fields[3]) in sids:
            members.append(int(entry))
    return members


def end_sessions(sids: set[int], grace_s: float = 3.0) -> None:
    """SIGTERM every process in these sessions, then SIGKILL what is left."""
    sids = {s for s in sids if s and s > 1 and s != os.getsid(0)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _session_members(sids)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _session_members(sids):
            time.sleep(0.05)


def _is_jackd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "jackd"
    except OSError:
        return False


_RELEASING: set[int] = set()  # JACK name slots whose lock waits in _release_when_gone


def _release_when_gone(pid: int | None, lock, slot: int, timeout_s: float = 60.0) -> None:
    """Close `lock` once process `pid` has left the process table (or after timeout_s);
    the caller has put `slot` in _RELEASING."""
    try:
        deadline = time.monotonic() + timeout_s
        while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        lock.close()
        _RELEASING.discard(slot)


def remove_faketime_shm(pid: int) -> None:
    """libfaketime leaves its shared memory behind when a process is killed; remove ours."""
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass


class AudioClock:
    """scsynth's clock rate against its samples, and its DSP load, as its /status
    replies report them."""

    def __init__(self, history: int = 2400):  # two minutes of polls
        self._samples: deque[tuple[float, float]] = deque(maxlen=history)
        self._loads: deque[tuple[float, float]] = deque(maxlen=history)
        self._lock = threading.Lock()

    def add(self, at: float, nominal_rate: float, measured_rate: float,
            load_percent: float | None = None) -> None:
        with self._lock:
            if nominal_rate > 0 and measured_rate > 0:
                # the loop's period is nominal / measured times the nominal one
                self._samples.append((at, nominal_rate / measured_rate))
            if load_percent is not None:
                self._loads.append((at, load_percent))

    def peak_load(self, start: float, end: float) -> float | None:
        """The highest DSP load scsynth reported from `start` to `end`: its audio
        callbacks' average share (%) of their period, as JACK measures it; None if it
        reported none."""
        loads = [load for _, load in self._window(self._loads, start, end)]
        return max(loads) if loads else None

    def __len__(self) -> int:
        return len(self._samples)

    def _window(self, history: deque, start: float, end: float) -> list[tuple[float, float]]:
        """The entries of `history` from `start` to `end`, oldest first. Read from the
        newest back: the windows asked for are a clip's last seconds, and each worker
        asks every FAULT_CHECK_S (scanning all two minutes took 1.1 of the renderer's
        18 CPU-s in a profiled batch of 60 clips)."""
        found = []
        with self._lock:
            for at, value in reversed(history):
                if at <= start:
                    break
                if at <= end:
                    found.append((at, value))
        found.reverse()
        return found

    def _between(self, start: float, end: float) -> list[tuple[float, float]]:
        return self._window(self._samples, start, end)

    def drift_s(self, start: float, end: float, acceleration: float) -> float:
        """The largest drift, in the server's seconds, between any two moments from
        `start` to `end` (monotonic times): the spread of the integrated period error."""
        phase = low = high = 0.0
        previous = start
        for at, ratio in self._between(start, end):
            phase += (ratio - 1.0) * (at - previous) * acceleration
            previous = at
            low, high = min(low, phase), max(high, phase)
        return high - low


@dataclass
class GuiMessage:
    time: float
    address: str
    args: tuple


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class SonicPiServer:
    """A headless Sonic Pi server with its own JACK, ports and folders.

    Use as a context manager, or call `boot()` and `shutdown()`. `acceleration` > 1 runs
    the stack under libfaketime. `headroom_s` is Sonic Pi's scheduling headroom
    (sched_ahead_time) in real seconds: under acceleration x N the server's clock runs N
    times faster, so its sched_ahead_time is N x headroom_s, which leaves Ruby the same
    real time to compute each event as in a real-time run.
    """

    workdir: Path
    acceleration: float = 1.0
    headroom_s: float = 0.3
    on_spawn: object = None  # callback(sid or shm path) so a watchdog can clean up if we die
    # A semaphore shared by servers that boot side by side, to limit how many boot at once
    boot_slots: object = None
    ports: list = field(default_factory=list)
    launcher: subprocess.Popen | None = None
    jackd_pid: int | None = None
    messages: "queue.Queue[GuiMessage]" = field(default_factory=queue.Queue)
    idle: threading.Event = field(default_factory=threading.Event)  # no run going
    # the last stop_runs has been carried out (set: no stop pending), and when
    stopped: threading.Event = field(default_factory=_set_event)
    stopped_at: float = float("-inf")
    clock: AudioClock = field(default_factory=AudioClock)
    version: str = "unknown"
    ready_at: float | None = None  # monotonic time the boot ended
    _faults: dict = field(default_factory=lambda: {"late": 0}, repr=False)
    _log_offset: int = field(default=0, repr=False)  # of scsynth's log, read so far
    _log_queries: int = field(default=0, repr=False)  # see scheduling_faults
    # shutdown() is called by a worker and, on Ctrl-C, by the main thread at once
    _shutdown_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __enter__(self):
        self.boot()
        return self

    def __exit__(self, *exc):
        self.shutdown()

    # -- lifecycle -----------------------------------------------------------------

    def boot(self) -> None:
        """Start JACK + Sonic Pi and wait until the server says it booted.

        With `boot_slots`, it waits for a slot."""
        with self.boot_slots or contextlib.nullcontext():
            self._boot()
        self.ready_at = time.monotonic()

    def uptime_s(self) -> float:
        """The server's own seconds since its boot ended (its clock runs `acceleration`
        times faster than the real one)."""
        return 0.0 if self.ready_at is None else (time.monotonic() - self.ready_at) * self.acceleration

    def _boot(self) -> None:
        if not sonic_pi_installed():
            raise ServerError("Sonic Pi server not found (need Debian's sonic-pi-server, jackd2, "
                              "supercollider-server): run scripts/setup.sh")
        if self.acceleration != 1.0 and not FAKETIME_LIB.exists():
            raise ServerError(f"acceleration needs libfaketime ({FAKETIME_LIB}): apt-get install faketime")
        shutil.rmtree(self.workdir, ignore_errors=True)
        for sub in ("home", "tmp"):
            (self.workdir / sub).mkdir(parents=True)
        # server, gui, scsynth, scsynth-send (must equal scsynth), osc-cues, erlang,
        # midi-out, midi-in, websocket: the argument order of sonic-pi-server.rb.
        for _ in range(5):
            block = _take_port_block(8)
            self.ports = [block[0], block[1], block[2], block[2], *block[3:8]]
            try:
                self._listen_gui(self.ports[1])
                break
            except OSError:  # another process bound it after the check: draw again
                _give_back_ports(block)
        else:
            raise ServerError("could not bind a GUI port on 127.0.0.1 in 5 tries")
        try:
            self.jack_name, self._jack_lock = _claim_jack_name()
        except ServerError:
            self._release()
            raise
        env = dict(os.environ, HOME=str(self.workdir / "home"), TMPDIR=str(self.workdir / "tmp"),
                   SPG_DIR=str(self.workdir), JACK_NO_AUDIO_RESERVATION="1",
                   SPG_JACK_PROBE_LOCK=str(JACK_NAME_LOCKS / "sonicpi-gen-jack-probe.lock"),
                   JACK_DEFAULT_SERVER=self.jack_name,
                   SC_JACK_DEFAULT_OUTPUTS="system:playback_1,system:playback_2",
                   SC_JACK_DEFAULT_INPUTS="system:capture_1,system:capture_2")
        preload = [str(STDBUF_LIB)] if STDBUF_LIB.exists() else []
        env.update(_STDBUF_O="L", _STDBUF_E="L")
        if self.acceleration != 1.0:
            preload.insert(0, str(FAKETIME_LIB))
            env.update(FAKETIME=f"+0 x{self.acceleration:g}", FAKETIME_DONT_RESET="1")
        if preload:
            env["LD_PRELOAD"] = ":".join(preload)
        ruby = shutil.which("ruby") or "ruby"
        shim_dir = self.workdir / "bin"
        shim_dir.mkdir()
        shims = {"ruby": RUBY_SHIM % {"ruby": ruby},
                 "scsynth": SCSYNTH_SHIM % {"scsynth": shutil.which("scsynth"),
                                            "client": SCSYNTH_CLIENT_PREFIX + self.jack_name,
                                            "sample_clock": sample_clock_library()},
                 "jack_connect": JACK_CONNECT_SHIM}
        for name, text in shims.items():
            (shim_dir / name).write_text(text)
            (shim_dir / name).chmod(0o755)
        env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        script = LAUNCHER % {"rate": SAMPLE_RATE, "period": JACK_PERIOD, "server_rb": SERVER_RB,
                             "ruby": ruby, "priority": JACK_PRIORITY}
        log = open(self.workdir / "server.log", "wb")
        self.launcher = subprocess.Popen(
            ["bash", "-c", script, "launcher", *map(str, self.ports)], env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if self.on_spawn:
            self.on_spawn(self.launcher.pid)
            self.on_spawn(self.scsynth_shm)  # scsynth's segment, left behind if it is killed
        try:
            self._wait_booted()
            self._check_sample_clock()
            threading.Thread(target=self._poll_clock, args=(self._gui,), daemon=True).start()
            self.client = SimpleUDPClient("127.0.0.1", self.ports[0])
            self.run_code(f"set_sched_ahead_time! {self.sched_ahead_s:g}")
            self._warm_up()
        except BaseException:
            self.shutdown()
            raise

    def _wait_booted(self) -> None:
        timeout_s = BOOT_TIMEOUT_S + 60.0 / self.acceleration
        deadline = time.monotonic() + timeout_s
        log_path = self.workdir / "server.log"
        while time.monotonic() < deadline:
            self._register_jackd()
            text = log_path.read_text(errors="replace")
            if BOOTED_LINE in text:
                for line in text.splitlines():
                    if line.startswith("This is Sonic Pi v"):
                        self.version = line.split()[4].removeprefix("v")
                return
            jack_log = self.workdir / "jackd.log"
            jack_text = jack_log.read_text(errors="replace") if jack_log.exists() else ""
            refused = SCSYNTH_REFUSED_RE.search(jack_text)
            if refused:  # Sonic Pi would wait its 60 s for scsynth to report ready
                raise ServerError(f"JACK did not take scsynth as a client ({refused.group(0)}); "
                                  f"log: {jack_log}")
            if "Too many servers already active" in jack_text:
                raise ServerError(
                    "JACK's registry of 8 servers is full, most likely of entries left by JACK "
                    "servers that were killed. With no JACK server running on this machine, "
                    "remove /dev/shm/jack-shm-registry (JACK recreates it).")
            failed = [line for line in BOOT_FAILED_LINES if line in text]
            if failed or self.launcher.poll() is not None:
                raise ServerError(f"Sonic Pi server did not boot ({failed or 'exited'}); "
                                  f"log: {log_path}\n{text[-800:]}")
            time.sleep(0.1)
        raise ServerError(f"Sonic Pi server did not boot in {timeout_s:.0f} s; log: {log_path}")

    def _check_sample_clock(self) -> None:
        """Raise unless the stack's scsynth runs with the sample clock: without it, the
        time checks would pass clips whose events a stall shifted (see clip.py)."""
        library = str(sample_clock_library())
        for pid in _session_members({self.launcher.pid}):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "scsynth":
                    continue
                if library in Path(f"/proc/{pid}/maps").read_text():
                    return
            except OSError:
                continue
            raise ServerError(f"scsynth (pid {pid}) runs without the sample clock {library}; "
                              f"log: {self.workdir / 'server.log'}")
        raise ServerError(f"no scsynth in the booted server's session; log: {self.workdir / 'server.log'}")

    def _warm_up(self, timeout_s: float = 30.0) -> None:
        """Before the first clip, run what a clip runs: the recorder in one run, then
        synths, a sample and timed sleeps (2 s of the server's time) in another.

        The first runs after boot are slow (Ruby loads and compiles code paths), slow
        enough to miss their schedule under acceleration. Neither run is waited out
        (Sonic Pi reports a run ended a headroom after its last sleep): the recording
        saved and a line logged after the sleeps are enough."""
        take = self.workdir / "warm-up.wav"
        self._run_until(f"use_sched_ahead_time {min(self.sched_ahead_s, 1.0):g}; recording_start; "
                        f"recording_save {ruby_string(take)}", f"Saving recording to {take}", timeout_s)
        take.unlink(missing_ok=True)
        self._run_until("use_debug false; 8.times { synth :beep, amp: 0; sample :elec_tick, "
                        f"amp: 0; sleep 0.25 }}; __info {ruby_string(WARMED_UP_INFO)}",
                        WARMED_UP_INFO, timeout_s)

    def _run_until(self, code: str, log_line: str, timeout_s: float) -> None:
        """Run code and wait until the server logs `log_line`; a ServerError on an error."""
        self.drain_messages()
        self.run_code(code)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if msg.address in ("/error", "/syntax_error"):
                raise ServerError("the server's warm-up failed: "
                                  + " ".join(str(arg) for arg in msg.args[1:]))
            if msg.address == "/log/info" and log_line in str(msg.args):
                return
        raise ServerError(f"the server's warm-up did not finish in {timeout_s:.0f} s")

    def _poll_clock(self, gui) -> None:
        """Ask scsynth for its status every CLOCK_POLL_S from the GUI socket, which
        receives the replies, until the socket is closed."""
        scsynth = ("127.0.0.1", self.ports[2])
        while self._gui is gui:
            try:
                gui.socket.sendto(_STATUS_REQUEST, scsynth)
            except OSError:
                return
            time.sleep(CLOCK_POLL_S)

    def _register_jackd(self) -> None:
        if self.jackd_pid is None and (self.workdir / "jackd.pid").exists():
            text = (self.workdir / "jackd.pid").read_text().strip()
            if text:
                self.jackd_pid = int(text)
                lock = getattr(self, "_jack_lock", None)
                if lock is not None:  # for _claim_jack_name, in any process
                    lock.seek(0)
                    lock.truncate()
                    lock.write(f"{self.jackd_pid}\n")
                    lock.flush()
                if self.on_spawn:
                    self.on_spawn(self.jackd_pid)  # jackd makes its own session

    @functools.cached_property
    def _scsynth_log(self) -> str:  # as a string: read every FAULT_CHECK_S by each worker
        return str(self.workdir / "home/.sonic-pi/log/scsynth.log")

    @property
    def scsynth_shm(self) -> Path:
        """scsynth's shared memory segment, named after its port."""
        return Path(f"/dev/shm/SuperColliderServer_{self.ports[2]}")

    @property
    def sched_ahead_s(self) -> float:
        """Sonic Pi's sched_ahead_time, in the server's own (accelerated) seconds; never
        below MIN_SCHED_AHEAD_S (measured in real time on the reference piece: 0.3 s let
        51 events arrive up to 0.28 s late, 0.5 s one event 19 ms late, 1.0 s none)."""
        return max(self.headroom_s * self.acceleration, MIN_SCHED_AHEAD_S)

    def alive(self) -> bool:
        return self.launcher is not None and self.launcher.poll() is None

    def shutdown(self) -> None:
        """Ask the server to exit, then end every process of its sessions by pid.
        Safe to call from several threads and more than once."""
        with self._shutdown_lock:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.launcher is None:
            self._release()  # boot failed before the launcher started
            return
        self._register_jackd()
        if self.alive():
            try:
                self.client.send_message("/exit", [CLIENT_ID])
                self.launcher.wait(timeout=5)
            except (AttributeError, OSError, subprocess.TimeoutExpired):
                pass
        # The stack before JACK: a jackd ended while its clients are still connected is
        # more likely to miss its clean exit (which frees its registry slot).
        end_sessions({self.launcher.pid})
        try:
            self.launcher.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        end_sessions({self.jackd_pid or 0}, grace_s=5.0)
        remove_faketime_shm(self.launcher.pid)
        # scsynth's shared memory segment when it was killed before it could remove it
        self.scsynth_shm.unlink(missing_ok=True)
        self.launcher = None
        self._release()

    def _release(self) -> None:
        """Close the GUI listener and give back the JACK name, once its jackd is gone."""
        if getattr(self, "_gui", None):
            self._gui.shutdown()
            self._gui.server_close()
            self._gui = None
        _give_back_ports(self.ports)
        lock, self._jack_lock = getattr(self, "_jack_lock", None), None
        if lock is not None:
            # An ended jackd is orphaned (its parent, the Ruby server, has exited) and
            # stays a zombie until init reaps it (seconds here). JACK takes a zombie's
            # pid for a live server of that name ("server already active"), so the name
            # is given back only when the pid is gone (and, should this process exit
            # first, the pid in the lock file keeps it from other renders meanwhile).
            slot = int(self.jack_name.rsplit("-", 1)[1])
            _RELEASING.add(slot)
            threading.Thread(target=_release_when_gone, args=(self.jackd_pid, lock, slot),
                             daemon=True).start()

    # -- OSC -----------------------------------------------------------------------

    def _listen_gui(self, port: int) -> None:
        """Receive what the server sends its GUI (errors, log lines, run completion) and
        scsynth's status replies (see _poll_clock)."""
        def receive(address, *args):
            if address == "/status.reply":  # one laid out otherwise than _STATUS_REPLY_HEAD
                if len(args) >= 9:
                    self.clock.add(time.monotonic(), args[7], args[8], args[5])
                return
            if address == "/runs/all-completed":
                self.idle.set()
            elif address == "/log/info" and args and STOPPED_INFO in str(args[-1]):
                self.stopped_at = time.monotonic()
                self.stopped.set()
            self.messages.put(GuiMessage(time.monotonic(), address, args))

        dispatcher = _GuiDispatcher(self.clock)
        dispatcher.set_default_handler(receive)
        # One thread for all messages (a thread per message costs more than the message):
        # they stay in order, which the clip logic relies on.
        self._gui = BlockingOSCUDPServer(("127.0.0.1", port), dispatcher)
        threading.Thread(target=self._gui.serve_forever, daemon=True).start()

    def send(self, address: str, *args) -> None:
        if not self.alive():
            raise ServerError("the Sonic Pi server is not running")
        self.client.send_message(address, [CLIENT_ID, *args])

    def run_code(self, code: str) -> None:
        self.idle.clear()
        self.send("/run-code", code)

    def stop_runs(self) -> None:
        """End every run. `wait_stopped` waits until the stop has been carried out (the
        runs fade out for RUN_FADE_S after it), `wait_idle` until they have ended."""
        self.stopped.clear()
        self.run_code(f"__stop_other_jobs; __info {ruby_string(STOPPED_INFO)}")

    def wait_stopped(self, timeout_s: float = 10.0) -> None:
        """Wait until the last `stop_runs` has ended the runs before it. A run sent
        before that could be ended by it too: the stop is a run that ends all others."""
        if not self.stopped.wait(timeout_s):
            raise ServerError(f"the server did not stop its runs within {timeout_s:.0f} s")

    def wait_idle(self, timeout_s: float) -> None:
        """Wait until no run is left (Sonic Pi says so after a stopped run's fade-out)."""
        if not self.idle.wait(timeout_s):
            raise ServerError(f"runs still going {timeout_s:.0f} s after they were stopped")

    def drain_messages(self) -> list[GuiMessage]:
        drained = []
        while True:
            try:
                drained.append(self.messages.get_nowait())
            except queue.Empty:
                return drained

    def scheduling_faults(self, up_to_now: bool = False, timeout_s: float = 5.0) -> dict:
        """Counts, since boot, of late bundles: scsynth got an event more than
        LATE_TOLERANCE_S after its time and played it late (it logs "late <seconds>").
        The log is read from where the last call stopped. (JACK xruns are not counted:
        with the sample clock they shift nothing, see JACK_PERIOD.)

        scsynth's lines reach its log through Sonic Pi, a moment after the fact. With
        `up_to_now`, every line scsynth wrote before this call is counted: scsynth is
        asked about a node that does not exist, and the log is read until its answer."""
        sentinel = None
        if up_to_now:
            self._log_queries += 1
            sentinel = f"Node {LOG_SENTINEL_NODE + self._log_queries} not found"
            query = OscMessageBuilder("/n_query")
            query.add_arg(LOG_SENTINEL_NODE + self._log_queries)
            self._gui.socket.sendto(query.build().dgram, ("127.0.0.1", self.ports[2]))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with open(self._scsynth_log, "rb") as log:
                    log.seek(self._log_offset)
                    text = log.read()
            except FileNotFoundError:
                text = b""
            text = text[: text.rfind(b"\n") + 1]  # a line being written is read next time
            self._log_offset += len(text)
            for line in text.decode(errors="replace").splitlines():
                if line.startswith("late ") and _lateness(line) > LATE_TOLERANCE_S:
                    self._faults["late"] += 1
                elif sentinel and line.endswith(sentinel):
                    sentinel = None
            if sentinel is None:
                return dict(self._faults)
            if time.monotonic() > deadline or not self.alive():
                raise ServerError(f"scsynth did not answer a query within {timeout_s:g} s")
            time.sleep(0.005)


class _GuiDispatcher(Dispatcher):
    """pythonosc's dispatcher, except that scsynth's status replies, 20 a second from
    each server, go from their bytes straight to the clock, and the cues Sonic Pi shows
    its GUI (/incoming/osc, some 85 per clip) are dropped unread: parsing them as OSC
    took a fifth of the renderer's own CPU, on a machine whose cores the servers need."""

    def __init__(self, clock: AudioClock):
        super().__init__()
        self._clock = clock

    def call_handlers_for_packet(self, data: bytes, client_address) -> list:
        if data.startswith(b"/incoming/osc\0"):
            return []
        values = parse_status_reply(data)
        if values is None:
            return super().call_handlers_for_packet(data, client_address)
        self._clock.add(time.monotonic(), values[7], values[8], values[5])
        return []


def parse_status_reply(data: bytes) -> tuple | None:
    """The values of scsynth's /status.reply datagram, or None for any other datagram."""
    if len(data) != len(_STATUS_REPLY_HEAD) + _STATUS_REPLY_VALUES.size \
            or not data.startswith(_STATUS_REPLY_HEAD):
        return None
    return _STATUS_REPLY_VALUES.unpack_from(data, len(_STATUS_REPLY_HEAD))


def _lateness(line: str) -> float:
    try:
        return float(line.split()[1])
    except (IndexError, ValueError):
        return float("inf")
