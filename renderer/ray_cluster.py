"""A Ray cluster of several nodes on this machine, on loopback, for tests and the bench.

`LocalRayCluster(nodes=2, cpus_per_node=1)` runs `ray start --head` and `ray start
--address` for the other nodes, each with --block as a child of this process and its own
ports, in a temporary folder of its own; `stop()` ends them by pid and then every
process that they started (each carries MARKER_VARIABLE in its environment, naming the
cluster's folder), and checks that none is left. Use it as a context manager:

    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        render_programs(..., RenderSettings(engine="ray", address=cluster.address))
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Set in every process of a LocalRayCluster (Ray's processes inherit it), to find them
MARKER_VARIABLE = "SONICPI_GEN_RAY_CLUSTER"
# Ray's object store per node: clips (3 MB) pass through it one at a time per server.
# Ray's default is 30% of the memory, which a shared machine cannot give each node.
OBJECT_STORE_BYTES = 200 << 20
START_TIMEOUT_S = 120.0


class ClusterError(RuntimeError):
    """The local cluster did not start or did not end cleanly."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_executable() -> str:
    """The `ray` command of this Python (its environment's bin folder)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray") or "ray"


class LocalRayCluster:
    """A head and `nodes - 1` more nodes on 127.0.0.1, each with `cpus_per_node` CPUs.

    `env` adds variables to the nodes' environment (their workers inherit it)."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, env: dict | None = None):
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        # short: Ray puts Unix sockets under it (108 bytes at most for a socket's path)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="spgray-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), MARKER_VARIABLE: str(self.temp_dir)}
        self.env.pop("RAY_ADDRESS", None)
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _node_args(self) -> list[str]:
        return ["--block", "--node-ip-address", "127.0.0.1", f"--num-cpus={self.cpus_per_node:d}",
                "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                # two nodes on one host: every port a node listens on is its own
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]

    def start(self) -> None:
        ray = _ray_executable()
        head = [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}", *self._node_args()]
        self._spawn(head, "head")
        self.wait_for_nodes(1)
        for n in range(1, self.nodes):
            self._spawn([ray, "start", f"--address={self.address}", *self._node_args()], f"node{n}")
        self.wait_for_nodes(self.nodes)

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.temp_dir / f"{name}.log", "wb")
        self.processes.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def wait_for_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until `count` nodes are alive (asked with `ray status`-free means: the
        GCS's node table, through a short-lived Python)."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', "
                 "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise ClusterError(f"`{' '.join(proc.args[:3])}` exited ({proc.returncode}): "
                                       f"see {self.temp_dir}/*.log")
            done = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout) >= count:
                return
            time.sleep(1.0)
        raise ClusterError(f"the local Ray cluster did not reach {count} nodes in {timeout_s:.0f} s")

    def pids(self) -> list[int]:
        """Live processes of this cluster (marked in their environment), not zombies."""
        marker = f"{MARKER_VARIABLE}={self.temp_dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    continue
                state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z":
                found.append(int(entry))
        return found

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the nodes (SIGTERM to each `ray start --block`, which stops its node),
        then by pid whatever of the cluster is left; raise ClusterError if something is."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        deadline = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < deadline:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        left = self.pids()
        if left:
            raise ClusterError(f"processes of the local Ray cluster still running: {left}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)
