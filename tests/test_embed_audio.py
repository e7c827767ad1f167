"""embed.audio and the weight-free encoder: numpy only, no torch needed."""

import io
import math

import numpy as np
import pytest
import soundfile as sf

from embed.audio import (hz_to_mel, logmel_stats, mel_filterbank, mel_to_hz,
                         prepare_mono, resample, to_mono)
from embed.encoders import (ENCODERS, LOGMEL_ID, ModelUnavailableError, encoder_info,
                            licence_of, load_audio_encoder, registry_table)
from sonicpi_gen.folders import decode_audio


def flac_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_hz_to_mel_known_points():
    # HTK: 2595 * log10(1 + 1000/700) = 2595 * 0.3853509 = 999.986
    assert hz_to_mel(1000.0) == pytest.approx(999.986, abs=1e-3)
    assert hz_to_mel(0.0) == 0.0
    assert mel_to_hz(hz_to_mel(4321.0)) == pytest.approx(4321.0)


def test_logmel_stats_hand_computed():
    # sr 8000, n_fft 8, one mel band over 0..4000 Hz, rectangular window, two frames:
    # frame 1 = cos at 1000 Hz (exactly FFT bin 1): |X[1]|^2 = (8/2)^2 = 16, other bins 0;
    # frame 2 = silence.
    # band edges: 0 Hz, centre mel = 2595*log10(1+4000/700)/2 = 1073.032 -> 1113.836 Hz, 4000 Hz;
    # weight at 1000 Hz = 1000/1113.836 = 0.897798; energy = 16 * 0.897798 = 14.364776;
    # ln(14.364776) = 2.664779, ln(1e-10) = -23.025851;
    # mean = (2.664779 - 23.025851)/2 = -10.180536, std = (2.664779 + 23.025851)/2 = 12.845315.
    signal = np.concatenate([np.cos(2 * np.pi * 1000 * np.arange(8) / 8000), np.zeros(8)])
    out = logmel_stats(signal, 8000, n_fft=8, hop=8, n_mels=1, window="rect")
    assert out.dtype == np.float32
    assert out == pytest.approx([-10.180536, 12.845315], abs=1e-4)
    assert mel_filterbank(8000, 8, 1)[0, 1] == pytest.approx(0.897798, abs=1e-6)


def test_logmel_silence_is_the_floor():
    out = logmel_stats(np.zeros(4096), 22050, n_fft=1024, hop=256, n_mels=8)
    assert out[:8] == pytest.approx([math.log(1e-10)] * 8)
    assert out[8:] == pytest.approx([0.0] * 8)


def test_mel_filterbank_shape_and_peaks():
    fb = mel_filterbank(22050, 2048, 64)
    assert fb.shape == (64, 1025)
    assert fb.min() >= 0 and fb.max() <= 1
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)
    with pytest.raises(ValueError, match="fmax"):
        mel_filterbank(16000, 512, 10, fmax=9000)


def test_resample_keeps_frequency_and_length():
    sr = 44100
    t = np.arange(sr) / sr
    wave = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(wave, sr, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bin k is k Hz
    assert resample(wave, sr, sr) is not None and len(resample(wave, sr, sr)) == sr
    with pytest.raises(ValueError, match="positive"):
        resample(wave, 0, 16000)


def test_to_mono_averages_channels():
    stereo = np.stack([np.ones(10), -np.ones(10) * 3], axis=1).astype(np.float32)
    assert to_mono(stereo) == pytest.approx([-1.0] * 10)
    with pytest.raises(ValueError, match="frames"):
        to_mono(np.zeros((2, 2, 2)))


def test_decode_flac_roundtrip():
    wave = (0.5 * np.sin(np.linspace(0, 100, 44100))).astype(np.float32)
    decoded, sr = decode_audio(flac_bytes(np.stack([wave, wave], 1), 44100))
    assert sr == 44100 and decoded.shape == (44100, 2)
    assert decoded[:, 0] == pytest.approx(wave, abs=1e-4)
    with pytest.raises(ValueError, match="empty"):
        decode_audio(b"")


def test_logmel_encoder_needs_no_weights_and_is_deterministic():
    enc = load_audio_encoder("logmel")
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal((44100, 2)).astype(np.float32), 44100),
             (rng.standard_normal(16000).astype(np.float32), 16000)]
    a, b = enc.encode(clips), enc.encode(clips, batch_size=1)
    assert a.shape == (2, 128) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    expected = logmel_stats(prepare_mono(clips[1][0], 16000, 22050), 22050)
    np.testing.assert_allclose(a[1], expected, rtol=1e-6)
    assert enc.describe()["model"] == LOGMEL_ID and enc.describe()["sample_rate"] == 22050


def test_registry_names_licences():
    assert encoder_info("facebook/wav2vec2-base-960h").sample_rate == 16000
    assert ENCODERS["m-a-p/MERT-v1-95M"].restriction.startswith("non-commercial")
    assert licence_of("clap")[0] == "Apache-2.0"
    assert "CC-BY-NC-4.0" in registry_table("audio")
    assert "codebert" in registry_table("code")
    assert licence_of("someone/unknown-model")[0].startswith("unknown")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with pytest.raises(ModelUnavailableError, match="does not exist.*huggingface-cli download"):
        load_audio_encoder(str(tmp_path / "no-such-model"))
