"""The batch renderer's retry policy and task queue, with the server and clip renderer faked."""

import threading
import time
from dataclasses import replace

import pytest

import renderer.render as render
from renderer.clip import ClipResult
from renderer.audio_clock import AudioClock
from renderer.render import _Task, _TaskQueue, next_attempt

JOB = render.Job("id", "t", "play 60")


def attempts(statuses, factor=8.0, max_attempts=4):
    """The factors tried when render attempts end with these statuses in turn."""
    task, tried = _Task(JOB, factor), []
    for status in statuses:
        task.attempts += 1
        tried.append(task.factor)
        task = next_attempt(task, ClipResult(status), max_attempts)
        if task is None:
            break
    return tried, task


def test_timing_error_is_retried_at_the_same_speed_then_slower_down_to_real_time():
    assert attempts(["timing", "ok"]) == ([8.0, 8.0], None)
    assert attempts(["timing"] * 5, max_attempts=5)[0] == [8.0, 8.0, 4.0, 2.0, 1.0]


def test_scheduling_faults_are_retried_at_the_same_speed_once_then_slower():
    assert attempts(["late", "drift", "late", "ok"])[0] == [8.0, 8.0, 4.0, 2.0]
    assert attempts(["drift", "drift", "ok"])[0] == [8.0, 8.0, 4.0]


def test_the_default_attempts_end_in_real_time():
    tried, task = attempts(["drift"] * 10, max_attempts=render.DEFAULT_MAX_ATTEMPTS)
    assert tried == [8.0, 8.0, 4.0, 2.0, 1.0] and task is None


def test_excused_failures_stay_at_the_speed_and_cost_no_attempt_up_to_a_bound():
    task = _Task(JOB, 8.0, attempts=1)
    for n in range(1, render.MAX_EXCUSED + 1):
        task = next_attempt(task, ClipResult("drift"), 2, excused=True)
        assert (task.factor, task.hiccups, task.excused) == (8.0, 0, n)
        task.attempts += 1
    # past the bound an excused failure counts as any other: once more, then slower
    task = next_attempt(task, ClipResult("late"), 2, excused=True)
    assert (task.factor, task.hiccups) == (8.0, 1)
    task.attempts += 1
    assert next_attempt(task, ClipResult("drift"), 2, excused=True) is None  # 2 counted attempts
    # a stall inflates the DSP load read: an excused failure stays at the speed whatever
    # the load, and a program's error is never excused
    loaded = next_attempt(_Task(JOB, 8.0, attempts=1), ClipResult("drift", dsp_load=80.0), 5, excused=True)
    assert (loaded.factor, loaded.excused) == (8.0, 1)
    assert next_attempt(_Task(JOB, 8.0, attempts=1), ClipResult("runtime_error"), 5, excused=True) is None


def test_a_failure_is_excused_when_another_server_failed_during_the_clip_or_its_server_settles(tmp_path):
    batch = render._Batch(tmp_path, tmp_path / ".work", 8.0, 0.3, 5, None, 0.01, "flac",
                          progress=None)
    assert not batch.excuses(0, 3.0, settling=False)  # alone: the program's
    assert batch.excuses(0, 3.0, settling=True)
    assert batch.excuses(1, 3.0, settling=False)  # worker 0 failed within the window
    time.sleep(0.02)
    assert not batch.excuses(1, 0.01, settling=False)  # none from others in the last 10 ms
    assert render.stall_window_s(8.0, 0.3) == pytest.approx(5.3)  # two clips at x8


def test_timeouts_and_dead_servers_retry_at_the_same_speed():
    assert attempts(["timeout", "server_error", "ok"])[0] == [8.0, 8.0, 8.0]


def test_program_errors_are_final_and_attempts_are_bounded():
    for status in ("ok", "syntax_error", "runtime_error", "silent"):
        assert attempts([status, "ok"]) == ([8.0], None)
    tried, task = attempts(["late"] * 10, max_attempts=3)
    assert tried == [8.0, 8.0, 4.0] and task is None
    tried, task = attempts(["drift"] * 10, max_attempts=4)
    assert tried == [8.0, 8.0, 4.0, 2.0] and task is None


def test_queue_prefers_the_workers_factor_then_the_fastest():
    q = _TaskQueue(threading.Event())
    for name, factor in [("a", 16.0), ("b", 4.0), ("c", 16.0), ("d", 1.0)]:
        q.put(_Task(render.Job(name, "t", ""), factor))
    order = []
    for factor in (4.0, 16.0, 1.0, 1.0):
        task = q.get(factor)
        order.append(task.job.id)
        q.done()
    assert order == ["b", "a", "d", "c"]
    assert q.get(16.0) is None


def test_a_worker_with_nothing_waiting_is_done_and_a_failed_task_returns_to_its_own():
    q = _TaskQueue(threading.Event())
    q.put(_Task(JOB, 16.0))
    first = q.get(16.0, 0)
    got = []
    other = threading.Thread(target=lambda: got.append(q.get(16.0, 1)), daemon=True)
    other.start()
    other.join(timeout=2)  # a thread, so that a worker left waiting fails the test, not hangs it
    assert got == [None], "nothing waits: worker 1 ends (the task in flight is worker 0's)"
    q.leave(1)
    first.hiccups = 1
    q.put(next_attempt(first, ClipResult("timing"), 4), front=True)
    q.done(0)
    retry = q.get(16.0, 0)  # due at x8 now: worker 0 makes its extra try at x16 (see _Task)
    assert (retry.factor, retry.fallback) == (16.0, 8.0) and retry.job is JOB
    q.put(replace(retry, factor=8.0, fallback=None))  # it failed: worker 0 alone moves to x8
    q.done(0)
    assert q.get(16.0, 0).factor == 8.0
    q.done(0)
    assert q.get(8.0, 0) is None


def test_no_more_workers_move_to_a_slower_factor_than_it_has_tasks_beyond_idle_workers():
    q = _TaskQueue(threading.Event())
    for name in "abcd":
        q.put(_Task(render.Job(name, "t", ""), 8.0))
    assert [q.get(8.0, worker).factor for worker in range(4)] == [8.0] * 4
    for name in ("slow1", "slow2", "slow3"):  # their extra try at x8 made already
        q.put(_Task(render.Job(name, "t", ""), 4.0, extra_tries=1))
    for worker in range(3):
        q.done(worker)
    # none at x4: worker 0 moves; then worker 1, and worker 2, though workers are at
    # x4 by then: they are busy, and a task waiting for them waits out their renders
    assert [q.get(8.0, w).job.id for w in range(2)] == ["slow1", "slow2"]
    third = []  # in a thread: a worker that waited instead would hang the test
    taker = threading.Thread(target=lambda: third.append(q.get(8.0, 2)), daemon=True)
    taker.start()
    taker.join(timeout=5)
    assert [task.job.id for task in third] == ["slow3"]
    q.done(0)
    q.done(2)
    q.put(_Task(render.Job("slow4", "t", ""), 4.0, extra_tries=1))  # one comes back
    got = []
    waiter = threading.Thread(target=lambda: got.append(q.get(8.0, 3)), daemon=True)
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive(), "one task waiting at x4 and two idle workers there: worker 3 waits"
    assert q.get(4.0, 0).job.id == "slow4"  # a worker at x4 takes it
    for worker in (0, 1, 3):
        q.done(worker)
    waiter.join(timeout=5)
    assert got == [None]  # all done


def test_a_stopped_worker_frees_its_factor_for_the_others():
    q = _TaskQueue(threading.Event())
    q.put(_Task(JOB, 4.0, extra_tries=1))
    q.put(_Task(render.Job("b", "t", ""), 4.0, extra_tries=1))
    q.get(4.0, 0)
    q.done()
    q.leave(0)  # worker 0 failed for good, with a task at x4 still waiting
    assert q.get(8.0, 1).factor == 4.0


class FakeServer:
    boots = []

    def __init__(self, factor):
        self.acceleration, self.version = factor, "3.2.2"
        FakeServer.boots.append(factor)

    def alive(self):
        return True

    def uptime_s(self):
        return 1e6  # settled (see render.SETTLING_SERVER_S)

    def wait_stopped(self):
        pass

    def changed_state(self):
        return False

    def shutdown(self):
        pass


def test_workers_reboot_once_per_factor_and_retries_wait_for_the_fast_work(monkeypatch, tmp_path):
    """Eight jobs on one worker; job 1 hits timing errors at x16: retried at once at the
    same speed, then its retry at x8 waits for the other fast jobs, gets its extra try
    at x16 (which fails too), and the worker reboots once for it."""
    FakeServer.boots = []
    rendered = []

    def fake_render_clip(server, code, timeout_s, max_full_scale):
        rendered.append((code, server.acceleration))
        if code == "1" and server.acceleration == 16.0:
            return ClipResult("timing", "too far behind time")
        return ClipResult("runtime_error", "fake")

    monkeypatch.setattr(render, "render_clip", fake_render_clip)
    batch = render._Batch(tmp_path, tmp_path / ".work", 16.0, 0.3, 4, None, 0.01, "flac",
                          progress=None)
    for i in range(8):
        batch.tasks.put(_Task(render.Job(str(i), "t", str(i)), 16.0))
    worker = render._Worker(0, batch)
    monkeypatch.setattr(worker, "_start_server", lambda f: setattr(worker, "server", FakeServer(f)) or worker.server)
    worker.run()
    assert worker.error is None
    assert FakeServer.boots == [16.0, 8.0]
    assert rendered[:3] == [("0", 16.0), ("1", 16.0), ("1", 16.0)]
    assert rendered[-2:] == [("1", 16.0), ("1", 8.0)] and len(rendered) == 11
    assert batch.rows["1"]["attempts"] == 4 and batch.rows["1"]["acceleration"] == 8.0


def _render_on_a_young_server(monkeypatch, tmp_path, results):
    """Render JOB on one worker whose fake servers have just booted, the clips ending
    with `results` in turn; the (status, attempts, factor) it was finished with."""
    FakeServer.boots = []
    results = iter(results)
    monkeypatch.setattr(render, "render_clip", lambda *a: next(results))
    monkeypatch.setattr(FakeServer, "uptime_s", lambda self: 0.0)
    batch = render._Batch(tmp_path, tmp_path / ".work", 8.0, 0.3, 5, None, 0.01, "flac",
                          progress=None)
    monkeypatch.setattr(batch, "finish", lambda job, result, attempts, factor, *a: batch.rows.update(
        {job.id: (result.status, attempts, factor)}))
    batch.tasks.put(_Task(JOB, 8.0))
    worker = render._Worker(0, batch)
    monkeypatch.setattr(worker, "_start_server", lambda f: setattr(worker, "server", FakeServer(f)) or worker.server)
    worker.run()
    assert worker.error is None
    return batch.rows[JOB.id]


def test_a_young_servers_drifts_keep_the_program_at_its_speed(monkeypatch, tmp_path):
    """Drifts on a server still settling after its boot are excused: the program is
    rendered again at x8 on the same server, not sent down to x4 (a reboot)."""
    drift = ClipResult("drift", render_s=1.0)
    row = _render_on_a_young_server(monkeypatch, tmp_path, [drift, drift, drift, ClipResult("ok")])
    assert FakeServer.boots == [8.0] and row == ("ok", 4, 8.0)


def test_a_young_servers_failure_under_a_heavy_load_is_the_programs(monkeypatch, tmp_path):
    heavy = ClipResult("drift", render_s=1.0, dsp_load=80.0)
    row = _render_on_a_young_server(monkeypatch, tmp_path, [heavy, ClipResult("ok")])
    assert FakeServer.boots == [8.0, 2.0] and row == ("ok", 2, 2.0)


def test_a_slower_task_gets_one_extra_try_at_a_faster_factor_that_costs_no_attempt():
    q = _TaskQueue(threading.Event())
    task = _Task(JOB, 8.0, attempts=2, hiccups=1)
    q.put(next_attempt(task, ClipResult("drift"), 5))  # its second failure at x8: due at x4
    extra = q.get(8.0, 0)  # a worker at x8 with nothing else takes it, at x8
    assert (extra.factor, extra.fallback, extra.extra_tries) == (8.0, 4.0, 1)
    extra.attempts += 1
    back = next_attempt(extra, ClipResult("drift"), 5)
    assert (back.factor, back.fallback, back.hiccups) == (4.0, None, 2)
    q.put(back)
    q.done()
    assert q.get(8.0, 0).factor == 4.0, "one extra try only: the worker now moves to x4"
    q.done()
    # the ladder is as without the extra try: 4, 2, 1 in three more attempts
    tried = []
    while back is not None:
        back.attempts += 1
        tried.append(back.factor)
        back = next_attempt(back, ClipResult("drift"), 5)
    assert tried == [4.0, 2.0, 1.0]
    assert next_attempt(extra, ClipResult("ok"), 5) is None  # a good extra try is final


def test_audio_clock_drift_integrates_the_rate_error_over_the_span():
    clock = AudioClock()
    # scsynth measured 44100.441 Hz (10 ppm fast: its period 10 ppm short) for 1 real s,
    # then nominal; at x8 that is 8 server seconds of drift at -10 ppm: 80 us
    for i in range(1, 41):
        clock.add(i * 0.05, 44100.0, 44100.441 if i <= 20 else 44100.0)
    assert clock.drift_s(0.0, 2.0, 8.0) == pytest.approx(80e-6, rel=1e-3)
    assert clock.drift_s(1.0, 2.0, 8.0) == pytest.approx(0.0, abs=1e-12)  # after the error
    # a swing there and back counts whole: the largest distance between two moments
    swing = AudioClock()
    for i in range(1, 41):
        swing.add(i * 0.05, 44100.0, 44100.441 if i <= 20 else 44099.559)
    assert swing.drift_s(0.0, 2.0, 8.0) == pytest.approx(80e-6, rel=1e-3)
    assert swing.drift_s(0.0, 2.0, 8.0) > swing.drift_s(0.0, 2.0, 1.0)
    assert AudioClock().drift_s(0.0, 2.0, 8.0) == 0.0  # no replies: nothing to tell
    # a window is counted from its start, exclusive, to its end, inclusive
    assert clock.drift_s(0.5, 1.0, 8.0) == pytest.approx(40e-6, rel=1e-3)
    assert clock.drift_s(0.5, 0.5, 8.0) == 0.0


def test_scsynths_status_reply_is_read_from_its_bytes_and_nothing_else_is():
    from pythonosc.osc_message_builder import OscMessageBuilder

    from renderer.audio_clock import parse_status_reply

    reply = OscMessageBuilder("/status.reply")
    for value, kind in ((1, "i"), (12, "i"), (3, "i"), (2, "i"), (180, "i"), (2.5, "f"),
                        (7.25, "f"), (44100.0, "d"), (44100.317, "d")):
        reply.add_arg(value, kind)
    assert parse_status_reply(reply.build().dgram) == (1, 12, 3, 2, 180, 2.5, 7.25, 44100.0, 44100.317)
    log_line = OscMessageBuilder("/log/info")
    log_line.add_arg("/status.reply")
    assert parse_status_reply(log_line.build().dgram) is None
    assert parse_status_reply(reply.build().dgram[:-8]) is None


def test_single_clip_retries_stop_at_the_first_result_that_is_not_a_time_keeping_failure(monkeypatch):
    import renderer.clip as clip

    statuses = iter(["drift", "timing", "runtime_error", "ok"])
    monkeypatch.setattr(clip, "render_clip", lambda server, code, **options: ClipResult(next(statuses)))
    assert clip.render_clip_retrying(None, "play 60").status == "runtime_error"
    statuses = iter(["late"] * 5)
    assert clip.render_clip_retrying(None, "play 60", attempts=3).status == "late"
    assert len(list(statuses)) == 2  # three renders, no more


def test_a_program_too_heavy_for_the_factor_goes_straight_to_one_its_load_allows():
    def retry(load, factor=8.0):
        task = next_attempt(_Task(JOB, factor, attempts=1), ClipResult("late", dsp_load=load), 5)
        return task.factor, task.max_factor

    assert retry(10.0) == (8.0, None), "a light program's fault is a passing stall: same speed"
    assert retry(None) == (8.0, None)
    assert retry(50.0) == (4.0, 4.0)  # 50% at x8 is 25% at x4
    assert retry(100.0) == (2.0, 2.0)
    assert retry(400.0) == (1.0, 1.0)
    assert retry(50.0, factor=1.0) == (1.0, 1.0)


def test_no_extra_try_above_the_factor_a_programs_load_allows():
    q = _TaskQueue(threading.Event())
    q.put(next_attempt(_Task(JOB, 8.0, attempts=1), ClipResult("late", dsp_load=50.0), 5))
    task = q.get(8.0, 0)  # the worker at x8 moves to x4 for it instead of trying it at x8
    assert (task.factor, task.fallback, task.extra_tries) == (4.0, None, 0)


def test_audio_clock_keeps_the_peak_dsp_load_of_a_span():
    clock = AudioClock()
    for at, load in [(1.0, 5.0), (2.0, 48.0), (3.0, 12.0)]:
        clock.add(at, 44100.0, 44100.0, load)
    assert clock.peak_load(0.5, 3.0) == 48.0
    assert clock.peak_load(2.5, 3.0) == 12.0
    assert clock.peak_load(3.5, 9.0) is None


def test_one_worker_moves_down_at_once_for_a_heavy_program_and_goes_on_at_its_speed():
    q = _TaskQueue(threading.Event())
    for name in "wab":
        q.put(_Task(render.Job(name, "t", ""), 8.0))
    assert q.get(8.0, 1).job.id == "w"  # worker 1 is rendering at x8
    q.put(next_attempt(_Task(render.Job("heavy", "t", ""), 8.0, attempts=1),
                       ClipResult("late", dsp_load=50.0), 5))
    first = q.get(8.0, 0)  # fast work is waiting, but the heavy program gets a worker now
    assert (first.job.id, first.factor) == ("heavy", 4.0)
    assert q.get(8.0, 1).job.id == "a", "one worker moves, the others go on"
    q.done()
    q.done()
    then = q.get(4.0, 0)  # nothing left at x4: the fast work, rendered at x4, no reboot
    assert (then.job.id, then.factor) == ("b", 4.0)


def test_a_lone_worker_finishes_the_fast_work_before_moving_down_for_a_heavy_program():
    q = _TaskQueue(threading.Event())
    q.put(_Task(render.Job("a", "t", ""), 8.0))
    q.put(next_attempt(_Task(render.Job("heavy", "t", ""), 8.0, attempts=1),
                       ClipResult("late", dsp_load=50.0), 5))
    assert [q.get(8.0, 0).job.id, q.done()] == ["a", None]  # no other worker would go on
    assert q.get(8.0, 0).factor == 4.0
