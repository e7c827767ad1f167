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
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from renderer.clip import (BARS, BPM, CLIP_SECONDS, DEFAULT_MAX_FULL_SCALE, FINAL_STATUSES,
                           ClipResult, render_clip)
from renderer.server import JACK_SLOTS, SAMPLE_RATE, ServerError, SonicPiServer

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}
DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))
DEFAULT_MAX_ATTEMPTS = 3
BOOT_ATTEMPTS = 5
STICKY_SLOW_JOBS = 8  # jobs a worker stays at a slower factor after xruns made it slow down
SLOWER_FACTORS = (32, 24, 16, 12, 8, 4, 2, 1)  # fall back along these on timing errors

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


class _Worker(threading.Thread):
    """Owns one server; renders jobs from the queue until it is empty or stop is set."""

    def __init__(self, index: int, batch: "_Batch"):
        super().__init__(name=f"render-worker-{index}", daemon=True)
        self.index, self.batch = index, batch
        self.server: SonicPiServer | None = None
        self.error: BaseException | None = None
        self.version = "unknown"  # Sonic Pi version of the last server booted
        self.slow_factor, self.slow_jobs_left = 1.0, 0  # see _render

    def _start_server(self, acceleration: float) -> SonicPiServer:
        """Boot this worker's server, retrying failed boots.

        Sonic Pi waits for scsynth a fixed time in its own clock, which acceleration
        shortens: on a busy machine a boot can fail and the next one succeed. Boot
        failures are the renderer's and are not charged to the program being rendered.
        """
        self.stop_server()
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            with self.batch.boot_lock:  # simultaneous boots fail (scsynth/JACK races)
                if self.batch.stop.is_set():
                    raise ServerError("stopping")
                server = SonicPiServer(self.batch.work_dir / f"worker-{self.index}", acceleration,
                                       self.batch.headroom_s, on_spawn=self.batch.watchdog.register)
                try:
                    server.boot()
                except ServerError as err:
                    if attempt == BOOT_ATTEMPTS:
                        raise
                    logger.warning("worker %d: boot %d at x%g failed (%s); retrying",
                                   self.index, attempt, acceleration, str(err).splitlines()[0])
                    continue
            self.server, self.version = server, server.version
            return server
        raise AssertionError("unreachable")

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def run(self) -> None:
        try:
            while not self.batch.stop.is_set():
                try:
                    job = self.batch.jobs.get_nowait()
                except queue.Empty:
                    return
                result, attempts, factor = self._render(job)
                if self.batch.stop.is_set() and result.retryable:
                    return  # cut short by Ctrl-C: not a result; the rerun renders it
                self.batch.finish(job, result, attempts, factor, self.index, self.version)
        except BaseException as err:  # reported by the main thread
            self.error = err
        finally:
            self.stop_server()

    def _render(self, job: Job) -> tuple[ClipResult, int, float]:
        """Render one job, retrying what is the renderer's fault. Returns the result, the
        attempts used and the factor of the last attempt.

        - xrun / late event (the machine could not keep up): once more at the same speed,
          then slower; the worker stays slower for its next STICKY_SLOW_JOBS jobs, since
          the cause is the load, not the program.
        - "too far behind time" (Ruby could not keep up with this program): much slower
          (a quarter of the speed), down to real time; if it happens in real time too,
          it is the program's error (runtime_error), not the renderer's.
        - dead server or time-out: restart the server and retry.
        """
        default = self.batch.acceleration
        factor = self.slow_factor if self.slow_jobs_left > 0 else default
        self.slow_jobs_left = max(0, self.slow_jobs_left - 1)
        result = ClipResult("server_error", "not rendered")
        hiccups = 0
        for attempt in range(1, self.batch.max_attempts + 1):
            if self.batch.stop.is_set():
                break
            try:
                server = self.server if self.server and self.server.alive() \
                    and self.server.acceleration == factor else self._start_server(factor)
                result = render_clip(server, job.code, self.batch.timeout_s, self.batch.max_full_scale)
            except ServerError as err:
                if self.batch.stop.is_set():
                    break
                logger.warning("worker %d: server failed on %s (%s); restarting", self.index, job.id, err)
                result = ClipResult("server_error", str(err))
                self.stop_server()
                continue
            if result.status == "timing" and factor == 1:
                result.status = "runtime_error"  # behind time in real time: the program's
            if not result.retryable:
                if factor < default and hiccups:
                    self.slow_factor, self.slow_jobs_left = factor, STICKY_SLOW_JOBS
                return result, attempt, factor
            hiccups += result.status in ("xrun", "late")
            if result.status in ("xrun", "late") and hiccups == 1:
                continue  # a passing scheduling hiccup: once more at the same speed
            if result.status in ("timing", "xrun", "late") and factor > 1:
                target = factor / 4 if result.status == "timing" else factor / 2
                slower = max([f for f in SLOWER_FACTORS if f <= max(target, 1)], default=1)
                logger.info("%s: %s at x%g, retrying at x%g", job.id, result.status, factor, slower)
                factor = slower
            elif result.status == "timeout":
                self.stop_server()  # it may be hung
        return result, self.batch.max_attempts, factor


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
    jobs: "queue.Queue[Job]" = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    boot_lock: threading.Lock = field(default_factory=threading.Lock)
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict = field(default_factory=dict)
    audio_s: float = 0.0
    rendered: int = 0
    failed: int = 0
    started: float = 0.0

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
        batch.jobs.put(job)
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
            if thread.server is not None:
                thread.server.shutdown()
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
