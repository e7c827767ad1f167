"""Batch rendering: `render_programs` renders a programs folder on N servers, resumably.

Work is tracked per program id in <out>/status.jsonl (one line appended per finished
clip, so a kill loses at most the clip in flight) and compacted into status.parquet at
the end. A rerun skips every program whose last status is final (ok, syntax_error,
runtime_error, silent) for the same program text; renderer-side failures (timeouts,
dead servers, timing errors under acceleration) are retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass, field, replace
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from renderer.clip import (BARS, BPM, CLIP_SECONDS, DEFAULT_MAX_FULL_SCALE, FINAL_STATUSES,
                           TIME_KEEPING_FAILURES, ClipResult, render_clip)
from renderer.server import JACK_SLOTS, SAMPLE_RATE, ServerError, SonicPiServer

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}
# Servers idle between a clip's steps (waiting on Ruby, on a stopped run's fade), so
# more servers than cores keep the CPU busy: 6 on 2 cores (see renderer.fidelity).
DEFAULT_WORKERS = min(8, 3 * (os.cpu_count() or 1))
DEFAULT_MAX_ATTEMPTS = 5  # at x8: 8, 8, 4, 2, then real time (see next_attempt)
BOOT_ATTEMPTS = 5
# Servers booting at once. A boot is seconds of CPU (Ruby loading Sonic Pi, scsynth its
# plugins), and Sonic Pi gives scsynth 60 s of its own clock to come up, 7.5 real s at
# x8: six boots side by side on 2 cores failed three of them (each retried, 11 s lost).
# In pairs, the first servers render while the others boot.
BOOT_CONCURRENCY = max(2, os.cpu_count() or 1)
SLOWER_FACTORS = (32, 24, 16, 12, 8, 4, 2, 1)  # fall back along these
# A clip that failed to keep time while scsynth's DSP load (its callbacks' share of
# their period) was at least HEAVY_LOAD_PERCENT is taken to be too heavy for the
# factor, not unlucky: it goes straight to a factor where its load would be about
# TARGET_LOAD_PERCENT. Measured alone at x8 on the bench's programs: cloud_beat-0 and
# haunted-0 (a dozen :prophet voices under :gverb) 49-50%, the other seven measured
# 5-22%; in a bench batch those two failed at x8 (twice, and once more on their extra
# try) and at x4, then haunted-0 passed at x2 and cloud_beat-0 only in real time.
HEAVY_LOAD_PERCENT = 40.0
# A time-keeping failure is excused (retried at the same speed, not counted; see
# next_attempt) when the server is younger than this in its own seconds (and the load
# was light), or when another server failed so lately (stall_window_s). scsynth's
# estimate of its audio clock rings for more than a minute of its time after a boot
# (measured, an idle server at x8: the drift over a clip's span 13, 6.6, 2.3, 0.8, 1.8,
# 2.3, 2.2, 1.7, 1.2, 0.8, 0.3 and 0.1 ms, one a second after its boot), so that a
# batch's first clips drifted on every server. That was measured before the sample
# clock (renderer/sample_clock.c), which removes the ringing; the young-server rule
# has not been measured since.
SETTLING_SERVER_S = 80.0
MAX_EXCUSED = 3
TARGET_LOAD_PERCENT = 25.0

STATUS_SCHEMA = pa.schema([
    ("id", pa.string()), ("template", pa.string()), ("source", pa.string()),
    ("code_sha256", pa.string()), ("status", pa.string()), ("message", pa.string()),
    ("path", pa.string()), ("audio_sha256", pa.string()), ("duration_s", pa.float64()),
    ("sample_rate", pa.int64()), ("bpm", pa.int64()), ("bars", pa.int64()),
    ("peak_dbfs", pa.float64()), ("rms_dbfs", pa.float64()),
    ("full_scale_fraction", pa.float64()), ("longest_silence_s", pa.float64()),
    ("clipped", pa.bool_()), ("render_s", pa.float64()),
    ("attempts", pa.int64()), ("worker", pa.int64()), ("acceleration", pa.float64()),
    ("sonic_pi_version", pa.string()),
])


@dataclass(frozen=True)
class Job:
    id: str
    template: str
    code: str
    source: str | None = None  # the .rb path, for folders without a manifest

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()


@dataclass
class RenderSummary:
    counts: dict
    rendered: int
    skipped: int
    wall_s: float
    audio_s: float
    out_dir: Path
    rows: list = field(default_factory=list, repr=False)

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0


def load_jobs(in_dir: Path) -> list[Job]:
    """Programs to render: an expand manifest, or every .rb file under a plain folder."""
    from sonicpi_gen.expand import program_id

    in_dir = Path(in_dir)
    manifest = in_dir / "manifest.parquet"
    if manifest.exists():
        jobs = {}
        for row in pq.read_table(manifest, columns=["id", "template", "code"]).to_pylist():
            jobs.setdefault(row["id"], Job(row["id"], row["template"], row["code"]))
        return list(jobs.values())
    files = sorted(in_dir.rglob("*.rb"))
    if not files:
        raise FileNotFoundError(f"{in_dir} has no manifest.parquet and no .rb files")
    jobs = {}
    for path in files:
        code = path.read_text()
        job = Job(program_id(code), "user", code, str(path.relative_to(in_dir)))
        jobs.setdefault(job.id, job)
    return list(jobs.values())


def merge_manifest(in_dir: Path, jobs: list[Job], out_dir: Path) -> None:
    """Carry the programs' manifest into out_dir/manifest.parquet, so the dataset stage
    reads only the renders folder. Rendering several programs folders (base, families,
    scenarios) into one out_dir unions their manifests; a folder of plain .rb files gets
    a manifest made from its files."""
    from sonicpi_gen.expand import MANIFEST_SCHEMA

    source = Path(in_dir) / "manifest.parquet"
    if source.exists():
        rows = pq.read_table(source).to_pylist()
    else:
        rows = [{**{n: None for n in MANIFEST_SCHEMA.names}, "id": j.id, "template": j.template,
                 "index": i, "code": j.code, "params": "{}", "source": j.source}
                for i, j in enumerate(jobs)]
    target = Path(out_dir) / "manifest.parquet"
    if target.exists():
        rows = pq.read_table(target).to_pylist() + rows
    unique = {}
    for row in rows:
        unique.setdefault((row["id"], row["group_id"], row["family"], row["scenario"]), row)
    tmp = target.with_name(f".manifest.parquet.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(list(unique.values()), schema=MANIFEST_SCHEMA), tmp)
    os.replace(tmp, target)


def read_status(out_dir: Path) -> dict[str, dict]:
    """Latest status row per program id: status.parquet, then the journal's later lines."""
    rows = {}
    parquet = Path(out_dir) / "status.parquet"
    if parquet.exists():
        rows.update({r["id"]: r for r in pq.read_table(parquet).to_pylist()})
    journal = Path(out_dir) / "status.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that clip is simply rendered again
            rows[row["id"]] = row
    return rows


def write_status_parquet(out_dir: Path, rows: dict[str, dict]) -> None:
    """Compact the status into status.parquet (atomically) and empty the journal."""
    table = pa.Table.from_pylist(sorted(rows.values(), key=lambda r: (r["template"], r["id"])),
                                 schema=STATUS_SCHEMA)
    tmp = Path(out_dir) / f".status.parquet.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, Path(out_dir) / "status.parquet")
    (Path(out_dir) / "status.jsonl").unlink(missing_ok=True)


def is_done(job: Job, row: dict | None, out_dir: Path) -> bool:
    if not row or row["status"] not in FINAL_STATUSES or row["code_sha256"] != job.code_sha256:
        return False
    return row["status"] != "ok" or (out_dir / row["path"]).exists()


class _Watchdog:
    """Handle on the watchdog process (renderer/watchdog.py)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "renderer.watchdog"],
                                     stdin=subprocess.PIPE, text=True, start_new_session=True,
                                     cwd=str(Path(__file__).resolve().parent.parent))
        self.lock = threading.Lock()

    def register(self, item) -> None:
        """A session id to end, or a shared memory path to remove, if the renderer dies."""
        with self.lock:
            self.proc.stdin.write(f"{item}\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class _Task:
    """One program's next render attempt: at which factor, after how many tries."""

    job: Job
    factor: float
    attempts: int = 0  # made so far
    hiccups: int = 0  # of those, ended by a scheduling fault or a timing error
    # of those, failures the machine or a young server explains (see _Batch.excuses):
    # they count neither as hiccups nor against the attempts, up to MAX_EXCUSED
    excused: int = 0
    # A task sent to a slower factor gets one extra try at a faster one, from a worker
    # that has nothing left at its own (see _TaskQueue.get). While that try is made,
    # `fallback` holds the slower factor it returns to if the try fails; the try does not
    # count against the attempts, so the slower ladder stays as it was.
    extra_tries: int = 0
    fallback: float | None = None
    # the fastest factor its DSP load allows, once a failure showed it (no extra try
    # is made above it)
    max_factor: float | None = None


def _slower(factor: float, divisor: float) -> float:
    return max([f for f in SLOWER_FACTORS if f <= max(factor / divisor, 1)], default=1)


def stall_window_s(factor: float, headroom_s: float) -> float:
    """How far back (real seconds) another server's time-keeping failure tells of a
    stretch of stalls: two whole clips at `factor` (a failed clip is often ended early,
    and the servers' clips do not start together)."""
    return 2 * (CLIP_SECONDS + 2.0) / factor + headroom_s


def next_attempt(task: _Task, result: ClipResult, max_attempts: int,
                 excused: bool = False) -> _Task | None:
    """The retry policy: the task's next attempt after `result`, or None if it was the last.

    - late event, clock drift, "too far behind time" (the machine, scsynth or
      Ruby did not keep up): once more at the same speed, since on a busy machine it is
      mostly a passing load (measured: programs that failed so among 6 servers rendered
      clean alone); then at half the speed each time, down to real time (where "behind
      time" is the program's own error, see _Worker). A heavy program can drift at x8
      on an idle machine (the fidelity reference: 5.1, 3.7, 2.5 and 56 ms in a row), and
      a virtual machine can stall for long stretches (measured: all six servers' clips
      failing together for 10 s), so the default five attempts end in real time, where
      a stall barely moves the clock.
      A program whose DSP load was high when it failed (HEAVY_LOAD_PERCENT) goes
      straight to a factor its load allows instead.
    - time-out or dead server: the same speed on a fresh server.
    - `excused` (the failure was the machine's or a young server's, see _Batch.excuses):
      the same speed, counted neither as a hiccup nor against the attempts, up to
      MAX_EXCUSED times per program, whatever its DSP load (a stall inflates the load
      read: in a bench batch during stalls, light programs went straight to x2). Moving
      such a program down the ladder costs a reboot at each step and fixes nothing that
      the next try does not.
    Program errors, silence and ok clips are final, and so is the last allowed attempt.
    An extra try at a faster factor (see _Task) that fails leaves the task as it was.
    """
    if task.fallback is not None:  # the extra try at a faster factor (see _Task)
        return replace(task, factor=task.fallback, fallback=None) if result.retryable else None
    if excused and task.excused < MAX_EXCUSED and result.status in TIME_KEEPING_FAILURES:
        return replace(task, excused=task.excused + 1)
    if not result.retryable or task.attempts - task.extra_tries - task.excused >= max_attempts:
        return None
    factor, hiccups, max_factor = task.factor, task.hiccups, task.max_factor
    if result.status in TIME_KEEPING_FAILURES:
        hiccups += 1
        if (result.dsp_load or 0.0) >= HEAVY_LOAD_PERCENT:
            factor = max_factor = _slower(factor, max(2.0, result.dsp_load / TARGET_LOAD_PERCENT))
        elif hiccups > 1:
            factor = _slower(factor, 2)
    return replace(task, factor=factor, hiccups=hiccups, max_factor=max_factor)


class _TaskQueue:
    """Tasks grouped by factor, handed to workers whose servers run at some factor:
    - a task at the worker's factor, while there are any;
    - a program too heavy for the fast factor (see next_attempt) gets a worker at its
      slower factor at once, one worker per such factor, while the others go on;
    - other retries at slower factors collect until the fast work runs out; then a
      worker gives each one extra try at its own factor (the machine is quieter in a
      batch's tail than when the task failed, and a reboot at x4 costs about 11 s:
      boot, warm-up and the clock's settling);
    - a worker that was moved down renders tasks due at up to twice its factor at its
      own, rather than rebooting back up;
    - only then does a worker take the fastest factor waiting and reboot its server
      there, and no more workers move to a factor than it has tasks waiting beyond the
      idle workers already there (a boot is seconds of CPU on a machine whose other
      servers are rendering; six reboots for two retries stalled the clips around
      them). Workers busy there do count: a bench batch's last two clips, sent to x4
      together, waited for one worker's reboot (11 s) and renders one after the other
      while five workers idled.
    `get` returns None (the worker is done) as soon as no task waits: a task still in
    flight that fails comes back to its own worker."""

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._cond = threading.Condition()
        self._by_factor: dict[float, deque] = {}
        self._worker_factors: dict[int, float] = {}  # the factor each worker last took
        self._busy: set[int] = set()  # workers with a task in flight

    def put(self, task: _Task, front: bool = False) -> None:
        with self._cond:
            tasks = self._by_factor.setdefault(task.factor, deque())
            tasks.appendleft(task) if front else tasks.append(task)
            self._cond.notify_all()

    def get(self, factor: float, worker: int = 0) -> _Task | None:
        """The next task for a worker whose server runs at `factor`; None when all is done."""
        with self._cond:
            self._busy.discard(worker)  # asking for work: its last task is done
            while not self._stop.is_set():
                waiting = {f: len(tasks) for f, tasks in self._by_factor.items() if tasks}
                if not waiting:
                    # The queue only refills from failures of tasks in flight, and each
                    # comes back to the worker that rendered it, free then: this one ends
                    # its server now rather than idle beside the batch's last clips (an
                    # idle server at x8 still takes CPU from them) and then shut down
                    # with the others at the end (measured: 2.0 s from the last clip to
                    # the batch's end, six shutdowns side by side).
                    return None
                heavy = self._unserved_heavy_factor(factor, worker)
                if heavy is not None:
                    chosen = heavy
                    break
                if factor in waiting:
                    chosen = factor
                    break
                task = self._take_extra_try(factor) or self._take_faster(factor, waiting)
                if task is not None:
                    self._worker_factors[worker] = factor
                    self._busy.add(worker)
                    return task
                # the fastest factor that has more tasks waiting than idle workers at it
                movable = [f for f, count in waiting.items() if count > sum(
                    1 for w, wf in self._worker_factors.items()
                    if wf == f and w != worker and w not in self._busy)]
                if movable:
                    chosen = max(movable)
                    break
                self._cond.wait(timeout=0.5)
            else:
                return None
            self._worker_factors[worker] = chosen
            self._busy.add(worker)
            return self._by_factor[chosen].popleft()

    def _unserved_heavy_factor(self, factor: float, worker: int) -> float | None:
        """A slower factor that programs too heavy for faster ones wait at (see
        next_attempt) and no other worker serves: this worker moves there now, while
        the others go on with the fast work. Such a program has no extra try to make
        at a faster factor, so waiting for the fast work to run out would only leave
        the reboot and its renders for the batch's tail. A lone worker gains nothing
        by moving early (no other goes on), and would then render the fast work slowly."""
        if not any(wf == factor for w, wf in self._worker_factors.items() if w != worker):
            return None
        for slower in sorted((f for f in self._by_factor if f < factor), reverse=True):
            if any(t.max_factor for t in self._by_factor[slower]) and not any(
                    wf == slower for w, wf in self._worker_factors.items() if w != worker):
                return slower
        return None

    def _take_faster(self, factor: float, waiting: dict) -> _Task | None:
        """A task due at up to twice `factor`, to render at `factor` (slower is always
        allowed): a worker moved down for heavy programs goes on with the fast work
        at its own speed rather than rebooting back up."""
        faster = [f for f in waiting if factor < f <= 2 * factor]
        if not faster:
            return None
        return replace(self._by_factor[max(faster)].popleft(), factor=factor)

    def _take_extra_try(self, factor: float) -> _Task | None:
        """The first waiting task of the fastest slower factor that has not had its
        extra try, set up to make it at `factor` (called with the lock held)."""
        for slower in sorted((f for f in self._by_factor if f < factor), reverse=True):
            for task in self._by_factor[slower]:
                if not task.extra_tries and (task.max_factor or factor) >= factor:
                    self._by_factor[slower].remove(task)
                    return replace(task, factor=factor, fallback=slower, extra_tries=1)
        return None

    def done(self, worker: int | None = None) -> None:
        """A task handed out by `get` is finished (or queued again)."""
        with self._cond:
            self._busy.discard(worker)
            self._cond.notify_all()

    def leave(self, worker: int) -> None:
        """A worker has stopped: its factor's tasks are free for the others."""
        with self._cond:
            self._worker_factors.pop(worker, None)
            self._busy.discard(worker)
            self._cond.notify_all()


class _Worker(threading.Thread):
    """Owns one server; renders tasks from the queue until there are none left."""

    def __init__(self, index: int, batch: "_Batch"):
        super().__init__(name=f"render-worker-{index}", daemon=True)
        self.index, self.batch = index, batch
        self.server: SonicPiServer | None = None
        self.error: BaseException | None = None
        self.version = "unknown"  # Sonic Pi version of the last server booted
        self.boots = 0

    def _start_server(self, acceleration: float) -> SonicPiServer:
        """Boot this worker's server, retrying failed boots.

        Sonic Pi waits for scsynth a fixed time in its own clock, which acceleration
        shortens: on a busy machine a boot can fail and the next one succeed. Boot
        failures are the renderer's and are not charged to the program being rendered.
        At most BOOT_CONCURRENCY workers boot at once.
        """
        self.stop_server()
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            if self.batch.stop.is_set():
                raise ServerError("stopping")
            server = SonicPiServer(self.batch.work_dir / f"worker-{self.index}", acceleration,
                                   self.batch.headroom_s, on_spawn=self.batch.watchdog.register,
                                   boot_slots=self.batch.boot_slots)
            self.server = server  # so that Ctrl-C can end it mid-boot
            try:
                server.boot()
            except ServerError as err:
                self.server = None
                self._keep_boot_logs(attempt)
                if attempt == BOOT_ATTEMPTS:
                    raise
                logger.warning("worker %d: boot %d at x%g failed (%s); retrying",
                               self.index, attempt, acceleration, str(err).splitlines()[0])
                continue
            self.version = server.version
            self.boots += 1
            return server
        raise AssertionError("unreachable")

    def _keep_boot_logs(self, attempt: int) -> None:
        """Copy a failed boot's logs out of the server's folder (the next boot empties
        it) to <out>/.work/failed-boots/."""
        kept = self.batch.work_dir / "failed-boots"
        kept.mkdir(parents=True, exist_ok=True)
        for name in ("server.log", "jackd.log"):
            log = self.batch.work_dir / f"worker-{self.index}" / name
            if log.exists():
                shutil.copyfile(log, kept / f"worker-{self.index}-boot-{self.boots + 1}.{attempt}-{name}")

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def run(self) -> None:
        tasks = self.batch.tasks
        try:
            while True:
                factor = self.server.acceleration if self.server else self.batch.acceleration
                task = tasks.get(factor, self.index)
                if task is None:
                    return
                try:
                    self._attempt(task)
                finally:
                    tasks.done(self.index)
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            tasks.leave(self.index)
            self.stop_server()

    def _attempt(self, task: _Task) -> None:
        """Render the task once; then record the result or queue the next attempt."""
        task.attempts += 1
        try:
            server = self.server if self.server and self.server.alive() \
                and self.server.acceleration == task.factor else self._start_server(task.factor)
            result = render_clip(server, task.job.code, self.batch.timeout_s, self.batch.max_full_scale)
        except ServerError as err:
            result = ClipResult("server_error", str(err))
        if result.status in ("server_error", "timeout"):
            if not self.batch.stop.is_set():
                logger.warning("worker %d: %s on %s (%s); restarting its server", self.index,
                               result.status, task.job.id, result.message)
            self.stop_server()  # dead, or maybe hung
        if result.status == "timing" and task.factor == 1:
            result.status = "runtime_error"  # behind time in real time: the program's
        if self.batch.stop.is_set() and result.retryable:
            return  # cut short by Ctrl-C: not a result; the rerun renders it
        excused = False
        if result.status in TIME_KEEPING_FAILURES and self.server is not None:
            # a young server's failure under a high DSP load is the program's weight
            # (see next_attempt); in a stretch of stalls the load reads high anyway
            settling = ((result.dsp_load or 0.0) < HEAVY_LOAD_PERCENT and self.server.uptime_s()
                        - result.render_s * self.server.acceleration < SETTLING_SERVER_S)
            excused = self.batch.excuses(self.index, stall_window_s(task.factor, self.batch.headroom_s),
                                         settling)
        retry = next_attempt(task, result, self.batch.max_attempts, excused)
        if retry is None:
            self.batch.finish(task.job, result, task.attempts, task.factor, self.index, self.version)
            return
        if retry.factor != task.factor:
            logger.info("%s: %s at x%g, retrying at x%g", task.job.id, result.status, task.factor,
                        retry.factor)
        # Drifts come mostly in stretches of machine stalls (measured: clustered in the
        # batch's first seconds, when the servers boot side by side and the CPU is
        # full), so its retry goes to the back of the queue, not straight back in.
        self.batch.tasks.put(retry, front=result.status != "drift")


@dataclass
class _Batch:
    out_dir: Path
    work_dir: Path
    acceleration: float
    headroom_s: float
    max_attempts: int
    timeout_s: float | None
    max_full_scale: float
    audio_format: str
    watchdog: _Watchdog
    progress: object
    stop: threading.Event = field(default_factory=threading.Event)
    tasks: _TaskQueue = field(init=False)
    boot_slots: threading.Semaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(BOOT_CONCURRENCY))
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict = field(default_factory=dict)
    # (monotonic time, worker) of the last time-keeping failures, for `excuses`
    time_keeping_failures: deque = field(default_factory=lambda: deque(maxlen=64))
    audio_s: float = 0.0
    rendered: int = 0
    failed: int = 0
    started: float = 0.0

    def __post_init__(self):
        self.tasks = _TaskQueue(self.stop)

    def excuses(self, worker: int, window_s: float, settling: bool) -> bool:
        """Whether a time-keeping failure that `worker` met just now is the machine's or
        its server's rather than the program's: its server was `settling` (younger than
        SETTLING_SERVER_S of its own seconds when the clip began), or another server
        failed so in the last `window_s` real seconds (a stretch of machine stalls:
        measured, all six servers' clips failing together for 10 s). Notes the failure
        for the other workers."""
        now = time.monotonic()
        with self.write_lock:
            others = any(at >= now - window_s and w != worker for at, w in self.time_keeping_failures)
            self.time_keeping_failures.append((now, worker))
        return others or settling

    def finish(self, job: Job, result: ClipResult, attempts: int, factor: float, worker: int,
               version: str) -> None:
        """Write the clip (atomically) and append its status line."""
        row = {name: None for name in STATUS_SCHEMA.names}
        row.update(id=job.id, template=job.template, source=job.source, code_sha256=job.code_sha256,
                   status=result.status, message=result.message, sample_rate=SAMPLE_RATE, bpm=BPM,
                   bars=BARS, render_s=round(result.render_s, 3), attempts=attempts, worker=worker,
                   acceleration=float(factor), sonic_pi_version=version,
                   clipped=bool(result.status == "ok" and result.message), **result.levels)
        if result.status == "ok":
            fmt, subtype = AUDIO_FORMATS[self.audio_format]
            rel = Path(job.template) / f"{job.id}.{self.audio_format}"
            path = self.out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            sf.write(tmp, result.audio, SAMPLE_RATE, format=fmt, subtype=subtype)
            os.replace(tmp, path)
            row.update(path=str(rel), duration_s=len(result.audio) / SAMPLE_RATE,
                       audio_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        with self.write_lock:
            with open(self.out_dir / "status.jsonl", "a") as journal:
                journal.write(json.dumps(row) + "\n")
            self.rows[job.id] = row
            self.rendered += 1
            self.failed += result.status != "ok"
            if result.status == "ok":
                self.audio_s += CLIP_SECONDS
            if self.progress is not None:
                self.progress.update(1)
                elapsed = max(time.monotonic() - self.started, 1e-9)
                self.progress.set_postfix_str(
                    f"{self.rendered / elapsed:.2f} clips/s, {self.audio_s / elapsed:.1f} audio-s/s, "
                    f"{self.failed} not ok")


def render_programs(in_dir: Path, out_dir: Path, workers: int = DEFAULT_WORKERS,
                    acceleration: float | str = "auto", headroom_s: float = 0.3,
                    max_attempts: int = DEFAULT_MAX_ATTEMPTS, timeout_s: float | None = None,
                    max_full_scale: float = DEFAULT_MAX_FULL_SCALE, audio_format: str = "flac",
                    templates: list[str] | None = None, progress: bool = True) -> RenderSummary:
    """Render every program of `in_dir` (an expand folder, or a folder of .rb files).

    Args:
        workers: Sonic Pi servers run side by side (each renders one clip at a time).
        acceleration: time factor (1 = real time), or "auto" for the fastest factor that
            passed the fidelity check on this machine (see renderer.fidelity).
        headroom_s: Sonic Pi scheduling headroom in real seconds.
        max_attempts: tries per program when the renderer (not the program) fails.
        timeout_s: real seconds per clip before it counts as hung (default: from the factor).
        max_full_scale: fraction of full-scale samples above which a clip is flagged clipped.
        audio_format: "flac" or "wav".
    """
    from tqdm import tqdm

    from renderer.fidelity import resolve_acceleration
    from sonicpi_gen import __version__

    if not 1 <= workers <= JACK_SLOTS:
        raise ValueError(f"--workers {workers}: choose 1 to {JACK_SLOTS} (JACK runs at most "
                         f"{JACK_SLOTS} servers per machine)")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio format {audio_format!r} is not supported; choose one of {list(AUDIO_FORMATS)}")
    out_dir = Path(out_dir)
    jobs = load_jobs(in_dir)
    if templates:
        jobs = [j for j in jobs if j.template in set(templates)]
    out_dir.mkdir(parents=True, exist_ok=True)
    merge_manifest(in_dir, jobs, out_dir)
    previous = read_status(out_dir)
    todo = [j for j in jobs if not is_done(j, previous.get(j.id), out_dir)]
    factor = resolve_acceleration(acceleration, out_dir / ".work")
    logger.info("%d programs, %d already rendered, %d to render at x%g on %d workers",
                len(jobs), len(jobs) - len(todo), len(todo), factor, workers)
    bar = tqdm(total=len(todo), unit="clip", disable=not progress, dynamic_ncols=True)
    batch = _Batch(out_dir, out_dir / ".work", factor, headroom_s, max_attempts, timeout_s,
                   max_full_scale, audio_format, _Watchdog(), bar, rows=previous)
    for job in todo:
        batch.tasks.put(_Task(job, factor))
    batch.started = time.monotonic()
    threads = [_Worker(i, batch) for i in range(min(workers, len(todo)))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # a timed join keeps Ctrl-C responsive
    except BaseException:
        batch.stop.set()
        for thread in threads:  # end servers mid-clip; their threads see ServerError and exit
            server = thread.server
            if server is not None:
                server.shutdown()
        for thread in threads:
            thread.join(timeout=30)
        raise
    finally:
        bar.close()
        batch.watchdog.close()
        with batch.write_lock:
            write_status_parquet(out_dir, batch.rows)
        versions = sorted({t.version for t in threads if t.version != "unknown"})
        _write_provenance(out_dir, in_dir, factor, workers, headroom_s, max_full_scale,
                          audio_format, versions, __version__)
    failed = [t.error for t in threads if t.error is not None]
    if failed:
        raise failed[0]
    rows = [batch.rows[j.id] for j in jobs if j.id in batch.rows]
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return RenderSummary(counts, batch.rendered, len(jobs) - len(todo),
                         time.monotonic() - batch.started, batch.audio_s, out_dir, rows)


def _write_provenance(out_dir, in_dir, factor, workers, headroom_s, max_full_scale,
                      audio_format, versions, tool_version) -> None:
    provenance = {"tool": "sonicpi-gen", "tool_version": tool_version, "stage": "render",
                  "input": str(Path(in_dir).resolve()), "sonic_pi_version": versions,
                  "acceleration": factor, "workers": workers, "headroom_s": headroom_s,
                  "max_full_scale": max_full_scale, "audio_format": audio_format,
                  "bpm": BPM, "bars": BARS, "sample_rate": SAMPLE_RATE,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
