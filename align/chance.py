"""What chance gives: permutation nulls for every metric, Mantel tests, within-template
scores and the chance levels of the scenario selection.

A metric between paired code and audio rows means something only beside the value it
takes when the pairing carries no information. The null here shuffles the pairs (audio
row i goes with code row p(i)) and scores again; p-value = (1 + #null >= value) /
(1 + n_perm), one-sided (every metric grows with agreement). Two shuffles:

- "global": any row with any row. Its level is what the metric gives for unrelated pairs
  (SVCCA of 32 components on 54 rows: about 0.70).
- "template": rows only within their template. Its level is what template identity
  alone gives: a code encoder that only tells templates apart reaches it. The headline
  CKA on a dataset of templates is mostly this (a random-weight encoder reaches it).

``PairScorer`` precomputes each side once (centred Gram matrices, PCA scores, distance
ranks, neighbour sets, retrieval ranks), so one shuffle costs O(n^2) and a null of a
few hundred shuffles stays within seconds for a thousand rows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from align import metrics

DEFAULT_N_PERM = 200  # shuffles per null: p-values resolve to 1/201
ALPHA = 0.05  # "above chance" means p < ALPHA (one-sided)


def group_permutation(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation that moves rows only within their group."""
    groups = np.asarray(groups)
    perm = np.arange(len(groups))
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        perm[idx] = rng.permutation(idx)
    return perm


def center_by_group(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """X with each group's mean row subtracted from its rows."""
    X = np.asarray(X, dtype=np.float64).copy()
    groups = np.asarray(groups)
    for g in dict.fromkeys(groups.tolist()):
        idx = groups == g
        X[idx] -= X[idx].mean(axis=0, keepdims=True)
    return X


def within_group_rows(groups: np.ndarray) -> np.ndarray:
    """Rows whose group has at least two rows (a lone row is zero once centred)."""
    groups = np.asarray(groups)
    values, counts = np.unique(groups, return_counts=True)
    keep = set(values[counts >= 2].tolist())
    return np.array([g in keep for g in groups.tolist()], dtype=bool)


class PairScorer:
    """Every metric of ``align.evaluate.all_metrics`` (and retrieval when both sides share
    a space) for the pairing (code[i], audio[perm[i]]), cheaply for many ``perm``."""

    def __init__(self, code: np.ndarray, audio: np.ndarray, k: int, pca_dims: int | None):
        X, Y = metrics._as_pair(code, audio)
        n = X.shape[0]
        if n < 4:
            raise ValueError(f"a permutation null needs at least 4 rows, got {n}")
        self.n, self.k = n, min(k, n - 1)
        Xc, Yc = metrics._center(X), metrics._center(Y)
        self.Kc, self.Lc = Xc @ Xc.T, Yc @ Yc.T
        self.cka_norm = np.linalg.norm(self.Kc) * np.linalg.norm(self.Lc)
        # unbiased HSIC (metrics._hsic_unbiased) with the pairing-invariant parts kept
        K, L = Xc @ Xc.T, Yc @ Yc.T  # centred, as metrics.linear_cka_debiased
        np.fill_diagonal(K, 0.0)
        np.fill_diagonal(L, 0.0)
        self.K0, self.L0 = K, L
        self.kcol, self.lcol = K.sum(axis=0), L.sum(axis=0)
        self.hsic_term2 = float(self.kcol.sum() * self.lcol.sum()) / ((n - 1) * (n - 2))
        xx, yy = metrics._hsic_unbiased(K, K), metrics._hsic_unbiased(L, L)
        self.hsic_denom = math.sqrt(xx * yy) if xx > 0 and yy > 0 else 0.0
        # SVCCA: principal-component scores per side, whitened once
        dims = None if pca_dims is None else min(pca_dims, X.shape[1], Y.shape[1], n - 1)
        Sx = metrics._top_principal_components(X, dims) if dims else Xc
        Sy = metrics._top_principal_components(Y, dims) if dims else Yc
        Sx, Sy = metrics._center(Sx), metrics._center(Sy)
        self.Wx = Sx @ metrics._inv_sqrt(Sx.T @ Sx / (n - 1), metrics.DEFAULT_CCA_REG)
        self.Wy = Sy @ metrics._inv_sqrt(Sy.T @ Sy / (n - 1), metrics.DEFAULT_CCA_REG)
        self.cca_k = min(Sx.shape[1], Sy.shape[1])
        # neighbours and distances
        Dx, Dy = metrics.cosine_distances(X), metrics.cosine_distances(Y)
        self.Ax = self._adjacency(metrics.knn_from_distances(Dx, self.k))
        self.Ay = self._adjacency(metrics.knn_from_distances(Dy, self.k))
        self.iu = np.triu_indices(n, k=1)
        self.dx, self.Dy = Dx[self.iu], Dy
        self.rx = metrics.rank_data(self.dx)
        Ry = np.zeros((n, n))
        Ry[self.iu] = metrics.rank_data(Dy[self.iu])
        self.Ry = Ry + Ry.T
        # retrieval, only in one shared space
        self.retrieval = X.shape[1] == Y.shape[1]
        if self.retrieval:
            S = metrics.cross_similarity(X, Y)
            self.r_c2a = metrics.average_ranks_desc(S, axis=1)
            self.r_a2c = metrics.average_ranks_desc(S, axis=0)

    def _adjacency(self, nn: np.ndarray) -> np.ndarray:
        A = np.zeros((self.n, self.n), dtype=bool)
        A[np.arange(self.n)[:, None], nn] = True
        return A

    def score(self, perm: np.ndarray | None = None) -> dict[str, float]:
        """Every metric with audio row perm[i] paired to code row i (identity: as given)."""
        p = np.arange(self.n) if perm is None else np.asarray(perm)
        Lc = self.Lc[np.ix_(p, p)]
        out = {"cka": float(np.sum(self.Kc * Lc) / self.cka_norm) if self.cka_norm > 0 else float("nan")}
        n = self.n
        L0 = self.L0[np.ix_(p, p)]
        xy = (float(np.sum(self.K0 * L0)) + self.hsic_term2 - 2.0 * float(self.kcol @ self.lcol[p]) / (n - 2)) / (n * (n - 3))
        out["cka_debiased"] = xy / self.hsic_denom if self.hsic_denom > 0 else float("nan")
        M = self.Wx.T @ self.Wy[p] / (n - 1)
        rho = np.clip(np.linalg.svd(M, compute_uv=False)[: self.cca_k], 0.0, 1.0)
        out["cca"] = float(np.mean(rho))
        inter = (self.Ax & self.Ay[np.ix_(p, p)]).sum(axis=1)
        out[f"knn{self.k}_jaccard"] = float(np.mean(inter / (2 * self.k - inter)))
        out[f"knn{self.k}_overlap"] = float(np.mean(inter / self.k))
        dy = self.Dy[np.ix_(p, p)][self.iu]
        out["dist_pearson"] = metrics.pearson(self.dx, dy)
        out["dist_spearman"] = metrics.pearson(self.rx, self.Ry[np.ix_(p, p)][self.iu])
        if self.retrieval:
            rows = np.arange(n)
            out.update(metrics.retrieval_from_ranks(self.r_c2a[rows, p], self.r_a2c[rows, p]))
        return out


def permutation_null(
    scorer: PairScorer,
    n_perm: int = DEFAULT_N_PERM,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Null distribution of every metric under shuffled pairs.

    Args:
        scorer: the pairs, prepared.
        n_perm: shuffles.
        seed: seed of the shuffles.
        groups: shuffle only within these groups (templates); None: all rows.
    Returns:
        {metric: {"value", "null_mean", "null_p95", "p_value"}}; p-value one-sided,
        (1 + #null >= value) / (1 + n_perm).
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1, got {n_perm}")
    rng = np.random.default_rng(seed)
    observed = scorer.score()
    draws = {k: np.empty(n_perm) for k in observed}
    for t in range(n_perm):
        perm = rng.permutation(scorer.n) if groups is None else group_permutation(groups, rng)
        for k, v in scorer.score(perm).items():
            draws[k][t] = v
    return {k: summarise_null(observed[k], draws[k]) for k in observed}


def summarise_null(value: float, null: np.ndarray) -> dict[str, float]:
    """Mean, 95th percentile and one-sided p-value of ``value`` against a null sample."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(value) or null.size == 0:
        return {"value": float(value), "null_mean": float("nan"), "null_p95": float("nan"), "p_value": float("nan")}
    # a tolerance, so shuffles that reproduce the value exactly (ties) count against it
    hits = int(np.sum(null >= value - 1e-12))
    return {
        "value": float(value),
        "null_mean": float(null.mean()),
        "null_p95": float(np.quantile(null, 0.95)),
        "p_value": (1 + hits) / (1 + null.size),
    }


# --------------------------------------------------------------------------- Mantel


def mantel_test(
    Dx: np.ndarray, Dy: np.ndarray, n_perm: int = 9999, seed: int = 0
) -> dict[str, float]:
    """Mantel test: Pearson and Spearman between two distance matrices' upper triangles,
    with p-values from relabelling the points of one matrix (rows and columns together).

    Pairwise distances share their points, so they are not independent observations and
    the textbook p-value of a correlation over n(n-1)/2 pairs is far too small. Two-sided:
    p = share of relabellings with |r| >= |r observed|. When n! <= n_perm every
    relabelling is enumerated (identity included) and the p-value is exact; otherwise
    (1 + hits) / (1 + n_perm) over random ones.

    Returns:
        {"pearson", "spearman", "pearson_p", "spearman_p", "n_perm", "exact"}.
    """
    Dx, Dy = np.asarray(Dx, dtype=np.float64), np.asarray(Dy, dtype=np.float64)
    n = Dx.shape[0]
    if Dx.shape != (n, n) or Dy.shape != (n, n):
        raise ValueError(f"need two square distance matrices of one size, got {Dx.shape} and {Dy.shape}")
    if n < 3:
        raise ValueError(f"a Mantel test needs at least 3 points, got {n}")
    iu = np.triu_indices(n, k=1)
    dx, dy = Dx[iu], Dy[iu]
    rx = metrics.rank_data(dx)
    Ry = np.zeros((n, n))
    Ry[iu] = metrics.rank_data(dy)
    Ry = Ry + Ry.T
    obs_p, obs_s = metrics.pearson(dx, dy), metrics.pearson(rx, Ry[iu])
    exact = math.factorial(n) <= n_perm
    if exact:
        perms = (np.array(p) for p in itertools.permutations(range(n)))
    else:
        rng = np.random.default_rng(seed)
        perms = (rng.permutation(n) for _ in range(n_perm))
    hits_p = hits_s = total = 0
    for p in perms:
        sub = np.ix_(p, p)
        hits_p += abs(metrics.pearson(dx, Dy[sub][iu])) >= abs(obs_p) - 1e-12
        hits_s += abs(metrics.pearson(rx, Ry[sub][iu])) >= abs(obs_s) - 1e-12
        total += 1
    if exact:
        p_p, p_s = hits_p / total, hits_s / total
    else:
        p_p, p_s = (1 + hits_p) / (1 + total), (1 + hits_s) / (1 + total)
    return {"pearson": obs_p, "spearman": obs_s, "pearson_p": float(p_p), "spearman_p": float(p_s),
            "n_perm": int(total), "exact": bool(exact)}


# --------------------------------------------------------------------------- selection


def selection_chance(n: int, size: int) -> dict[str, float]:
    """Expected Jaccard and overlap@size between a fixed ``size``-subset of n items and
    a uniformly random one (the overlap is hypergeometric). n=10, size=3: Jaccard 0.201,
    overlap@3 0.300."""
    if not 1 <= size <= n:
        raise ValueError(f"size must be between 1 and n={n}, got {size}")
    total = math.comb(n, size)
    jac = ovl = 0.0
    for x in range(0, size + 1):
        ways = math.comb(size, x) * math.comb(n - size, size - x)
        if ways == 0:
            continue
        jac += ways / total * (x / (2 * size - x))
        ovl += ways / total * (x / size)
    return {"jaccard": jac, "overlap": ovl}
