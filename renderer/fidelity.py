"""Is accelerated rendering faithful? Onsets and spectra against real time.

`check_fidelity(factor)` renders a metronome (a synth click on every beat, 0.5 s apart)
and a reference piece (drums, bass, chords and fx, deterministic synths only) at the
factor, and the reference twice in real time. It passes when the metronome's onsets sit
on the 0.5 s grid within ONSET_TOLERANCE_S and the accelerated reference is as close to
the real-time one as two real-time renders are to each other (spectrum and envelope).
`calibrate` finds the fastest factor that passes; "auto" acceleration uses its result,
cached per machine and Sonic Pi version.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from renderer.clip import CLIP_SECONDS, MAX_CLOCK_DRIFT_S, render_clip_retrying
from renderer.server import SAMPLE_RATE, ServerError, SonicPiServer

logger = logging.getLogger(__name__)

# The factors `auto` tries, fastest first. It stops at x8: above it (x12, x16 beside
# five servers rendering heavy programs), metronome onsets came 14-41 ms late with no
# late event logged and no drift, a fault the renderer cannot see (docs/renderer.md).
# A user may ask for more. When no factor passes, `auto` is real time (store_factor).
CANDIDATE_FACTORS = (8, 4)
CALIBRATION_VERSION = 5  # bumped when the clip protocol or the candidates change
ONSET_TOLERANCE_S = 0.005
# How much less alike an accelerated render may be than two real-time renders.
SPECTRUM_TOLERANCE = 0.01
ENVELOPE_TOLERANCE = 0.05
METRONOME = "live_loop :metronome do\n  play 84, attack: 0, release: 0.05, amp: 0.8\n  sleep 1\nend\n"
REFERENCE = """use_random_seed 7
live_loop :drums do
  sample :bd_haus, amp: 0.8
  sleep 0.5
  sample :drum_snare_hard, amp: 0.5
  sleep 0.5
end
live_loop :bass do
  use_synth :tb303
  play (ring :e2, :e2, :g2, :a2).tick, release: 0.3, cutoff: 80, amp: 0.5
  sleep 0.5
end
with_fx :reverb, room: 0.7 do
  live_loop :chords do
    use_synth :prophet
    play chord((ring :e3, :c3, :d3).tick, :minor), attack: 0.1, release: 1.8, amp: 0.3
    sleep 2
  end
end
"""


@dataclass
class FidelityReport:
    factor: float
    worst_onset_error_s: float
    onsets: int
    spectrum_similarity: float
    realtime_spectrum_similarity: float
    envelope_correlation: float
    realtime_envelope_correlation: float
    passed: bool


def recorded_checks() -> dict:
    """The rules that let a clip be rendered on an accelerated clock, as a render's
    provenance.json records them (the dataset card quotes them from there)."""
    return {"candidate_factors": [float(f) for f in CANDIDATE_FACTORS],
            "onset_tolerance_ms": ONSET_TOLERANCE_S * 1000,
            "spectrum_tolerance": SPECTRUM_TOLERANCE, "envelope_tolerance": ENVELOPE_TOLERANCE,
            "max_drift_ms": MAX_CLOCK_DRIFT_S * 1000}


def onset_times(audio: np.ndarray, threshold: float = 0.05, gap_s: float = 0.05) -> np.ndarray:
    """Times (s) where the signal first rises above threshold after gap_s of quiet."""
    level = np.abs(audio.astype(np.float64) / 32768.0).max(axis=1)
    loud = np.flatnonzero(level > threshold)
    if not loud.size:
        return np.array([])
    starts = np.concatenate([[loud[0]], loud[1:][np.diff(loud) > gap_s * SAMPLE_RATE]])
    return starts / SAMPLE_RATE


def grid_error(onsets: np.ndarray, period_s: float = 0.5) -> float:
    """Worst distance of an onset from the grid k * period_s (k = 0, 1, ...)."""
    if not onsets.size:
        return float("inf")
    return float(np.abs(onsets - np.round(onsets / period_s) * period_s).max())


def average_spectrum(audio: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    """Log magnitude spectrum averaged over time (mono, Hann windows, hop n_fft/2)."""
    mono = audio.astype(np.float64).mean(axis=1) / 32768.0
    frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[:: n_fft // 2]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).mean(axis=0)
    return np.log10(magnitude + 1e-9)


def spectrum_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two clips' average log spectra (1 = same spectrum)."""
    return float(np.corrcoef(average_spectrum(a), average_spectrum(b))[0, 1])


def envelope_correlation(a: np.ndarray, b: np.ndarray, frame_s: float = 0.01) -> float:
    """Pearson correlation of 10 ms RMS envelopes (1 = same dynamics in time)."""
    hop = int(frame_s * SAMPLE_RATE)

    def envelope(x):
        mono = x.astype(np.float64).mean(axis=1)
        n = len(mono) // hop
        return np.sqrt((mono[: n * hop].reshape(n, hop) ** 2).mean(axis=1))

    return float(np.corrcoef(envelope(a), envelope(b))[0, 1])


def _render(server: SonicPiServer, code: str) -> np.ndarray:
    """Render a fidelity program; time-keeping failures (late event, drift, timing
    error) are retried at the same speed, as the batch renderer does first."""
    result = render_clip_retrying(server, code)
    if result.status != "ok":
        raise ServerError(f"fidelity program did not render at x{server.acceleration:g}: "
                          f"{result.status} {result.message}")
    return result.audio


def check_fidelity(factor: float, work_dir: Path, realtime: list | None = None,
                   headroom_s: float = 0.3) -> FidelityReport:
    """Render the metronome and the reference at `factor` and compare with real time.

    `realtime` may pass two real-time renders of REFERENCE already made (calibration
    reuses them across factors).
    """
    if realtime is None:
        with SonicPiServer(acceleration=1.0, headroom_s=headroom_s) as server:
            realtime = [_render(server, REFERENCE), _render(server, REFERENCE)]
    with SonicPiServer(acceleration=factor, headroom_s=headroom_s) as server:
        metronome = _render(server, METRONOME)
        reference = _render(server, REFERENCE)
    onsets = onset_times(metronome)
    report = FidelityReport(
        factor=factor, worst_onset_error_s=grid_error(onsets), onsets=len(onsets),
        spectrum_similarity=spectrum_similarity(reference, realtime[0]),
        realtime_spectrum_similarity=spectrum_similarity(realtime[1], realtime[0]),
        envelope_correlation=envelope_correlation(reference, realtime[0]),
        realtime_envelope_correlation=envelope_correlation(realtime[1], realtime[0]),
        passed=False)
    report.passed = bool(
        report.worst_onset_error_s <= ONSET_TOLERANCE_S
        # an event on beat 36 may land a block (<1.5 ms) before the clip's end: not counted
        and int(np.sum(onsets < CLIP_SECONDS - ONSET_TOLERANCE_S)) == int(CLIP_SECONDS / 0.5)
        and report.spectrum_similarity >= report.realtime_spectrum_similarity - SPECTRUM_TOLERANCE
        and report.envelope_correlation >= report.realtime_envelope_correlation - ENVELOPE_TOLERANCE)
    logger.info("fidelity at x%g: %s", factor, report)
    return report


def calibrate(work_dir: Path, factors=CANDIDATE_FACTORS, headroom_s: float = 0.3) -> list[FidelityReport]:
    """Check factors from fastest to slowest and stop at the first that passes."""
    with SonicPiServer(acceleration=1.0, headroom_s=headroom_s) as server:
        realtime = [_render(server, REFERENCE), _render(server, REFERENCE)]
    reports = []
    for factor in sorted(factors, reverse=True):
        try:
            reports.append(check_fidelity(factor, work_dir, realtime, headroom_s))
        except ServerError as err:
            logger.warning("x%g failed to render: %s", factor, err)
            continue
        if reports[-1].passed:
            break
    return reports


def _cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sonicpi-gen" / "acceleration.json"


def _machine_key() -> str:
    from sonicpi_gen.inventory import DEFAULT_VERSION
    return f"{platform.node()}|{os.cpu_count()}|sonic-pi-{DEFAULT_VERSION}|calibration-{CALIBRATION_VERSION}"


# Cache keys of node types (see node_type_key) begin with this
NODE_TYPE_PREFIX = "node-type:"


def node_type() -> str:
    """This machine's type, for calibration on a cluster: its CPU model and core count
    (the factor a machine keeps up with depends on its cores' speed and number)."""
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def node_type_key(kind: str) -> str:
    """The calibration cache key of a node type (see node_type)."""
    from sonicpi_gen.inventory import DEFAULT_VERSION
    return f"{NODE_TYPE_PREFIX}{kind}|sonic-pi-{DEFAULT_VERSION}|calibration-{CALIBRATION_VERSION}"


def cached_factor(key: str) -> float | None:
    """The calibrated factor cached under `key`, or None."""
    cache = _cache_path()
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    return float(cached[key]["factor"]) if key in cached else None


def store_factor(key: str, reports: list[FidelityReport]) -> float:
    """Cache the fastest factor that passed in `reports` (1 if none did) under `key`."""
    passed = [r for r in reports if r.passed]
    factor = passed[0].factor if passed else 1.0
    cache = _cache_path()
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    cached[key] = {"factor": factor, "reports": [asdict(r) for r in reports]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(cached, indent=1) + "\n")
    return factor


def forget_calibration() -> None:
    """Drop this machine's cached calibration and those of cluster node types, so the
    next "auto" run calibrates again."""
    cache = _cache_path()
    if cache.exists():
        cached = json.loads(cache.read_text())
        cached.pop(_machine_key(), None)
        for key in [k for k in cached if k.startswith(NODE_TYPE_PREFIX)]:
            cached.pop(key)
        cache.write_text(json.dumps(cached, indent=1) + "\n")


def resolve_acceleration(acceleration, work_dir: Path) -> float:
    """A number stays as it is; "auto" is the cached calibration, calibrating once if needed."""
    if acceleration != "auto":
        factor = float(acceleration)
        if factor < 1:
            raise ValueError(f"acceleration {factor} must be >= 1 (1 = real time)")
        return factor
    factor = cached_factor(_machine_key())
    if factor is not None:
        return factor
    logger.warning("calibrating the acceleration factor for this machine (about a minute, once; "
                   "`sonicpi-gen render --calibrate` redoes it)")
    return store_factor(_machine_key(), calibrate(work_dir))
