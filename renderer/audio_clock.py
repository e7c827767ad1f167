"""scsynth's clock against its samples, and its DSP load, from its /status replies.

The renderer polls each server's scsynth for its status (renderer.server) and fails a
clip whose clock drifted or that met a late event (renderer.clip).
"""

from __future__ import annotations

import struct
import threading
from collections import deque

from pythonosc.osc_message_builder import OscMessageBuilder

# scsynth places each event on its samples by the event's time stamp, through a clock
# it derives from the times its JACK callback runs, smoothed by a delay-locked loop of
# 0.012 Hz bandwidth in the server's time (a 13 s time constant: 1.7 real s at x8).
# When the callback's wake-up latency shifts (it waits for a busy core), the loop
# follows slowly and meanwhile runs fast or slow against the samples, so events drift;
# acceleration multiplies the latency. scsynth's /status reply holds the loop's current
# sample rate, so the drift over a span is the integral of that rate's error (it
# matches the spread of a metronome's onsets within 0.8 ms). The sample clock
# (sample_clock.c) feeds the loop the samples' own times, so the rate holds within
# 5e-7 of nominal; the drift check is a guard against a server without it.
STATUS_REQUEST = OscMessageBuilder("/status").build().dgram
# scsynth's reply, as it lays it out: address, type tags, then [1, ugens, synths, groups,
# synthdefs, average DSP load %, peak DSP load %, nominal sample rate, measured rate]
_STATUS_REPLY_HEAD = b"/status.reply\0\0\0,iiiiiffdd\0\0"
_STATUS_REPLY_VALUES = struct.Struct(">5i2f2d")


def parse_status_reply(data: bytes) -> tuple | None:
    """The values of scsynth's /status.reply datagram, or None for any other datagram."""
    if len(data) != len(_STATUS_REPLY_HEAD) + _STATUS_REPLY_VALUES.size \
            or not data.startswith(_STATUS_REPLY_HEAD):
        return None
    return _STATUS_REPLY_VALUES.unpack_from(data, len(_STATUS_REPLY_HEAD))


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
