"""Representation-similarity metrics between paired code and audio embeddings (numpy).

Every function takes row-paired matrices ``X`` (n, p) and ``Y`` (n, q): row i of both
describes the same program. Nothing here needs torch, so the report can score any pair
of arrays (raw encoder outputs or aligned ones).

Metrics:
- linear CKA, biased (Kornblith et al. 2019) and debiased (unbiased HSIC, Song et al.
  2012; Nguyen et al. 2021): the biased form is inflated when n is small next to the
  dimension, the debiased one is near 0 for independent data.
- mean canonical correlation of a ridge-regularised CCA, optionally after reducing each
  side to its top principal components first (SVCCA, Raghu et al. 2017).
- k-nearest-neighbour agreement between the two spaces (Jaccard, overlap@k).
- Pearson and Spearman between the pairwise-distance vectors of the two spaces (RSA).
- cross-modal retrieval (recall@k, mean reciprocal rank) when both sides share a space.
- a bootstrap over rows, or over groups of rows (templates), for any of them.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Callable

import numpy as np

DEFAULT_CCA_REG = 1e-3  # ridge, relative to each covariance's mean eigenvalue
DEFAULT_KNN_K = 10
DEFAULT_N_BOOT = 1000


def _as_pair(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"expected 2-D arrays (n, dim), got shapes {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows (paired samples), got {X.shape[0]} "
            f"and {Y.shape[0]}"
        )
    return X, Y


def _center(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0, keepdims=True)


# --------------------------------------------------------------------------- CKA


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), in [0, 1]."""
    X, Y = _as_pair(X, Y)
    Xc, Yc = _center(X), _center(Y)
    cross = np.linalg.norm(Yc.T @ Xc) ** 2
    norm = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(cross / norm) if norm > 0 else float("nan")


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) for Gram matrices K, L (n >= 4)."""
    n = K.shape[0]
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    ones_K = K.sum(axis=0)
    ones_L = L.sum(axis=0)
    term1 = float(np.sum(K * L))  # tr(K L) for symmetric matrices
    term2 = float(ones_K.sum() * ones_L.sum()) / ((n - 1) * (n - 2))
    term3 = 2.0 * float(ones_K @ ones_L) / (n - 2)
    return (term1 + term2 - term3) / (n * (n - 3))


def _same_sample_mask(sample_ids: np.ndarray | None) -> np.ndarray | None:
    """True where rows i != j are copies of one sample (a bootstrap resample's repeats)."""
    if sample_ids is None:
        return None
    ids = np.asarray(sample_ids)
    mask = ids[:, None] == ids[None, :]
    np.fill_diagonal(mask, False)
    return mask if mask.any() else None


def linear_cka_debiased(
    X: np.ndarray, Y: np.ndarray, sample_ids: np.ndarray | None = None
) -> float:
    """Debiased linear CKA from the unbiased HSIC estimator; near 0 for independent data.

    Can be slightly negative. Needs n >= 4 rows; builds (n, n) Gram matrices.
    ``sample_ids`` (set by bootstrap_ci) marks repeated rows; their Gram entries are
    dropped like the diagonal, since a row paired with its own copy is not an
    independent pair.
    """
    X, Y = _as_pair(X, Y)
    if X.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 rows, got {X.shape[0]}")
    # Centred first: the estimator does not change (it is invariant to a shift of the
    # rows), but the Gram entries of copies, zeroed below, then sit at the centre of the
    # others instead of far from them: with uncentred rows of a nearly collapsed space
    # (every entry ~1) the zeroed pattern itself matched in both spaces and every
    # resample scored 1.0.
    X, Y = _center(X), _center(Y)
    K = X @ X.T
    L = Y @ Y.T
    mask = _same_sample_mask(sample_ids)
    if mask is not None:
        K[mask] = 0.0
        L[mask] = 0.0
    xy = _hsic_unbiased(K, L)
    xx = _hsic_unbiased(K, K)
    yy = _hsic_unbiased(L, L)
    denom = np.sqrt(xx * yy) if xx > 0 and yy > 0 else 0.0
    return float(xy / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------- CCA


def _top_principal_components(X: np.ndarray, k: int) -> np.ndarray:
    """Scores of the top-k principal components (n, k), from the eigenvectors of the
    smaller Gram matrix (3x faster than an SVD of a 1,350 x 768 matrix)."""
    Xc = _center(X)
    n, p = Xc.shape
    k = min(k, n, p)
    if p <= n:
        _, V = np.linalg.eigh(Xc.T @ Xc)  # ascending eigenvalues
        return Xc @ V[:, ::-1][:, :k]
    evals, U = np.linalg.eigh(Xc @ Xc.T)
    return U[:, ::-1][:, :k] * np.sqrt(np.clip(evals[::-1][:k], 0.0, None))


def _inv_sqrt(C: np.ndarray, reg: float) -> np.ndarray:
    evals, evecs = np.linalg.eigh(C)
    ridge = reg * max(float(np.mean(evals)), 1e-12)
    evals = np.clip(evals, 0.0, None) + ridge
    return (evecs / np.sqrt(evals)) @ evecs.T


def canonical_correlations(
    X: np.ndarray,
    Y: np.ndarray,
    reg: float = DEFAULT_CCA_REG,
    pca_dims: int | None = None,
) -> np.ndarray:
    """Canonical correlations of a ridge-regularised CCA, largest first.

    Args:
        X, Y: paired samples (n, p) and (n, q).
        reg: ridge added to each covariance, as a fraction of its mean eigenvalue, so the
            value does not depend on the embeddings' scale (default 1e-3).
        pca_dims: reduce each side to its top principal components first (SVCCA). With
            few rows next to the dimension, unreduced CCA finds spurious correlations
            near 1 (n=1,350 test rows of 768-d vectors); the report uses 32.
    Returns:
        min(p, q) correlations in [0, 1] (after any reduction).
    """
    X, Y = _as_pair(X, Y)
    if pca_dims is not None:
        X = _top_principal_components(X, pca_dims)
        Y = _top_principal_components(Y, pca_dims)
    Xc, Yc = _center(X), _center(Y)
    n = X.shape[0]
    Cxx = Xc.T @ Xc / (n - 1)
    Cyy = Yc.T @ Yc / (n - 1)
    Cxy = Xc.T @ Yc / (n - 1)
    M = _inv_sqrt(Cxx, reg) @ Cxy @ _inv_sqrt(Cyy, reg)
    rho = np.linalg.svd(M, compute_uv=False)
    return np.clip(rho[: min(X.shape[1], Y.shape[1])], 0.0, 1.0)


def cca_mean_corr(
    X: np.ndarray,
    Y: np.ndarray,
    n_components: int | None = None,
    reg: float = DEFAULT_CCA_REG,
    pca_dims: int | None = None,
) -> float:
    """Mean of the top ``n_components`` canonical correlations (all when None), in [0, 1]."""
    rho = canonical_correlations(X, Y, reg=reg, pca_dims=pca_dims)
    if n_components is not None:
        rho = rho[:n_components]
    return float(np.mean(rho))


# --------------------------------------------------------------------------- neighbours


def cosine_distances(X: np.ndarray) -> np.ndarray:
    """Pairwise cosine distance 1 - cos(x_i, x_j), shape (n, n), zero diagonal."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms > 0, norms, 1.0)
    D = 1.0 - Xn @ Xn.T
    np.fill_diagonal(D, 0.0)
    return np.clip(D, 0.0, 2.0)


def knn_indices(
    X: np.ndarray, k: int = DEFAULT_KNN_K, sample_ids: np.ndarray | None = None
) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine distance, shape (n, k).

    Neighbours come nearest first; ties at the k-th place are broken deterministically
    but not by index (argpartition). Rows that
    are copies of the same sample (``sample_ids``, set by bootstrap_ci) are not each
    other's neighbours.
    """
    return knn_from_distances(cosine_distances(X), k, sample_ids)


def knn_from_distances(D: np.ndarray, k: int, sample_ids: np.ndarray | None = None) -> np.ndarray:
    """``knn_indices`` from a precomputed (n, n) distance matrix (left unchanged)."""
    n = D.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and n-1 = {n - 1}, got {k}")
    D = np.array(D, dtype=np.float64, copy=True)
    np.fill_diagonal(D, np.inf)  # a point is not its own neighbour
    mask = _same_sample_mask(sample_ids)
    if mask is not None:
        D[mask] = np.inf
    part = np.argpartition(D, k - 1, axis=1)[:, :k]  # O(n) per row instead of a full sort
    order = np.argsort(np.take_along_axis(D, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def jaccard(a, b) -> float:
    """|A & B| / |A | B| of two collections taken as sets (1.0 when both are empty)."""
    A, B = set(np.asarray(a).ravel().tolist()), set(np.asarray(b).ravel().tolist())
    union = A | B
    return len(A & B) / len(union) if union else 1.0


def overlap_at_k(a, b, k: int | None = None) -> float:
    """|A & B| / k: the share of one k-set found in the other (k defaults to len(a))."""
    A, B = set(np.asarray(a).ravel().tolist()), set(np.asarray(b).ravel().tolist())
    k = len(A) if k is None else k
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return len(A & B) / k


def knn_agreement(
    X: np.ndarray, Y: np.ndarray, k: int = DEFAULT_KNN_K, sample_ids: np.ndarray | None = None
) -> dict[str, float]:
    """Mean Jaccard and overlap@k between each row's k-NN set in X and in Y."""
    X, Y = _as_pair(X, Y)
    return knn_agreement_from_distances(cosine_distances(X), cosine_distances(Y), k, sample_ids)


def knn_agreement_from_distances(
    Dx: np.ndarray, Dy: np.ndarray, k: int = DEFAULT_KNN_K, sample_ids: np.ndarray | None = None
) -> dict[str, float]:
    """``knn_agreement`` from precomputed distance matrices of the two spaces."""
    nx, ny = knn_from_distances(Dx, k, sample_ids), knn_from_distances(Dy, k, sample_ids)
    jac = [jaccard(a, b) for a, b in zip(nx, ny)]
    ovl = [overlap_at_k(a, b, k) for a, b in zip(nx, ny)]
    return {"jaccard": float(np.mean(jac)), "overlap": float(np.mean(ovl))}


def knn_jaccard(
    X: np.ndarray, Y: np.ndarray, k: int = DEFAULT_KNN_K, sample_ids: np.ndarray | None = None
) -> float:
    """Mean Jaccard of the k-NN sets (see knn_agreement)."""
    return knn_agreement(X, Y, k, sample_ids)["jaccard"]


def knn_overlap(
    X: np.ndarray, Y: np.ndarray, k: int = DEFAULT_KNN_K, sample_ids: np.ndarray | None = None
) -> float:
    """Mean overlap@k of the k-NN sets (see knn_agreement)."""
    return knn_agreement(X, Y, k, sample_ids)["overlap"]


# --------------------------------------------------------------------------- distances


def upper_triangle(D: np.ndarray) -> np.ndarray:
    """The entries above the diagonal of a square matrix, row by row (n(n-1)/2 values)."""
    D = np.asarray(D)
    iu = np.triu_indices(D.shape[0], k=1)
    return D[iu]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; nan when either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"vectors differ in length: {a.shape[0]} and {b.shape[0]}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def rank_data(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    n = a.shape[0]
    order = np.argsort(a)  # ties get one shared rank below, so stability is not needed
    sorted_a = a[order]
    new_value = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.empty(n, dtype=np.int64)
    dense[order] = np.cumsum(new_value)  # 1-based rank among distinct values
    bounds = np.r_[np.flatnonzero(new_value), n]  # first position of each distinct value
    # a value occupying sorted positions s..e-1 gets the mean of ranks s+1..e
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); nan when either is constant."""
    return pearson(rank_data(a), rank_data(b))


def distance_correlations(
    X: np.ndarray, Y: np.ndarray, sample_ids: np.ndarray | None = None
) -> dict[str, float]:
    """Pearson and Spearman between the upper-triangle cosine-distance vectors of X and Y.

    Pairs of rows that are copies of one sample (``sample_ids``, set by bootstrap_ci)
    are left out: their distance is 0 in both spaces and would fake agreement.
    """
    X, Y = _as_pair(X, Y)
    return distance_correlations_from_distances(cosine_distances(X), cosine_distances(Y), sample_ids)


def distance_correlations_from_distances(
    Dx: np.ndarray, Dy: np.ndarray, sample_ids: np.ndarray | None = None
) -> dict[str, float]:
    """``distance_correlations`` from precomputed distance matrices of the two spaces."""
    dx, dy = upper_triangle(Dx), upper_triangle(Dy)
    mask = _same_sample_mask(sample_ids)
    if mask is not None:
        keep = ~upper_triangle(mask)
        dx, dy = dx[keep], dy[keep]
    return {"pearson": pearson(dx, dy), "spearman": spearman(dx, dy)}


def distance_pearson(X: np.ndarray, Y: np.ndarray, sample_ids: np.ndarray | None = None) -> float:
    """Pearson between pairwise cosine-distance vectors (see distance_correlations)."""
    return distance_correlations(X, Y, sample_ids)["pearson"]


def distance_spearman(X: np.ndarray, Y: np.ndarray, sample_ids: np.ndarray | None = None) -> float:
    """Spearman between pairwise cosine-distance vectors (see distance_correlations)."""
    return distance_correlations(X, Y, sample_ids)["spearman"]


# --------------------------------------------------------------------------- retrieval

RETRIEVAL_KS = (1, 5, 10)


def average_ranks_desc(S: np.ndarray, axis: int = 1) -> np.ndarray:
    """1-based rank of every entry within its row (axis=1) or column (axis=0), largest
    first, ties given their average rank: a pool of equal scores ranks each entry in the
    middle, so a collapsed space retrieves at chance, not perfectly."""
    S = np.asarray(S, dtype=np.float64)
    if axis == 0:
        return average_ranks_desc(S.T, axis=1).T
    n = S.shape[1]
    order = np.argsort(-S, axis=1, kind="stable")
    sorted_s = np.take_along_axis(-S, order, axis=1)
    new_value = np.ones_like(sorted_s, dtype=bool)
    new_value[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    # per row: the first and last sorted position of each entry's tie block
    first = np.maximum.accumulate(np.where(new_value, np.arange(n)[None, :], 0), axis=1)
    last_flags = np.ones_like(new_value)
    last_flags[:, :-1] = new_value[:, 1:]
    pos_last = np.where(last_flags, np.arange(n)[None, :], n)
    last = np.minimum.accumulate(pos_last[:, ::-1], axis=1)[:, ::-1]
    ranks_sorted = 0.5 * (first + last) + 1.0
    out = np.empty_like(ranks_sorted)
    np.put_along_axis(out, order, ranks_sorted, axis=1)
    return out


def cross_similarity(code: np.ndarray, audio: np.ndarray, sample_ids: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every code row to every audio row, (n, n). Copies of another
    row's sample (``sample_ids``, set by the bootstrap) leave the pool (-inf)."""
    C, A = _as_pair(code, audio)
    if C.shape[1] != A.shape[1]:
        raise ValueError(f"retrieval needs one shared space; code is {C.shape[1]}-d, audio {A.shape[1]}-d")
    Cn = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    An = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    S = Cn @ An.T
    mask = _same_sample_mask(sample_ids)
    if mask is not None:
        S[mask] = -np.inf
    return S


def retrieval_from_ranks(r_c2a: np.ndarray, r_a2c: np.ndarray, ks=RETRIEVAL_KS) -> dict[str, float]:
    """recall@k and MRR from the ranks of the true partners (code->audio, audio->code)."""
    out = {}
    for name, r in (("c2a", r_c2a), ("a2c", r_a2c)):
        for k in ks:
            out[f"{name}_r{k}"] = float(np.mean(r <= k))
        out[f"{name}_mrr"] = float(np.mean(1.0 / r))
    return out


def retrieval_metrics(
    code: np.ndarray, audio: np.ndarray, sample_ids: np.ndarray | None = None, ks=RETRIEVAL_KS
) -> dict[str, float]:
    """Cross-modal retrieval in a shared space, the pool being all n rows.

    code->audio: for each code row, the rank of its own audio among all audio rows by
    cosine similarity; audio->code the other way. Returns ``c2a_r1``, ``c2a_r5``,
    ``c2a_r10``, ``c2a_mrr`` and the same for ``a2c``. Chance: recall@k = k/n and
    MRR = H_n / n (ties are averaged, see average_ranks_desc).
    """
    S = cross_similarity(code, audio, sample_ids)
    diag = np.arange(S.shape[0])
    r_c2a = average_ranks_desc(S, axis=1)[diag, diag]
    r_a2c = average_ranks_desc(S, axis=0)[diag, diag]
    return retrieval_from_ranks(r_c2a, r_a2c, ks)


def retrieval_chance(n: int, ks=RETRIEVAL_KS) -> dict[str, float]:
    """What random pairing gives on average with a pool of n: recall@k = k/n, MRR = H_n/n."""
    mrr = float(np.sum(1.0 / np.arange(1, n + 1)) / n)
    out = {}
    for name in ("c2a", "a2c"):
        for k in ks:
            out[f"{name}_r{k}"] = min(1.0, k / n)
        out[f"{name}_mrr"] = mrr
    return out


# --------------------------------------------------------------------------- selection


def most_distant_subset(D: np.ndarray, size: int = 3) -> tuple[int, ...]:
    """The ``size`` items with the largest sum of pairwise distances (exhaustive search).

    Args:
        D: square distance matrix (n, n); n choose size must stay small (10 choose 3 = 120).
    Returns:
        Sorted indices; ties go to the lexicographically first subset.
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    if not 1 <= size <= n:
        raise ValueError(f"size must be between 1 and {n}, got {size}")
    best, best_score = None, -np.inf
    for combo in itertools.combinations(range(n), size):
        idx = np.array(combo)
        score = D[np.ix_(idx, idx)].sum()
        if score > best_score + 1e-12:
            best, best_score = combo, score
    return tuple(best)


def farthest_point_order(X: np.ndarray, start: int | None = None) -> list[int]:
    """Greedy max-min (farthest-point) order of the rows of X under cosine distance.

    Starts at ``start`` or, when None, at one end of the most distant pair; each next
    item is the one whose nearest already-chosen item is farthest away.
    """
    D = cosine_distances(X)
    n = D.shape[0]
    if n == 0:
        return []
    if start is None:
        start = int(np.unravel_index(np.argmax(D), D.shape)[0]) if n > 1 else 0
    order = [start]
    nearest = D[start].copy()
    nearest[start] = -np.inf
    for _ in range(n - 1):
        nxt = int(np.argmax(nearest))
        order.append(nxt)
        nearest = np.minimum(nearest, D[nxt])
        nearest[order] = -np.inf
    return order


# --------------------------------------------------------------------------- bootstrap


BOOTSTRAP_METHODS = ("centered", "percentile")


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "centered",
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Bootstrap interval over rows, or over groups of rows (the same draw for every array).

    Args:
        metric: function of the arrays returning a float (e.g. ``linear_cka``).
        arrays: row-paired arrays, resampled together.
        n_boot: bootstrap resamples (default 1000).
        ci: central interval mass (default 0.95).
        seed: seed of the resampling.
        method: "centered" (default): the percentile interval of the resampled values
            shifted so its median sits on the full-data value; "percentile": as drawn.
        groups: a label per row (the template): whole groups are drawn with replacement
            instead of rows, because rows of one template are not independent draws.
    Returns:
        {"value": metric on the full data, "low", "high", "std" (of the resampled values)}.

    Why centred: a resample repeats about a third of the rows, and metrics whose bias
    depends on the number of distinct rows (biased CKA, CCA with many dimensions) come
    out higher on every resample, so the plain percentile interval can miss the
    full-data value entirely (n = 100). Metrics that accept a ``sample_ids`` keyword
    (debiased CKA, k-NN agreement, distance correlations) are also told which rows are
    copies, so a row and its copy do not count as a close pair.
    """
    try:
        takes_ids = "sample_ids" in inspect.signature(metric).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_ids = False

    def as_dict(*arrs, sample_ids=None):
        extra = {"sample_ids": sample_ids} if takes_ids and sample_ids is not None else {}
        return {"value": metric(*arrs, **extra)}

    return bootstrap_cis(as_dict, *arrays, n_boot=n_boot, ci=ci, seed=seed, method=method, groups=groups)["value"]


def bootstrap_cis(
    metrics_fn: Callable[..., dict[str, float]],
    *arrays: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "centered",
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """``bootstrap_ci`` for a function returning several metrics, on shared resamples.

    ``metrics_fn(*arrays, sample_ids=None) -> {name: float}`` is called once on the
    full data and once per resample (with ``sample_ids`` = the drawn row indices), so
    metrics that share work (distances, neighbours) compute it once. With ``groups``
    (one label per row) each resample draws as many groups as there are, with
    replacement, and takes all rows of each (a cluster bootstrap). Returns
    {name: {"value", "low", "high", "std"}}.
    """
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    n = np.asarray(arrays[0]).shape[0]
    if any(np.asarray(a).shape[0] != n for a in arrays):
        raise ValueError("all arrays must have the same number of rows")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")
    members = None
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape[0] != n:
            raise ValueError(f"groups has {labels.shape[0]} labels for {n} rows; give one label per row")
        members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    values = {k: float(v) for k, v in metrics_fn(*arrays).items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in values}
    for _ in range(n_boot):
        if members is None:
            idx = rng.integers(0, n, size=n)
        else:
            idx = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        res = metrics_fn(*(np.asarray(a)[idx] for a in arrays), sample_ids=idx)
        for k in values:
            draws[k].append(float(res[k]))
    alpha = (1.0 - ci) / 2.0
    out = {}
    for k, value in values.items():
        stats = np.asarray(draws[k])
        stats = stats[np.isfinite(stats)]
        if stats.size == 0 or not np.isfinite(value):
            out[k] = {"value": value, "low": float("nan"), "high": float("nan"), "std": float("nan")}
            continue
        low, mid, high = np.quantile(stats, [alpha, 0.5, 1.0 - alpha])
        if method == "centered":
            low, high = value - (mid - low), value + (high - mid)
        out[k] = {"value": value, "low": float(low), "high": float(high), "std": float(stats.std())}
    return out
