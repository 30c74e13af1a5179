"""Model specs and closed-form adjoints: (ID) is the oracle (MATH.md §1)."""

from __future__ import annotations

import numpy as np
import pytest

import nldist
from nldist import NldistError

GLM_SPECS = [
    "linear", "linear:nobias", "glm:identity", "glm:sigmoid", "glm:tanh", "glm:softplus",
    "glm:exp", "glm:swish", "glm:swish(c1=0.5,c2=1,zeta=2)", "glm:sigmoid:nobias",
    "glm:tanh:nobias", "glm:softplus:nobias", "glm:exp:nobias", "glm:swish:nobias",
]
TOL = {np.float64: 1e-12, np.float32: 1e-12}  # computed in float64 whatever the input dtype


def id_residual(m, theta, X):
    F = nldist.adjoint(m, theta, X)
    lhs = m.predict(theta, X)
    rhs = m.f0(X) + F @ theta
    return np.abs(lhs - rhs).max() / max(1.0, np.abs(lhs).max())


@pytest.mark.parametrize("spec", GLM_SPECS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-9, 0.0, 5.0])
def test_identity_holds_for_every_glm(spec, dtype, scale, diabetes, rng):
    X = diabetes[0].astype(dtype)
    m = nldist.get_model(spec, X.shape[1])
    theta = scale * rng.normal(size=m.n_params) / np.sqrt(m.n_params)
    assert id_residual(m, theta, X) < TOL[dtype]


def test_shapes_and_layout(diabetes):
    X, y = diabetes
    m = nldist.get_model("glm:sigmoid", X.shape[1])
    assert m.n_params == X.shape[1] + 1
    theta = np.linspace(-1, 1, m.n_params)
    F = nldist.adjoint(m, theta, X)
    D = nldist.dual_matrix(m, theta, X, y)
    assert F.shape == (len(X), m.n_params) and D.shape == (len(X), m.n_params + 1)
    assert F.dtype == np.float64
    # dual times [theta, 1] is the residual f(theta) - y
    np.testing.assert_allclose(D @ np.r_[theta, 1.0], m.predict(theta, X) - y, atol=1e-12)
    # theta layout: [w, b]
    np.testing.assert_allclose(m.predict(theta, X), 1 / (1 + np.exp(-(X @ theta[:-1] + theta[-1]))))


def test_linear_adjoint_is_x(diabetes):
    X, _ = diabetes
    m = nldist.get_model("linear", X.shape[1])
    F = nldist.adjoint(m, np.ones(m.n_params), X)
    np.testing.assert_array_equal(F, np.hstack([X, np.ones((len(X), 1))]))


def test_divided_difference_is_stable_near_zero():
    """(phi(z) - phi(0)) / z matches a 50-digit mpmath reference across scales, z = 0 included."""
    import mpmath as mp

    mp.mp.dps = 50
    ref = {
        "sigmoid": lambda z: 1 / (1 + mp.exp(-z)),
        "tanh": mp.tanh,
        "softplus": lambda z: mp.log(1 + mp.exp(z)),
        "exp": mp.exp,
        "swish": lambda z: z * (1 + (mp.sqrt(2) - 1) / (1 + mp.exp(-z))),
    }
    X = np.array([[1.0]])
    for act, phi in ref.items():
        m = nldist.get_model(f"glm:{act}:nobias", 1)
        for z in (0.0, 1e-300, 1e-12, -1e-8, 3e-5, -9.99e-5, 1.01e-4, 0.3, -7.0, 25.0, 40.0):
            got = nldist.adjoint(m, np.array([z]), X)[0, 0]
            if abs(z) < 1e-20:  # below the 50-digit reference's own resolution
                want = mp.diff(phi, 0)
            else:
                want = (phi(mp.mpf(z)) - phi(mp.mpf(0))) / mp.mpf(z)
            assert abs(got - float(want)) <= 4e-15 * abs(float(want)), (act, z, got, want)


def test_adjoint_is_not_the_research_code_integral(diabetes):
    """Integrating t * grad f(t theta) (the research code) violates (ID); ours does not."""
    X = diabetes[0][:50]
    m = nldist.get_model("glm:tanh", X.shape[1])
    theta = np.full(m.n_params, 0.3)
    t, wq = np.polynomial.legendre.leggauss(40)
    t, wq = (t + 1) / 2, wq / 2
    wrong = sum(w * ti * m.jacobian(ti * theta, X) for ti, w in zip(t, wq, strict=True))
    right = sum(w * m.jacobian(ti * theta, X) for ti, w in zip(t, wq, strict=True))
    np.testing.assert_allclose(nldist.adjoint(m, theta, X), right, atol=1e-12)
    bad = np.abs(m.predict(theta, X) - m.f0(X) - wrong @ theta).max()
    assert bad > 1e-2


@pytest.mark.parametrize(
    "spec, match",
    [("glm:relu6", "unknown activation"), ("quadratic", "unknown model spec"),
     ("glm:swish(c1=2,c2=1)", "c1 <= c2"), ("glm:swish(k=1)", "unknown parameter"),
     ("glm:sigmoid(c1=1)", "takes no parameters"), ("glm:swish(c1=x)", "key=number")],
)
def test_bad_specs_give_one_line_errors(spec, match):
    with pytest.raises(NldistError, match=match) as err:
        nldist.get_model(spec, 3)
    assert "\n" not in str(err.value)


def test_bad_theta_and_X(diabetes):
    X, y = diabetes
    m = nldist.get_model("glm:sigmoid", X.shape[1])
    with pytest.raises(NldistError, match="length 11"):
        nldist.adjoint(m, np.zeros(5), X)
    with pytest.raises(NldistError, match="NaN"):
        nldist.adjoint(m, np.full(11, np.nan), X)
    with pytest.raises(NldistError, match=r"expects \(n, 10\)"):
        nldist.adjoint(m, np.zeros(11), X[:, :3])
    with pytest.raises(NldistError, match="y has 3 entries"):
        nldist.dual_matrix(m, np.zeros(11), X, y[:3])
    with pytest.raises(NldistError, match="n_features"):
        nldist.get_model("linear", 0)


def test_theta_may_be_a_torch_tensor(diabetes):
    import torch

    X = diabetes[0]
    m = nldist.get_model("glm:softplus", X.shape[1])
    t = torch.linspace(-0.5, 0.5, m.n_params, dtype=torch.float64)
    np.testing.assert_allclose(nldist.adjoint(m, t, X), nldist.adjoint(m, t.numpy(), X))
