"""Render one program on a booted server: wrap, record, align to beat 0, trim, measure.

Alignment: the wrapper plays a short marker click at logical time 0 and starts the
program MARKER_LEAD_BEATS later, in the same thread, so the program's beat 0 is exactly
MARKER_LEAD_S after the marker in the server's own timeline (Sonic Pi timestamps
every event). The clip is cut from the recording at marker + MARKER_LEAD_S, whatever
the latency between /start-recording and the first sound.
"""

from __future__ import annotations

import html
import queue
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from renderer.server import SAMPLE_RATE, ServerError, SonicPiServer

BPM = 120
BARS = 9
CLIP_BEATS = BARS * 4
CLIP_SECONDS = CLIP_BEATS * 60 / BPM  # 18.0
CLIP_FRAMES = int(round(CLIP_SECONDS * SAMPLE_RATE))
MARKER_LEAD_BEATS = 0.5
MARKER_LEAD_S = MARKER_LEAD_BEATS * 60 / BPM
# The marker: a 10 ms click, far louder than the 16-bit noise floor, gone long before beat 0.
MARKER_CODE = "synth :beep, note: 100, attack: 0, sustain: 0, release: 0.02, amp: 0.5"
MARKER_THRESHOLD = 0.01
SILENCE_DBFS = -60.0
DEFAULT_MAX_FULL_SCALE = 0.01  # flag a clip whose samples sit at full scale more often than this
# Sonic Pi's message when a thread's scheduling fell behind its logical time; under
# acceleration this is the renderer's fault (too little headroom), not the program's.
TIMING_ERROR_RE = re.compile(r"too far behind time|Timing Exception", re.I)
FINAL_STATUSES = ("ok", "syntax_error", "runtime_error", "silent")


@dataclass
class ClipResult:
    """What rendering one program gave. `audio` is int16 (frames, 2) when status is ok."""

    status: str  # ok, syntax_error, runtime_error, silent, timeout, timing, xrun, late, server_error
    message: str | None = None
    audio: np.ndarray | None = field(default=None, repr=False)
    levels: dict = field(default_factory=dict)
    render_s: float = 0.0

    @property
    def retryable(self) -> bool:
        """Failures of the renderer, not of the program: retry (maybe slower) instead."""
        return self.status in ("timeout", "timing", "xrun", "late", "server_error")


def wrap_program(code: str, token: str) -> str:
    """The program with the renderer's one-line prelude: 120 BPM, the marker, the end cue.

    The prelude is one line so that the server's line numbers are the program's own
    (see `clean_message`).
    """
    end_beats = MARKER_LEAD_BEATS + CLIP_BEATS + 0.25
    prelude = (f"use_bpm {BPM}; use_debug false; in_thread do use_bpm {BPM}; {MARKER_CODE}; "
               f"sleep {end_beats}; puts \"{token}\"; end; sleep {MARKER_LEAD_BEATS}")
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
    text = re.sub(r"eval:(\d+):?", lambda m: f"line {m.group(1)}:", text)
    text = " ".join(text.split())
    return f"line {where.group(1)}: {text}" if where else text


def measure_levels(audio: np.ndarray, window_s: float = 0.05) -> dict:
    """Levels of int16 audio: peak and RMS in dBFS, the fraction of samples at full
    scale, and the longest stretch (s) whose 50 ms windows all peak below -60 dBFS."""
    x = audio.astype(np.float64) / 32768.0
    peak = float(np.abs(x).max()) if x.size else 0.0
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    full = float(np.mean(np.abs(audio.astype(np.int32)) >= 32767)) if x.size else 0.0
    to_db = lambda v: float(20 * np.log10(v)) if v > 0 else -np.inf
    hop = int(window_s * SAMPLE_RATE)
    n = len(x) // hop
    quiet = np.abs(x[: n * hop]).reshape(n, -1).max(axis=1) < 10 ** (SILENCE_DBFS / 20) if n else []
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return {"peak_dbfs": to_db(peak), "rms_dbfs": to_db(rms), "full_scale_fraction": full,
            "longest_silence_s": longest * window_s}


def find_marker(recording: np.ndarray) -> int | None:
    """Frame of the marker's first sample (the first sound in the recording)."""
    loud = np.flatnonzero(np.abs(recording).max(axis=1) > MARKER_THRESHOLD * 32768)
    return int(loud[0]) if loud.size else None


def cut_clip(recording: np.ndarray) -> np.ndarray:
    """The CLIP_FRAMES frames starting at the program's beat 0."""
    marker = find_marker(recording)
    if marker is None:
        raise ServerError("no marker click in the recording (the server produced no sound)")
    start = marker + int(round(MARKER_LEAD_S * SAMPLE_RATE))
    if start + CLIP_FRAMES > len(recording):
        raise ServerError(f"recording too short: {len(recording) / SAMPLE_RATE:.2f} s, needs "
                          f"{(start + CLIP_FRAMES) / SAMPLE_RATE:.2f} s")
    return recording[start:start + CLIP_FRAMES]


def render_clip(server: SonicPiServer, code: str, timeout_s: float | None = None,
                max_full_scale: float = DEFAULT_MAX_FULL_SCALE) -> ClipResult:
    """Render one program to an 18 s int16 stereo clip on a booted server.

    Never raises for a program's fault: errors, silence and time-outs come back as a
    ClipResult status. ServerError is raised when the server itself misbehaves.
    """
    started = time.monotonic()
    speed = server.acceleration
    token = f"spg-end-{uuid.uuid4().hex[:12]}"
    clip_wall_s = (MARKER_LEAD_S + CLIP_SECONDS + 0.125 + server.sched_ahead_s) / speed
    timeout_s = timeout_s or 3 * clip_wall_s + 10
    faults_before = server.scheduling_faults()
    wav = server.workdir / f"take-{token}.wav"
    server.drain_messages()
    server.send("/start-recording")
    server.run_code(wrap_program(code, token))
    result = _wait_for_end(server, token, started + timeout_s)
    if result is None:
        # Sound reaches the recording sched_ahead after the thread printed the end cue.
        time.sleep(server.sched_ahead_s / speed + 0.05)
    if result is not None:
        server.send("/stop-all-jobs")
        _discard_recording(server, wav)
        result.render_s = time.monotonic() - started
        return result
    # Save first: the server handles OSC messages in turn and stopping all jobs takes a
    # while; the recording is complete once the end cue plus the headroom have passed.
    recording = _save_recording(server, wav)
    server.send("/stop-all-jobs")
    faults = {k: n - faults_before[k] for k, n in server.scheduling_faults().items()}
    if faults["xrun"]:
        return ClipResult("xrun", f"{faults['xrun']} JACK xruns at x{speed:g}: scsynth missed "
                          "its deadline", render_s=time.monotonic() - started)
    if faults["late"]:
        return ClipResult("late", f"{faults['late']} events reached scsynth late at x{speed:g}",
                          render_s=time.monotonic() - started)
    clip = cut_clip(recording)
    levels = measure_levels(clip)
    status, message = "ok", None
    if levels["peak_dbfs"] < SILENCE_DBFS:
        status, message = "silent", f"peak {levels['peak_dbfs']:.1f} dBFS is below {SILENCE_DBFS:g} dBFS"
    elif levels["full_scale_fraction"] > max_full_scale:
        message = (f"clipped: {levels['full_scale_fraction']:.2%} of samples at full scale "
                   f"(flag threshold {max_full_scale:.2%})")
    return ClipResult(status, message, clip if status == "ok" else None, levels,
                      time.monotonic() - started)


def _wait_for_end(server: SonicPiServer, token: str, deadline: float) -> ClipResult | None:
    """None when the end cue arrived; a failed ClipResult on error or time-out."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ClipResult("timeout", f"no end of clip within {deadline:.0f} s")
        if not server.alive():
            raise ServerError("the Sonic Pi server died during the clip")
        try:
            msg = server.messages.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if msg.address in ("/error", "/syntax_error"):
            text = clean_message(str(msg.args[1]) if len(msg.args) > 1 else str(msg.args))
            if TIMING_ERROR_RE.search(text):
                return ClipResult("timing", text)
            kind = "syntax_error" if "SyntaxError" in text or msg.address == "/syntax_error" else "runtime_error"
            return ClipResult(kind, text)
        if msg.address.startswith("/log/multi_message") and any(token in str(a) for a in msg.args):
            return None


def _save_recording(server: SonicPiServer, wav: Path, timeout_s: float = 20.0) -> np.ndarray:
    """Stop the recording, have the server save it to `wav`, and read it.

    Sonic Pi's /save-recording stops the recorder, waits for its buffer to close, renames
    the take to `wav` and then logs "Saving recording to <path>": that message, not the
    file's appearance, says the file is complete.
    """
    server.send("/save-recording", str(wav))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            msg = server.messages.get(timeout=0.2)
        except queue.Empty:
            if not server.alive():
                raise ServerError("the Sonic Pi server died while saving the recording")
            continue
        if msg.address == "/log/info" and any(f"Saving recording to {wav}" in str(a) for a in msg.args):
            audio, rate = sf.read(wav, dtype="int16", always_2d=True)
            wav.unlink()
            if rate != SAMPLE_RATE:
                raise ServerError(f"recording at {rate} Hz, expected {SAMPLE_RATE}")
            return audio
    raise ServerError(f"the server did not save the recording to {wav} within {timeout_s:.0f} s")


def _discard_recording(server: SonicPiServer, wav: Path) -> None:
    # Saving is the only way to close Sonic Pi's recording; the take is not needed.
    try:
        _save_recording(server, wav, timeout_s=5.0)
    except ServerError:
        wav.unlink(missing_ok=True)
