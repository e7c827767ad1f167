"""`align rank`: order candidate programs by predicted audio distinctness, from code only.

The programs are embedded with the code encoder recorded in the checkpoint (the embed
package's ``load_code_encoder``), mapped through the aligner's code MLP, and ordered by
greedy max-min (farthest-point) selection in the aligned space: the first k of the order
are k candidates predicted to sound mutually most different. With a query program,
they are ordered by aligned cosine similarity to it instead (nearest first).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from align import metrics
from align.data import CODE_MODEL_KEYS, find_model_id

logger = logging.getLogger(__name__)


def checkpoint_code_model(ckpt: dict) -> str | None:
    """The code encoder id recorded with the checkpoint's embeddings, if any."""
    return find_model_id(ckpt.get("embeddings") or {}, CODE_MODEL_KEYS)


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
    device: str = "cpu",
) -> list[dict]:
    """Rank candidate programs (code only) in the aligned space.

    Args:
        checkpoint: aligner checkpoint (run folder or checkpoint.pt).
        programs: paths of candidate .rb files.
        query: optional .rb file; rank candidates by aligned similarity to it.
        encoder: object with ``.encode(list[str]) -> (n, d) array``; when None it is
            ``embed.encoders.load_code_encoder(encoder_id or the checkpoint's code model)``.
        encoder_id: model id or path overriding the checkpoint's record.
        device: device for the encoder.
    Returns:
        [{"rank", "path", "score"}] in order. Distinctness order: score = cosine distance
        to the nearest program ranked before it (None for the first). Query order:
        score = cosine similarity to the query.
    """
    from align.train import embed_code, load_checkpoint

    if not programs:
        raise ValueError("no programs given; pass one or more .rb files")
    model, ckpt = load_checkpoint(checkpoint)
    paths = [Path(p) for p in programs]
    texts = _read_programs(paths + ([Path(query)] if query else []))
    if encoder is None:
        model_id = encoder_id or checkpoint_code_model(ckpt)
        if not model_id:
            raise ValueError(
                f"checkpoint {checkpoint} records no code encoder (embeddings metadata keys {list(CODE_MODEL_KEYS)}); "
                "pass --encoder MODEL_ID_OR_PATH"
            )
        from embed.encoders import load_code_encoder  # lazy: heavy, and written separately

        logger.info("loading code encoder %s", model_id)
        encoder = load_code_encoder(model_id, device=device)
    raw = np.asarray(encoder.encode(texts), dtype=np.float32)
    if raw.ndim != 2 or raw.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {raw.shape}; expected ({len(texts)}, dim)")
    if raw.shape[1] != ckpt["code_dim"]:
        raise ValueError(
            f"encoder gives {raw.shape[1]}-d embeddings, the checkpoint expects {ckpt['code_dim']}-d: "
            "use the code encoder the aligner was trained with"
        )
    z = embed_code(model, raw)
    if query:
        sims = z[:-1] @ z[-1]
        order = np.argsort(-sims, kind="stable")
        return [{"rank": r + 1, "path": str(paths[i]), "score": float(sims[i])} for r, i in enumerate(order)]
    order = metrics.farthest_point_order(z)
    D = metrics.cosine_distances(z)
    ranked = []
    for r, i in enumerate(order):
        score = None if r == 0 else float(D[i, order[:r]].min())
        ranked.append({"rank": r + 1, "path": str(paths[i]), "score": score})
    return ranked
