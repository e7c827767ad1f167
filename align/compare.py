"""`align compare`: two code encoders scored against the same audio embeddings, paired.

    align compare EMB_A RUN_A EMB_B RUN_B [--n-boot 200] [--seed 0]

EMB_A / EMB_B: two embeddings folders made from one dataset with the same audio
encoder (e.g. wordllama and wordllama-random, both with crepe-tiny); RUN_A / RUN_B:
the aligner trained on each. For a few metrics (within-template ones, where template
identity is removed, and aligned CKA) it gives A, B, the difference A - B with a 95%
interval from resampling test *templates* (the same draw for both encoders, so the
comparison is paired) and the share of resamples in which A - B <= 0 (a one-sided
bootstrap p-value). Each report (`align report`) scores one folder against chance;
this asks whether A beats B on the same test rows.
"""

from __future__ import annotations

import numpy as np

from align import chance, evaluate
from align.data import read_embeddings, select_splits

METRICS = ("within aligned c2a_mrr", "within aligned a2c_mrr", "within aligned cka_debiased",
           "within raw cka_debiased", "aligned cka")


def _side(embeddings: str, run: str):
    """The test rows of the dataset configuration `run` was trained on, raw and aligned."""
    from align.train import embed_pairs, load_checkpoint  # torch only when comparing

    model, checkpoint = load_checkpoint(run)
    split = select_splits(read_embeddings(embeddings), config=checkpoint["config"]["config"])
    zc, za = embed_pairs(model, *split.test)
    return split.test[0], split.test[1], zc, za, split.test_meta


def _scores(side, groups: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    code, audio, zc, za, _ = side
    g = groups[idx]
    w_al = evaluate.all_metrics(chance.center_by_group(zc[idx], g), chance.center_by_group(za[idx], g), 10, idx)
    w_raw = evaluate.all_metrics(chance.center_by_group(code[idx], g), chance.center_by_group(audio[idx], g), 10, idx)
    return {"within aligned c2a_mrr": w_al["c2a_mrr"], "within aligned a2c_mrr": w_al["a2c_mrr"],
            "within aligned cka_debiased": w_al["cka_debiased"], "within raw cka_debiased": w_raw["cka_debiased"],
            "aligned cka": evaluate.all_metrics(zc[idx], za[idx], 10, idx)["cka"]}


def compare_encoders(emb_a, run_a, emb_b, run_b, n_boot: int = 200, seed: int = 0) -> list[dict]:
    """Paired template-bootstrap comparison of two embeddings folders and their aligners.

    Args:
        emb_a, run_a: embeddings folder A and the run folder (or checkpoint) trained on it.
        emb_b, run_b: the same for B; its test rows must be A's (one dataset).
        n_boot: template resamples (default 200).
        seed: seed of the resampling.
    Returns:
        One dict per metric of METRICS: "metric", "a", "b", "diff" (a - b), "low",
        "high" (95% interval of the difference), "p" (share of resamples with a - b <= 0),
        "rows" (test rows in templates with two or more).
    Raises:
        ValueError when the folders' test rows differ.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    a, b = _side(emb_a, run_a), _side(emb_b, run_b)
    if list(a[4]["id"]) != list(b[4]["id"]):
        raise ValueError(f"{emb_a} and {emb_b} have different test rows; embed one dataset with both code encoders "
                         "and the same audio encoder")
    groups = a[4]["template"].to_numpy()
    rows = np.flatnonzero(chance.within_group_rows(groups))
    full_a, full_b = _scores(a, groups, rows), _scores(b, groups, rows)
    members = [rows[groups[rows] == t] for t in dict.fromkeys(groups[rows].tolist())]
    rng = np.random.default_rng(seed)
    diffs = {k: [] for k in METRICS}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        sa, sb = _scores(a, groups, idx), _scores(b, groups, idx)
        for k in METRICS:
            diffs[k].append(sa[k] - sb[k])
    out = []
    for k in METRICS:
        d = np.asarray(diffs[k])
        d = d[np.isfinite(d)]
        low, high = np.quantile(d, [0.025, 0.975])
        out.append({"metric": k, "a": full_a[k], "b": full_b[k], "diff": full_a[k] - full_b[k],
                    "low": float(low), "high": float(high), "p": float(np.mean(d <= 0)), "rows": len(rows)})
    return out


def comparison_markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown table."""
    out = [f"| metric ({rows[0]['rows']} test rows) | A | B | A - B [95% CI, templates] | share of resamples A - B <= 0 |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['metric']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['p']:.3f} |")
    return "\n".join(out) + "\n"
