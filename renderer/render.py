"""Batch rendering: `render_programs` renders a programs folder on N servers, resumably.

Work is tracked per program id in <out>/status.jsonl (one line appended per finished
clip, so a kill loses at most the clip in flight) and compacted into status.parquet at
the end. A rerun skips every program whose last status is final (ok, syntax_error,
runtime_error, silent) for the same program text and whose clip still has its recorded
hash; renderer-side failures (timeouts, dead servers, timing errors under acceleration)
are retried. One render writes an output folder at a time (a lock file says which).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import soundfile as sf

from renderer.clip import (BPM, CLIP_SECONDS, DEFAULT_MAX_FULL_SCALE, FINAL_STATUSES,
                           TIME_KEEPING_FAILURES, ClipResult, render_clip, touches_server_state)
from renderer.sandbox import scratch_root
from renderer.server import SAMPLE_RATE, ServerError, SonicPiServer
from sonicpi_gen.folders import (INPUT_STATUSES, MANIFEST_FILE, STATUS_JOURNAL, append_status,
                                 make_provenance, manifest_key, played_tempo, program_id,
                                 read_manifest, read_status, status_key, status_row,
                                 write_atomically, write_manifest, write_provenance, write_status)

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}
ENGINES = ("local", "ray")  # where the servers run (see RenderSettings.engine)
# Servers idle between a clip's steps (waiting on Ruby, on a stopped run's fade), so
# more servers than cores keep the CPU busy: 6 on 2 cores (see renderer.fidelity).
DEFAULT_WORKERS = 3 * (os.cpu_count() or 1)
# A server that dies twice while rendering the same program was ended by the program
# (exit!, killing its own processes): the program's failure, not retried again.
MAX_SERVER_DEATHS = 2
# Free space below which the render stops (bytes), on the output's disk and on the
# sandboxes' scratch disk: a clip is 3 MB while recorded, 2 MB as FLAC.
MIN_FREE_BYTES = 64 << 20
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
# TARGET_LOAD_PERCENT. At x8 alone, the two heaviest template programs (a dozen
# :prophet voices under :gverb) load 49-50% and fail at x8 and x4 whatever the retries;
# the others load 5-22%.
HEAVY_LOAD_PERCENT = 40.0
# A time-keeping failure is excused (retried at the same speed, not counted; see
# next_attempt) when the server is younger than this in its own seconds (and the load
# was light), or when another server failed so lately (stall_window_s). Without the
# sample clock (renderer/sample_clock.c), scsynth's estimate of its audio clock rings
# for about a minute of its time after a boot (an idle server at x8 drifted 13 ms over
# its first clip, 0.1 ms by its twelfth); with it the young-server rule rarely fires,
# and costs at most MAX_EXCUSED uncounted retries per program when it does.
SETTLING_SERVER_S = 80.0
MAX_EXCUSED = 3
TARGET_LOAD_PERCENT = 25.0

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


class RenderError(RuntimeError):
    """The render cannot go on (the output folder is held or not writable, the disk is
    full); what is finished stays, and a rerun resumes."""


class LocalEngine:
    """Where the batch's servers run: here, one SonicPiServer per worker thread
    (--engine local). renderer.ray_engine.RayEngine is the other engine, with the same
    methods: the batch (queue, retry policy, journal, lock, resume) is the same for both."""

    name = "local"

    def start(self, workers: int) -> None:
        """Get ready for `workers` servers."""

    def default_workers(self) -> int:
        return DEFAULT_WORKERS

    def resolve_acceleration(self, acceleration: float | str, work_dir: Path) -> float:
        """The batch's factor: a number as given, or "auto" calibrated on this machine."""
        from renderer.fidelity import resolve_acceleration
        return resolve_acceleration(acceleration, work_dir)

    def max_factor(self, worker: int) -> float | None:
        """The fastest factor `worker`'s server may run at (None: no bound of its own)."""
        return None

    def new_server(self, worker: int, acceleration: float, headroom_s: float,
                   boot_log_dir: Path, boot_slots) -> SonicPiServer:
        """An unbooted server for `worker` (the worker boots it and shuts it down)."""
        return SonicPiServer(acceleration=acceleration, headroom_s=headroom_s,
                             boot_log_dir=boot_log_dir, boot_slots=boot_slots)

    def render_clip(self, server, code: str, timeout_s: float | None,
                    max_full_scale: float) -> ClipResult:
        return render_clip(server, code, timeout_s, max_full_scale)

    def scratch_folders(self) -> list[Path]:
        """Folders whose disk the servers record on (checked for free space)."""
        return [scratch_root()]

    def describe(self) -> dict:
        """The engine's part of provenance.json."""
        return {"engine": self.name}

    def close(self) -> None:
        """End whatever the engine started (the servers end with their workers)."""


def load_jobs(in_dir: Path) -> tuple[list[Job], list[dict]]:
    """Programs to render: an expand manifest, or every .rb file under a plain folder.

    Also returns a status row for each input file that is not a program to render: a
    file whose text is another file's (it is rendered once, under the first file's
    source), or one that is not UTF-8 text."""
    in_dir = Path(in_dir)
    if (in_dir / MANIFEST_FILE).exists():
        jobs = {}
        for row in read_manifest(in_dir, ["id", "template", "code"]).to_pylist():
            jobs.setdefault(row["id"], Job(row["id"], row["template"], row["code"]))
        return list(jobs.values()), []
    files = sorted(in_dir.rglob("*.rb"))
    if not files:
        raise FileNotFoundError(f"{in_dir} has no manifest.parquet and no .rb files")
    jobs, rejected = {}, []
    for path in files:
        source = str(path.relative_to(in_dir))
        raw = path.read_bytes()
        try:
            code = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            rejected.append(_input_row(hashlib.sha256(raw).hexdigest()[:16], source, "unreadable",
                                       f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                                       f"{err.start}): save the file as UTF-8"))
            continue
        job = Job(program_id(code), "user", code, source)
        first = jobs.setdefault(job.id, job)
        if first is not job:
            rejected.append(_input_row(job.id, source, "duplicate",
                                       f"same text as {first.source}, rendered once as {job.id}"))
    return list(jobs.values()), rejected


def _input_row(id: str, source: str, status: str, message: str) -> dict:
    return status_row(id=id, template="user", source=source, status=status, message=message)


def merge_manifest(in_dir: Path, jobs: list[Job], out_dir: Path) -> None:
    """Carry the programs' manifest into out_dir/manifest.parquet, so the dataset stage
    reads only the renders folder. Rendering several programs folders (base, families,
    scenarios) into one out_dir unions their manifests; a folder of plain .rb files gets
    a manifest made from its files."""
    if (Path(in_dir) / MANIFEST_FILE).exists():
        rows = read_manifest(in_dir).to_pylist()
    else:
        rows = [{"id": j.id, "template": j.template, "index": i, "code": j.code, "params": "{}",
                 "source": j.source} for i, j in enumerate(jobs)]
    if (Path(out_dir) / MANIFEST_FILE).exists():  # this render's rows first: a program rendered again keeps its code
        rows = rows + read_manifest(out_dir).to_pylist()
    unique = {}
    for row in rows:
        unique.setdefault(manifest_key(row), row)
    write_manifest(out_dir, unique.values())


def is_done(job: Job, row: dict | None, out_dir: Path) -> bool:
    """Whether `job` has a final status for its text and, when ok, its clip on disk with
    the hash recorded when it was written (a missing, cut or damaged clip is rendered
    again)."""
    if not row or row["status"] not in FINAL_STATUSES or row["code_sha256"] != job.code_sha256:
        return False
    if row["status"] != "ok":
        return True
    try:
        return _sha256(out_dir / row["path"]) == row["audio_sha256"]
    except OSError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hold_output(out_dir: Path):
    """Take the output folder's lock (held until the returned file is closed), or raise
    RenderError naming the render that holds it."""
    lock = open(out_dir / ".render.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RenderError(f"{out_dir} is being written by a render that is still running "
                          f"(pid {holder}): wait for it to finish, or render into another --out")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _remove_partial_writes(out_dir: Path) -> None:
    """Remove what a killed render left half-written (temporary names, see write_atomically)."""
    for partial in out_dir.rglob(".*.tmp-*"):
        if partial.is_file():
            partial.unlink(missing_ok=True)


def _check_free_space(*folders: Path) -> None:
    for folder in folders:
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES:
            raise RenderError(f"the disk holding {folder} is full ({free >> 20} MB free): free some "
                              "space and rerun the same command; finished clips are kept")


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
    render_s: float = 0.0  # over all its attempts
    server_deaths: int = 0  # servers that died while rendering it (see MAX_SERVER_DEATHS)


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
      mostly a passing load (programs that fail so among 6 servers render clean
      alone); then at half the speed each time, down to real time (where "behind time"
      is the program's own error, see _Worker). A virtual machine can stall every
      server at once for up to 10 s, so the default five attempts end in real time,
      where a stall barely moves the clock.
      A program whose DSP load was high when it failed (HEAVY_LOAD_PERCENT) goes
      straight to a factor its load allows instead.
    - time-out or dead server: the same speed on a fresh server.
    - `excused` (the failure was the machine's or a young server's, see _Batch.excuses):
      the same speed, counted neither as a hiccup nor against the attempts, up to
      MAX_EXCUSED times per program, whatever its DSP load (a stall inflates the load
      read, which would send light programs straight to x2). Moving
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
                    # with the others at the end (six shutdowns side by side take 2 s).
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
            server = self.batch.engine.new_server(
                self.index, acceleration, self.batch.headroom_s,
                self.batch.work_dir / "failed-boots" / f"worker-{self.index}-boot-{self.boots + 1}.{attempt}",
                self.batch.boot_slots)
            self.server = server  # so that Ctrl-C can end it mid-boot
            try:
                server.boot()
            except ServerError as err:
                self.server = None
                if attempt == BOOT_ATTEMPTS:
                    raise
                logger.warning("worker %d: boot %d at x%g failed (%s); retrying",
                               self.index, attempt, acceleration, str(err).splitlines()[0])
                continue
            self.version = server.version
            self.boots += 1
            return server
        raise AssertionError("unreachable")

    def _keep_server_clean(self, job: Job, result: ClipResult) -> None:
        """Replace the server before the next clip when this program may have changed
        it for the programs after it: it used what can (clip.touches_server_state), or
        the server's state after the stop differs from its state after boot."""
        server = self.server
        if server is None or not server.alive():
            return
        reasons = touches_server_state(job.code)
        if not reasons:
            server.wait_stopped()  # the stop's report of the state (the next clip waits anyway)
            if server.changed_state():
                reasons = ["its state after the program differs from its state after boot"]
        if reasons:
            logger.info("worker %d: %s may have changed its server (%s); replacing it",
                        self.index, job.id, ", ".join(reasons))
            self.stop_server()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def run(self) -> None:
        tasks = self.batch.tasks
        try:
            while True:
                factor = self.server.acceleration if self.server else self._home_factor()
                task = tasks.get(factor, self.index)
                if task is None:
                    return
                try:
                    self._attempt(task)
                finally:
                    tasks.done(self.index)
        except BaseException as err:  # reported by the main thread
            self.error = err
            self.batch.stop.set()  # a full disk, say: the other workers stop too
        finally:
            tasks.leave(self.index)
            self.stop_server()

    def _home_factor(self) -> float:
        """The batch's factor, or less where this worker's node calibrated lower."""
        cap = self.batch.engine.max_factor(self.index)
        return self.batch.acceleration if cap is None else min(self.batch.acceleration, cap)

    def _attempt(self, task: _Task) -> None:
        """Render the task once; then record the result or queue the next attempt."""
        task.attempts += 1
        _check_free_space(self.batch.out_dir, *self.batch.engine.scratch_folders())
        # a node whose type calibrated slower than the batch's factor renders there
        # (--engine ray with "auto": each node type has its own factor)
        cap = self.batch.engine.max_factor(self.index)
        if cap is not None and task.factor > cap:
            task.factor = cap
        started = time.monotonic()
        try:
            server = self.server if self.server and self.server.alive() \
                and self.server.acceleration == task.factor else self._start_server(task.factor)
            result = self.batch.engine.render_clip(server, task.job.code, self.batch.timeout_s,
                                                   self.batch.max_full_scale)
            self._keep_server_clean(task.job, result)
        except ServerError as err:
            result = ClipResult("server_error", str(err))
        task.render_s += time.monotonic() - started
        if result.status in ("server_error", "timeout"):
            if self.server is not None and not self.server.alive():
                task.server_deaths += 1
            if not self.batch.stop.is_set():
                logger.warning("worker %d: %s on %s (%s); restarting its server", self.index,
                               result.status, task.job.id, result.message)
            self.stop_server()  # dead, or maybe hung
        if self.batch.stop.is_set() and result.retryable:
            return  # cut short by Ctrl-C: not a result; the rerun renders it
        if task.server_deaths >= MAX_SERVER_DEATHS:
            result = ClipResult("runtime_error", f"the server died {task.server_deaths} times while "
                                "rendering this program: a program that exits (exit!) or ends its "
                                "own processes cannot be rendered")
        elif result.retryable and task.factor == 1 and result.status != "server_error":
            # late, drifting, behind time or hung in real time: the program's own doing
            result = replace(result, status="runtime_error",
                             message=f"in real time: {result.message}")
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
            self.batch.finish(task.job, result, task.attempts, task.factor, self.index, self.version,
                              task.render_s)
            return
        if retry.factor != task.factor:
            logger.info("%s: %s at x%g, retrying at x%g", task.job.id, result.status, task.factor,
                        retry.factor)
        # Drifts come mostly in stretches of machine stalls (most often in a batch's
        # first seconds, when the servers boot side by side and the CPU is full), so
        # its retry goes to the back of the queue, not straight back in.
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
    engine: object = field(default_factory=LocalEngine)  # where the servers run

    def __post_init__(self):
        self.tasks = _TaskQueue(self.stop)

    def excuses(self, worker: int, window_s: float, settling: bool) -> bool:
        """Whether a time-keeping failure that `worker` met just now is the machine's or
        its server's rather than the program's: its server was `settling` (younger than
        SETTLING_SERVER_S of its own seconds when the clip began), or another server
        failed so in the last `window_s` real seconds (a stretch of machine stalls, which
        can fail every server's clip for up to 10 s). Notes the failure
        for the other workers."""
        now = time.monotonic()
        with self.write_lock:
            others = any(at >= now - window_s and w != worker for at, w in self.time_keeping_failures)
            self.time_keeping_failures.append((now, worker))
        return others or settling

    def finish(self, job: Job, result: ClipResult, attempts: int, factor: float, worker: int,
               version: str, render_s: float) -> None:
        """Write the clip (atomically) and append its status line."""
        row = status_row(**played_tempo(job.code, CLIP_SECONDS, BPM))
        row.update(id=job.id, template=job.template, source=job.source, code_sha256=job.code_sha256,
                   status=result.status, message=result.message, sample_rate=SAMPLE_RATE,
                   render_s=round(render_s, 3), attempts=attempts, worker=worker,
                   acceleration=float(factor), sonic_pi_version=version,
                   clipped=bool(result.status == "ok" and result.message), **result.levels)
        if result.status == "ok":
            fmt, subtype = AUDIO_FORMATS[self.audio_format]
            rel = Path(job.template) / f"{job.id}.{self.audio_format}"
            path = self.out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_atomically(path, lambda tmp: sf.write(tmp, result.audio, SAMPLE_RATE,
                                                            format=fmt, subtype=subtype))
            except (OSError, RuntimeError) as err:  # soundfile raises RuntimeError on a short write
                _check_free_space(self.out_dir)
                raise RenderError(f"could not write {path}: {err}") from err
            row.update(path=str(rel), duration_s=len(result.audio) / SAMPLE_RATE,
                       audio_sha256=_sha256(path))
        with self.write_lock:
            try:
                append_status(self.out_dir, row)
            except OSError as err:
                _check_free_space(self.out_dir)
                raise RenderError(f"could not append to {self.out_dir / STATUS_JOURNAL}: {err}") from err
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


@dataclass
class RenderSettings:
    """How `render_programs` renders.

    workers: Sonic Pi servers run side by side (each renders one clip at a time); None:
        the engine's default (local: DEFAULT_WORKERS, 3 x cores; ray: 3 per CPU of the
        cluster).
    acceleration: time factor (1 = real time), or "auto" for the fastest factor that
        passed the fidelity check on this machine (see renderer.fidelity); on Ray, on
        each type of node.
    headroom_s: Sonic Pi scheduling headroom in real seconds (the server's default).
    max_attempts: tries per program when the renderer (not the program) fails.
    timeout_s: real seconds per clip before it counts as hung (None: from the factor).
    max_full_scale: fraction of full-scale samples above which a clip is flagged clipped.
    audio_format: one of AUDIO_FORMATS ("flac", "wav").
    engine: "local" (servers on this machine, one per thread), "ray" (servers on the
        Ray cluster at `address`, one per actor; see renderer.ray_engine), or an engine
        object (LocalEngine, ray_engine.RayEngine).
    address: the Ray cluster's address (HOST:PORT); None: the RAY_ADDRESS variable,
        else the cluster started on this machine with `ray start`.
    """

    workers: int | None = None
    acceleration: float | str = "auto"
    headroom_s: float = SonicPiServer.headroom_s
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float | None = None
    max_full_scale: float = DEFAULT_MAX_FULL_SCALE
    audio_format: str = "flac"
    engine: str | object = "local"
    address: str | None = None


def render_programs(in_dir: Path, out_dir: Path, settings: RenderSettings | None = None, *,
                    templates: list[str] | None = None, progress: bool = True) -> RenderSummary:
    """Render every program of `in_dir` (an expand folder, or a folder of .rb files).

    Args:
        settings: workers, speed, retries, format and engine (RenderSettings(): its
            defaults).
        templates: render only these templates' programs (None: all).
        progress: show a tqdm bar.
    """
    settings = settings or RenderSettings()
    engine = _make_engine(settings.engine, settings.address)
    workers, audio_format = settings.workers, settings.audio_format
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: choose 1 or more")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio format {audio_format!r} is not supported; choose one of {list(AUDIO_FORMATS)}")
    out_dir = Path(out_dir)
    jobs, rejected = load_jobs(in_dir)
    if templates:
        jobs = [j for j in jobs if j.template in set(templates)]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = _hold_output(out_dir)
    except OSError as err:  # not permitted, or a read-only file system
        raise RenderError(f"cannot write to {out_dir} ({err.strerror}): choose an --out you can "
                          "write to") from err
    try:
        return _render_held(in_dir, out_dir, jobs, rejected, settings, progress, engine)
    finally:
        lock.close()


def _make_engine(engine: str | object, address: str | None):
    """The engine object for an --engine name (or the object itself)."""
    if engine == "local":
        if address is not None:
            raise ValueError(f"--address {address} is for --engine ray; the local engine renders "
                             "on this machine")
        return LocalEngine()
    if engine == "ray":
        from renderer.ray_engine import RayEngine
        return RayEngine(address)
    if isinstance(engine, str):
        raise ValueError(f"--engine {engine!r} is not known; choose 'local' or 'ray'")
    return engine


def _render_held(in_dir, out_dir, jobs, rejected, settings: RenderSettings, progress,
                 engine) -> RenderSummary:
    """render_programs, once the output folder is held."""
    try:
        return _render_on(in_dir, out_dir, jobs, rejected, settings, progress, engine)
    finally:
        engine.close()  # the Ray engine's actors, and the servers they own, end here


def _render_on(in_dir, out_dir, jobs, rejected, settings: RenderSettings, progress,
               engine) -> RenderSummary:
    """render_programs, once the output folder is held and the engine made."""
    from tqdm import tqdm

    _remove_partial_writes(out_dir)
    merge_manifest(in_dir, jobs, out_dir)
    previous = read_status(out_dir)
    for job in jobs:  # rows of a render before bpm and bars followed the program: refresh them
        if job.id in previous and previous[job.id]["status"] not in INPUT_STATUSES:
            previous[job.id].update(played_tempo(job.code, CLIP_SECONDS, BPM))
    for row in rejected:
        previous[status_key(row)] = row
    logger.info("checking the %d finished clips against their hashes",
                sum(1 for row in previous.values() if row["status"] == "ok"))
    todo = [j for j in jobs if not is_done(j, previous.get(j.id), out_dir)]
    workers = settings.workers
    if workers is None:  # the engine's default, for the cluster it finds
        workers = engine.default_workers()
    running = min(workers, len(todo))
    if running:
        engine.start(running)
    factor = engine.resolve_acceleration(settings.acceleration, out_dir / ".work")
    logger.info("%d programs, %d already rendered, %d to render at x%g on %d workers",
                len(jobs), len(jobs) - len(todo), len(todo), factor, workers)
    bar = tqdm(total=len(todo), unit="clip", disable=not progress, dynamic_ncols=True)
    batch = _Batch(out_dir, out_dir / ".work", factor, settings.headroom_s, settings.max_attempts,
                   settings.timeout_s, settings.max_full_scale, settings.audio_format, bar,
                   rows=previous, engine=engine)
    for job in todo:
        batch.tasks.put(_Task(job, factor))
    batch.started = time.monotonic()
    threads = [_Worker(i, batch) for i in range(running)]
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
        with batch.write_lock:
            write_status(out_dir, batch.rows)
        versions = sorted({t.version for t in threads if t.version != "unknown"})
        _write_provenance(out_dir, in_dir, settings, factor, workers, versions, engine.describe())
    failed = [t.error for t in threads if t.error is not None]
    if failed:
        raise failed[0]
    rows = [batch.rows[j.id] for j in jobs if j.id in batch.rows] + rejected
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return RenderSummary(counts, batch.rendered, len(jobs) - len(todo),
                         time.monotonic() - batch.started, batch.audio_s, out_dir, rows)


def _write_provenance(out_dir, in_dir, settings: RenderSettings, factor: float, workers: int,
                      versions: list[str], engine: dict) -> None:
    """provenance.json with the settings as resolved (`factor`, `workers`) and the
    accelerated-clock checks the clips were rendered under."""
    from renderer.fidelity import recorded_checks

    record = {"acceleration": factor, "workers": workers, "headroom_s": settings.headroom_s,
              "max_full_scale": settings.max_full_scale, "audio_format": settings.audio_format,
              "default_bpm": BPM, "clip_seconds": CLIP_SECONDS, "sample_rate": SAMPLE_RATE,
              "checks": recorded_checks(), **engine}
    write_provenance(out_dir, make_provenance("render", "sonicpi-gen render", record,
                                              [Path(in_dir).resolve()], versions))
