"""One place that scores a pair of embedding matrices with every metric in align.metrics."""

from __future__ import annotations

import numpy as np

from align import chance, metrics

DEFAULT_K = 10  # neighbours for k-NN agreement
CCA_PCA_DIMS = 32  # SVCCA reduction before CCA (see metrics.canonical_correlations)


def svcca(X: np.ndarray, Y: np.ndarray, pca_dims: int | None = CCA_PCA_DIMS) -> float:
    """Mean canonical correlation after reducing each side to ``pca_dims`` components
    (capped by the dimensions and rows available)."""
    dims = None if pca_dims is None else min(pca_dims, X.shape[1], Y.shape[1], X.shape[0] - 1)
    return metrics.cca_mean_corr(X, Y, pca_dims=dims)


def all_metrics(
    code: np.ndarray, audio: np.ndarray, k: int = DEFAULT_K, sample_ids: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric at once, in report order, sharing the distance computations.

    ``sample_ids`` marks repeated rows of a bootstrap resample (see metrics.bootstrap_cis).
    """
    code, audio = np.asarray(code, np.float64), np.asarray(audio, np.float64)
    dc, da = metrics.cosine_distances(code), metrics.cosine_distances(audio)
    knn = metrics.knn_agreement_from_distances(dc, da, min(k, len(code) - 1), sample_ids)
    dist = metrics.distance_correlations_from_distances(dc, da, sample_ids)
    out = {
        "cka": metrics.linear_cka(code, audio),
        "cka_debiased": metrics.linear_cka_debiased(code, audio, sample_ids),
        "cca": svcca(code, audio),
        f"knn{k}_jaccard": knn["jaccard"],
        f"knn{k}_overlap": knn["overlap"],
        "dist_pearson": dist["pearson"],
        "dist_spearman": dist["spearman"],
    }
    if code.shape[1] == audio.shape[1]:  # retrieval needs one shared space (aligned)
        out.update(metrics.retrieval_metrics(code, audio, sample_ids))
    return out


def evaluate_pairs(
    code: np.ndarray,
    audio: np.ndarray,
    k: int = DEFAULT_K,
    n_boot: int = 0,
    seed: int = 0,
    max_rows: int | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """Every metric between paired code and audio rows.

    Args:
        code, audio: (n, p) and (n, q) paired embeddings.
        k: neighbours for the k-NN agreement (default 10).
        n_boot: bootstrap resamples for confidence intervals (0: point values only).
        seed: seed of the bootstrap and of the row subsample.
        max_rows: score a seeded random subset of at most this many rows (the metrics
            build n x n matrices; None keeps all).
        groups: template per row; the bootstrap then resamples templates, not rows.
    Returns:
        {name: value} when n_boot == 0, else {name: {"value", "low", "high", "std"}}.
    """
    code = np.asarray(code, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    if max_rows is not None and len(code) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(code), max_rows, replace=False))
        code, audio = code[idx], audio[idx]
        groups = None if groups is None else np.asarray(groups)[idx]
    if n_boot:
        return metrics.bootstrap_cis(
            lambda c, a, sample_ids=None: all_metrics(c, a, k, sample_ids), code, audio, n_boot=n_boot, seed=seed,
            groups=groups,
        )
    return all_metrics(code, audio, k)


def evaluate_with_chance(
    code: np.ndarray,
    audio: np.ndarray,
    groups: np.ndarray,
    k: int = DEFAULT_K,
    n_boot: int = 100,
    n_perm: int = chance.DEFAULT_N_PERM,
    seed: int = 0,
) -> dict[str, dict]:
    """Every metric with its interval and its chance levels.

    Args:
        code, audio: (n, p) and (n, q) paired rows.
        groups: template of each row: the bootstrap resamples templates, and the
            "template" null shuffles pairs only within a template.
        k: neighbours for the k-NN agreement.
        n_boot: template-bootstrap resamples (0: no interval).
        n_perm: shuffles per null.
        seed: seed of bootstrap and shuffles.
    Returns:
        {metric: {"value", "low", "high", "null_mean", "null_p95", "p_value",
        "template_null_mean", "template_null_p95", "template_p_value", "chance"}}:
        null_* from shuffling all pairs, template_null_* from shuffling within
        templates (what template identity alone gives); "chance" is the analytic
        level where there is one (retrieval: k/n and H_n/n).
    """
    code = np.asarray(code, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    groups = np.asarray(groups)
    if n_boot:
        values = evaluate_pairs(code, audio, k=k, n_boot=n_boot, seed=seed, groups=groups)
    else:
        values = {m: {"value": v, "low": float("nan"), "high": float("nan")} for m, v in all_metrics(code, audio, k).items()}
    scorer = chance.PairScorer(code, audio, k, CCA_PCA_DIMS)
    glob = chance.permutation_null(scorer, n_perm, seed)
    within = chance.permutation_null(scorer, n_perm, seed + 1, groups=groups)
    analytic = metrics.retrieval_chance(len(code)) if code.shape[1] == audio.shape[1] else {}
    out = {}
    for m, v in values.items():
        g, w = glob.get(m, {}), within.get(m, {})
        out[m] = {
            "value": v["value"], "low": v.get("low"), "high": v.get("high"),
            "null_mean": g.get("null_mean"), "null_p95": g.get("null_p95"), "p_value": g.get("p_value"),
            "template_null_mean": w.get("null_mean"), "template_null_p95": w.get("null_p95"),
            "template_p_value": w.get("p_value"), "chance": analytic.get(m),
        }
    return out


def evaluate_within_template(
    code: np.ndarray,
    audio: np.ndarray,
    groups: np.ndarray,
    k: int = DEFAULT_K,
    n_boot: int = 100,
    n_perm: int = chance.DEFAULT_N_PERM,
    seed: int = 0,
) -> dict[str, dict]:
    """Every metric after subtracting each template's mean in both spaces, with its
    null (pairs shuffled within templates) and a template-bootstrap interval.

    What remains is how programs of one template differ from each other; template
    identity, which dominates the headline numbers, is gone. Templates with one row
    are left out (a lone row is zero once centred). Same return as
    ``evaluate_with_chance`` (its "template" null is the null here).
    """
    groups = np.asarray(groups)
    keep = chance.within_group_rows(groups)
    if keep.sum() < 4:
        raise ValueError(f"within-template scores need at least 4 rows in templates with 2+ rows, got {int(keep.sum())}")
    g = groups[keep]
    c = chance.center_by_group(np.asarray(code)[keep], g)
    a = chance.center_by_group(np.asarray(audio)[keep], g)
    res = evaluate_with_chance(c, a, g, k=k, n_boot=0, n_perm=n_perm, seed=seed)
    if n_boot:  # resample templates of the raw rows and centre each resample anew
        def centred(cc, aa, sample_ids=None):
            gg = g[sample_ids] if sample_ids is not None else g
            return all_metrics(chance.center_by_group(cc, gg), chance.center_by_group(aa, gg), k, sample_ids)

        cis = metrics.bootstrap_cis(centred, np.asarray(code)[keep], np.asarray(audio)[keep], n_boot=n_boot,
                                    seed=seed, groups=g)
        for m, ci in cis.items():
            if m in res:
                res[m]["low"], res[m]["high"] = ci["low"], ci["high"]
    for v in res.values():  # the relevant null here is the within-template one
        v["chance"] = None  # k/n does not hold for centred groups; the null does
        v["null_mean"], v["null_p95"], v["p_value"] = v.pop("template_null_mean"), v.pop("template_null_p95"), v.pop("template_p_value")
    return res
