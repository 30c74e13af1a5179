"""Ball-constrained training: exact QP on the ball, optimum vs scipy, KKT when active."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

import nldist
from nldist import NldistError
from nldist.train import ball_qp, fit_ball, sample_oracle, train_on_sample


def test_ball_qp_matches_a_generic_solver(rng):
    for _ in range(20):
        M = rng.normal(size=(6, 6))
        A = M @ M.T
        A[:, 0] = A[0, :] = 0  # a null direction: the hard case
        g, th = rng.normal(size=6), rng.normal(size=6)
        R = rng.uniform(0.1, 3)
        got = ball_qp(A, g, th, R)

        def obj(t, A=A, g=g, th=th):
            return g @ (t - th) + 0.5 * (t - th) @ A @ (t - th)

        cons = {"type": "ineq", "fun": lambda t, R=R: R**2 - t @ t}
        ref = optimize.minimize(obj, np.zeros(6), constraints=[cons], method="SLSQP",
                                options={"ftol": 1e-14, "maxiter": 500})
        assert np.linalg.norm(got) <= R * (1 + 1e-12)
        assert obj(got) <= ref.fun + 1e-7 * max(1, abs(ref.fun))


@pytest.mark.parametrize("spec", ["linear", "glm:swish", "glm:sigmoid", "glm:softplus:nobias"])
def test_unconstrained_optimum_matches_scipy(diabetes, spec):
    X, y = diabetes
    m = nldist.get_model(spec, X.shape[1])
    if spec == "glm:sigmoid":
        y = (y > 0).astype(float)
    w = np.ones(len(y))
    fit = train_on_sample(m, X, y, w, radius=1e3)
    ref = optimize.least_squares(lambda t: m.predict(t, X) - y, np.zeros(m.n_params),
                                 xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert fit.converged
    assert fit.loss <= 2 * ref.cost * (1 + 1e-10)


def test_constraint_active_satisfies_kkt(diabetes):
    X, y = diabetes
    m = nldist.get_model("glm:swish", X.shape[1])
    fit = train_on_sample(m, X, y, np.ones(len(y)), radius=0.2)
    assert abs(np.linalg.norm(fit.theta) - 0.2) < 1e-12
    g = sample_oracle(m, X, y, np.ones(len(y)))(fit.theta)["grad"]
    cos = g @ fit.theta / (np.linalg.norm(g) * np.linalg.norm(fit.theta))
    assert cos < -1 + 1e-8  # gradient points straight out of the ball


def test_weights_enter_the_loss(diabetes):
    X, y = diabetes
    m = nldist.get_model("linear", X.shape[1])
    w = np.r_[np.full(100, 3.0), np.ones(len(y) - 100)]
    fit = train_on_sample(m, X, y, w, radius=1e3)
    A = np.hstack([X, np.ones((len(X), 1))])
    ref = np.linalg.lstsq(A * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    np.testing.assert_allclose(fit.theta, ref, atol=1e-8)


def test_bad_radius():
    with pytest.raises(NldistError, match="radius"):
        fit_ball(lambda t: {"loss": 0.0, "grad": t, "gn": np.eye(2)}, np.zeros(2), -1.0)
