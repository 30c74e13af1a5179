"""The driver of :func:`nldist.precond.fit_precond` (issue 27): Cholesky trial steps in place of
one eigendecomposition per accepted point, the bound that skips the stopping test's
eigendecomposition, the compact BFGS update and softmax's structured H_S — each the same
numbers as what it replaced, and the iterates the same as the eigendecomposition path's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

import nldist
from nldist import precond
from nldist.objectives import ce_oracle
from nldist.train import fit_ball


def _psd(rng, p, rank, scale=1.0):
    A = rng.normal(size=(rank, p)) * np.geomspace(1.0, 1e-4, rank)[:, None]
    return scale * (A.T @ A)


def _eig_step(B, g, theta, radius, mu):
    e, V = np.linalg.eigh(B)
    return precond.ball_step(np.maximum(e, 0.0), V, g, theta, radius, mu)


@pytest.mark.parametrize("rank", [40, 25])
def test_the_cholesky_step_is_the_eigendecomposition_step(rank):
    """Inside the ball (one factorization) and where the step leaves it (Newton on the
    multiplier), for damping from 1e-9 to 1 x ||B|| and a B with a null space: the step of
    :func:`chol_ball_step` is :func:`ball_step`'s to rounding (1e-10 relative, or 1e-14 x the
    condition of B + mu I), on the sphere when it left the ball and never outside it."""
    rng = np.random.default_rng(rank)
    p = 40
    B = _psd(rng, p, rank, 10.0)
    top = np.linalg.eigvalsh(B)[-1]
    left = 0
    for _ in range(12):
        theta = rng.normal(size=p)
        theta *= rng.uniform(0.2, 1.0) * 3.0 / np.linalg.norm(theta)
        g = rng.normal(size=p) * 10.0 ** rng.uniform(-3, 2)
        for radius in (3.0, 1e6):
            for mu in (1e-9 * top, 1e-4 * top, top):
                want = _eig_step(B, g, theta, radius, mu)
                got = precond.chol_ball_step(B, g, theta, radius, mu)
                assert got is not None
                got, lam = got
                warm = precond.chol_ball_step(B, g, theta, radius, mu, lam * 1.5)[0]
                cold = precond.chol_ball_step(B, g, theta, radius, mu, lam * 0.5)[0]
                tol0 = max(1e-10, 1e-14 * top / mu)
                for other in (warm, cold):  # the warm start from above or below: same step
                    assert np.linalg.norm(other - got) <= tol0 * max(
                        np.linalg.norm(got - theta), np.linalg.norm(theta))
                scale = np.linalg.norm(want - theta) + 1e-300
                tol = max(1e-10, 1e-14 * top / mu)  # rounding of a solve of condition top/mu
                assert np.linalg.norm(got - want) <= tol * max(scale, np.linalg.norm(theta))
                assert np.linalg.norm(got) <= radius * (1 + 1e-14)
                if np.linalg.norm(want) >= radius * (1 - 1e-12):
                    left += 1
                    assert np.linalg.norm(got) == pytest.approx(radius, rel=1e-10)
    assert left >= 10  # the ball was active in many of them


def test_the_cholesky_step_declines_an_indefinite_matrix():
    rng = np.random.default_rng(1)
    B = _psd(rng, 20, 20) - 5.0 * np.eye(20)
    assert precond.chol_ball_step(B, rng.normal(size=20), np.zeros(20), 1.0, 1e-3) is None


def _exact_newton(B, g, theta, radius):
    """(||d_N||, the null-space gradient) as fit_precond's stopping test computes them."""
    e, V = np.linalg.eigh(B)
    e = np.maximum(e, 0.0)
    top = max(e[-1], 1e-300)
    cg = V.T @ g
    null = e <= precond.RCOND * top
    dn = precond.ball_step(e, V, V[:, ~null] @ cg[~null], theta, radius, 1e-12 * top) - theta
    return np.linalg.norm(dn), np.linalg.norm(cg[null])


def test_the_newton_bound_never_exceeds_the_newton_step():
    """:func:`newton_lower_bound` <= ||d_N|| whenever the null-space gradient is within the
    allowance: inside the ball and on it, gradients pointing out of it, near stationarity."""
    rng = np.random.default_rng(2)
    p = 30
    for trial in range(300):
        B = _psd(rng, p, int(rng.integers(10, p + 1)), 10.0 ** rng.uniform(-2, 3))
        theta = rng.normal(size=p)
        radius = 2.0
        theta *= radius * (1.0 if trial % 2 else rng.uniform(0.1, 1.0)) / np.linalg.norm(theta)
        g = rng.normal(size=p) * 10.0 ** rng.uniform(-8, 2)
        if trial % 3 == 0:  # near a KKT point on the sphere: g ~ -lam theta
            g = -rng.uniform(0.1, 10.0) * theta + 1e-6 * g
        dn, g_null = _exact_newton(B, g, theta, radius)
        b_norm = min(np.linalg.norm(B), np.abs(B).sum(axis=1).max())
        bound = precond.newton_lower_bound(b_norm, g, theta, g_null)
        assert bound <= dn * (1 + 1e-9) + 1e-300, (trial, bound, dn)


def test_the_compact_bfgs_update_is_the_dense_one():
    rng = np.random.default_rng(3)
    p = 25
    H = _psd(rng, p, p)
    pairs = []
    for k in range(8):
        s = rng.normal(size=p)
        y = H @ s + 0.1 * rng.normal(size=p) if k != 3 else -s  # k = 3: y^T s < 0, skipped
        pairs.append((s, y))
    B = H.copy()
    for s, y in pairs:  # the textbook update, one dense rank-2 correction at a time
        ys, Bs = y @ s, B @ s
        if ys <= 1e-12 * np.linalg.norm(y) * np.linalg.norm(s) or s @ Bs <= 0:
            continue
        B = B + np.outer(y, y) / ys - np.outer(Bs, Bs) / (s @ Bs)
    np.testing.assert_allclose(precond.bfgs(H, pairs), 0.5 * (B + B.T), rtol=1e-10,
                               atol=1e-12 * np.abs(B).max())


def test_softmax_sample_hessian_is_the_kron_gram():
    """The structured H_S of softmax (diagonal blocks minus one SYRK) is the exact
    cross-entropy Hessian of the weighted rows (``ce_oracle``'s ``kron_gram``)."""
    rng = np.random.default_rng(4)
    m = nldist.get_model("softmax:4", n_features=6)
    X = rng.normal(size=(300, 6))
    y = rng.integers(0, 4, 300).astype(float)
    w = rng.exponential(size=300) * 7.0
    theta = 0.5 * rng.normal(size=m.n_params)
    want = ce_oracle(m, X, y, w)(theta)["gn"]
    got = precond.sample_gn(m, X, y, w, "cross_entropy")(theta)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * np.abs(want).max())


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X, y


def _problem(diabetes, spec):
    X, y = diabetes
    if spec == "softmax:3":
        y = (y > np.median(y)).astype(float) + (y > np.percentile(y, 80))
        loss = "cross_entropy"
    else:
        loss = "squared"
    m = nldist.get_model(spec, n_features=X.shape[1])
    idx = np.random.default_rng(0).choice(len(X), 8 * m.n_params)
    w = np.full(idx.size, len(X) / idx.size)
    return (m, lambda t: precond.grad_block(m, t, X, y, 0, loss),
            precond.sample_gn(m, X[idx], y[idx], w, loss))


@pytest.mark.parametrize("spec,radius", [("glm:swish", 10.0), ("softmax:3", 1.5)])
def test_the_iterates_are_the_eigendecomposition_paths(diabetes, spec, radius, monkeypatch):
    """fit_precond with Cholesky steps and the gated stopping test takes the same steps as
    with an eigendecomposition at every accepted point (the path before): the same losses
    (1e-12) and gradient norms (1e-6) pass by pass, theta to 1e-7 at the end — with the
    ball inactive (glm:swish) and active (softmax:3 at radius 1.5: its optimum lies on the
    sphere), every iterate inside the ball, the full loss never up; and far fewer
    eigendecompositions than accepted points."""
    m, full, hess = _problem(diabetes, spec)
    t0 = m.initial_theta() if spec == "glm:swish" else np.zeros(m.n_params)
    seen = []

    def rec(t):
        seen.append(np.linalg.norm(t))
        return full(t)

    got = precond.fit_precond(rec, hess, t0, radius, xtol=1e-10, max_iter=80)
    assert got.converged, got.reason
    assert max(seen) <= radius * (1 + 1e-12)
    losses = [h["loss"] for h in got.history]
    assert np.all(np.diff(losses) <= precond.SLACK * np.abs(losses[:-1]))
    assert got.eigendecompositions < got.iterations / 2
    monkeypatch.setattr(precond.driver, "chol_ball_step", lambda *a, **k: None)
    monkeypatch.setattr(precond.driver, "newton_lower_bound", lambda *a, **k: 0.0)
    ref = precond.fit_precond(full, hess, t0, radius, xtol=1e-10, max_iter=80)
    assert ref.converged and ref.eigendecompositions == ref.iterations + 1
    # the same iterates; at the end the predicted decrease is rounding (|g| |d| ~ 1e-14 of
    # the loss' terms) and either path may stop on it a pass or two before the other
    k = min(len(losses), len(ref.history))
    assert abs(got.passes - ref.passes) <= 2 and k >= len(ref.history) - 2
    np.testing.assert_allclose(losses[:k], [h["loss"] for h in ref.history[:k]], rtol=1e-12)
    np.testing.assert_allclose([h["grad_norm"] for h in got.history[:k - 2]],
                               [h["grad_norm"] for h in ref.history[:k - 2]], rtol=1e-6)
    np.testing.assert_allclose(got.theta, ref.theta, rtol=0,
                               atol=1e-7 * np.linalg.norm(ref.theta))
    if spec == "softmax:3":
        assert np.linalg.norm(got.theta) == pytest.approx(radius, rel=1e-10)
    else:
        assert np.linalg.norm(got.theta) < radius
        opt = fit_ball(lambda t: _gn(m, diabetes, t), t0, radius, tol=1e-15)
        assert got.loss == pytest.approx(opt.loss, rel=1e-10)


def _gn(m, diabetes, theta):
    from nldist.train import gn_block

    X, y = diabetes
    return gn_block(m, theta, X, y, 0, "squared")
