"""Rendering on a Ray cluster (--engine ray): one actor per Sonic Pi server.

The driver (renderer.render) keeps everything it keeps on one machine: the task queue,
the retry and slow-down policy, the output folder's lock, the status journal, resume,
and the writing of every clip (atomically, under the same name). Only the servers move:
each of the batch's worker threads owns a RayServer, a stand-in for a SonicPiServer
whose server lives in a RenderActor on some node of the cluster. The actor boots its
sandboxed server (renderer.sandbox) once and renders many clips on it; each clip's audio
(int16, 3 MB) comes back to the driver as the actor task's result.

Faults are the ones the local renderer survives, and are met the same way: an actor, or
the node under it, that dies mid-clip makes that attempt a server_error; the worker
replaces its server (a new actor, placed wherever there is room) and the clip is
retried, and since only the driver writes, no clip is lost or written twice. A server
ends with its actor: its sandbox is bubblewrap's --die-with-parent child of the actor's
process, and Ray ends a job's actors when its driver ends, however it ends.

"auto" acceleration is calibrated per node type (CPU model and core count, see
renderer.fidelity.node_type) on an actor of that type, and cached on the driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from renderer.clip import CLIP_SECONDS, ClipResult
from renderer.render import RenderError
from renderer.server import ServerError

logger = logging.getLogger(__name__)

RAY_MISSING = ("--engine ray needs Ray: pip install 'sonicpi-gen[ray]' (scripts/setup.sh --ml "
               "installs it)")
# The project's root: actors import the renderer from here (the driver's code), not from
# whatever copy the nodes' Python has installed
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# CPUs a server's actor asks of Ray: a third, as the local engine runs 3 servers per core
# (renderer.render.DEFAULT_WORKERS; servers idle between a clip's steps)
CPUS_PER_SERVER = 1 / 3
# Seconds for new actors to be placed and answer: past it the cluster has no room
PLACEMENT_TIMEOUT_S = 120.0
# Seconds for an actor's short calls (alive, state, shutdown) to answer; a call that
# does not is a hung or unreachable node, handled as a dead server
CALL_TIMEOUT_S = 30.0
# Real seconds for a boot on a node: a boot under load takes up to 17 s (renderer.server
# BOOT_TIMEOUT_S, plus Sonic Pi's 60 s of its own clock) and may wait for a boot slot
BOOT_CALL_TIMEOUT_S = 300.0
# Seconds a clip's call may take beyond the clip's own time-out (renderer.clip), for the
# audio's trip back and a busy node
RENDER_MARGIN_S = 60.0


class RayUnavailableError(ImportError):
    """Ray is not installed (the `ray` extra)."""


def require_ray():
    """The ray module, or RayUnavailableError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError(RAY_MISSING) from err
    return ray


class NodeBootSlots:
    """A semaphore shared by the processes of one node (file locks in its temporary
    folder): at most BOOT_CONCURRENCY servers of the node boot at once, as the local
    engine allows on one machine (renderer.render.BOOT_CONCURRENCY: a boot is seconds of
    CPU beside servers that render). A lock dies with the process that held it."""

    def __init__(self, slots: int | None = None):
        from renderer.render import BOOT_CONCURRENCY
        self.slots = slots or BOOT_CONCURRENCY
        self.folder = Path(tempfile.gettempdir()) / f"sonicpi-gen-boot-slots-{os.getuid()}"
        self._held = None

    def __enter__(self):
        self.folder.mkdir(exist_ok=True)
        while True:
            for slot in range(self.slots):
                lock = open(self.folder / f"{slot}.lock", "a")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    lock.close()
                    continue
                self._held = lock
                return self
            time.sleep(0.1)

    def __exit__(self, *exc):
        self._held.close()
        self._held = None


class RenderActor:
    """Owns one sandboxed Sonic Pi server on its node (a Ray actor, see actor_class).

    Its methods are called by the driver's RayServer; a server's failure comes back as
    a value, not an exception, so that an exception always means the actor itself
    failed."""

    def __init__(self):
        self.server = None

    def describe(self) -> dict:
        """Where the actor runs: node id and type, host, pid, and which renderer it runs."""
        import platform

        import ray

        import renderer
        from renderer.fidelity import node_type
        from sonicpi_gen import __version__
        return {"node_id": ray.get_runtime_context().get_node_id(), "node_type": node_type(),
                "host": platform.node(), "pid": os.getpid(), "renderer": renderer.__file__,
                "tool_version": __version__}

    def boot(self, acceleration: float, headroom_s: float) -> dict:
        """Boot a server at `acceleration` (ending the one it had): {"version": ...}, or
        {"error": message, "logs": {name: bytes}} when the boot failed."""
        from renderer.server import SonicPiServer
        self.shutdown()
        logs = Path(tempfile.mkdtemp(prefix="sonicpi-gen-boot-logs-"))
        server = SonicPiServer(acceleration=acceleration, headroom_s=headroom_s,
                               boot_log_dir=logs, boot_slots=NodeBootSlots())
        self.server = server  # so that a shutdown from the driver ends it mid-boot
        try:
            server.boot()
        except ServerError as err:
            self.server = None
            return {"error": str(err), "logs": {p.name: p.read_bytes() for p in logs.iterdir()}}
        finally:
            shutil.rmtree(logs, ignore_errors=True)
        return {"version": server.version}

    def render(self, code: str, timeout_s: float | None, max_full_scale: float):
        """("result", ClipResult), or ("server_error", message) when the server failed."""
        from renderer.clip import render_clip
        server = self.server
        if server is None:
            return "server_error", "the actor has no server (it was shut down)"
        try:
            return "result", render_clip(server, code, timeout_s, max_full_scale)
        except ServerError as err:
            return "server_error", str(err)

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def uptime_s(self) -> float:
        return self.server.uptime_s() if self.server is not None else 0.0

    def wait_stopped(self):
        """None, or the ServerError's message."""
        try:
            self.server.wait_stopped()
        except (ServerError, AttributeError) as err:
            return str(err) or "the actor has no server"
        return None

    def changed_state(self) -> bool:
        return self.server is None or self.server.changed_state()

    def calibrate(self, headroom_s: float) -> list[dict]:
        """The fidelity calibration (renderer.fidelity.calibrate) on this node."""
        from renderer.fidelity import calibrate
        self.shutdown()
        with tempfile.TemporaryDirectory(prefix="sonicpi-gen-calibration-") as work:
            return [asdict(r) for r in calibrate(Path(work), headroom_s=headroom_s)]

    def shutdown(self) -> None:
        """End the server and everything in its sandbox (safe while it renders or boots)."""
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()


def actor_class(cpus_per_server: float):
    """RenderActor as a Ray actor class asking `cpus_per_server` CPUs. Two calls may run
    at once: a shutdown must reach a server that is rendering or booting (as Ctrl-C does
    with the local engine)."""
    ray = require_ray()
    return ray.remote(num_cpus=cpus_per_server, max_restarts=0, max_task_retries=0,
                      max_concurrency=2)(RenderActor)


class RayServer:
    """The batch's handle on a server owned by a RenderActor: what renderer.render's
    _Worker uses of a SonicPiServer (boot, alive, acceleration, version, uptime_s,
    wait_stopped, changed_state, shutdown). Every failure of the actor or its node is a
    ServerError, as a dead local server's is."""

    def __init__(self, engine: "RayEngine", worker: int, acceleration: float, headroom_s: float,
                 boot_log_dir: Path | None = None):
        self.engine, self.worker = engine, worker
        self.acceleration, self.headroom_s = acceleration, headroom_s
        self.boot_log_dir = boot_log_dir
        self.version = "unknown"
        self.actor = None
        self.node: dict = {}
        self.ready_at: float | None = None

    def _call(self, method: str, *args, timeout_s: float = CALL_TIMEOUT_S):
        """ray.get of the actor's `method`; a ServerError if the actor or its node failed."""
        ray = require_ray()
        actor = self.actor
        if actor is None:
            raise ServerError("the render actor was shut down")
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.engine.discard(self.worker, actor)
            raise ServerError(f"the render actor on {self.node.get('host', '?')} (pid "
                              f"{self.node.get('pid', '?')}) did not answer {method} within "
                              f"{timeout_s:.0f} s; it was ended") from None
        except ray.exceptions.RayError as err:
            self.engine.discard(self.worker, actor)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ServerError(f"the render actor on {self.node.get('host', '?')} (pid "
                              f"{self.node.get('pid', '?')}) failed during {method}: {first}") from None

    def boot(self) -> None:
        self.actor, self.node = self.engine.actor(self.worker)
        reply = self._call("boot", self.acceleration, self.headroom_s, timeout_s=BOOT_CALL_TIMEOUT_S)
        if "error" in reply:
            if self.boot_log_dir is not None:
                self.boot_log_dir.mkdir(parents=True, exist_ok=True)
                for name, data in reply["logs"].items():
                    (self.boot_log_dir / name).write_bytes(data)
            raise ServerError(f"on {self.node['host']}: {reply['error']}")
        self.version = reply["version"]
        self.ready_at = time.monotonic()

    def render(self, code: str, timeout_s: float | None, max_full_scale: float) -> ClipResult:
        """render_clip on the actor's server; a ServerError when the server failed."""
        clip_s = timeout_s or 3 * (CLIP_SECONDS + 3.0) / self.acceleration + 10  # see render_clip
        kind, value = self._call("render", code, timeout_s, max_full_scale,
                                 timeout_s=clip_s + RENDER_MARGIN_S)
        if kind == "server_error":
            raise ServerError(value)
        return value

    def alive(self) -> bool:
        try:
            return bool(self._call("alive"))
        except ServerError:
            return False

    def uptime_s(self) -> float:
        """The server's own seconds since its boot (measured on the driver: a call's
        latency is not worth a round trip)."""
        return 0.0 if self.ready_at is None else (time.monotonic() - self.ready_at) * self.acceleration

    def wait_stopped(self) -> None:
        error = self._call("wait_stopped")
        if error is not None:
            raise ServerError(error)

    def changed_state(self) -> bool:
        return bool(self._call("changed_state"))

    def shutdown(self) -> None:
        """End the actor's server; the actor stays for the worker's next boot. Safe to
        call from several threads and more than once."""
        actor, self.actor = self.actor, None
        if actor is None:
            return
        ray = require_ray()
        try:
            ray.get(actor.shutdown.remote(), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.RayError:
            self.engine.discard(self.worker, actor)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise RenderError unless the head's port at HOST:PORT takes a connection: Ray's own
    client retries an address that does not answer for minutes before it gives up."""
    import socket
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RenderError(f"--address {address}: give the Ray head as HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RenderError(f"no Ray cluster at {address} ({err.strerror or err}): start one with "
                          "`ray start --head` on that machine (docs/scale.md), or pass the "
                          "--address its `ray start` printed") from None


class RayEngine:
    """Servers on a Ray cluster, one RenderActor each (see renderer.render.LocalEngine
    for the methods the batch calls).

    Args:
        address: the cluster (HOST:PORT of its head); None: RAY_ADDRESS, else the
            cluster started on this machine with `ray start`.
        cpus_per_server: CPUs each actor asks of Ray, which spreads the actors over the
            nodes by them (CPUS_PER_SERVER).
        project_root: where actors import the renderer from (PROJECT_ROOT, the driver's
            code); each node needs the project's set-up (scripts/setup.sh) either way.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_server: float = CPUS_PER_SERVER,
                 project_root: Path = PROJECT_ROOT):
        self.ray = require_ray()
        if cpus_per_server <= 0:
            raise ValueError(f"cpus_per_server {cpus_per_server}: choose a positive number")
        self.address = address
        self.cpus_per_server = cpus_per_server
        self.project_root = Path(project_root)
        self._connected = False  # this engine connected (and disconnects at close)
        self._actor_class = None
        self._actors: dict[int, tuple] = {}  # worker -> (actor, its describe())
        self._lock = threading.Lock()
        self._factors: dict[str, float] = {}  # node type -> calibrated factor ("auto")
        self._nodes: dict[str, str] = {}  # node id -> type, of every actor placed
        self.replaced = 0  # actors that died or hung and were replaced

    # -- the cluster --------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster (once) as a driver whose actors import this project."""
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address and "://" not in address:
            _check_reachable(address)
        env = {"PYTHONPATH": os.pathsep.join(
            [str(self.project_root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        try:
            ray.init(address=self.address or "auto", runtime_env={"env_vars": env},
                     logging_level=logging.WARNING, log_to_driver=logger.isEnabledFor(logging.INFO))
        except ConnectionError as err:
            where = f"at {self.address}" if self.address else "on this machine (nor RAY_ADDRESS)"
            raise RenderError(f"no Ray cluster {where}: start one with `ray start --head` "
                                  "(docs/scale.md), or pass --address HOST:PORT of its head "
                                  f"({err})") from err
        self._connected = True

    def cluster_cpus(self) -> float:
        self.connect()
        return float(self.ray.cluster_resources().get("CPU", 0.0))

    def default_workers(self) -> int:
        """One server per cpus_per_server CPUs of the cluster."""
        return max(1, int(self.cluster_cpus() / self.cpus_per_server + 1e-9))

    def start(self, workers: int) -> None:
        """Place `workers` actors now (so that a cluster without room says so at once)."""
        cpus = self.cluster_cpus()
        if workers * self.cpus_per_server > cpus + 1e-9:
            raise ValueError(f"--workers {workers} needs {workers * self.cpus_per_server:.3g} CPUs "
                             f"({self.cpus_per_server:.3g} per server) and the Ray cluster has "
                             f"{cpus:g}: lower --workers, or add nodes")
        self._actor_class = actor_class(self.cpus_per_server)
        placed = [self._new_actor() for _ in range(workers)]
        infos = self._describe([actor for actor, _ in placed])
        for worker, ((actor, _), info) in enumerate(zip(placed, infos)):
            self._actors[worker] = (actor, info)
        logger.info("%d render actors on %d nodes", workers, len({i["node_id"] for i in infos}))

    def _new_actor(self):
        # SPREAD: one node's cores are taken only when the others' are too
        return self._actor_class.options(scheduling_strategy="SPREAD").remote(), None

    def _describe(self, actors: list) -> list[dict]:
        ray = self.ray
        try:
            infos = ray.get([a.describe.remote() for a in actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise RenderError(f"Ray placed no render actor within {PLACEMENT_TIMEOUT_S:.0f} s: the "
                              f"cluster has no node with {self.cpus_per_server:.3g} CPUs free") from None
        from sonicpi_gen import __version__
        for info in infos:
            self._nodes[info["node_id"]] = info["node_type"]
            if info["tool_version"] != __version__:
                logger.warning("the actor on %s runs sonicpi-gen %s (%s), the driver %s: install the "
                               "same version on every node", info["host"], info["tool_version"],
                               info["renderer"], __version__)
        return infos

    def actor(self, worker: int) -> tuple:
        """`worker`'s actor and its describe(): the one it has, or a new one in place of
        one that died."""
        with self._lock:
            held = self._actors.get(worker)
        if held is not None:
            return held
        actor, _ = self._new_actor()
        held = (actor, self._describe([actor])[0])
        with self._lock:
            self._actors[worker] = held
        logger.info("worker %d: a new render actor on %s (pid %d)", worker, held[1]["host"], held[1]["pid"])
        return held

    def discard(self, worker: int, actor) -> None:
        """`worker`'s actor failed or hung: end it (with its server) and replace it at the
        worker's next boot."""
        with self._lock:
            if self._actors.get(worker, (None,))[0] is actor:
                del self._actors[worker]
                self.replaced += 1
        with contextlib.suppress(Exception):
            self.ray.kill(actor)

    # -- the batch's calls ----------------------------------------------------------

    def resolve_acceleration(self, acceleration: float | str, work_dir: Path) -> float:
        """A number as given; "auto": each node type's calibrated factor (cached on the
        driver, calibrated on an actor of that type when not), and the batch starts at
        the fastest (workers on slower types render at theirs, see max_factor)."""
        from renderer.fidelity import (cached_factor, node_type_key, resolve_acceleration,
                                       store_factor)
        if acceleration != "auto":
            return resolve_acceleration(acceleration, work_dir)
        with self._lock:
            by_type = {}
            for actor, info in self._actors.values():
                by_type.setdefault(info["node_type"], actor)
        pending = {}
        for kind, actor in by_type.items():
            factor = cached_factor(node_type_key(kind))
            if factor is None:
                logger.warning("calibrating the acceleration factor for nodes of type %s (a minute "
                               "or two, once; `sonicpi-gen render --calibrate` redoes it)", kind)
                pending[kind] = actor.calibrate.remote(0.3)
            else:
                self._factors[kind] = factor
        from renderer.fidelity import FidelityReport
        for kind, reply in pending.items():
            reports = [FidelityReport(**r) for r in self.ray.get(reply)]
            self._factors[kind] = store_factor(node_type_key(kind), reports)
        return max(self._factors.values()) if self._factors else 1.0

    def max_factor(self, worker: int) -> float | None:
        """The calibrated factor of `worker`'s node type ("auto" only); a node of a type
        that joined after calibration gets the slowest calibrated factor."""
        if not self._factors:
            return None
        with self._lock:
            held = self._actors.get(worker)
        kind = held[1]["node_type"] if held else None
        return self._factors.get(kind, min(self._factors.values()))

    def new_server(self, worker: int, acceleration: float, headroom_s: float,
                   boot_log_dir: Path, boot_slots) -> RayServer:
        # boot_slots is this machine's; each node limits its own boots (NodeBootSlots)
        return RayServer(self, worker, acceleration, headroom_s, boot_log_dir)

    def render_clip(self, server: RayServer, code: str, timeout_s: float | None,
                    max_full_scale: float) -> ClipResult:
        return server.render(code, timeout_s, max_full_scale)

    def scratch_folders(self) -> list[Path]:
        return []  # the servers record on their nodes' disks; a full one fails its boot

    def describe(self) -> dict:
        return {"engine": self.name, "ray_address": self.address or "auto",
                "cpus_per_server": self.cpus_per_server,
                "node_types": dict(sorted(self._nodes.items())),
                "factors_by_node_type": dict(sorted(self._factors.items())),
                "actors_replaced": self.replaced}

    def close(self) -> None:
        """End every actor (each ends its server first) and leave the cluster if this
        engine joined it."""
        ray = self.ray
        with self._lock:
            actors = [actor for actor, _ in self._actors.values()]
            self._actors.clear()
        if actors and ray.is_initialized():
            ends = [actor.shutdown.remote() for actor in actors]
            with contextlib.suppress(Exception):
                ray.wait(ends, num_returns=len(ends), timeout=CALL_TIMEOUT_S)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        if self._connected:
            ray.shutdown()
            self._connected = False
