"""Warnings for numbers that cannot mean much: an aligner that learned nothing, too few
rows for a metric's components, embeddings that have collapsed, candidates that cannot
be told apart. Each check returns a sentence (naming the value, the bound and what to
do) or None; the callers print and record them."""

from __future__ import annotations

import math

import numpy as np

from align import metrics

# Validation InfoNCE within this fraction of its chance value ln(batch) means the
# aligner learned nothing: the random-weight run's best loss was 3.995 = ln 54 exactly.
NOTHING_LEARNED_TOL = 0.05
# SVCCA/CCA over k components wants at least this many rows per component: with 54 rows
# for 32 components shuffled pairs give 0.70 (a common rule of thumb for CCA is 10).
ROWS_PER_COMPONENT = 10
# k-NN agreement with k neighbours wants a pool well above k: with n rows random
# neighbour sets already share about k^2/n members.
ROWS_PER_NEIGHBOUR = 5
# Collapse: mean pairwise cosine distance below this. A random-weight distilroberta
# gives 3.6e-3 (its outputs barely depend on the input); on the docs/results.md data
# WordLlama gives 0.27, its random-table control 0.093, CREPE tiny 0.30 and log-mel
# 0.29, and an aligner that learned nothing 7.9e-4.
COLLAPSE_MEAN_COS_DISTANCE = 5e-3
# align rank: candidates closer than this in the aligned space are one point to it
# (float32 cosine noise is about 1e-7; distinct test programs sit 1e-2 and more apart).
RANK_MIN_DISTANCE = 1e-4
MAX_ROWS_FOR_SPREAD = 2000  # the spread is a mean over pairs: a seeded subsample will do


def chance_infonce(n_rows: int, batch_size: int) -> float:
    """The InfoNCE that an aligner which learned nothing scores on ``n_rows`` validation
    pairs scored in chunks of ``batch_size`` (align.train._validation_loss): ln of each
    chunk's size, weighted by its rows. Both directions of the symmetric loss give the
    same, so it holds for every loss direction."""
    if n_rows < 2 or batch_size < 2:
        raise ValueError(f"need at least 2 rows and a batch of 2, got {n_rows} and {batch_size}")
    total, count = 0.0, 0
    for start in range(0, n_rows, batch_size):
        size = min(batch_size, n_rows - start)
        if size < 2:
            break
        total += size * math.log(size)
        count += size
    return total / count


def check_learned(best_val_loss: float, n_val: int, batch_size: int, tol: float = NOTHING_LEARNED_TOL) -> str | None:
    """Warn when the best validation loss is within ``tol`` of chance (ln(batch))."""
    level = chance_infonce(n_val, batch_size)
    if best_val_loss >= (1.0 - tol) * level:
        return (f"nothing learned: best validation loss {best_val_loss:.3f} is not {tol:.0%} below chance "
                f"{level:.3f} (= ln of the validation batch of {min(batch_size, n_val)}); the aligned numbers "
                f"reflect the random initial maps, not training. Check that the embeddings carry signal "
                f"(report: within-template section) or train longer / at a lower lr.")
    return None


def check_rows(n_rows: int, cca_components: int, k: int) -> list[str]:
    """Warn when a metric uses too many components or neighbours for the rows scored."""
    out = []
    if n_rows < ROWS_PER_COMPONENT * cca_components:
        out.append(f"{n_rows} test rows for CCA over {cca_components} components (fewer than "
                   f"{ROWS_PER_COMPONENT} per component): CCA finds high correlations in shuffled pairs too; "
                   f"read it only against its null, or score more rows.")
    if n_rows < ROWS_PER_NEIGHBOUR * k:
        out.append(f"{n_rows} test rows for {k}-NN agreement: random neighbour sets already share "
                   f"about {k * k / max(n_rows - 1, 1):.1f} of {k} members; read it only against its null.")
    return out


def mean_cosine_distance(X: np.ndarray, seed: int = 0) -> float:
    """Mean pairwise cosine distance of the rows (a seeded subsample of 2,000 at most)."""
    X = np.asarray(X, dtype=np.float64)
    if len(X) > MAX_ROWS_FOR_SPREAD:
        X = X[np.random.default_rng(seed).choice(len(X), MAX_ROWS_FOR_SPREAD, replace=False)]
    if len(X) < 2:
        return float("nan")
    D = metrics.cosine_distances(X)
    return float(metrics.upper_triangle(D).mean())


def check_collapse(X: np.ndarray, name: str, bound: float = COLLAPSE_MEAN_COS_DISTANCE) -> str | None:
    """Warn when the rows of X are nearly one direction (mean cosine distance < bound)."""
    spread = mean_cosine_distance(X)
    if np.isfinite(spread) and spread < bound:
        cause = ("the aligner maps its inputs to nearly one point (untrained, or nothing to learn?)"
                 if name.startswith("aligned") else "the encoder barely depends on its input (random or broken weights?)")
        return (f"{name} embeddings have collapsed: mean pairwise cosine distance {spread:.2e} (< {bound:g}); "
                f"{cause}. Cosine-based metrics (k-NN, distance correlations, retrieval) rank tiny differences.")
    return None


def check_distinct(Z: np.ndarray, bound: float = RANK_MIN_DISTANCE) -> str | None:
    """Warn when the largest pairwise cosine distance between candidates is below bound."""
    if len(Z) < 2:
        return None
    top = float(metrics.cosine_distances(Z).max())
    if top < bound:
        return (f"candidates cannot be told apart: their largest aligned cosine distance is {top:.1e} "
                f"(< {bound:g}); the order below is noise. The aligner maps these programs to one point "
                f"(collapsed or untrained checkpoint?).")
    return None
