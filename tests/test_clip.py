"""Per-clip logic without a server: alignment, levels, messages."""

from pathlib import Path

import numpy as np
import pytest

from renderer.clip import (silence_reason, touches_server_state, CLIP_BEATS, CLIP_FRAMES, MARKER_LEAD_BEATS, MARKER_LEAD_S, PRE_ROLL_BEATS,
                           SAMPLES_DIR, TAIL_BEATS, ShortRecording, builtin_samples_in, clean_message,
                           cut_clip, find_marker, measure_levels, wrap_program)
from renderer.fidelity import envelope_correlation, grid_error, onset_times, spectrum_similarity
from renderer.server import SAMPLE_RATE, ServerError


def _recording(marker_at: int, total_s: float = 20.0) -> np.ndarray:
    audio = np.zeros((int(total_s * SAMPLE_RATE), 2), dtype=np.int16)
    audio[marker_at:marker_at + 100] = 10000  # the marker click
    beat0 = marker_at + int(MARKER_LEAD_S * SAMPLE_RATE)
    audio[beat0:beat0 + 50] = 5000  # the program's first event, at beat 0
    return audio


def test_clip_starts_at_beat_zero_and_is_exactly_18_s():
    clip = cut_clip(_recording(marker_at=12345))
    assert clip.shape == (CLIP_FRAMES, 2) == (793800, 2)
    assert clip[0, 0] == 5000 and clip[50, 0] == 0
    assert find_marker(_recording(777)) == 777


def test_short_or_silent_recording_is_a_server_error():
    with pytest.raises(ShortRecording, match="recording too short"):
        cut_clip(_recording(marker_at=100, total_s=10))
    with pytest.raises(ServerError, match="no marker"):
        cut_clip(np.zeros((SAMPLE_RATE, 2), dtype=np.int16))


def test_levels():
    audio = np.zeros((1000, 2), dtype=np.int16)
    audio[:10] = 32767
    levels = measure_levels(audio)
    assert levels["full_scale_fraction"] == pytest.approx(0.01)
    assert levels["peak_dbfs"] == pytest.approx(20 * np.log10(32767 / 32768))
    assert levels["rms_dbfs"] == pytest.approx(20 * np.log10(np.sqrt(0.01) * 32767 / 32768))
    assert measure_levels(np.zeros((10, 2), dtype=np.int16))["peak_dbfs"] == -np.inf


def test_longest_silence():
    audio = np.full((SAMPLE_RATE * 4, 2), 1000, dtype=np.int16)
    audio[SAMPLE_RATE:SAMPLE_RATE * 2 + SAMPLE_RATE // 2] = 0  # 1.5 s of silence
    assert measure_levels(audio)["longest_silence_s"] == pytest.approx(1.5, abs=0.05)


def test_wrapper_is_one_line_and_sets_120_bpm():
    wrapped = wrap_program("play 60\n", Path("/w/it's.wav"), sched_ahead_s=4.8, stop_ahead_s=1.6)
    first, rest = wrapped.split("\n", 1)
    assert rest == "play 60\n" and first.startswith("use_bpm 120;")
    assert "recording_save '/w/it\\'s.wav'" in first
    # beat 0 comes PRE_ROLL + MARKER_LEAD after the recorder starts; the end thread sleeps
    # to the clip's end + tail, plus the headroom it gives up (4.8 - 1.6 s = 6.4 beats)
    assert first.endswith(f"sleep {PRE_ROLL_BEATS + MARKER_LEAD_BEATS:g}")
    stop = PRE_ROLL_BEATS + MARKER_LEAD_BEATS + CLIP_BEATS + TAIL_BEATS + 6.4
    assert f"sleep {stop:.6f}; __spg_use_sched_ahead_time 1.600000;" in first


def test_wrapper_loads_the_built_in_samples_the_program_names_before_it_schedules_anything():
    code = "sample :loop_amen\nsample :bd_haus, amp: 0.5\nsample :no_such_sample\nsample \"/x/y.wav\"\n"
    first, rest = wrap_program(code, Path("/w/t.wav"), 2.4, 2.4).split("\n", 1)
    assert rest == code
    loads, recorder = first.split("in_thread do", 1)
    assert loads.endswith("load_sample :bd_haus; load_sample :loop_amen; ")
    assert "load_sample" not in recorder and "no_such_sample" not in first


def test_sound_right_after_the_marker_is_not_taken_for_the_marker():
    recording = _recording(marker_at=1000)
    recording[1000 + int(0.08 * SAMPLE_RATE)] = 9000  # e.g. a previous run's tail
    with pytest.raises(ServerError, match="before the program's beat 0"):
        cut_clip(recording)


def test_a_program_may_sound_shortly_before_its_beat_zero():
    # with_swing -0.1 plays 50 ms early at 120 BPM: kept out of the clip, not a failure
    recording = _recording(marker_at=1000)
    beat_zero = 1000 + int(MARKER_LEAD_S * SAMPLE_RATE)
    recording[beat_zero - int(0.05 * SAMPLE_RATE)] = 9000
    assert len(cut_clip(recording)) == CLIP_FRAMES


@pytest.mark.parametrize("raw, clean", [
    ("[buffer eval, line 3] - NoMethodError\nThread death!\n undefined method `foo&#39; for Runtime",
     "line 3: NoMethodError undefined method `foo' for Runtime"),
    ("[buffer eval, line 781] - SyntaxError\nThread death!\n eval:2: syntax error, unexpected end-of-input",
     "SyntaxError line 2: syntax error, unexpected end-of-input"),
])
def test_clean_message(raw, clean):
    assert clean_message(raw) == clean


def test_onsets_and_grid_error_on_a_synthetic_click_track():
    audio = np.zeros((SAMPLE_RATE * 3, 2), dtype=np.int16)
    for t in (0.0, 0.5, 1.0, 1.503):
        i = int(t * SAMPLE_RATE)
        audio[i:i + 200] = 8000
    onsets = onset_times(audio)
    assert np.allclose(onsets, [0.0, 0.5, 1.0, 1.503], atol=1 / SAMPLE_RATE)
    assert grid_error(onsets) == pytest.approx(0.003, abs=1e-4)


def test_similarity_measures_know_same_and_different():
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 440 * t) * (t % 0.5 < 0.1) * 10000).astype(np.int16)
    a = np.stack([tone, tone], axis=1)
    noise = (rng.standard_normal((len(t), 2)) * 3000).astype(np.int16)
    assert spectrum_similarity(a, a) == pytest.approx(1.0)
    assert envelope_correlation(a, a) == pytest.approx(1.0)
    assert spectrum_similarity(a, noise) < 0.9
    assert abs(envelope_correlation(a, noise)) < 0.3


class _QuietServer:
    """A server that is alive and sends nothing (the clip would play to its time-out)."""

    def __init__(self):
        import queue
        self.messages = queue.Queue()

    def alive(self):
        return True


def test_a_clip_that_failed_to_keep_time_is_ended_while_it_plays():
    from renderer.clip import ClipResult, _wait_for_save

    checks = []

    def failure_so_far(now):
        checks.append(now)
        return ClipResult("drift", "3.1 ms") if len(checks) == 3 else None

    result = _wait_for_save(_QuietServer(), Path("take.wav"), 60.0, failure_so_far)
    assert (result.status, result.message, len(checks)) == ("drift", "3.1 ms", 3)
    # without a failure it waits for the save, here until its time-out
    assert _wait_for_save(_QuietServer(), Path("take.wav"), 0.6).status == "timeout"


@pytest.mark.skipif(not SAMPLES_DIR.is_dir(), reason="Sonic Pi's samples are not installed")
def test_the_built_in_samples_a_program_names_are_found_and_nothing_else():
    code = ("live_loop :drums do\n  sample :loop_amen, beat_stretch: 2\n  sample [:bd_haus, :sn_dolf].choose\n"
            "  synth :square, note: :c2\n  with_fx :reverb do sample \"/my/own.wav\" end\n  sleep 2\nend\n")
    assert builtin_samples_in(code) == ["bd_haus", "loop_amen", "sn_dolf"]
    assert builtin_samples_in("play :e4; sleep 1") == []


@pytest.mark.parametrize("code, found", [
    ("play 60\nsleep 1\n", []),
    ("use_bpm 90\nlive_loop :a do\n  sample :bd_haus\n  sleep 1\nend\n", []),
    ("set_volume! 0.1\nplay 60\n", ["set_volume!"]),
    ("set_mixer_control! lpf: 40\n", ["set_mixer_control!"]),
    ("set :key, 1\n", ["set"]),
    ("define :myfn do\n  play 60\nend\n", ["define"]),
    ("$x = 1\n", ["$x"]),
    ('send("set_" + "volume!", 0.1)\n', ["send"]),
    ("x = `ls`\n", ["`"]),
    ("class Integer\n  def +(o) 0 end\nend\n", ["class", "def"]),
])
def test_what_may_change_the_server_for_the_next_program_is_found(code, found):
    assert touches_server_state(code) == sorted(found)


def test_a_silent_clip_says_why_where_the_text_tells(tmp_path):
    assert silence_reason("sleep 8\n") == "the program has no play, synth or sample call"
    assert "does not exist" in silence_reason(f'sample "{tmp_path}/no.wav"\n')
    (tmp_path / "kick.wav").write_bytes(b"RIFF")
    assert "outside what the sandboxed server can read" in silence_reason(f"sample '{tmp_path}/kick.wav'\n")
    assert silence_reason("play 60, amp: 0\n") is None  # silent by its own choice: nothing to tell
