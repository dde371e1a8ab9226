"""The evaluation's formulas against hand computations on small arrays."""

import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from img2music.benchmarks import music_metrics as mm


def test_fad_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(40, 6))
    assert mm.frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-9)


def test_fad_of_a_shifted_set_is_the_squared_shift():
    """Same sample covariance, means apart by s: the closed form is |s|^2."""
    x = np.random.default_rng(1).normal(size=(60, 5))
    shift = np.array([0.5, -1.0, 2.0, 0.0, 0.25])
    assert mm.frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_fad_of_gaussians_with_other_spreads_is_the_closed_form():
    """Columns of a Hadamard matrix (zero mean, orthogonal) give exactly diagonal sample
    covariances c * a^2: FAD = |mu1 - mu2|^2 + sum (sqrt(c) a - sqrt(c) b)^2."""
    h = hadamard(8)[:, 1:4].astype(np.float64)  # (8, 3), every column sums to 0
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    mu1, mu2 = np.array([0.0, 1.0, 0.0]), np.array([1.0, 1.0, -2.0])
    x, y = h * a + mu1, h * b + mu2
    c = 8 / 7  # n / (n - 1): numpy's unbiased covariance of +-1 columns
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.sum((math.sqrt(c) * (a - b)) ** 2))
    assert mm.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert expected > 0


def test_fad_with_fewer_samples_than_dimensions_stays_finite():
    rng = np.random.default_rng(2)
    value = mm.frechet_distance(rng.normal(size=(4, 16)), rng.normal(size=(5, 16)) + 1.0)
    assert math.isfinite(value) and value > 10  # the shift alone contributes 16


def test_kl_by_hand():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    kl = mm.kl_divergence(p, q)
    assert kl[0] == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-5)
    assert kl[1] == pytest.approx(0.0, abs=1e-9)


def test_imsm_by_hand_for_two_texts():
    """Texts = the two axes in both spaces; image i and music i point at text i. With scale s
    each distribution is (sigma, 1 - sigma), sigma = e^s / (e^s + 1): IMSM of a true pair is
    sigma^2 + (1 - sigma)^2, of a crossed pair 2 sigma (1 - sigma)."""
    texts = np.eye(2)
    s = 3.0
    sigma = math.exp(s) / (math.exp(s) + 1)
    m = mm.imsm_matrix(np.eye(2), texts, np.eye(2), texts, s, s)
    assert m[0, 0] == pytest.approx(sigma ** 2 + (1 - sigma) ** 2, rel=1e-12)
    assert m[0, 1] == pytest.approx(2 * sigma * (1 - sigma), rel=1e-12)
    assert m[0, 0] > m[0, 1]


def test_imsm_of_the_true_pairing_beats_a_permuted_one():
    """Images and music built to share a text each (plus noise in spaces of other sizes):
    scoring music i with image i beats scoring it with a shuffled image."""
    rng = np.random.default_rng(3)
    n, m = 6, 6
    clip_texts, clap_texts = rng.normal(size=(m, 12)), rng.normal(size=(m, 9))
    images = clip_texts[:n] + 0.3 * rng.normal(size=(n, 12))
    music = clap_texts[:n] + 0.3 * rng.normal(size=(n, 9))
    true = mm.imsm(images, clip_texts, music, clap_texts, 20.0, 20.0).mean()
    perm = np.roll(np.arange(n), 1)
    permuted = mm.imsm(images[perm], clip_texts, music, clap_texts, 20.0, 20.0).mean()
    assert 0.0 <= permuted < true <= 1.0
    assert true > 0.5 and permuted < 0.2


def test_relevance_through_text_uses_the_text_nearest_the_image():
    clip_texts = np.eye(3)
    clap_texts = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    images = np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])  # nearest texts: 1, 2
    music = np.array([[0.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(mm.relevance_through_text(images, clip_texts, music, clap_texts), [1.0, -1.0])


def test_paired_cosine():
    np.testing.assert_allclose(mm.paired_cosine([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [-1.0, -1.0]]), [1.0, -1.0])
