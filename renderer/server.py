"""One headless Sonic Pi server in a sandbox of its own: boot, talk OSC, watch, tear down.

The stack is JACK's dummy backend (no sound card) + scsynth + the Ruby server +
Erlang, run inside a bubblewrap sandbox (renderer.sandbox): its own user, namespaces,
loopback, /dev/shm and scratch folder, so a program can touch nothing outside it, and
servers side by side share nothing (every sandbox uses Sonic Pi's default ports and
one JACK server name). Optionally the stack runs under libfaketime, N times faster than
real time: one launcher shell is started under the preload with FAKETIME_DONT_RESET, so
every process of the stack shares one accelerated clock (Ruby timestamps OSC bundles
that scsynth schedules, so their clocks must agree). scsynth also gets the sample clock
(renderer/sample_clock.c), which ties the times it places events by to its samples.

The renderer reaches the server through the OSC bridge (renderer/osc_bridge.rb) and
reads its logs and recordings in the scratch folder. Ending the sandbox ends the stack.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder

from renderer.audio_clock import STATUS_REQUEST, AudioClock, parse_status_reply
from renderer.sample_clock import SampleClockError, sample_clock_library
from renderer.sandbox import Sandbox, SandboxError, bubblewrap_installed

logger = logging.getLogger(__name__)

SERVER_RB = Path("/usr/lib/sonic-pi/app/server/ruby/bin/sonic-pi-server.rb")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
# coreutils' stdbuf preload: scsynth reports late events ("late 0.12") on stdout, which
# goes to a file block-buffered, so a line could surface clips later and be blamed on
# the wrong clip. Line-buffered, each line is in the log when it happens.
STDBUF_LIB = Path("/usr/libexec/coreutils/libstdbuf.so")
OSC_BRIDGE = Path(__file__).with_name("osc_bridge.rb")
SAMPLE_RATE = 44100
# jackd's real-time priority. Its clients' process threads (scsynth's audio) get 5 less;
# at jackd's default 10 they sat below scsynth's own helper threads (50), so any
# server's helpers could delay every server's audio callback (clips drifting more than
# 2.5 ms, 15 and 21 of 80 at 10, 11 and 13 of 80 at 70, before the sample clock). The
# sandbox's rtprio limit allows it (renderer.sandbox.LIMITS).
JACK_PRIORITY = 70
# JACK period in frames. Latency does not matter offline, while every period is a
# deadline scsynth must meet: at x8 a 1024-frame period is 2.9 ms of real time, and
# a loaded 2-core machine misses that now and then (an xrun); 4096 gives 5.8 ms at
# x16 (4 servers at x16 on 2 cores: frequent xruns at 2048, onsets within 1.4 ms at
# 4096, late events and 3 ms errors at 8192). With the sample clock an xrun shifts
# nothing (scsynth's reset on an xrun starts its loop on the same line), so it is not
# a fault: of 14 metronomes with 1-3 xruns beside 5 heavy servers, 12 had onsets within
# 1.75 ms. The other 2 had onsets 14-41 ms late in steps, a fault that also comes
# without xruns, only at x12 and x16, which is why auto stops at x8.
JACK_PERIOD = 4096
# Real seconds to wait for "successfully booted" (a boot takes 12 s in real time and
# 4 s at x8 alone, up to 17 s among rendering servers), plus the 60 s of its own clock
# that Sonic Pi gives scsynth.
BOOT_TIMEOUT_S = 30.0
MIN_SCHED_AHEAD_S = 1.0
# scsynth logs every bundle that arrives after its time, by how much (s); lateness below
# the onset tolerance does not change the clip and is not counted as a fault.
LATE_TOLERANCE_S = 0.005  # in scsynth's own (accelerated) seconds, as it logs them
CLOCK_POLL_S = 0.05  # real seconds between /status requests (see renderer.audio_clock)
BOOTED_LINE = "Sonic Pi Server successfully booted."
# What the run that sets the headroom logs once it has (see TIMING_GUARD)
GUARDED_INFO = "sonicpi-gen: timing guarded"
# What the warm-up's second run logs after its sleeps (see SonicPiServer._warm_up)
WARMED_UP_INFO = "sonicpi-gen: warmed up"
# What the stop's run logs once it has ended the others, followed by the server's
# state (see SonicPiServer.stop_runs)
STOPPED_INFO = "sonicpi-gen: stopped"
# scsynth is asked about nodes from this id on, which never exist (Sonic Pi counts its
# nodes from 1), so that its "not found" line marks a point in its log
LOG_SENTINEL_NODE = 2_000_000_000
# Sonic Pi's own default ports (server, gui, scsynth, scsynth-send, osc-cues, erlang,
# midi-out, midi-in, websocket: the argument order of sonic-pi-server.rb): each sandbox
# has a loopback of its own.
PORTS = (4557, 4558, 4556, 4556, 4560, 4561, 4563, 4564, 4562)
SERVER_PORT, GUI_PORT, SCSYNTH_PORT = PORTS[0], PORTS[1], PORTS[2]
# One JACK server per sandbox, each with its own /dev/shm: one name serves them all.
JACK_NAME = "sonicpi-gen"
BOOT_FAILED_LINES = ("Failed to start server", "Unable to connect to SuperCollider",
                     "Port unavailable", "Exception when opening")
CLIENT_ID = "sonicpi-gen"
# Sonic Pi 3.2.2 reads at most this many bytes of one OSC message: a program whose
# /run-code message is longer is written to the scratch folder and run from there.
MAX_MESSAGE_BYTES = 16384
# Bash launcher, run in the sandbox: the OSC bridge and jackd first (the server only
# boots scsynth against a running JACK), then exec the Ruby server.
LAUNCHER = r"""
%(ruby)s /spg/bin/osc_bridge.rb /spg/osc %(server_port)d %(scsynth_port)d %(gui_port)d > /spg/bridge.log 2>&1 &
jackd -P %(priority)d -n "$JACK_DEFAULT_SERVER" -d dummy -r %(rate)d -p %(period)d > /spg/jackd.log 2>&1 &
for i in $(seq 200); do jack_lsp > /dev/null 2>&1 && break; sleep 0.05; done
exec "%(ruby)s" "%(server_rb)s" -u %(ports)s
"""
# Sonic Pi records the pid of every process it starts by running a second Ruby,
# `ruby task-register.rb PID`, and waits for it: four per boot, each loading Sonic Pi's
# core and gems (0.17 s each). The record is a file in $TMPDIR/sonic-pi-pids named by
# the pid and holding its command line, read back only to check a pid before killing
# it. This stand-in, first on the server's PATH, writes the same file from the shell;
# every other Ruby command goes to Ruby. It touches nothing that makes sound (one boot
# at x8: 2.4 CPU-s with Ruby's, 1.7 with this).
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
# Sonic Pi starts `scsynth` from the PATH, where this stand-in preloads the sample clock
# into scsynth alone, in front of libfaketime, and names its JACK client. scsynth
# connects its ports to JACK's playback and capture ports itself, from the
# SC_JACK_DEFAULT_* variables set for the stack, so jack_connect's stand-in does nothing.
SCSYNTH_SHIM = r"""#!/bin/sh
export LD_PRELOAD="/spg/bin/sample-clock.so${LD_PRELOAD:+:$LD_PRELOAD}"
exec "%(scsynth)s" "$@" -H "$JACK_DEFAULT_SERVER:scsynth"
"""
JACK_CONNECT_SHIM = "#!/bin/sh\nexit 0\n"
# Run once after boot. The renderer owns the clip's timing: a program's own scheduling
# headroom and audio latency (set_sched_ahead_time!, use_/with_sched_ahead_time,
# use_/with_real_time, set_audio_latency!) would shift when everything it plays is
# heard, not what, and move its beat 0 away from the clip's start; they are kept as
# functions that do nothing. The renderer's own calls go to __spg_use_sched_ahead_time.
TIMING_GUARD = (
    "define_singleton_method(:__spg_use_sched_ahead_time, method(:use_sched_ahead_time)); "
    "[:set_sched_ahead_time!, :use_sched_ahead_time, :use_real_time, :set_audio_latency!].each "
    "{ |name| define_singleton_method(name) { |*args| nil } }; "
    "[:with_sched_ahead_time, :with_real_time].each "
    "{ |name| define_singleton_method(name) { |*args, &block| block.call if block } }")
# The state of the server that outlives a run, as the stop's run reports it: what a
# program can change for the programs after it (functions made with `define`, values
# stored with `set`, tuning, volume, bit depth, Ruby's global variables, constants and
# the runtime's own methods; not the functions every `live_loop :name` defines as
# live_loop_name, which the next live loop of that name redefines). A server whose
# state differs from its state after boot is replaced (see
# renderer.clip.touches_server_state for the rest).
STATE_PROBE = (
    "[@user_methods.instance_methods(false).reject { |m| m.to_s.start_with?('live_loop_') }.sort, "
    "singleton_methods.sort, "
    "@event_history.instance_variable_get(:@state).children.fetch(\"set\", nil)&.children&.keys, "
    "@mod_sound_studio.cent_tuning, "
    "@mod_sound_studio.instance_variable_get(:@volume), "
    "@mod_sound_studio.instance_variable_get(:@sample_format), "
    "global_variables.sort, Object.constants.size].hash")


class ServerError(RuntimeError):
    """The server failed to boot, died, or stopped answering."""


def ruby_string(text: str | Path) -> str:
    """Text (a path, a log line) as a single-quoted Ruby string literal."""
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"


def sonic_pi_installed() -> bool:
    return SERVER_RB.exists() and shutil.which("jackd") is not None and shutil.which("scsynth") is not None


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
    """A headless Sonic Pi server in a sandbox of its own, with its own JACK.

    Use as a context manager, or call `boot()` and `shutdown()`. `acceleration` > 1 runs
    the stack under libfaketime. `headroom_s` is Sonic Pi's scheduling headroom
    (sched_ahead_time) in real seconds: under acceleration x N the server's clock runs N
    times faster, so its sched_ahead_time is N x headroom_s, which leaves Ruby the same
    real time to compute each event as in a real-time run. `boot_log_dir`, if given,
    receives the server's logs when its boot fails (its scratch folder goes with the
    sandbox).
    """

    acceleration: float = 1.0
    headroom_s: float = 0.3
    boot_log_dir: Path | None = None
    # A semaphore shared by servers that boot side by side, to limit how many boot at once
    boot_slots: object = None
    sandbox: Sandbox | None = None
    launcher: object = None  # the sandbox's first process (bubblewrap)
    messages: "queue.Queue[GuiMessage]" = field(default_factory=queue.Queue)
    idle: threading.Event = field(default_factory=threading.Event)  # no run going
    # the last stop_runs has been carried out (set: no stop pending), and when
    stopped: threading.Event = field(default_factory=_set_event)
    stopped_at: float = float("-inf")
    # the server's state as the last stop reported it (see STATE_PROBE), and after boot
    state: str | None = None
    booted_state: str | None = None
    clock: AudioClock = field(default_factory=AudioClock)
    version: str = "unknown"
    ready_at: float | None = None  # monotonic time the boot ended
    _faults: dict = field(default_factory=lambda: {"late": 0}, repr=False)
    _log_offset: int = field(default=0, repr=False)  # of scsynth's log, read so far
    _log_queries: int = field(default=0, repr=False)  # see scheduling_faults
    _inbox: socket.socket | None = field(default=None, repr=False)
    _outbox: socket.socket | None = field(default=None, repr=False)
    _programs: int = field(default=0, repr=False)  # long programs sent as files
    # shutdown() is called by a worker and, on Ctrl-C, by the main thread at once
    _shutdown_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __enter__(self):
        self.boot()
        return self

    def __exit__(self, *exc):
        self.shutdown()

    @property
    def scratch(self) -> Path:
        """The sandbox's scratch folder, as the renderer sees it."""
        return self.sandbox.scratch

    def inside(self, path: Path) -> str:
        """A path under `scratch` as the server sees it."""
        return self.sandbox.inside(path)

    # -- lifecycle -----------------------------------------------------------------

    def boot(self) -> None:
        """Start the sandbox, JACK and Sonic Pi, and wait until the server says it booted.

        With `boot_slots`, it waits for a slot."""
        with self.boot_slots or contextlib.nullcontext():
            try:
                self._boot()
            except BaseException:
                if self.boot_log_dir is not None and self.sandbox is not None:
                    self.keep_logs(self.boot_log_dir)
                self.shutdown()
                raise
        self.ready_at = time.monotonic()

    def uptime_s(self) -> float:
        """The server's own seconds since its boot ended (its clock runs `acceleration`
        times faster than the real one)."""
        return 0.0 if self.ready_at is None else (time.monotonic() - self.ready_at) * self.acceleration

    def _boot(self) -> None:
        if not sonic_pi_installed():
            raise ServerError("Sonic Pi server not found (need Debian's sonic-pi-server, jackd2, "
                              "supercollider-server): run scripts/setup.sh")
        if not bubblewrap_installed():
            raise ServerError("the renderer runs each server in a bubblewrap sandbox: apt-get install "
                              "bubblewrap (scripts/setup.sh installs it)")
        if self.acceleration != 1.0 and not FAKETIME_LIB.exists():
            raise ServerError(f"acceleration needs libfaketime ({FAKETIME_LIB}): apt-get install faketime")
        try:
            sample_clock = sample_clock_library()
        except SampleClockError as err:
            raise ServerError(str(err)) from err
        self.sandbox = Sandbox("server")
        scratch = self.sandbox.scratch
        for sub in ("home", "tmp", "bin", "osc", "programs"):
            (scratch / sub).mkdir()
            self.sandbox.give(scratch / sub)
        ruby = shutil.which("ruby") or "/usr/bin/ruby"
        shims = {"ruby": RUBY_SHIM % {"ruby": ruby},
                 "scsynth": SCSYNTH_SHIM % {"scsynth": shutil.which("scsynth")},
                 "jack_connect": JACK_CONNECT_SHIM}
        for name, text in shims.items():
            (scratch / "bin" / name).write_text(text)
            (scratch / "bin" / name).chmod(0o755)
        shutil.copyfile(sample_clock, scratch / "bin" / "sample-clock.so")
        shutil.copyfile(OSC_BRIDGE, scratch / "bin" / "osc_bridge.rb")
        self._open_sockets()
        env = {"HOME": "/spg/home", "TMPDIR": "/spg/tmp", "SPG_DIR": "/spg", "LANG": "C.UTF-8",
               "PATH": "/spg/bin:/usr/bin:/bin", "JACK_NO_AUDIO_RESERVATION": "1",
               "JACK_DEFAULT_SERVER": JACK_NAME,
               "SC_JACK_DEFAULT_OUTPUTS": "system:playback_1,system:playback_2",
               "SC_JACK_DEFAULT_INPUTS": "system:capture_1,system:capture_2",
               "_STDBUF_O": "L", "_STDBUF_E": "L"}
        preload = [str(STDBUF_LIB)] if STDBUF_LIB.exists() else []
        if self.acceleration != 1.0:
            preload.insert(0, str(FAKETIME_LIB))
            env.update(FAKETIME=f"+0 x{self.acceleration:g}", FAKETIME_DONT_RESET="1")
        if preload:
            env["LD_PRELOAD"] = ":".join(preload)
        script = LAUNCHER % {"rate": SAMPLE_RATE, "period": JACK_PERIOD, "server_rb": SERVER_RB,
                             "ruby": ruby, "priority": JACK_PRIORITY, "server_port": SERVER_PORT,
                             "scsynth_port": SCSYNTH_PORT, "gui_port": GUI_PORT,
                             "ports": " ".join(map(str, PORTS))}
        try:
            self.launcher = self.sandbox.start(["bash", "-c", script, "launcher"], env,
                                               scratch / "server.log")
        except (OSError, SandboxError) as err:
            raise ServerError(f"could not start the server's sandbox: {err}") from err
        self._wait_booted()
        self._check_sample_clock()
        threading.Thread(target=self._poll_clock, args=(self._inbox,), daemon=True).start()
        self._run_until(f"set_sched_ahead_time! {self.sched_ahead_s:g}; {TIMING_GUARD}; "
                        f"__info {ruby_string(GUARDED_INFO)}", GUARDED_INFO, 30.0)
        self._warm_up()
        self.stop_runs()
        self.wait_stopped()
        self.booted_state = self.state

    def _open_sockets(self) -> None:
        """The renderer's ends of the OSC bridge: a socket the bridge sends the server's
        messages to, read by a thread of its own, and one to send from."""
        path = self.scratch / "osc" / "renderer.sock"
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.bind(str(path))
        path.chmod(0o666)  # the sandbox's uid sends to it; its folder is the sandbox's alone
        self._inbox.settimeout(0.2)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._target = str(self.scratch / "osc" / "server.sock")
        threading.Thread(target=self._receive, args=(self._inbox,), daemon=True).start()

    def _wait_booted(self) -> None:
        timeout_s = BOOT_TIMEOUT_S + 60.0 / self.acceleration
        deadline = time.monotonic() + timeout_s
        log_path = self.scratch / "server.log"
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if BOOTED_LINE in text:
                for line in text.splitlines():
                    if line.startswith("This is Sonic Pi v"):
                        self.version = line.split()[4].removeprefix("v")
                return
            failed = [line for line in BOOT_FAILED_LINES if line in text]
            if failed or not self.alive():
                raise ServerError(f"Sonic Pi server did not boot ({failed or 'exited'}); "
                                  f"log:\n{text[-800:]}")
            time.sleep(0.1)
        raise ServerError(f"Sonic Pi server did not boot in {timeout_s:.0f} s")

    def _check_sample_clock(self) -> None:
        """Raise unless the stack's scsynth runs with the sample clock: without it, the
        time checks would pass clips whose events a stall shifted (see clip.py)."""
        for pid in self.sandbox.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "scsynth":
                    continue
                if "/spg/bin/sample-clock.so" in Path(f"/proc/{pid}/maps").read_text():
                    return
            except OSError:
                continue
            raise ServerError(f"scsynth (pid {pid}) runs without the sample clock")
        raise ServerError("no scsynth in the booted server's sandbox")

    def _warm_up(self, timeout_s: float = 30.0) -> None:
        """Before the first clip, run what a clip runs: the recorder in one run, then
        synths, a sample and timed sleeps (2 s of the server's time) in another.

        The first runs after boot are slow (Ruby loads and compiles code paths), slow
        enough to miss their schedule under acceleration. Neither run is waited out
        (Sonic Pi reports a run ended a headroom after its last sleep): the recording
        saved and a line logged after the sleeps are enough."""
        take = self.scratch / "warm-up.wav"
        self._run_until(f"__spg_use_sched_ahead_time {min(self.sched_ahead_s, 1.0):g}; recording_start; "
                        f"recording_save {ruby_string(self.inside(take))}", f"Saving recording to {self.inside(take)}", timeout_s)
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
                raise ServerError("the server's set-up failed: "
                                  + " ".join(str(arg) for arg in msg.args[1:]))
            if msg.address == "/log/info" and log_line in str(msg.args):
                return
        raise ServerError(f"the server's warm-up did not finish in {timeout_s:.0f} s")

    def _poll_clock(self, inbox) -> None:
        """Ask scsynth for its status every CLOCK_POLL_S until the server ends; the
        replies come back through the bridge."""
        while self._inbox is inbox:
            try:
                self._send_packet(b"c", STATUS_REQUEST)
            except ServerError:
                return
            time.sleep(CLOCK_POLL_S)

    @functools.cached_property
    def _scsynth_log(self) -> str:  # as a string: read every FAULT_CHECK_S by each worker
        return str(self.scratch / "home/.sonic-pi/log/scsynth.log")

    @property
    def sched_ahead_s(self) -> float:
        """Sonic Pi's sched_ahead_time, in the server's own (accelerated) seconds; never
        below MIN_SCHED_AHEAD_S (measured in real time on the reference piece: 0.3 s let
        51 events arrive up to 0.28 s late, 0.5 s one event 19 ms late, 1.0 s none)."""
        return max(self.headroom_s * self.acceleration, MIN_SCHED_AHEAD_S)

    def alive(self) -> bool:
        return self.sandbox is not None and self.sandbox.alive()

    def shutdown(self) -> None:
        """End the sandbox and everything in it. Safe to call from several threads and
        more than once."""
        with self._shutdown_lock:
            inbox, self._inbox = self._inbox, None  # the reading threads stop
            for sock in (inbox, self._outbox):
                if sock is not None:
                    sock.close()
            self._outbox = None
            if self.sandbox is None:
                return
            self.sandbox.stop()
            self.sandbox = None

    def keep_logs(self, folder: Path) -> None:
        """Copy the server's logs (Sonic Pi's, jackd's, scsynth's) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        for log in ("server.log", "jackd.log", "home/.sonic-pi/log/scsynth.log"):
            path = self.scratch / log
            if path.is_file():
                shutil.copyfile(path, folder / Path(log).name)

    # -- OSC -----------------------------------------------------------------------

    def _receive(self, inbox) -> None:
        """Receive what the server sends its GUI (errors, log lines, run completion) and
        scsynth's status replies, in order, on one thread (the clip logic relies on
        the order; a thread per message costs more than the message)."""
        def receive(address, *args):
            if address == "/status.reply":  # one laid out otherwise than _STATUS_REPLY_HEAD
                if len(args) >= 9:
                    self.clock.add(time.monotonic(), args[7], args[8], args[5])
                return
            if address == "/runs/all-completed":
                self.idle.set()
            elif address == "/log/info" and args and STOPPED_INFO in str(args[-1]):
                self.state = str(args[-1]).split(STOPPED_INFO, 1)[1].strip()
                self.stopped_at = time.monotonic()
                self.stopped.set()
            self.messages.put(GuiMessage(time.monotonic(), address, args))

        dispatcher = _GuiDispatcher(self.clock)
        dispatcher.set_default_handler(receive)
        while self._inbox is inbox:
            try:
                packet = inbox.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                dispatcher.call_handlers_for_packet(packet, None)
            except Exception:  # a packet that is not OSC: the bridge passes on anything
                logger.debug("dropped a packet the server sent that is not OSC", exc_info=True)

    def _send_packet(self, target: bytes, packet: bytes) -> None:
        """Send an OSC packet through the bridge to the server (b"s") or scsynth (b"c")."""
        outbox = self._outbox
        if outbox is None or not self.alive():
            raise ServerError("the Sonic Pi server is not running")
        try:
            outbox.sendto(target + packet, self._target)
        except OSError as err:
            raise ServerError(f"could not reach the server's OSC bridge: {err}") from err

    def send(self, address: str, *args) -> None:
        message = OscMessageBuilder(address)
        for arg in (CLIENT_ID, *args):
            message.add_arg(arg)
        self._send_packet(b"s", message.build().dgram)

    def send_to_scsynth(self, packet: bytes) -> None:
        """Send an OSC packet to scsynth; its replies arrive as GUI messages."""
        self._send_packet(b"c", packet)

    def run_code(self, code: str) -> None:
        """Start a run of `code`. A program too long for one OSC message (MAX_MESSAGE_BYTES)
        is written to the scratch folder and run from there, as the same kind of run."""
        self.idle.clear()
        if len(code.encode()) + 64 > MAX_MESSAGE_BYTES:
            self._programs += 1
            path = self.scratch / "programs" / f"program-{self._programs}.rb"
            path.write_text(code)
            code = f"run_file {ruby_string(self.inside(path))}"
        self.send("/run-code", code)

    def stop_runs(self) -> None:
        """End every run and report the server's state (see STATE_PROBE). `wait_stopped`
        waits until the stop has been carried out (the runs fade out for RUN_FADE_S
        after it), `wait_idle` until they have ended."""
        self.stopped.clear()
        self.run_code(f"__stop_other_jobs; __info {ruby_string(STOPPED_INFO)} + ' ' + "
                      f"({STATE_PROBE}).to_s")

    def changed_state(self) -> bool:
        """Whether the server's state after the last stop differs from its state after boot."""
        return self.state != self.booted_state

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
            self.send_to_scsynth(query.build().dgram)
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


def _lateness(line: str) -> float:
    try:
        return float(line.split()[1])
    except (IndexError, ValueError):
        return float("inf")
