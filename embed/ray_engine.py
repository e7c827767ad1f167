"""The embed stage's model work on a Ray cluster (embed --engine ray).

Each EmbedActor loads the code and the audio encoder once (on a GPU of its own when the
cluster has enough for every actor, else on CPUs) and embeds batches the driver sends it:
programs as text, clips as their encoded bytes (decoded on the actor, as the local
stage's DataLoader workers do). The driver keeps all the rest of embed.pipeline: what is
done, the checkpoint parts (written as batches come back), the fingerprint check, and
the one write of embeddings.parquet. An actor that dies is replaced and its batch sent
again; a batch that fails on MAX_TRIES actors is recorded as failed, item by item.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RAY_MISSING = ("embed --engine ray needs Ray: pip install 'sonicpi-gen[ray]' (scripts/setup.sh "
               "--ml installs it)")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Batches in flight per actor: one computing, one on its way, so no actor waits on the driver
IN_FLIGHT_PER_ACTOR = 2
# Clips per audio batch sent: the audio batch size, at least this many (a clip is ~2 MB)
MIN_CLIPS_PER_SEND = 8
MAX_TRIES = 3  # actors a batch may be sent to before its items count as failed
PLACEMENT_TIMEOUT_S = 600.0  # loading a model on a fresh node may download it


def require_ray():
    try:
        import ray
    except ImportError as err:
        from renderer.ray_engine import RayUnavailableError
        raise RayUnavailableError(RAY_MISSING) from err
    return ray


class EmbedActor:
    """One code encoder and one audio encoder on a node (a Ray actor, see EmbedPool)."""

    def __init__(self, code_model: str, audio_model: str, options: dict):
        import torch

        from embed.encoders import load_audio_encoder, load_code_encoder
        cpus = options.pop("cpus", None)
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
        device = options.pop("device", "auto")
        self.code = load_code_encoder(
            code_model, device, revision=options.get("revision_code"),
            cache_dir=options.get("cache_dir"), local_files_only=options.get("local_files_only"),
            precision=options.get("precision", "auto"), batch_size=options.get("code_batch_size"),
            long_input=options.get("long_input", "chunk"),
            trust_remote_code=options.get("trust_remote_code", False))
        self.audio = load_audio_encoder(
            audio_model, device, revision=options.get("revision_audio"),
            cache_dir=options.get("cache_dir"), local_files_only=options.get("local_files_only"),
            precision=options.get("precision", "auto"), batch_size=options.get("audio_batch_size"),
            trust_remote_code=options.get("trust_remote_code", False))

    def describe(self) -> dict:
        import platform
        return {"code": self.code.describe(), "audio": self.audio.describe(),
                "code_name": self.code.name, "audio_name": self.audio.name,
                "host": platform.node(), "pid": os.getpid(),
                "device": str(getattr(self.audio, "device", "cpu"))}

    def encode_code(self, ids: list[str], texts: list[str], batch_size: int):
        """({id: vector}, [failure]); a failed batch is retried program by program."""
        try:
            return dict(zip(ids, self.code.encode(texts, batch_size))), []
        except Exception as err:
            logger.warning("code batch failed (%s); retrying programs one at a time", err)
        vectors, failed = {}, []
        for i, text in zip(ids, texts):
            try:
                vectors[i] = self.code.encode([text], 1)[0]
            except Exception as err:
                failed.append({"id": i, "stage": "code", "error": f"{type(err).__name__}: {err}"})
        return vectors, failed

    def encode_audio(self, clips: list[tuple[str, bytes]], batch_size: int):
        """({id: vector}, [failure], audio seconds) of encoded clips (id, bytes)."""
        import torch

        from sonicpi_gen.folders import decode_audio
        vectors, failed, seconds = {}, [], 0.0
        groups: dict[tuple, list] = {}
        for row_id, raw in clips:
            try:
                wave, sr = decode_audio(raw)
                x = self.audio.preparer(wave, sr)
            except Exception as err:  # one bad clip never sinks the batch
                failed.append({"id": row_id, "stage": "audio", "error": f"{type(err).__name__}: {err}"})
                continue
            groups.setdefault(x.shape, []).append((row_id, x, len(wave) / sr))
        for items in groups.values():
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                x = torch.from_numpy(np.stack([item[1] for item in chunk]))
                try:
                    emb = list(self.audio.encode_prepared(x))
                except Exception as err:
                    logger.warning("audio batch failed (%s); retrying clips one at a time", err)
                    emb = []
                    for k, item in enumerate(chunk):
                        try:
                            emb.append(self.audio.encode_prepared(x[k:k + 1])[0])
                        except Exception as one_err:
                            failed.append({"id": item[0], "stage": "audio",
                                           "error": f"{type(one_err).__name__}: {one_err}"})
                            emb.append(None)
                for item, vec in zip(chunk, emb):
                    if vec is not None:
                        vectors[item[0]] = np.asarray(vec, dtype=np.float32)
                        seconds += item[2]
        return vectors, failed, seconds


@dataclass
class Described:
    """What the driver knows of an encoder that lives on the actors (for the fingerprint,
    the metadata and the provenance)."""

    name: str
    description: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


class EmbedPool:
    """`actors` EmbedActors on the cluster at `address` (None: RAY_ADDRESS, else the one
    `ray start` made on this machine), each asking one GPU when the cluster has one for
    every actor, else `cpus_per_actor` CPUs."""

    def __init__(self, code_model: str, audio_model: str, options: dict, address: str | None = None,
                 actors: int | None = None, cpus_per_actor: float = 1.0):
        self.ray = ray = require_ray()
        from renderer.ray_engine import _check_reachable
        self._connected = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address and "://" not in address:
                try:
                    _check_reachable(address)
                except RuntimeError as err:  # renderer.render.RenderError
                    raise ConnectionError(str(err)) from None
            env = {"PYTHONPATH": os.pathsep.join(
                [str(PROJECT_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
            ray.init(address=address or "auto", runtime_env={"env_vars": env},
                     logging_level=logging.WARNING, log_to_driver=logger.isEnabledFor(logging.INFO))
            self._connected = True
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        count = actors or int(gpus) or max(1, int(cpus / cpus_per_actor))
        self.gpu = gpus >= count
        if self.gpu:
            ask = {"num_gpus": 1, "num_cpus": 1}
        else:
            if count * cpus_per_actor > cpus + 1e-9:
                raise ValueError(f"{count} embed actors need {count * cpus_per_actor:g} CPUs and the "
                                 f"Ray cluster has {cpus:g}: ask for fewer actors, or add nodes")
            ask = {"num_cpus": cpus_per_actor}
        self.options = {**options, "cpus": ask["num_cpus"]}
        self._class = ray.remote(max_restarts=0, **ask)(EmbedActor)
        self.code_model, self.audio_model = code_model, audio_model
        self.actors = [self._new() for _ in range(count)]
        try:
            infos = ray.get([a.describe.remote() for a in self.actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"Ray placed no embed actor within {PLACEMENT_TIMEOUT_S:.0f} s: the "
                               f"cluster has no node with {ask} free") from None
        self.info = infos[0]
        self.replaced = 0
        logger.info("%d embed actors (%s) on %s", count, "a GPU each" if self.gpu else "CPU",
                    sorted({i["host"] for i in infos}))

    def _new(self):
        return self._class.options(scheduling_strategy="SPREAD").remote(
            self.code_model, self.audio_model, dict(self.options))

    def encoders(self) -> tuple[Described, Described]:
        return (Described(self.info["code_name"], self.info["code"]),
                Described(self.info["audio_name"], self.info["audio"]))

    def run(self, batches: list[tuple[str, tuple]], on_result) -> list[dict]:
        """Send each (method, args) to the actors, IN_FLIGHT_PER_ACTOR at a time each;
        call on_result(batch index, result) as each comes back. A dead actor is
        replaced and its batch sent again, up to MAX_TRIES; returns the batches that
        failed on every try as [{"index", "error"}]."""
        ray = self.ray
        queue = [(i, 0) for i in range(len(batches))]
        running: dict = {}  # object ref -> (batch index, tries, actor slot)
        given_up = []
        load = [0] * len(self.actors)
        while queue or running:
            while queue:
                slot = min(range(len(self.actors)), key=lambda s: load[s])
                if load[slot] >= IN_FLIGHT_PER_ACTOR:
                    break
                index, tries = queue.pop(0)
                method, args = batches[index]
                running[getattr(self.actors[slot], method).remote(*args)] = (index, tries, slot)
                load[slot] += 1
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            index, tries, slot = running.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                logger.warning("embed actor %d failed (%s); replacing it, its batch goes again",
                               slot, first)
                self._replace(slot, running)
                if tries + 1 < MAX_TRIES:
                    queue.append((index, tries + 1))
                else:
                    given_up.append({"index": index, "error": first})
                continue
            on_result(index, result)
        return given_up

    def _replace(self, slot: int, running: dict) -> None:
        """A new actor in `slot` (once per death: the batches it had in flight fail too)."""
        actor = self.actors[slot]
        try:
            alive = self.ray.get(actor.describe.remote(), timeout=10)
        except self.ray.exceptions.RayError:
            alive = None
        if alive is None:
            self.ray.kill(actor)
            self.actors[slot] = self._new()
            self.replaced += 1

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.actors = []
        if self._connected:
            self.ray.shutdown()
            self._connected = False
