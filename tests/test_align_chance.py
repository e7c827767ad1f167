"""Chance levels with known answers: permutation nulls, Mantel, scenario picks, the
template bootstrap, within-template scores and the warnings."""

import math

import numpy as np
import pytest

from align import chance, checks, evaluate, metrics


def _rows(seed, n=40, p=12, q=9):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=(n, q))


@pytest.mark.parametrize("same_dim", [False, True])
def test_scorer_equals_all_metrics_for_any_pairing(same_dim):
    X, Y = _rows(0, q=12 if same_dim else 9)
    Y = Y + (X[:, :12] if same_dim else X[:, :9])  # some signal, so values are not all ~0
    scorer = chance.PairScorer(X, Y, k=10, pca_dims=32)
    perm = np.random.default_rng(1).permutation(len(X))
    for p in (None, perm):
        fast = scorer.score(p)
        slow = evaluate.all_metrics(X, Y if p is None else Y[p])
        assert fast.keys() == slow.keys()
        for key in slow:
            assert fast[key] == pytest.approx(slow[key], abs=1e-9), key


def test_cka_null_of_independent_matrices_is_the_rv_expectation():
    # Linear CKA is the RV coefficient; under random pairing its expectation is
    # sqrt(bx * by) / (n - 1), bx = tr(Kc)^2 / tr(Kc^2) (Josse, Pages & Husson 2008).
    X, Y = _rows(2, n=30, p=20, q=10)
    Kc, Lc = (lambda A: A @ A.T)(X - X.mean(0)), (lambda A: A @ A.T)(Y - Y.mean(0))
    bx, by = np.trace(Kc) ** 2 / np.sum(Kc * Kc), np.trace(Lc) ** 2 / np.sum(Lc * Lc)
    expected = math.sqrt(bx * by) / (len(X) - 1)
    null = chance.permutation_null(chance.PairScorer(X, Y, 10, 32), n_perm=3000, seed=0)
    assert null["cka"]["null_mean"] == pytest.approx(expected, rel=0.03)
    assert expected > 0.25  # biased CKA of unrelated 30 x 20 and 30 x 10 data is far from 0...
    assert abs(null["cka_debiased"]["null_mean"]) < 0.01  # ...the debiased form is not
    assert null["cka"]["p_value"] > 0.05  # and independent data are not "above chance"


def test_signal_is_above_chance_and_p_has_its_floor():
    X, _ = _rows(3)
    Y = X[:, :9] + 0.1 * np.random.default_rng(4).normal(size=(len(X), 9))
    null = chance.permutation_null(chance.PairScorer(X, Y, 10, 32), n_perm=99, seed=0)
    for key in ("cka", "cka_debiased", "dist_spearman", "knn10_jaccard"):
        assert null[key]["p_value"] == pytest.approx(1 / 100), key
        assert null[key]["value"] > null[key]["null_p95"]


def test_mantel_three_points_exact_by_hand():
    # 3 points: relabelling them permutes the 3 pair distances in all 6 ways; with
    # distances (1, 2, 3) in both matrices r = 1, and of the 6 orders exactly two
    # ((1,2,3) and (3,2,1)) reach |r| = 1: p = 2/6.
    D = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=float)
    res = chance.mantel_test(D, D, n_perm=100)
    assert res["exact"] and res["n_perm"] == 6
    assert res["pearson"] == pytest.approx(1.0) and res["pearson_p"] == pytest.approx(1 / 3)
    assert res["spearman_p"] == pytest.approx(1 / 3)


def test_mantel_is_far_less_confident_than_the_textbook_p():
    # 27 points on a line in code; audio distances share one structure through a few
    # points only: the pairs are dependent, the textbook p counts 351 independent ones.
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(27, 2))
    pts_a = pts.copy()
    pts_a[:20] = rng.normal(size=(20, 2))  # 7 of 27 points keep their place
    Dx, Dy = (np.linalg.norm(P[:, None] - P[None], axis=-1) for P in (pts, pts_a))
    from scipy import stats

    iu = np.triu_indices(27, 1)
    textbook = stats.pearsonr(Dx[iu], Dy[iu]).pvalue
    mantel = chance.mantel_test(Dx, Dy, n_perm=999, seed=0)["pearson_p"]
    assert mantel > 3 * textbook


def test_selection_chance_three_of_ten():
    res = chance.selection_chance(10, 3)
    # overlap X ~ Hypergeometric(10, 3, 3): P = 35, 63, 21, 1 out of 120
    assert res["overlap"] == pytest.approx(0.3)
    assert res["jaccard"] == pytest.approx((63 * 0.2 + 21 * 0.5 + 1 * 1.0) / 120)


def test_retrieval_chance_and_ties():
    X, _ = _rows(6, n=50, p=8)
    Y = np.random.default_rng(7).normal(size=(50, 8))
    null = chance.permutation_null(chance.PairScorer(X, Y, 10, 32), n_perm=500, seed=0)
    exact = metrics.retrieval_chance(50)
    for key in ("c2a_r1", "c2a_r10", "a2c_mrr"):
        assert null[key]["null_mean"] == pytest.approx(exact[key], rel=0.15), key
    same = np.ones((20, 8))  # a collapsed space: every candidate ties
    res = metrics.retrieval_metrics(same, same)
    assert res["c2a_r1"] == 0.0 and res["a2c_mrr"] == pytest.approx(2 / 21)


def test_template_bootstrap_resamples_whole_templates():
    groups = np.repeat(np.arange(8), 5)
    values = np.repeat(np.random.default_rng(8).normal(size=8), 5)[:, None]
    seen = []

    def mean(x, sample_ids=None):
        if sample_ids is not None:
            seen.append(np.bincount(groups[sample_ids], minlength=8))
        return float(x.mean())

    by_group = metrics.bootstrap_ci(mean, values, n_boot=300, groups=groups)
    by_row = metrics.bootstrap_ci(mean, values, n_boot=300)
    assert all(set(c.tolist()) <= {0, 5, 10, 15, 20, 25, 30, 35, 40} for c in seen[:300])
    # rows of one template are copies: 40 rows carry only 8 draws' worth of information
    assert (by_group["high"] - by_group["low"]) > 1.8 * (by_row["high"] - by_row["low"])


def test_template_identity_alone_is_not_above_the_template_null():
    # code and audio agree on the template only (shared template centres), and each
    # program's own part is independent noise on both sides
    rng = np.random.default_rng(9)
    groups = np.repeat(np.arange(12), 5)
    centres = rng.normal(size=(12, 6)) * 3
    code = centres[groups] @ rng.normal(size=(6, 20)) + rng.normal(size=(60, 20))
    audio = centres[groups] @ rng.normal(size=(6, 15)) + rng.normal(size=(60, 15))
    res = evaluate.evaluate_with_chance(code, audio, groups, n_boot=0, n_perm=200, seed=0)
    assert res["cka"]["p_value"] < 0.05  # far above shuffled pairs...
    assert res["cka"]["template_p_value"] > 0.05  # ...but only what templates give
    within = evaluate.evaluate_within_template(code, audio, groups, n_boot=0, n_perm=200, seed=0)
    assert within["cka_debiased"]["p_value"] > 0.05
    assert within["cka_debiased"]["value"] < within["cka_debiased"]["null_p95"]


def test_within_template_finds_program_level_signal():
    rng = np.random.default_rng(10)
    groups = np.repeat(np.arange(12), 5)
    own = rng.normal(size=(60, 4))  # each program's own part, seen by both sides
    code = rng.normal(size=(12, 20))[groups] * 3 + own @ rng.normal(size=(4, 20))
    audio = rng.normal(size=(12, 15))[groups] * 3 + own @ rng.normal(size=(4, 15)) + 0.3 * rng.normal(size=(60, 15))
    within = evaluate.evaluate_within_template(code, audio, groups, n_boot=20, n_perm=200, seed=0)
    assert within["cka_debiased"]["p_value"] < 0.01
    assert within["cka_debiased"]["low"] <= within["cka_debiased"]["value"] <= within["cka_debiased"]["high"]


def test_nothing_learned_warning_at_ln_batch():
    assert checks.chance_infonce(128, 64) == pytest.approx(math.log(64))
    assert checks.chance_infonce(100, 64) == pytest.approx((64 * math.log(64) + 36 * math.log(36)) / 100)
    assert "nothing learned" in checks.check_learned(math.log(54), 54, 64)
    assert checks.check_learned(0.5 * math.log(64), 640, 64) is None


def test_collapsed_encoder_triggers_the_warning():
    rng = np.random.default_rng(11)
    base = rng.normal(size=768)
    collapsed = base + 1e-3 * rng.normal(size=(50, 768))  # mean cosine distance ~1e-6
    assert "collapsed" in checks.check_collapse(collapsed, "raw code")
    assert checks.check_collapse(rng.normal(size=(50, 768)), "raw code") is None


def test_rows_warning_names_components():
    msgs = checks.check_rows(54, 32, 10)
    assert any("54 test rows for CCA over 32 components" in m for m in msgs)
    assert checks.check_rows(2000, 32, 10) == []


def test_indistinct_candidates_warning():
    z = np.tile(np.array([[0.6, 0.8]]), (4, 1)) + 1e-9
    assert "cannot be told apart" in checks.check_distinct(z)
    assert checks.check_distinct(np.eye(3)) is None


def test_debiased_cka_bootstrap_of_a_collapsed_space_is_not_one():
    # rows near one direction, independent between the spaces: the resamples' copies
    # once made every bootstrap value 1.0
    rng = np.random.default_rng(12)
    X = 1.0 + 1e-3 * rng.normal(size=(40, 16))
    Y = 1.0 + 1e-3 * rng.normal(size=(40, 16))
    draws = []
    for _ in range(30):
        idx = rng.integers(0, 40, size=40)
        draws.append(metrics.linear_cka_debiased(X[idx], Y[idx], sample_ids=idx))
    assert abs(np.mean(draws)) < 0.1
