"""Sampling: weights 1/(s pi), unbiasedness, mixture bound, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

import nldist
from nldist import NldistError


def test_weights_and_determinism(rng):
    p = rng.random(1000)
    p /= p.sum()
    idx, w = nldist.sample(p, 500, random_state=3)
    assert idx.shape == (500,) and idx.dtype == np.int64 and w.shape == (500,)
    np.testing.assert_allclose(w, 1 / (500 * p[idx]))
    idx2, _ = nldist.sample(p, 500, random_state=3)
    np.testing.assert_array_equal(idx, idx2)
    idx3, _ = nldist.sample(p, 500, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(idx, idx3)
    assert not np.array_equal(idx, nldist.sample(p, 500, random_state=4)[0])


def test_unnormalized_scores_are_normalized(rng):
    p = rng.random(50)
    a = nldist.sample(p, 20, 1)
    b = nldist.sample(p / p.sum(), 20, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])


def test_frequencies_follow_probabilities():
    p = np.array([0.5, 0.0, 0.25, 0.125, 0.125])
    idx, _ = nldist.sample(p, 200_000, random_state=0)
    freq = np.bincount(idx, minlength=5) / idx.size
    assert freq[1] == 0
    np.testing.assert_allclose(freq, p, atol=5e-3)


def test_weighted_loss_is_unbiased(diabetes, rng):
    """E[L_S(theta)] = L(theta): the mean of many sampled losses converges to the full loss."""
    X, y = diabetes
    m = nldist.get_model("glm:tanh", X.shape[1])
    theta = 0.1 * rng.normal(size=m.n_params)
    r2 = (m.predict(theta, X) - y) ** 2
    p = nldist.scores(X, y, model=m, theta=theta)
    est = []
    for seed in range(400):
        idx, w = nldist.sample(p, 50, random_state=seed)
        est.append(np.sum(w * r2[idx]))
    assert abs(np.mean(est) / r2.sum() - 1) < 0.03


def test_defensive_mixture_bounds_weights(rng):
    p = np.r_[1.0, np.full(999, 1e-12)]
    idx, w = nldist.sample(p, 100, random_state=0, alpha=0.2)
    assert w.max() <= 1000 / (0.2 * 100) + 1e-9
    pi = 0.8 * p / p.sum() + 0.2 / 1000
    np.testing.assert_allclose(w, 1 / (100 * pi[idx]))


@pytest.mark.parametrize(
    "probs, s, kw, match",
    [(np.ones(3), 0, {}, r"^The 's' parameter of sample must be an int in the range "
                          r"\[1, inf\)\. Got 0 instead\.$"),
     (np.ones(3), 2.5, {}, r"^The 's' parameter of sample must be an int in the range "
                           r"\[1, inf\)\. Got 2\.5 instead\.$"),
     (np.ones(3), True, {}, "sample size s must be a positive integer"),
     (np.array([1.0, -1.0]), 2, {}, "negative"), (np.array([np.nan, 1.0]), 2, {}, "NaN"),
     (np.zeros(3), 2, {}, "sum to zero"), (np.ones(3), 2, {"alpha": 2}, "alpha"),
     (np.ones((2, 2)), 2, {}, "1-D"), (np.ones(0), 2, {}, "empty")],
)
def test_bad_sample_arguments(probs, s, kw, match):
    with pytest.raises(NldistError, match=match):
        nldist.sample(probs, s, **kw)
