"""One place that scores a pair of embedding matrices with every metric in align.metrics."""

from __future__ import annotations

import numpy as np

from align import metrics

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
    return {
        "cka": metrics.linear_cka(code, audio),
        "cka_debiased": metrics.linear_cka_debiased(code, audio, sample_ids),
        "cca": svcca(code, audio),
        f"knn{k}_jaccard": knn["jaccard"],
        f"knn{k}_overlap": knn["overlap"],
        "dist_pearson": dist["pearson"],
        "dist_spearman": dist["spearman"],
    }


def evaluate_pairs(
    code: np.ndarray,
    audio: np.ndarray,
    k: int = DEFAULT_K,
    n_boot: int = 0,
    seed: int = 0,
    max_rows: int | None = None,
) -> dict:
    """Every metric between paired code and audio rows.

    Args:
        code, audio: (n, p) and (n, q) paired embeddings.
        k: neighbours for the k-NN agreement (default 10).
        n_boot: bootstrap resamples for confidence intervals (0: point values only).
        seed: seed of the bootstrap and of the row subsample.
        max_rows: score a seeded random subset of at most this many rows (the metrics
            build n x n matrices; None keeps all).
    Returns:
        {name: value} when n_boot == 0, else {name: {"value", "low", "high", "std"}}.
    """
    code = np.asarray(code, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    if max_rows is not None and len(code) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(code), max_rows, replace=False))
        code, audio = code[idx], audio[idx]
    if n_boot:
        return metrics.bootstrap_cis(
            lambda c, a, sample_ids=None: all_metrics(c, a, k, sample_ids), code, audio, n_boot=n_boot, seed=seed
        )
    return all_metrics(code, audio, k)
