"""`align rank`: order candidate programs by predicted audio distinctness, from code only.

The programs are embedded with the code encoder recorded in the checkpoint (the embed
package's ``load_code_encoder``), mapped through the aligner's code MLP, and ordered by
greedy max-min (farthest-point) selection in the aligned space: the first k of the order
are k candidates predicted to sound mutually most different. With a query program,
they are ordered by aligned cosine similarity to it instead (nearest first).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from align import metrics
from align.config import DEFAULT_DEVICE
from align.data import CODE_MODEL_KEYS, find_model_id

logger = logging.getLogger(__name__)


CODE_REVISION_KEYS = ("code_revision",)
LOCAL_REVISION_PREFIX = "local-sha256:"  # embed's revision of a model loaded from a folder


def checkpoint_code_model(ckpt: dict) -> str | None:
    """The code encoder id recorded with the checkpoint's embeddings, if any."""
    return find_model_id(ckpt.get("embeddings") or {}, CODE_MODEL_KEYS)


def checkpoint_code_revision(ckpt: dict) -> str | None:
    """The code encoder revision recorded with the checkpoint's embeddings, if any."""
    return find_model_id(ckpt.get("embeddings") or {}, CODE_REVISION_KEYS)


def resolve_recorded_model(model_id: str, source: dict) -> str:
    """A recorded code model as something loadable from here.

    embed records a model folder as it was given, often relative to the directory it
    ran in; read from elsewhere, such a path looks like a hub id ("models/wordllama")
    and would be fetched from the hub. Relative paths are therefore tried, in order,
    against the directory embed ran in (provenance "cwd") and the embeddings folder
    and its parents; the first existing folder wins. Absolute paths, and names found
    nowhere, are returned unchanged (a hub id or registry name).

    Raises:
        ValueError when the record says it was a folder (a local revision) and no
        candidate exists: names the places tried and the fix (--encoder PATH).
    """
    path = Path(model_id).expanduser()
    if path.is_absolute() or path.is_dir():
        return str(path) if path.is_dir() else model_id
    prov = source.get("provenance") or {}
    bases = [Path(prov["cwd"])] if prov.get("cwd") else []
    if source.get("path"):
        folder = Path(source["path"])
        bases += [folder, *list(folder.parents)[:3]]
    for base in bases:
        if (base / path).is_dir():
            return str((base / path).resolve())
    revision = find_model_id(source, CODE_REVISION_KEYS) or ""
    if revision.startswith(LOCAL_REVISION_PREFIX):
        tried = ", ".join(str(b / path) for b in bases) or "(no directory recorded)"
        raise ValueError(
            f"the code encoder was a local folder '{model_id}' (relative to where the embeddings were made), "
            f"not found here; tried {tried}. Pass --encoder /path/to/that/folder."
        )
    return model_id


def _read_programs(paths: list[Path]) -> list[str]:
    texts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"program {p} not found; pass Sonic Pi .rb files")
        texts.append(p.read_text(encoding="utf-8"))
    return texts


def rank_programs(
    checkpoint: str | Path,
    programs: list[str | Path],
    query: str | Path | None = None,
    encoder=None,
    encoder_id: str | None = None,
    device: str = DEFAULT_DEVICE,
    check_revision: bool = True,
) -> list[dict]:
    """Rank candidate programs (code only) in the aligned space.

    Args:
        checkpoint: aligner checkpoint (run folder or checkpoint.pt).
        programs: paths of candidate .rb files.
        query: optional .rb file; rank candidates by aligned similarity to it.
        encoder: object with ``.encode(list[str]) -> (n, d) array``; when None it is
            ``embed.encoders.load_code_encoder(encoder_id or the checkpoint's code model)``.
        encoder_id: model id or path overriding the checkpoint's record (a recorded
            relative folder is resolved against where the embeddings were made).
        device: device for the encoder.
        check_revision: refuse an encoder whose revision differs from the recorded one
            (the aligner was trained on that revision's embeddings).
    Returns:
        [{"rank", "path", "score"}] in order, and when the candidates cannot be told
        apart in the aligned space (align.checks.check_distinct) a last entry
        {"warning": text}. Distinctness order: score = cosine distance to the nearest
        program ranked before it (None for the first). Query order: score = cosine
        similarity to the query.
    Raises:
        ValueError: no encoder recorded, a model that cannot be loaded (the embed
        stage's message), a revision or dimension that differs from the checkpoint's.
    """
    from align import checks
    from align.train import embed_code, load_checkpoint

    if not programs:
        raise ValueError("no programs given; pass one or more .rb files")
    model, ckpt = load_checkpoint(checkpoint)
    paths = [Path(p) for p in programs]
    texts = _read_programs(paths + ([Path(query)] if query else []))
    if encoder is None:
        recorded = checkpoint_code_model(ckpt)
        model_id = encoder_id or recorded
        if not model_id:
            raise ValueError(
                f"checkpoint {checkpoint} records no code encoder (embeddings metadata keys {list(CODE_MODEL_KEYS)}); "
                "pass --encoder MODEL_ID_OR_PATH"
            )
        if not encoder_id:
            model_id = resolve_recorded_model(model_id, ckpt.get("embeddings") or {})
        # lazy: heavy, and written separately; import_module reads sys.modules (tests swap it)
        encoders = importlib.import_module("embed.encoders")

        unavailable = getattr(encoders, "ModelUnavailableError", ())
        logger.info("loading code encoder %s", model_id)
        try:
            encoder = encoders.load_code_encoder(model_id, device=device)
        except unavailable as err:  # the embed stage's own message: what is missing, how to get it
            raise ValueError(str(err)) from err
        want = checkpoint_code_revision(ckpt)
        got = getattr(encoder, "revision", None)
        if check_revision and want and got and want != got:
            raise ValueError(
                f"code encoder {model_id} loaded at revision {got}, but the aligner was trained on embeddings "
                f"of revision {want}; load that revision (--encoder pointing at it) or pass --any-revision "
                "to rank anyway"
            )
    raw = np.asarray(encoder.encode(texts), dtype=np.float32)
    if raw.ndim != 2 or raw.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {raw.shape}; expected ({len(texts)}, dim)")
    if raw.shape[1] != ckpt["code_dim"]:
        raise ValueError(
            f"encoder gives {raw.shape[1]}-d embeddings, the checkpoint expects {ckpt['code_dim']}-d: "
            "use the code encoder the aligner was trained with"
        )
    z = embed_code(model, raw)
    warning = checks.check_distinct(z)
    if warning:
        logger.warning("%s", warning)
    if query:
        sims = z[:-1] @ z[-1]
        order = np.argsort(-sims, kind="stable")
        ranked = [{"rank": r + 1, "path": str(paths[i]), "score": float(sims[i])} for r, i in enumerate(order)]
        return ranked + ([{"warning": warning}] if warning else [])
    order = metrics.farthest_point_order(z)
    D = metrics.cosine_distances(z)
    ranked = []
    for r, i in enumerate(order):
        score = None if r == 0 else float(D[i, order[:r]].min())
        ranked.append({"rank": r + 1, "path": str(paths[i]), "score": score})
    return ranked + ([{"warning": warning}] if warning else [])
