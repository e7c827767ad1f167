"""--engine ray: the unit parts with fakes, and a real local Ray cluster (a head and a
second node on loopback, one CPU each, started and ended by the tests) rendering with
real Sonic Pi servers."""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import renderer.render as render
from renderer.clip import ClipResult
from renderer.fidelity import (FidelityReport, cached_factor, forget_calibration, node_type,
                               node_type_key, store_factor)
from renderer.render import RenderError, RenderSettings, _Task, read_status, render_programs
from renderer.sandbox import bubblewrap_installed
from renderer.server import sonic_pi_installed
from sonicpi_gen.cli import main
from tests.test_render_policy import FakeServer

REPO = Path(__file__).resolve().parent.parent


def test_engine_ray_without_ray_says_how_to_get_it(monkeypatch, tmp_path):
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "a.rb").write_text("play 60\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(main, ["render", "--in", str(tmp_path / "programs"), "--out",
                                       str(tmp_path / "out"), "--engine", "ray"])
    assert result.exit_code == 1
    assert "--engine ray needs Ray: pip install 'sonicpi-gen[ray]'" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_address_without_engine_ray_is_refused(tmp_path):
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "a.rb").write_text("play 60\n")
    result = CliRunner().invoke(main, ["render", "--in", str(tmp_path / "programs"), "--out",
                                       str(tmp_path / "out"), "--address", "10.0.0.1:6379"])
    assert result.exit_code == 1 and "--address 10.0.0.1:6379 is for --engine ray" in result.output
    with pytest.raises(ValueError, match="--engine 'spark' is not known; choose 'local' or 'ray'"):
        render_programs(tmp_path / "programs", tmp_path / "out", RenderSettings(engine="spark"))


def test_node_boot_slots_let_that_many_boots_through_at_once(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from renderer.ray_engine import NodeBootSlots
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    inside, most = [], []
    lock = threading.Lock()

    def boot():
        with NodeBootSlots(2):
            with lock:
                inside.append(1)
                most.append(len(inside))
            time.sleep(0.3)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=boot) for _ in range(5)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(most) == 2
    assert time.monotonic() - started >= 0.85  # 5 boots of 0.3 s, two at a time: 3 rounds


class CappedEngine(render.LocalEngine):
    """Worker 0 sits on a node type calibrated at x4, the batch runs at x8."""

    def max_factor(self, worker):
        return 4.0 if worker == 0 else None

    def scratch_folders(self):
        return []


def test_a_worker_on_a_slower_node_type_renders_at_its_factor(monkeypatch, tmp_path):
    FakeServer.boots = []
    monkeypatch.setattr(render, "render_clip", lambda server, code, *a: ClipResult("runtime_error", "fake"))
    batch = render._Batch(tmp_path, tmp_path / ".work", 8.0, 0.3, 4, None, 0.01, "flac",
                          progress=None, engine=CappedEngine())
    for i in range(3):
        batch.tasks.put(_Task(render.Job(str(i), "t", str(i)), 8.0))
    worker = render._Worker(0, batch)
    monkeypatch.setattr(worker, "_start_server", lambda f: setattr(worker, "server", FakeServer(f)) or worker.server)
    worker.run()
    assert worker.error is None
    assert FakeServer.boots == [4.0]  # booted once, at its node's factor, never at x8
    assert {row["acceleration"] for row in batch.rows.values()} == {4.0}


def test_node_type_calibrations_are_cached_apart_and_forgotten_together(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    report = lambda factor, passed: FidelityReport(factor, 0.001, 36, 0.99, 0.99, 0.9, 0.9, passed)
    assert store_factor(node_type_key("A x2"), [report(8.0, False), report(4.0, True)]) == 4.0
    assert store_factor(node_type_key("B x64"), [report(8.0, True)]) == 8.0
    assert store_factor(node_type_key("C x1"), [report(4.0, False)]) == 1.0  # none passed: real time
    assert cached_factor(node_type_key("A x2")) == 4.0 and cached_factor(node_type_key("B x64")) == 8.0
    assert node_type().endswith(f" x{os.cpu_count()}")
    forget_calibration()
    assert cached_factor(node_type_key("A x2")) is None and cached_factor(node_type_key("B x64")) is None


# -- a real local Ray cluster ---------------------------------------------------------



@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, one CPU each, on loopback; ended (and checked to have
    left nothing) at the end of the module."""
    pytest.importorskip("ray", reason="Ray not installed (pip install 'sonicpi-gen[ray]')")
    from renderer.ray_cluster import LocalRayCluster
    with LocalRayCluster(nodes=2, cpus_per_node=1) as running:
        yield running
    assert not running.pids()


@pytest.mark.ray
def test_actors_spread_over_the_nodes_and_run_this_checkout(cluster):
    from renderer.ray_engine import RayEngine
    engine = RayEngine(cluster.address)
    try:
        assert engine.cluster_cpus() == 2.0 and engine.default_workers() == 6
        with pytest.raises(ValueError, match=r"--workers 7 needs 2\.33 CPUs .* the Ray cluster has 2"):
            engine.start(7)
        engine.start(2)
        infos = [info for _, info in engine._actors.values()]
        assert len({i["node_id"] for i in infos}) == 2  # SPREAD: one actor per node
        assert all(Path(i["renderer"]).is_relative_to(REPO) for i in infos), infos
        pids = [i["pid"] for i in infos]
    finally:
        engine.close()
    assert all(_gone(pid) for pid in pids)


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return True
        if state == b"Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.ray
def test_no_cluster_at_the_address_is_one_clear_error(tmp_path):
    pytest.importorskip("ray")
    from renderer.ray_engine import RayEngine
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "a.rb").write_text("play 60\n")
    with pytest.raises(RenderError, match=r"no Ray cluster at 127\.0\.0\.1:9 \(Connection refused\): start one with `ray start --head`"):
        render_programs(tmp_path / "programs", tmp_path / "out",
                        RenderSettings(engine=RayEngine("127.0.0.1:9"), acceleration=4), progress=False)


# -- real Sonic Pi servers on the local Ray cluster -----------------------------------

needs_sonic_pi = pytest.mark.skipif(not (sonic_pi_installed() and bubblewrap_installed()),
                                    reason="Sonic Pi server stack or bubblewrap not installed "
                                    "(scripts/setup.sh installs them)")


def _compared(row: dict) -> tuple:
    """What two renders of one program must agree on (not the audio's hash: scsynth seeds
    its random generators at every boot)."""
    return (row["id"], row["template"], row["code_sha256"], row["status"], row["path"],
            row["duration_s"], row["sample_rate"], row["bpm"], row["bars"], row["sonic_pi_version"])


@pytest.mark.sonicpi
@pytest.mark.ray
@needs_sonic_pi
def test_27_programs_on_ray_give_the_local_engines_status_rows(cluster, tmp_path):
    from sonicpi_gen.expand import expand_templates
    from tests.test_render import FACTOR, stack_processes, wait_until
    expand_templates(tmp_path / "programs", n=1, seed=0)  # one program of each of the 27 templates
    on_ray = render_programs(tmp_path / "programs", tmp_path / "ray", RenderSettings(
        workers=6, acceleration=FACTOR, engine="ray", address=cluster.address), progress=False)
    assert wait_until(lambda: not stack_processes(anyone=True), 15), stack_processes(anyone=True)
    local = render_programs(tmp_path / "programs", tmp_path / "local",
                            RenderSettings(workers=6, acceleration=FACTOR), progress=False)
    assert on_ray.counts == {"ok": 27}, [(r["id"], r["status"], r["message"]) for r in on_ray.rows]
    assert local.counts == {"ok": 27}, [(r["id"], r["status"], r["message"]) for r in local.rows]
    ray_rows = pq.read_table(tmp_path / "ray" / "status.parquet").to_pylist()
    local_rows = pq.read_table(tmp_path / "local" / "status.parquet").to_pylist()
    assert [_compared(r) for r in ray_rows] == [_compared(r) for r in local_rows]
    assert {r["duration_s"] for r in ray_rows} == {18.0}
    for row in ray_rows:  # every clip written once, whole, under its name, as hashed
        assert render._sha256(tmp_path / "ray" / row["path"]) == row["audio_sha256"]
    assert not list((tmp_path / "ray").rglob(".*.tmp-*"))
    provenance = (tmp_path / "ray" / "provenance.json").read_text()
    assert '"engine": "ray"' in provenance and '"engine": "local"' in \
        (tmp_path / "local" / "provenance.json").read_text()
    assert not stack_processes(anyone=True)


@pytest.mark.sonicpi
@pytest.mark.ray
@needs_sonic_pi
def test_an_actor_killed_mid_batch_is_replaced_and_no_clip_is_lost(cluster, tmp_path):
    from renderer.ray_engine import RayEngine
    from sonicpi_gen.expand import expand_templates
    from tests.test_render import FACTOR, stack_processes, wait_until
    expand_templates(tmp_path / "programs", n=2, seed=0, templates=["haunted", "reich_phase"])
    engine = RayEngine(cluster.address)
    out, result = tmp_path / "renders", {}
    thread = threading.Thread(target=lambda: result.update(summary=render_programs(
        tmp_path / "programs", out, RenderSettings(workers=2, acceleration=FACTOR, engine=engine),
        progress=False)))
    thread.start()
    journal = out / "status.jsonl"
    assert wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 1, 180)
    time.sleep(0.5)  # into the next clip
    victim = next(info["pid"] for _, info in list(engine._actors.values()))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    summary = result["summary"]
    assert summary.counts == {"ok": 4}, [(r["id"], r["status"], r["message"]) for r in summary.rows]
    assert engine.replaced >= 1
    lines = journal.read_text().splitlines() if journal.exists() else []
    assert not lines  # compacted into status.parquet, one row per program
    rows = pq.read_table(out / "status.parquet").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows}) and len(rows) == 4
    assert _gone(victim)
    assert wait_until(lambda: not stack_processes(anyone=True), 15), stack_processes(anyone=True)
    assert wait_until(lambda: not cluster_actor_processes(cluster), 30), cluster_actor_processes(cluster)


def cluster_actor_processes(cluster) -> list[int]:
    """The cluster's processes that are render actors (Ray names them ray::RenderActor)."""
    found = []
    for pid in cluster.pids():
        try:
            if b"RenderActor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.sonicpi
@pytest.mark.ray
@needs_sonic_pi
def test_resume_after_the_driver_is_killed_renders_only_what_was_missing(cluster, tmp_path):
    from sonicpi_gen.expand import expand_templates
    from tests.test_render import FACTOR, stack_processes, wait_until
    expand_templates(tmp_path / "programs", n=2, seed=0, templates=["haunted", "reich_phase"])
    programs, out = tmp_path / "programs", tmp_path / "renders"
    driver = subprocess.Popen([sys.executable, "-m", "sonicpi_gen.cli", "render", "--in", str(programs),
                               "--out", str(out), "--engine", "ray", "--address", cluster.address,
                               "--workers", "1", "--acceleration", str(FACTOR)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    journal = out / "status.jsonl"
    assert wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 1, 180)
    with pytest.raises(RenderError, match="being written by a render that is still running"):
        render_programs(programs, out, RenderSettings(workers=1, acceleration=FACTOR, engine="ray",
                                                      address=cluster.address), progress=False)
    assert cluster_actor_processes(cluster) and stack_processes(anyone=True)  # what the kill must end
    driver.send_signal(signal.SIGKILL)  # no cleanup code of the driver runs
    driver.wait(timeout=60)
    # Ray ends a dead driver's actors, and each server's sandbox dies with its actor
    assert wait_until(lambda: not cluster_actor_processes(cluster), 60), cluster_actor_processes(cluster)
    assert wait_until(lambda: not stack_processes(anyone=True), 30), stack_processes(anyone=True)
    done = {i for i, row in read_status(out).items() if row["status"] == "ok"}
    assert 1 <= len(done) < 4
    summary = render_programs(programs, out, RenderSettings(workers=2, acceleration=FACTOR, engine="ray",
                                                            address=cluster.address), progress=False)
    assert summary.skipped == len(done) and summary.rendered == 4 - len(done)
    rows = pq.read_table(out / "status.parquet").to_pylist()
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), \
        [(r["status"], r["message"]) for r in rows]
    assert wait_until(lambda: not stack_processes(anyone=True) and not cluster_actor_processes(cluster), 30)



# -- embed on the local Ray cluster ---------------------------------------------------

try:  # the embed tests' tiny models and dataset (fixtures), when torch is installed
    from tests.test_embed import audio_model, code_model, dataset  # noqa: F401
    HAVE_TORCH = True
except pytest.skip.Exception:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (the embed extra)")


def _table(path):
    table = pq.read_table(path)
    return table, dict(zip(zip(table.column("config").to_pylist(), table.column("id").to_pylist()),
                           zip(table.column("code_emb").to_pylist(), table.column("audio_emb").to_pylist())))


@pytest.mark.ray
@pytest.mark.torch
@needs_torch
def test_embed_on_ray_writes_the_local_embeddings_and_resumes(cluster, dataset, tmp_path,
                                                              code_model, audio_model):
    import numpy as np

    from embed import EmbedSettings, embed_dataset
    models = EmbedSettings(code_model=str(code_model), audio_model=str(audio_model))
    local = embed_dataset(dataset, tmp_path / "local", replace(models, num_workers=0), progress=False)
    on_ray = replace(models, engine="ray", address=cluster.address, actors=2)
    first = embed_dataset(dataset, tmp_path / "ray", replace(on_ray, limit=2), progress=False)
    assert first.rows == 2 and first.audio_computed == 2
    second = embed_dataset(dataset, tmp_path / "ray", replace(on_ray, checkpoint_every=2), progress=False)
    # resumed: d4 and a1 were done; b2, c3, e5 new; scenarios/a1 reuses a1's vectors
    assert second.rows == 6 and second.new_rows == 4 and not second.failed
    assert second.code_computed == 3 and second.audio_computed == 3
    local_table, local_vectors = _table(local.path)
    ray_table, ray_vectors = _table(second.path)
    assert ray_table.column_names == local_table.column_names
    assert ray_table.drop_columns(["code_emb", "audio_emb"]).equals(
        local_table.drop_columns(["code_emb", "audio_emb"]))
    for key, (code, audio) in local_vectors.items():
        np.testing.assert_allclose(ray_vectors[key][0], code, atol=1e-5)
        np.testing.assert_allclose(ray_vectors[key][1], audio, atol=1e-5)
    meta = {k: v for k, v in (ray_table.schema.metadata or {}).items()}
    assert meta[b"fingerprint"] == local_table.schema.metadata[b"fingerprint"]
    import json
    provenance = json.loads((second.path.parent / "provenance.json").read_text())
    assert provenance["settings"]["engine"] == "ray" and provenance["settings"]["actors"] == 2
    assert not (second.path.parent / ".parts").exists()


@pytest.mark.torch
@needs_torch
def test_embed_engine_ray_without_ray_says_how_to_get_it(monkeypatch, dataset, tmp_path,
                                                        code_model, audio_model):
    from embed.cli import embed_command
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(embed_command, [
        "--dataset", str(dataset), "--out", str(tmp_path / "emb"), "--code-model", str(code_model),
        "--audio-model", str(audio_model), "--engine", "ray", "--no-progress"])
    assert result.exit_code == 1
    assert "embed --engine ray needs Ray: pip install 'sonicpi-gen[ray]'" in result.output


class _FakeRay:
    """What EmbedPool.run uses of ray: wait, get, kill and RayError, run in order."""

    class exceptions:
        RayError = type("RayError", (Exception,), {})

    @staticmethod
    def wait(refs, num_returns):
        return [refs[0]], refs[1:]

    @staticmethod
    def get(ref, timeout=None):
        return ref()

    @staticmethod
    def kill(actor):
        actor.dead = True


class _FakeEmbedActor:
    """Squares numbers; dies (as a killed actor does) at its `dies_at`-th call."""

    def __init__(self, dies_at=None):
        self.calls, self.dies_at, self.dead = 0, dies_at, False
        outer = self

        class Method:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args):
                outer.calls += 1
                doomed = outer.dead or outer.calls == outer.dies_at
                if doomed:
                    outer.dead = True
                return lambda: (_ for _ in ()).throw(_FakeRay.exceptions.RayError("actor died")) \
                    if doomed else self.fn(*args)

        self.square = Method(lambda xs: {x: x * x for x in xs})
        self.describe = Method(lambda: {})


def test_embed_batches_of_an_actor_that_dies_are_sent_again_and_none_is_lost_or_doubled():
    pytest.importorskip("ray")
    from embed.ray_engine import EmbedPool
    pool = object.__new__(EmbedPool)
    pool.ray, pool.replaced = _FakeRay, 0
    pool.actors = [_FakeEmbedActor(dies_at=2), _FakeEmbedActor()]
    pool._new = lambda: _FakeEmbedActor()
    batches = [("square", ([n, n + 100],)) for n in range(6)]
    arrived = []
    lost = pool.run(batches, lambda index, result: arrived.append((index, result)))
    assert not lost and pool.replaced == 1
    assert sorted(index for index, _ in arrived) == list(range(6))  # each batch once
    assert all(result == {n: n * n, n + 100: (n + 100) ** 2} for n, result in arrived)


def test_auto_calibrates_once_per_node_type_on_a_node_of_that_type(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    from dataclasses import asdict

    from renderer.ray_engine import RayEngine
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    store_factor(node_type_key("A x2"), [FidelityReport(8.0, 0.001, 36, 0.99, 0.99, 0.9, 0.9, True)])
    asked = []

    class Actor:
        def __init__(self, name):
            self.calibrate = type("Method", (), {"remote": lambda _, headroom: asked.append(name) or [
                asdict(FidelityReport(8.0, 0.02, 36, 0.99, 0.99, 0.9, 0.9, False)),
                asdict(FidelityReport(4.0, 0.001, 36, 0.99, 0.99, 0.9, 0.9, True))]})()

    engine = RayEngine("127.0.0.1:1")
    monkeypatch.setattr(engine, "ray", type("FakeRay", (), {"get": staticmethod(lambda reply: reply)}))
    engine._actors = {0: (Actor("a0"), {"node_type": "A x2"}), 1: (Actor("b0"), {"node_type": "B x64"}),
                      2: (Actor("b1"), {"node_type": "B x64"})}
    assert engine.resolve_acceleration("auto", tmp_path) == 8.0  # the batch starts at the fastest
    assert asked == ["b0"]  # A was cached; B calibrated once, on one of its nodes
    assert [engine.max_factor(w) for w in range(3)] == [8.0, 4.0, 4.0]
    assert cached_factor(node_type_key("B x64")) == 4.0
    assert engine.resolve_acceleration(6, tmp_path) == 6.0 and asked == ["b0"]
