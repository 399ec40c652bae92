"""core.agreement.measures: CKA against a direct n x n computation and its invariances, neighbour agreement against
brute force, mutual k-NN at its two ends (identical sets, unrelated sets near k / n), kappa against the formula and
scikit-learn, and the messages bad inputs get."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from core.agreement import measures
from core.agreement.measures import (
    chance_neighbour_agreement,
    error_consistency,
    feature_agreement,
    kappa,
    kappa_sentence,
    linear_cka,
    mutual_knn_alignment,
    nearest_neighbours,
    neighbour_agreement,
    neighbour_sentence,
)
from core.base.errors import FlowerProbeError


def _direct_unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012) eq. 5 on explicit n x n Gram matrices, as platonic-rep's hsic_unbiased writes it."""

    def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 (the paper's name)
        m = len(k)
        k, l = k.copy(), l.copy()  # noqa: E741
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        value = np.sum(k * l.T) + k.sum() * l.sum() / ((m - 1) * (m - 2)) - 2 * np.sum(k @ l) / (m - 2)
        return value / (m * (m - 3))

    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def related() -> tuple[np.ndarray, np.ndarray]:
    """Two 'feature spaces' of 120 images: B is a noisy linear map of A, shifted off the origin."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(120, 16)) + 2.0
    b = a @ rng.normal(size=(16, 24)) + rng.normal(scale=3.0, size=(120, 24)) - 5.0
    return a, b


# ----------------------------------------------------------------------------------------------- CKA


def test_cka_matches_the_direct_n_by_n_estimator(related):
    a, b = related
    expected = _direct_unbiased_cka(a, b)
    assert 0.2 < expected < 0.99  # a related pair, neither unrelated nor identical
    assert linear_cka(a, b) == pytest.approx(expected, rel=1e-9)
    assert linear_cka(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(expected, rel=1e-5)


def test_cka_of_a_set_with_itself_is_one_and_invariant_to_rotation_and_isotropic_scaling(related):
    a, b = related
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(a, 3.7 * a @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(a @ rotation, b) == pytest.approx(linear_cka(a, b), abs=1e-9)
    assert linear_cka(a, 0.01 * b) == pytest.approx(linear_cka(a, b), abs=1e-9)
    # ...and not to scaling one feature alone: the invariance above is not a measure that ignores its input.
    stretched = a.copy()
    stretched[:, 0] *= 10
    assert abs(linear_cka(stretched, b) - linear_cka(a, b)) > 0.01


def test_cka_of_unrelated_sets_is_near_zero():
    rng = np.random.default_rng(2)
    value = linear_cka(rng.normal(size=(2000, 32)), rng.normal(size=(2000, 48)))
    assert abs(value) < 0.02


# ----------------------------------------------------------------------------------------------- neighbours


def _brute_force_neighbours(x: np.ndarray, k: int) -> list[set[int]]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return [set(np.argsort(-row)[:k].tolist()) for row in similarity]


def test_nearest_neighbours_are_the_cosine_nearest_others_in_any_block_size(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 6))
    x[10] = x[20]  # an exact duplicate: each is the other's nearest, never its own
    expected = _brute_force_neighbours(x, 5)
    for block_elements in (measures.BLOCK_ELEMENTS, 90 * 7):  # one block, and blocks of 7 rows
        monkeypatch.setattr(measures, "BLOCK_ELEMENTS", block_elements)
        found = nearest_neighbours(x, k=5)
        assert found.shape == (90, 5)
        assert [set(row.tolist()) for row in found] == expected
        assert found[10, 0] == 20 and found[20, 0] == 10
        assert not np.any(found == np.arange(90)[:, None])


def test_neighbour_agreement_per_image_matches_brute_force(related):
    a, b = related
    k = 7
    neighbours_a, neighbours_b = _brute_force_neighbours(a, k), _brute_force_neighbours(b, k)
    expected = np.array([len(na & nb) / k for na, nb in zip(neighbours_a, neighbours_b)])
    found = neighbour_agreement(a, b, k=k)
    assert found.shape == (120,)
    np.testing.assert_allclose(found, expected)
    assert 0 < found.mean() < 1
    assert mutual_knn_alignment(a, b, k=k) == pytest.approx(expected.mean())


def test_mutual_knn_of_identical_sets_is_one_and_of_independent_sets_near_k_over_n():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 32))
    assert mutual_knn_alignment(x, x) == 1.0
    assert mutual_knn_alignment(x, 2.5 * x) == 1.0  # cosine neighbours ignore the scale
    # Independent sets: each of A's 10 neighbours is among B's 10 with probability 10 / 999, so the mean over
    # 1,000 images is 0.01 with a standard error of about 0.001; 0.004 is four of those.
    value = mutual_knn_alignment(x, rng.normal(size=(1000, 32)))
    assert value == pytest.approx(chance_neighbour_agreement(1000, k=10), abs=0.004)
    assert chance_neighbour_agreement(1000, k=10) == pytest.approx(10 / 999)


def test_feature_agreement_bundles_the_measures_with_an_interval(related):
    a, b = related
    result = feature_agreement(a, b, k=5)
    assert result.n_images == 120 and result.k == 5
    assert result.mutual_knn == pytest.approx(mutual_knn_alignment(a, b, k=5))
    assert result.cka == pytest.approx(linear_cka(a, b))
    low, high = result.mutual_knn_interval
    assert low < result.mutual_knn < high
    assert result.chance == pytest.approx(5 / 119)
    assert "per_image" not in result.to_dict()
    sentence = neighbour_sentence(result)
    assert f"{result.mutual_knn * 100:.0f} % of neighbours" in sentence and "120 images" in sentence


# ----------------------------------------------------------------------------------------------- kappa


def test_kappa_on_hand_made_predictions_follows_the_formula():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)  # p_A = 0.6
    b = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)  # p_B = 0.5
    # Same on images 0-3 (both right), 6, 7, 9 (both wrong): c_obs = 7 / 10.
    c_exp = 0.6 * 0.5 + 0.4 * 0.5  # 0.5
    result = error_consistency(a, b)
    assert result.observed == pytest.approx(0.7)
    assert result.expected == pytest.approx(c_exp)
    assert result.kappa == pytest.approx((0.7 - 0.5) / (1 - 0.5))  # 0.4
    assert result.kappa == pytest.approx(cohen_kappa_score(a, b))  # Cohen's kappa on right/wrong
    assert (result.both_right, result.both_wrong, result.only_a_right, result.only_b_right) == (4, 3, 2, 1)
    low, high = result.interval
    assert low <= result.kappa <= high


def test_kappa_ends_and_chance():
    right = np.array([1, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    assert error_consistency(right, right).kappa == 1.0
    assert error_consistency(right, right).interval == (1.0, 1.0)
    # Never the same: c_obs = 0; p_A = 5/8, p_B = 3/8, so c_exp = 2 * 15/64 = 30/64 and kappa = -30/34.
    assert error_consistency(right, ~right).kappa == pytest.approx(-30 / 34)
    assert error_consistency(right, ~right).kappa == pytest.approx(cohen_kappa_score(right, ~right))
    assert kappa(1.0, 1.0) == 1.0  # both always right: they agree on every image (model-vs-human's convention)
    rng = np.random.default_rng(5)
    independent = error_consistency(rng.random(20_000) < 0.8, rng.random(20_000) < 0.6, n_resamples=500)
    assert abs(independent.kappa) < 0.03
    assert independent.interval[0] < 0 < independent.interval[1]
    assert "about as often as chance would" in kappa_sentence(independent)


def test_kappa_sentence_says_more_often_than_chance():
    rng = np.random.default_rng(6)
    truth = rng.random(400) < 0.7
    flip = rng.random(400) < 0.1
    result = error_consistency(truth, truth ^ flip)
    assert result.kappa > 0.5
    assert kappa_sentence(result).startswith(
        f"They make the same mistakes more often than chance would, kappa {result.kappa:.2f}"
    )


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: neighbour_agreement(x, x, k=50), "k must be an integer from 1 to 49"),
        (lambda x: neighbour_agreement(x, x, k=49), None),
        (lambda x: neighbour_agreement(x, x, k=0), "k must be"),
        (lambda x: neighbour_agreement(x, x, k=True), "k must be"),
        (lambda x: neighbour_agreement(x, x, k=2.0), "k must be"),
        (lambda x: neighbour_agreement(x, x[:40]), "features_a and features_b must describe the same images"),
        (lambda x: neighbour_agreement(x[:, 0], x), "features_a must be a 2-d array"),
        (lambda x: linear_cka(x, np.where(x > 2, np.nan, x)), "features_b must hold finite numbers"),
        (lambda x: linear_cka(x[:3], x[:3]), "at least 4 images"),
        (lambda x: linear_cka(x, np.ones_like(x)), "features_b barely varies"),
        (lambda x: linear_cka(x, x.astype(str)), "features_b must hold numbers"),
        (lambda x: feature_agreement(x, x, n_resamples=-1), "n_resamples must be"),
    ],
)
def test_bad_feature_inputs_name_the_parameter(call, message):
    x = np.random.default_rng(7).normal(size=(50, 4))
    if message is None:
        assert call(x).shape == (50,)  # k = n - 1 is allowed: every other image
        return
    with pytest.raises(FlowerProbeError, match=message):
        call(x)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([True, False], [True], "correct_a and correct_b must score the same test images, got 2 and 1"),
        ([], [], "correct_a must be a non-empty 1-d array"),
        ([[True]], [True], "correct_a must be a non-empty 1-d array"),
        ([1, 0, 2], [1, 0, 1], "correct_a must hold booleans"),
        ([1, 0, 1], [0.5, 0, 1], "correct_b must hold booleans"),
    ],
)
def test_bad_prediction_vectors_name_the_parameter(a, b, message):
    with pytest.raises(FlowerProbeError, match=message):
        error_consistency(np.array(a), np.array(b))
