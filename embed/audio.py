"""Audio helpers that need no torch: FLAC decoding, mono, resampling, log-mel statistics.

Everything here is plain numpy (scipy for polyphase resampling when it is installed), so
it runs in DataLoader workers and on machines without an accelerator or model weights.
"""

from __future__ import annotations

import logging
from math import gcd

import numpy as np

logger = logging.getLogger(__name__)

# Log-mel descriptor defaults: 22.05 kHz keeps everything a synth makes below 11 kHz,
# 2048/512 is the usual music STFT (93 ms window, 23 ms hop), 64 bands as in CLAP/HTSAT.
LOGMEL_SAMPLE_RATE = 22050
LOGMEL_N_FFT = 2048
LOGMEL_HOP = 512
LOGMEL_N_MELS = 64
LOGMEL_EPS = 1e-10  # floor inside the log, so digital silence gives log(1e-10), not -inf


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array; 1-D input passes through."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim == 2:
        return wave.mean(axis=1, dtype=np.float32)
    raise ValueError(f"waveform must be (frames,) or (frames, channels), got shape {wave.shape}")


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a mono waveform from sr_in to sr_out Hz (polyphase, deterministic).

    Uses scipy.signal.resample_poly (Kaiser-windowed FIR, the ratio reduced by the gcd:
    44100 -> 16000 is up 160, down 441). Without scipy, falls back to an FFT resampler.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return wave
    g = gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    try:
        from scipy.signal import resample_poly
    except ImportError:  # numpy fallback: band-limited FFT resampling of the whole clip
        n_out = int(round(len(wave) * up / down))
        spec = np.fft.rfft(wave.astype(np.float64))
        n_bins = n_out // 2 + 1
        out_spec = np.zeros(n_bins, dtype=np.complex128)
        keep = min(n_bins, len(spec))
        out_spec[:keep] = spec[:keep]
        return (np.fft.irfft(out_spec, n=n_out) * (n_out / max(len(wave), 1))).astype(np.float32)
    return resample_poly(wave, up, down).astype(np.float32)


def prepare_mono(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Mono and resampled to sr_out: the input every audio encoder starts from."""
    return resample(to_mono(wave), sr_in, sr_out)


def hz_to_mel(hz):
    """HTK mel scale: 2595 * log10(1 + f / 700) (1000 Hz -> 1000 mel)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of hz_to_mel."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), peak 1 (no area norm).

    Band m rises linearly in Hz from edge m to edge m+1 and falls to edge m+2, the
    n_mels + 2 edges being equally spaced on the HTK mel scale between fmin and fmax.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got fmin={fmin}, fmax={fmax}")
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz - lo) / (mid - lo)
    falling = (hi - bin_hz) / (hi - mid)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def logmel_stats(wave: np.ndarray, sample_rate: int, n_fft: int = LOGMEL_N_FFT,
                 hop: int = LOGMEL_HOP, n_mels: int = LOGMEL_N_MELS, fmin: float = 0.0,
                 fmax: float | None = None, window: str = "hann",
                 filters: np.ndarray | None = None) -> np.ndarray:
    """Mean and standard deviation over time of natural-log mel band energies.

    Frames start at sample 0 every `hop` samples and only whole frames count (a clip
    shorter than n_fft is zero-padded to one frame). Power spectrum |rfft(frame * w)|^2,
    w a periodic Hann window ("hann") or ones ("rect"); band energy = filters @ power;
    value = ln(energy + 1e-10). Returns float32 [means (n_mels), stds (n_mels)],
    std with ddof=0.
    """
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"logmel_stats needs a mono 1-D waveform, got shape {x.shape}")
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n_frames]
    if window == "hann":
        w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    elif window == "rect":
        w = np.ones(n_fft)
    else:
        raise ValueError(f"window must be 'hann' or 'rect', got {window!r}")
    power = np.abs(np.fft.rfft(frames * w, axis=1)) ** 2
    if filters is None:
        filters = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    logmel = np.log(power @ filters.T + LOGMEL_EPS)
    return np.concatenate([logmel.mean(axis=0), logmel.std(axis=0)]).astype(np.float32)
