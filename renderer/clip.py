"""Render one program on a booted server: wrap, record, align to beat 0, trim, measure.

The program runs with a one-line prelude that starts a thread of the renderer's own in
the same run. That thread drives the recording in the server's own timeline:
  - it starts Sonic Pi's recorder, waits PRE_ROLL_BEATS, plays a short marker click
    and, MARKER_LEAD_BEATS later, the program's beat 0 comes (the main thread sleeps
    exactly that long before the program's first line);
  - at the clip's end (+ a short tail) it stops and saves the recording, timed so that
    the recorder is freed when the audio reaches that point.
Sonic Pi timestamps every event, so the program's beat 0 is exactly MARKER_LEAD_S after
the marker in the recording, whatever the latencies. The clip is cut from the
recording at marker + MARKER_LEAD_S. Driving the recorder from inside the run, rather
than with /start-recording and /save-recording around it, saves two scheduling
headrooms per clip.
"""

from __future__ import annotations

import functools
import html
import os
import queue
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from renderer.server import SAMPLE_RATE, ServerError, SonicPiServer, ruby_string

BPM = 120
BARS = 9
CLIP_BEATS = BARS * 4
CLIP_SECONDS = CLIP_BEATS * 60 / BPM  # 18.0
CLIP_FRAMES = int(round(CLIP_SECONDS * SAMPLE_RATE))
# Recording before the marker (nothing else sounds then: the previous run was stopped).
PRE_ROLL_BEATS = 1.0
RUN_FADE_S = 1.1  # Sonic Pi's fade-out of a stopped run, in its own seconds
STOP_MARGIN_S = 0.5  # added to the fade, in the server's seconds
MARKER_LEAD_BEATS = 0.5
MARKER_LEAD_S = MARKER_LEAD_BEATS * 60 / BPM
TAIL_BEATS = 0.25  # recorded past the clip's end, so the cut never runs short
# The marker: a 10 ms click, far louder than the 16-bit noise floor, gone long before beat 0.
MARKER_CODE = "synth :beep, note: 100, attack: 0, sustain: 0, release: 0.02, amp: 0.5"
MARKER_THRESHOLD = 0.01
MARKER_LENGTH_S = 0.05  # the click and its release
# A program may sound this long before its beat 0 (`with_swing -0.1` plays 50 ms early
# at 120 BPM; the clip still starts at beat 0). From the click's end to there all is
# quiet, which tells the click from a leftover of the previous run (a fade, a tail).
EARLY_SOUND_S = 0.15
# The end thread sends the recorder's stop a headroom before it is due (else scsynth
# would get it late), but at most this many of Sonic Pi's seconds: Sonic Pi waits for
# the recorder to be freed at most 5 s of its own time.
STOP_AHEAD_MAX_S = 2.5
SILENCE_DBFS = -60.0
DEFAULT_MAX_FULL_SCALE = 0.01  # flag a clip whose samples sit at full scale more often than this
# Sonic Pi's message when a thread's scheduling fell behind its logical time; under
# acceleration this is the renderer's fault (too little headroom), not the program's.
# Sonic Pi also waits at most 5 s of its own time for some replies of scsynth (a
# buffer for the recorder, a freed node): under acceleration that is a fraction of a
# real second, which a busy machine can miss ("Promise timed out after 5 seconds").
TIMING_ERROR_RE = re.compile(r"too far behind time|Timing Exception|Promise timed out", re.I)
FINAL_STATUSES = ("ok", "syntax_error", "runtime_error", "silent")
# The stack failed to keep time during the clip, though the program was fine: an event
# reached scsynth late, or scsynth's clock drifted against its samples (see
# renderer.server.CLOCK_POLL_S; with the sample clock in place it does not).
SCHEDULING_FAULTS = ("late", "drift")
# Largest drift allowed between any two moments of a clip. Onsets also sit on scsynth's
# 64-sample control blocks (up to 1.45 ms off), and on 26 metronomes the estimate fell
# up to 0.8 ms short of their onsets' spread: 2.5 ms keeps onsets within 5 ms.
MAX_CLOCK_DRIFT_S = 0.0025
# The stack did not keep time, the scheduling faults or Ruby falling "too far behind
# time": the renderer's failures, retried at the same speed first.
TIME_KEEPING_FAILURES = ("timing", *SCHEDULING_FAULTS)
# How often (real seconds) a playing clip's time keeping is checked: a failed clip is
# ended within this, not played to its end (at x8 a clip plays 2.8 s).
FAULT_CHECK_S = 0.25


# Sonic Pi's built-in samples, one file per name (see wrap_program)
SAMPLES_DIR = Path("/usr/share/sonic-pi/samples")


@functools.lru_cache(maxsize=1)
def _builtin_sample_names() -> frozenset[str]:
    return frozenset(path.stem for path in SAMPLES_DIR.glob("*.flac"))


def builtin_samples_in(code: str) -> list[str]:
    """The built-in samples a program names as symbols (:loop_amen), sorted; samples
    named otherwise (strings, paths) are loaded by Sonic Pi as it plays them."""
    return sorted(set(re.findall(r":(\w+)", code)) & _builtin_sample_names())


# What a program can use to change the server for every run after its own (the master
# mixer, tuning, headroom, functions, time state), and Ruby that can reach anything
# (evaluation, reflection, processes, globals, the runtime's instance variables). After
# a program that uses any of it, the server is replaced before the next clip: the
# server's own report of its state (renderer.server.STATE_PROBE) cannot see all of it
# (the mixer's controls live in scsynth). None of the templates' programs uses any.
SERVER_STATE_RE = re.compile(
    r"\b(?:set_\w+!|reset_mixer!)|\b(set|define|defonce|live_audio|load_synthdefs|run_file|run_code|"
    r"eval_file|eval|instance_eval|class_eval|module_eval|instance_exec|define_method|"
    r"define_singleton_method|send|__send__|public_send|method|instance_variable_get|"
    r"instance_variable_set|const_set|const_get|remove_method|undef_method|alias_method|"
    r"ObjectSpace|Kernel|Object|Module|Class|require|load|system|spawn|exec|fork|Process)\b"
    r"|\$[A-Za-z_]|@[A-Za-z_]|`|^\s*(class|module|def|alias|undef)\b", re.M)


def touches_server_state(code: str) -> list[str]:
    """What in `code` may change the server for the programs after it (SERVER_STATE_RE)."""
    return sorted({match.group(0).strip() for match in SERVER_STATE_RE.finditer(code)})


# Calls that make sound, and a sample named by a file path (quoted)
SOUND_CALL_RE = re.compile(r"\b(play\w*|synth|sample|live_audio|midi\w*)\b")
SAMPLE_PATH_RE = re.compile(r"\bsample\s*\(?\s*(?:\"([^\"]+)\"|'([^']+)')")
# What a sandboxed server can read (renderer.sandbox)
READABLE_ROOTS = ("/usr/",)


def silence_reason(code: str) -> str | None:
    """Why a program that rendered silent was silent, where its text tells: it makes no
    sound call, or it names a sample file the server cannot read."""
    if not SOUND_CALL_RE.search(code):
        return "the program has no play, synth or sample call"
    for match in SAMPLE_PATH_RE.finditer(code):
        path = os.path.expanduser(match.group(1) or match.group(2))
        if not os.path.isfile(path):
            return f"sample file {path} does not exist"
        if not os.path.realpath(path).startswith(READABLE_ROOTS):
            return (f"sample file {path} is outside what the sandboxed server can read "
                    f"({', '.join(READABLE_ROOTS)})")
    return None


class ShortRecording(ServerError):
    """The recorder stopped before the clip's end. Its stop is scheduled a whole clip
    after the marker, in the server's time: the two landed closer than that when the
    server's clock jumped against its samples (seen once in a stretch of clock drift)."""


@dataclass
class ClipResult:
    """What rendering one program gave. `audio` is int16 (frames, 2) when status is ok."""

    status: str  # ok, syntax_error, runtime_error, silent, timeout, timing, late, drift, server_error
    message: str | None = None
    audio: np.ndarray | None = field(default=None, repr=False)
    levels: dict = field(default_factory=dict)
    render_s: float = 0.0
    # scsynth's highest DSP load during the clip, % of its audio period (see
    # renderer.server.AudioClock.peak_load): tells a program too heavy for the factor
    # from a passing stall when the stack failed to keep time
    dsp_load: float | None = None

    @property
    def retryable(self) -> bool:
        """Failures of the renderer, not of the program: retry (maybe slower) instead."""
        return self.status in ("timeout", "server_error", *TIME_KEEPING_FAILURES)


def wrap_program(code: str, take: str, sched_ahead_s: float, stop_ahead_s: float) -> str:
    """The program with the renderer's one-line prelude: 120 BPM, the built-in samples
    it names, the recorder, the marker.

    `take` is where the server saves the recording (as the server sees it); `sched_ahead_s` the server's
    scheduling headroom and `stop_ahead_s` (at most that) how long before it is due the
    recorder's stop is sent, both in the server's seconds. The prelude is one line so
    that the server's line numbers are the program's own (see `clean_message`).

    Sonic Pi loads a sample when a run first plays it and waits for scsynth meanwhile;
    events due then reach scsynth late when the headroom is short (measured: a jungle
    program's first clip on a fresh real-time server, 2 events 83 ms late with 1 s of
    headroom). The prelude loads them before anything is scheduled: a load took 8 ms of
    the server's time at x8, one already loaded 0.3 ms, against a headroom of 2.4 s.
    """
    loads = "".join(f"load_sample :{name}; " for name in builtin_samples_in(code))
    # The end thread's own headroom is stop_ahead_s, so it sleeps the difference longer:
    # its stop then lands when the audio reaches the clip's end plus the tail.
    stop_beats = (PRE_ROLL_BEATS + MARKER_LEAD_BEATS + CLIP_BEATS + TAIL_BEATS
                  + (sched_ahead_s - stop_ahead_s) * BPM / 60)
    prelude = (f"use_bpm {BPM}; use_debug false; {loads}in_thread do use_bpm {BPM}; recording_start; "
               f"sleep {PRE_ROLL_BEATS:g}; {MARKER_CODE}; sleep {stop_beats:.6f}; "
               f"__spg_use_sched_ahead_time {stop_ahead_s:.6f}; recording_save {ruby_string(take)}; end; "
               f"sleep {PRE_ROLL_BEATS + MARKER_LEAD_BEATS:g}")
    return prelude + "\n" + code


def clean_message(text: str) -> str:
    """Server error text as the user would read it: unescaped, with their file's line number.

    Sonic Pi sends e.g. "[buffer eval, line 3] - NoMethodError\nThread death!\n undefined
    method ..." or, for syntax errors, "eval:3: syntax error, ...". Sonic Pi evaluates
    with a line offset of one, so with the renderer's one-line prelude its numbers are
    the program's own line numbers (checked in tests/test_render.py).
    """
    text = html.unescape(text)
    where = None if "eval:" in text else re.search(r"\[buffer eval, line (\d+)\]", text)
    text = re.sub(r"\[buffer eval, line \d+\] - ", "", text).replace("Thread death!", "")
    text = re.sub(r"^\s*\[eval\] - ", "", text)  # an error outside the program's own lines
    text = re.sub(r"eval:(\d+):?", lambda m: f"line {m.group(1)}:", text)
    text = " ".join(text.split())
    return f"line {where.group(1)}: {text}" if where else text


def measure_levels(audio: np.ndarray, window_s: float = 0.05) -> dict:
    """Levels of int16 audio: peak and RMS in dBFS, the fraction of samples at full
    scale, and the longest stretch (s) whose 50 ms windows all peak below -60 dBFS.

    In integers where it can be (a clip is 1.6 M samples, measured for every clip by
    the renderer on a machine whose cores the servers need)."""
    if not audio.size:
        return {"peak_dbfs": -np.inf, "rms_dbfs": -np.inf, "full_scale_fraction": 0.0,
                "longest_silence_s": 0.0}
    magnitude = np.abs(audio.astype(np.int32))  # int32: |-32768| does not fit in int16
    samples = audio.reshape(-1).astype(np.float64)
    peak = int(magnitude.max()) / 32768.0
    rms = float(np.sqrt(samples @ samples / samples.size)) / 32768.0
    full = np.count_nonzero(magnitude >= 32767) / audio.size
    to_db = lambda v: float(20 * np.log10(v)) if v > 0 else -np.inf
    hop = int(window_s * SAMPLE_RATE)
    n = len(audio) // hop
    frame_peak = np.maximum.reduce(list(magnitude.reshape(len(audio), -1).T))  # over channels
    quiet = frame_peak[: n * hop].reshape(n, hop).max(axis=1) < 32768.0 * 10 ** (SILENCE_DBFS / 20)
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return {"peak_dbfs": to_db(peak), "rms_dbfs": to_db(rms), "full_scale_fraction": float(full),
            "longest_silence_s": longest * window_s}


def find_marker(recording: np.ndarray) -> int | None:
    """Frame of the marker's first sample (the first sound in the recording)."""
    loud = np.flatnonzero(np.abs(recording.reshape(-1).astype(np.int32)) > MARKER_THRESHOLD * 32768)
    return int(loud[0]) // recording.shape[1] if loud.size else None


def cut_clip(recording: np.ndarray) -> np.ndarray:
    """The CLIP_FRAMES frames starting at the program's beat 0.

    Checks that the first sound was the marker: from the click's end until
    EARLY_SOUND_S before beat 0 nothing may sound (a leftover of the previous run
    would be mistaken for it)."""
    marker = find_marker(recording)
    if marker is None:
        raise ServerError("no marker click in the recording (the server produced no sound)")
    start = marker + int(round(MARKER_LEAD_S * SAMPLE_RATE))
    if start + CLIP_FRAMES > len(recording):
        raise ShortRecording(f"recording too short: {len(recording) / SAMPLE_RATE:.2f} s, "
                             f"needs {(start + CLIP_FRAMES) / SAMPLE_RATE:.2f} s")
    between = recording[marker + int(MARKER_LENGTH_S * SAMPLE_RATE):start - int(EARLY_SOUND_S * SAMPLE_RATE)]
    if between.size and np.abs(between).max() > MARKER_THRESHOLD * 32768:
        raise ServerError("sound before the program's beat 0: the marker could not be told apart")
    return recording[start:start + CLIP_FRAMES]


def render_clip(server: SonicPiServer, code: str, timeout_s: float | None = None,
                max_full_scale: float = DEFAULT_MAX_FULL_SCALE) -> ClipResult:
    """Render one program to an 18 s int16 stereo clip on a booted server.

    Never raises for a program's fault: errors, silence and time-outs come back as a
    ClipResult status. ServerError is raised when the server itself misbehaves.
    """
    started = time.monotonic()
    speed = server.acceleration
    sched_ahead = server.sched_ahead_s
    stop_ahead = min(sched_ahead, STOP_AHEAD_MAX_S)
    take = server.scratch / f"take-{uuid.uuid4().hex[:12]}.wav"
    clip_wall_s = (sched_ahead + (PRE_ROLL_BEATS + MARKER_LEAD_BEATS + CLIP_BEATS + TAIL_BEATS)
                   * 60 / BPM) / speed
    timeout_s = timeout_s or 3 * clip_wall_s + 10
    _wait_stopped_run_faded(server)
    faults_before = server.scheduling_faults()
    server.drain_messages()
    server.run_code(wrap_program(code, server.inside(take), sched_ahead, stop_ahead))
    # the marker is due a pre-roll and a headroom after the run starts
    marker_due = time.monotonic() + (PRE_ROLL_BEATS * 60 / BPM + sched_ahead) / speed
    # the stack's time keeping so far; checked while the clip plays, so that a clip
    # already lost to a stall is ended at once, not rendered to its end and thrown away
    def failure_so_far(until: float) -> ClipResult | None:
        return _time_keeping_failure(server, faults_before, marker_due, until)

    failed = _wait_for_save(server, take, timeout_s - (time.monotonic() - started), failure_so_far)
    saved = time.monotonic()
    if failed is not None:
        failed.dsp_load = server.clock.peak_load(started, saved)
        _discard_recording(server, take, stop_ahead)
        failed.render_s = time.monotonic() - started
        return failed
    server.stop_runs()  # its live loops go on; it fades out while the take is read
    recording = _read_take(take)
    # every late event of the clip counted: the log is read up to now, after the save
    failed = _time_keeping_failure(server, faults_before, marker_due, saved, up_to_now=True)
    if failed is not None:
        failed.dsp_load = server.clock.peak_load(started, saved)
        failed.render_s = time.monotonic() - started
        return failed
    try:
        clip = cut_clip(recording)
    except ShortRecording as err:  # the stack's time keeping, not the server's health
        return ClipResult("drift", f"{err} at x{speed:g}: scsynth's clock jumped against its "
                          "samples during the clip", render_s=time.monotonic() - started)
    levels = measure_levels(clip)
    status, message = "ok", None
    if levels["peak_dbfs"] < SILENCE_DBFS:
        status, message = "silent", f"peak {levels['peak_dbfs']:.1f} dBFS is below {SILENCE_DBFS:g} dBFS"
        reason = silence_reason(code)
        if reason:
            message += f": {reason}"
    elif levels["full_scale_fraction"] > max_full_scale:
        message = (f"clipped: {levels['full_scale_fraction']:.2%} of samples at full scale "
                   f"(flag threshold {max_full_scale:.2%})")
    return ClipResult(status, message, clip if status == "ok" else None, levels,
                      time.monotonic() - started)


def render_clip_retrying(server: SonicPiServer, code: str, attempts: int = 6,
                         **options) -> ClipResult:
    """render_clip, rendered again at the server's speed while the stack fails to keep
    time (up to `attempts` renders): for a server that renders a few clips outside a
    batch (the fidelity check, tests), so a machine that stalls now and then does not
    fail them by itself. Six, since in a stretch of stalls a silent program drifted
    three times in a row on a server at x4 (CI, the integration tests). The batch has
    its own policy (renderer.render.next_attempt)."""
    for _ in range(attempts):
        result = render_clip(server, code, **options)
        if result.status not in TIME_KEEPING_FAILURES:
            break
    return result


def _time_keeping_failure(server: SonicPiServer, faults_before: dict, marker_due: float,
                          until: float, up_to_now: bool = False) -> ClipResult | None:
    """The scheduling fault the clip has met from its start to `until` (monotonic), if any:
    a late event since `faults_before`, or a clock drift over the limit since the marker
    was due. `up_to_now`: see SonicPiServer.scheduling_faults."""
    speed = server.acceleration
    faults = {k: n - faults_before[k] for k, n in server.scheduling_faults(up_to_now).items()}
    if faults["late"]:
        return ClipResult("late", f"{faults['late']} events reached scsynth late at x{speed:g}")
    drift = server.clock.drift_s(marker_due, until, speed)
    if drift > MAX_CLOCK_DRIFT_S:
        return ClipResult("drift", f"scsynth's clock drifted {drift * 1000:.1f} ms against its "
                          f"samples during the clip at x{speed:g} (limit {MAX_CLOCK_DRIFT_S * 1000:g} "
                          "ms): the machine stalled; if this persists, use a lower --acceleration")
    return None


def _wait_stopped_run_faded(server: SonicPiServer) -> None:
    """Wait until the last clip's stopped run can no longer sound in the next recording.

    Sonic Pi fades a stopped run out over RUN_FADE_S of its time. The next run's first
    sound (its marker) comes a headroom after the run starts, so at x8 (2.4 s of
    headroom) the next run starts at once; with a shorter headroom (real time: 1 s) it
    waits the difference. Measured at x1, x4 and x8: a loud run stopped this way left no
    sample in the next recording (tests/test_render.py checks it at x4); sound there
    would be taken for the marker, and cut_clip would then find the real marker before
    beat 0 and fail the clip. Not waiting until Sonic Pi reports the run ended (a
    headroom after its fade) saves 0.28 s a clip at x8.
    """
    server.wait_stopped()
    wait_s = (RUN_FADE_S + STOP_MARGIN_S - server.sched_ahead_s) / server.acceleration
    time.sleep(max(0.0, server.stopped_at + wait_s - time.monotonic()))


def _wait_runs_ended(server: SonicPiServer) -> None:
    """Wait for the stopped runs' fade-out (RUN_FADE_S of the server's time) to end."""
    server.wait_idle(10 + RUN_FADE_S / server.acceleration)


def _error_text(msg) -> str:
    """The user-facing text of a server /error or /syntax_error message."""
    return clean_message(str(msg.args[1]) if len(msg.args) > 1 else str(msg.args))


def _saved(msg, server: SonicPiServer, take: Path) -> bool:
    line = f"Saving recording to {server.inside(take)}"
    return msg.address == "/log/info" and any(line in str(a) for a in msg.args)


def _wait_for_save(server: SonicPiServer, take: Path, timeout_s: float,
                   failure_so_far=lambda until: None) -> ClipResult | None:
    """None when the server saved the take; a failed ClipResult on error, time-out, or
    as soon as `failure_so_far(now)` reports that the stack failed to keep time."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ClipResult("timeout", f"the clip did not end within {timeout_s:.0f} s")
        if not server.alive():
            raise ServerError("the Sonic Pi server died during the clip")
        failed = failure_so_far(time.monotonic())
        if failed is not None:
            return failed
        try:
            msg = server.messages.get(timeout=min(remaining, FAULT_CHECK_S))
        except queue.Empty:
            continue
        if msg.address in ("/error", "/syntax_error"):
            text = _error_text(msg)
            if TIMING_ERROR_RE.search(text):
                return ClipResult("timing", text)
            kind = "syntax_error" if "SyntaxError" in text or msg.address == "/syntax_error" else "runtime_error"
            return ClipResult(kind, text)
        if _saved(msg, server, take):
            return None


def _read_take(take: Path) -> np.ndarray:
    audio, rate = sf.read(take, dtype="int16", always_2d=True)
    take.unlink()
    if rate != SAMPLE_RATE:
        raise ServerError(f"recording at {rate} Hz, expected {SAMPLE_RATE}")
    return audio


def _discard_recording(server: SonicPiServer, take: Path, stop_ahead_s: float) -> None:
    """End a failed run, then the recording it left going (saving is the only way to
    close it), in a run of its own with a short headroom: Sonic Pi waits at most 5 s of
    its time for the recorder to stop, and the GUI's stop and save would schedule that
    a whole headroom ahead."""
    server.stop_runs()
    _wait_runs_ended(server)
    server.drain_messages()  # the failed run's other messages
    server.run_code(f"__spg_use_sched_ahead_time {stop_ahead_s:.6f}; "
                    f"recording_save {ruby_string(server.inside(take))}")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            msg = server.messages.get(timeout=0.2)
        except queue.Empty:
            if not server.alive():
                raise ServerError("the Sonic Pi server died while stopping its recorder")
            continue
        if msg.address == "/error":  # nothing else runs now: the save itself failed
            raise ServerError("the server could not stop its recorder: "
                              + _error_text(msg))
        if _saved(msg, server, take) or (msg.address == "/log/info" and "No recording to save" in str(msg.args)):
            take.unlink(missing_ok=True)
            return
    raise ServerError("the server did not stop its recorder within 10 s")
