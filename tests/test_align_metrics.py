"""Known-answer tests for align.metrics (numpy only)."""

import numpy as np
import pytest

from align import metrics


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(200, 16))


@pytest.mark.parametrize("cka", [metrics.linear_cka, metrics.linear_cka_debiased])
def test_cka_of_matrix_with_itself_is_one(X, cka):
    assert cka(X, X) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("cka", [metrics.linear_cka, metrics.linear_cka_debiased])
def test_cka_unchanged_by_rotation_and_isotropic_scaling(X, cka):
    Y = 3.7 * X @ _rotation(16, 1)
    assert cka(X, Y) == pytest.approx(1.0, abs=1e-10)
    Z = np.random.default_rng(2).normal(size=X.shape)
    assert cka(X, 0.2 * Z @ _rotation(16, 3)) == pytest.approx(cka(X, Z), abs=1e-10)


def test_cka_symmetric_and_between_dims():
    rng = np.random.default_rng(4)
    A, B = rng.normal(size=(100, 5)), rng.normal(size=(100, 9))
    assert metrics.linear_cka(A, B) == pytest.approx(metrics.linear_cka(B, A))
    assert 0.0 <= metrics.linear_cka(A, B) <= 1.0


def test_debiased_cka_near_zero_for_independent_where_biased_is_not():
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(100, 200)), rng.normal(size=(100, 200))  # few rows, many dims
    biased, debiased = metrics.linear_cka(A, B), metrics.linear_cka_debiased(A, B)
    assert biased > 0.5  # the small-n inflation the study's numbers suffer from
    assert abs(debiased) < 0.05


def test_debiased_cka_needs_four_rows():
    with pytest.raises(ValueError, match="at least 4 rows"):
        metrics.linear_cka_debiased(np.ones((3, 2)), np.ones((3, 2)))


def test_cca_of_matrix_with_linear_transform_is_one(X):
    A = np.random.default_rng(6).normal(size=(16, 16))
    Y = X @ A + 5.0
    assert metrics.cca_mean_corr(X, Y, reg=1e-8) == pytest.approx(1.0, abs=1e-4)
    rho = metrics.canonical_correlations(X, Y, reg=1e-8)
    assert rho.shape == (16,) and np.all(rho > 0.999)


def test_cca_low_for_independent_with_pca_reduction():
    rng = np.random.default_rng(7)
    A, B = rng.normal(size=(2000, 64)), rng.normal(size=(2000, 64))
    assert metrics.cca_mean_corr(A, B, pca_dims=8) < 0.1


def test_cca_finds_one_shared_direction():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(5000, 1))
    A = np.hstack([z, rng.normal(size=(5000, 3))])
    B = np.hstack([rng.normal(size=(5000, 3)), -2 * z])
    rho = metrics.canonical_correlations(A, B)
    assert rho[0] == pytest.approx(1.0, abs=1e-3)
    assert np.all(rho[1:] < 0.1)
    assert metrics.cca_mean_corr(A, B, n_components=1) == pytest.approx(1.0, abs=1e-3)


def test_pair_shape_errors():
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="2-D"):
        metrics.linear_cka(np.ones(5), np.ones(5))


@pytest.mark.parametrize(
    "a, b, jac, ovl",
    [
        ([1, 2, 3], [1, 2, 3], 1.0, 1.0),
        ([1, 2, 3], [4, 5, 6], 0.0, 0.0),
        ([1, 2, 3], [3, 4, 5], 1 / 5, 1 / 3),
        ([0, 1, 2, 3], [2, 3, 4, 5], 2 / 6, 2 / 4),
        ([7, 8, 9], [9, 8, 7], 1.0, 1.0),  # order does not matter
    ],
)
def test_jaccard_and_overlap_on_hand_made_sets(a, b, jac, ovl):
    assert metrics.jaccard(a, b) == pytest.approx(jac)
    assert metrics.overlap_at_k(a, b) == pytest.approx(ovl)
    assert metrics.overlap_at_k(a, b, k=len(a)) == pytest.approx(ovl)


def test_knn_indices_on_a_line():
    # points at angles 0, 10, 20, 90, 100 degrees: neighbours by cosine distance
    ang = np.deg2rad([0, 10, 20, 90, 100])
    P = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    nn = metrics.knn_indices(P, k=2)
    assert set(nn[0]) == {1, 2}
    assert list(nn[1][:1]) in ([0], [2])
    assert set(nn[3]) == {4, 2}
    assert nn[4][0] == 3


def test_knn_agreement_identical_and_scaled_spaces():
    P = np.random.default_rng(9).normal(size=(50, 6))
    assert metrics.knn_agreement(P, P, k=5) == {"jaccard": 1.0, "overlap": 1.0}
    # cosine neighbours ignore per-row scale
    scaled = P * np.random.default_rng(10).uniform(0.5, 2, size=(50, 1))
    assert metrics.knn_agreement(P, scaled, k=5)["jaccard"] == pytest.approx(1.0)


def test_knn_k_out_of_range():
    with pytest.raises(ValueError, match="k must be between 1 and n-1"):
        metrics.knn_indices(np.ones((4, 2)), k=4)


def test_rank_data_matches_average_ranks():
    assert metrics.rank_data([3, 1, 2, 2, 5, 1]).tolist() == [5, 1.5, 3.5, 3.5, 6, 1.5]


def test_pearson_and_spearman_known_values():
    a = np.array([1.0, 2, 3, 4, 5])
    assert metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a, a**3) == pytest.approx(1.0)  # monotone, not linear
    assert metrics.pearson(a, a**3) < 1.0
    assert np.isnan(metrics.pearson(a, np.ones(5)))  # constant vector


def test_distance_correlations_identical_and_rotated():
    P = np.random.default_rng(11).normal(size=(30, 4))
    res = metrics.distance_correlations(P, P @ _rotation(4, 12))
    assert res["pearson"] == pytest.approx(1.0) and res["spearman"] == pytest.approx(1.0)
    assert len(metrics.upper_triangle(metrics.cosine_distances(P))) == 30 * 29 // 2


def test_most_distant_subset_and_farthest_point_order():
    ang = np.deg2rad([0, 5, 120, 125, 240, 10])
    P = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    gold = metrics.most_distant_subset(metrics.cosine_distances(P), 3)
    assert {ang_i // 100 for ang_i in np.rad2deg(ang[list(gold)]).round()} == {0, 1, 2}
    order = metrics.farthest_point_order(P)
    assert sorted(order) == list(range(6))
    first3 = {int(round(np.rad2deg(ang[i]))) // 100 for i in order[:3]}
    assert first3 == {0, 1, 2}  # one from each cluster before any repeats


@pytest.mark.parametrize(
    "metric",
    [metrics.linear_cka, metrics.linear_cka_debiased, metrics.distance_pearson, metrics.knn_jaccard],
)
def test_bootstrap_ci_contains_point_estimate(metric):
    rng = np.random.default_rng(13)
    A = rng.normal(size=(120, 8))
    B = A + rng.normal(size=A.shape)
    ci = metrics.bootstrap_ci(metric, A, B, n_boot=100, seed=0)
    assert ci["low"] <= ci["value"] <= ci["high"]
    assert ci["value"] == pytest.approx(metric(A, B))
    assert ci["high"] > ci["low"] and ci["std"] > 0


def test_bootstrap_repeats_do_not_fake_neighbours():
    # independent spaces: with repeats told apart, resampled k-NN agreement stays near
    # chance instead of jumping to ~1/3 (a row's copy would be its nearest neighbour)
    rng = np.random.default_rng(14)
    A, B = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    ci = metrics.bootstrap_ci(metrics.knn_overlap, A, B, n_boot=30, method="percentile")
    assert ci["high"] < 0.15


def test_bootstrap_ci_argument_errors():
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.bootstrap_ci(metrics.linear_cka, np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.bootstrap_ci(metrics.linear_cka, np.ones((5, 2)), np.ones((5, 2)), method="bca")
