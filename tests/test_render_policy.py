"""The batch renderer's retry policy, with the server and the clip renderer faked."""

import pytest

import renderer.render as render
from renderer.clip import ClipResult


class FakeServer:
    def __init__(self, factor):
        self.acceleration, self.version = factor, "3.2.2"

    def alive(self):
        return True

    def shutdown(self):
        pass


@pytest.fixture
def worker(monkeypatch, tmp_path):
    batch = render._Batch(tmp_path, tmp_path / ".work", 16.0, 0.3, 3, None, 0.01, "flac",
                          watchdog=None, progress=None)
    w = render._Worker(0, batch)
    monkeypatch.setattr(w, "_start_server", lambda factor: setattr(w, "server", FakeServer(factor)) or w.server)
    return w


def script(monkeypatch, outcomes):
    """render_clip returns these statuses in turn; records the factor of each call."""
    factors = []

    def fake_render_clip(server, code, timeout_s, max_full_scale):
        factors.append(server.acceleration)
        return ClipResult(outcomes.pop(0), "why")
    monkeypatch.setattr(render, "render_clip", fake_render_clip)
    return factors


JOB = render.Job("id", "t", "play 60")


def test_timing_error_only_under_acceleration_is_retried_much_slower(worker, monkeypatch):
    factors = script(monkeypatch, ["timing", "ok"])
    result, attempts, factor = worker._render(JOB)
    assert (result.status, attempts, factors) == ("ok", 2, [16.0, 4.0])


def test_timing_error_in_real_time_is_the_programs(worker, monkeypatch):
    factors = script(monkeypatch, ["timing", "timing", "timing"])
    result, attempts, factor = worker._render(JOB)
    assert factors == [16.0, 4.0, 1.0] and result.status == "runtime_error" and factor == 1.0


def test_xrun_retries_same_speed_then_slower_and_stays_slow_a_while(worker, monkeypatch):
    factors = script(monkeypatch, ["xrun", "xrun", "ok", "ok"])
    assert worker._render(JOB)[0].status == "ok"
    assert factors == [16.0, 16.0, 8.0]
    worker._render(JOB)
    assert factors[-1] == 8.0 and worker.slow_jobs_left == render.STICKY_SLOW_JOBS - 1


def test_program_errors_are_not_retried(worker, monkeypatch):
    factors = script(monkeypatch, ["syntax_error"])
    result, attempts, _ = worker._render(JOB)
    assert (result.status, attempts, factors) == ("syntax_error", 1, [16.0])
