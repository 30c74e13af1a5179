"""Losses beyond squared (MATH.md §6): residuals, their adjoints, Gauss-Newton, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nldist import train
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.models import get_model, losses
from nldist.models.torchmodel import TorchForwardModel
from nldist.scores.rows import dual_block
from nldist.scores.spec import make_spec
from nldist.train import train_on_sample


def xlogy(a, b):
    return np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, b)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(250, 4))
    yb = (rng.random(250) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    yp = rng.poisson(np.exp(0.5 * X[:, 1])).astype(float)
    return X, yb, yp


def test_residual_squares_to_the_loss_and_is_signed():
    f = np.array([0.1, 0.3, 0.5, 0.9, 0.999, 0.2, 0.7])
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.25, 0.7])
    bce = losses.get_loss("bce")
    ell = xlogy(y, y) - xlogy(y, f) + xlogy(1 - y, 1 - y) - xlogy(1 - y, 1 - f)
    r = bce.residual(f, y)
    np.testing.assert_allclose(r**2, ell, rtol=1e-12, atol=1e-300)
    assert np.all(np.sign(r) == np.sign(f - y))
    mu = np.array([0.5, 2.0, 3.0, 3.0 + 1e-9, 7.0])
    yp = np.array([0.0, 1.0, 3.0, 3.0, 2.0])
    po = losses.get_loss("poisson")
    ellp = mu - yp - xlogy(yp, mu / np.where(yp == 0, 1, yp))
    rp = po.residual(mu, yp)
    np.testing.assert_allclose(rp**2, ellp, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(rp[3], 1e-9 / np.sqrt(6.0), rtol=1e-6)  # smooth through f = y
    np.testing.assert_array_equal(losses.get_loss("squared").residual(mu, yp), mu - yp)


@pytest.mark.parametrize("name", ["bce", "poisson", "squared"])
def test_derivatives_numpy_torch_and_finite_differences_agree(name):
    rng = np.random.default_rng(0)
    if name == "bce":
        f = rng.uniform(0.02, 0.98, 60)
        y = np.concatenate([np.zeros(20), np.ones(20), rng.uniform(0.05, 0.95, 20)])
        f[-5:] = y[-5:] + 1e-7  # near f = y for soft labels
    else:
        f = rng.uniform(0.2, 5, 60)
        y = np.concatenate([np.zeros(20), rng.integers(1, 6, 40).astype(float)])
        f[-5:] = y[-5:] + 1e-7
    lo = losses.get_loss(name)
    ft, yt = torch.as_tensor(f), torch.as_tensor(y)
    np.testing.assert_allclose(lo.torch_residual(ft, yt).numpy(), lo.residual(f, y), rtol=1e-13,
                               atol=1e-15)
    r, dr = torch.func.jvp(lambda v: lo.torch_residual(v, yt), (ft,), (torch.ones_like(ft),))
    assert torch.all(torch.isfinite(dr))
    np.testing.assert_allclose(dr.numpy(), lo.dresidual(f, y), rtol=1e-10)
    h = 1e-6
    fd = (lo.residual(f + h, y) - lo.residual(f - h, y)) / (2 * h)
    np.testing.assert_allclose(lo.dresidual(f, y), fd, rtol=1e-5)


def test_psi_divdiff_is_stable_near_zero():
    act = get_model("glm:sigmoid", 1).activation
    lo = losses.get_loss("bce")
    y = np.array([0.0, 1.0, 0.3])
    for z in (1e-12, 1e-5, 0.3, -0.49):
        zz = np.full(3, z)
        got = losses.psi_divdiff(lo, act, zz, y)
        s = np.linspace(0, 1, 200001)  # trapezoid on the derivative: independent
        vals = lo.dresidual(act.phi(s[:, None] * zz), y) * act.dphi(s[:, None] * zz)
        ref = np.trapezoid(vals, s, axis=0)
        np.testing.assert_allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize(
    ("spec", "loss"),
    [("glm:sigmoid", "bce"), ("glm:exp", "poisson"), ("glm:softplus", "poisson"),
     ("relu2:5:sigmoid", "bce"),
     ("torch:nldist.examples.nets:mlp(hidden=6,depth=2,act=tanh,out=sigmoid)", "bce"),
     ("torch:nldist.examples.nets:paper_mlp(hidden=5)", "bce"),
     ("torch:nldist.examples.nets:relu_net(hidden=5,out='sigmoid')", "bce")],
)
def test_dual_block_identity_for_losses(spec, loss, data):
    X, yb, yp = data
    y = yb if loss == "bce" else yp
    m = get_model(spec, 4)
    rng = np.random.default_rng(2)
    theta = m.initial_theta() + 0.3 * rng.normal(size=m.n_params)
    D = dual_block(m, theta, X, y, loss)
    lo = losses.get_loss(loss)
    r1 = lo.residual(m.predict(theta, X), y)
    np.testing.assert_allclose(D[:, -1], lo.residual(m.f0(X), y))
    scale = np.abs(r1) + np.abs(D[:, -1]) + np.abs(D[:, :-1]) @ np.abs(theta)
    assert np.max(np.abs(D @ np.append(theta, 1.0) - r1) / scale) < 1e-10
    # the spec with loss: scores are a distribution
    spec_ = make_spec("nonlinear-leverage", m, theta, X.shape[1], True, loss=loss)
    assert spec_.matrix(X, y).shape == (X.shape[0], m.n_params + 1)


def test_glm_closed_form_equals_quadrature_for_bce(data):
    from dataclasses import dataclass

    X, yb, _ = data
    glm = get_model("glm:sigmoid", 4)

    @dataclass
    class TorchOnly(TorchForwardModel):
        def __post_init__(self):
            self.n_params = 5

        def torch_forward(self, theta, X):
            return glm.torch_forward(theta, X)

    theta = np.random.default_rng(1).normal(size=5)
    a = glm.residual_adjoint(theta, X, yb, losses.get_loss("bce"))
    b = TorchOnly("t", 4).residual_adjoint(theta, X, yb, losses.get_loss("bce"))
    assert np.max(np.abs(a - b)) < 1e-10 * np.abs(a).max()


@pytest.mark.parametrize(("spec", "loss"), [("glm:sigmoid", "bce"), ("glm:exp", "poisson"),
                                            ("relu2:3:sigmoid", "bce")])
def test_gn_block_gradient_and_losses_block(spec, loss, data):
    X, yb, yp = data
    y = yb if loss == "bce" else yp
    m = get_model(spec, 4)
    theta = m.initial_theta() + 0.2
    out = train.gn_block(m, theta, X, y, 0, loss)
    L = train.losses_block(m, theta[None], X, y, loss)[0]
    assert abs(out["loss"] - L) < 1e-9 * L
    h = 1e-6
    for j in (0, m.n_params - 1):
        e = np.zeros(m.n_params)
        e[j] = h
        Lp, Lm = train.losses_block(m, np.vstack([theta + e, theta - e]), X, y, loss)
        assert abs(out["grad"][j] - (Lp - Lm) / (2 * h)) < 1e-5 * (abs(out["grad"][j]) + 1)
    assert np.all(np.linalg.eigvalsh(out["gn"]) > -1e-8)


def test_training_with_bce_and_poisson(data):
    X, yb, yp = data
    w = np.ones(len(yb))
    m = get_model("glm:sigmoid", 4)
    fit = train_on_sample(m, X, yb, w, radius=20.0, loss="bce")
    assert fit.converged
    # optimality: the gradient of the weighted BCE vanishes at an interior optimum
    g = train.gn_block(m, fit.theta, X, yb, 0, "bce")["grad"]
    assert np.linalg.norm(g) < 1e-6 * fit.loss
    mp = get_model("glm:exp", 4)
    fitp = train_on_sample(mp, X, yp, w, radius=20.0, loss="poisson")
    gp = train.gn_block(mp, fitp.theta, X, yp, 0, "poisson")["grad"]
    assert np.linalg.norm(gp) < 1e-6 * fitp.loss and abs(fitp.theta[1] - 0.5) < 0.2


def test_domain_errors_are_one_line(data):
    X, yb, yp = data
    with pytest.raises(NldistError, match="outputs in \\(0, 1\\)"):
        dual_block(get_model("glm:identity", 4), np.ones(5), X, yb, "bce")
    with pytest.raises(NldistError, match="labels in \\[0, 1\\]"):
        dual_block(get_model("glm:sigmoid", 4), np.ones(5), X, yp + 2, "bce")
    with pytest.raises(NldistError, match="positive model outputs"):
        train.gn_block(get_model("linear", 4), np.ones(5), X, yp, 0, "poisson")
    with pytest.raises(NldistError, match="unknown loss"):
        losses.get_loss("hinge")


def test_job_schema_accepts_the_new_options():
    base = {"dataset": {"source": "x.npz"}, "model": "glm:sigmoid"}
    assert validate_job({**base, "loss": "bce", "theta": "pilot", "pilot_s": 50}).loss == "bce"
    job = validate_job({**base, "model": "torch:nldist.examples.nets:mlp(hidden=3)",
                        "adjoint": {"q": 4, "dtype": "float32"}})
    assert job.adjoint.dtype == "float32"
    with pytest.raises(NldistError, match="loss"):
        validate_job({**base, "loss": "hinge"})
    with pytest.raises(NldistError, match="linear-leverage"):
        validate_job({**base, "model": "glm:swish", "swish_bound": True})
    with pytest.raises(NldistError, match="glm:swish"):
        validate_job({**base, "kind": "linear-leverage", "swish_bound": True})
    with pytest.raises(NldistError, match="cannot import"):
        validate_job({**base, "model": "torch:no_such_mod:f"})


def test_bce_from_the_logit_matches_and_survives_saturation():
    lo = losses.get_loss("bce")
    z = np.array([-3.0, -0.2, 0.0, 0.4, 2.5, -3.0, 1.0, 0.3])
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.3, 0.7, 0.6])
    f = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(lo.residual_logit(z, y), lo.residual(f, y), rtol=1e-10)
    np.testing.assert_allclose(lo.dresidual_logit(z, y), lo.dresidual(f, y) * f * (1 - f),
                               rtol=1e-8)
    zt, yt = torch.as_tensor(z), torch.as_tensor(y)
    r, dr = torch.func.jvp(lambda v: lo.torch_residual_logit(v, yt), (zt,), (torch.ones_like(zt),))
    np.testing.assert_allclose(r.numpy(), lo.residual_logit(z, y), rtol=1e-12)
    np.testing.assert_allclose(dr.numpy(), lo.dresidual_logit(z, y), rtol=1e-9)
    # saturated: f rounds to 1 in float64 but the residual from z keeps every digit
    big = np.array([40.0, 60.0])
    np.testing.assert_allclose(lo.residual_logit(big, np.ones(2)), -np.exp(-big / 2), rtol=1e-12)
    np.testing.assert_allclose(lo.residual_logit(-big, np.ones(2)), -np.sqrt(big), rtol=1e-12)


def test_saturated_sigmoid_models_keep_the_identity_under_bce(data):
    X, yb, _ = data
    lo = losses.get_loss("bce")
    for spec in ("glm:sigmoid", "relu2:3:sigmoid",
                 "torch:nldist.examples.nets:paper_mlp(hidden=3)"):
        m = get_model(spec, 4)
        theta = (m.initial_theta() + 0.5) * 12.0  # |logits| up to ~100: f is 0 or 1 in float64
        D = dual_block(m, theta, X, yb, "bce")
        assert np.all(np.isfinite(D))
        # (ID) on the residual computed from the logit (f alone has lost the digits)
        if spec == "glm:sigmoid":
            z = X @ theta[:4] + theta[4]
        elif spec.startswith("relu2"):
            z = m._inner(theta, X, grad=False)[0]
        else:
            ray = m._ray(torch.as_tensor(theta), torch.as_tensor(X), None, None, None, inner=True)
            z = ray.forward(1.0, torch.arange(X.shape[0])).numpy()
        assert np.abs(z).max() > 36  # sigmoid(36.8) == 1.0 in float64
        r1 = lo.residual_logit(z, yb)
        np.testing.assert_allclose(D[:, -1], lo.residual_logit(np.zeros_like(z), yb))
        scale = np.abs(r1) + np.abs(D[:, -1]) + np.abs(D[:, :-1]) @ np.abs(theta)
        assert np.max(np.abs(D @ np.append(theta, 1.0) - r1) / scale) < 1e-10
