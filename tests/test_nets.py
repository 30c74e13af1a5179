"""relu2 closed forms and torch: models, in memory and on a real LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nldist
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.glm import swish_ratio
from nldist.models.relu2 import ReLU2


def id_rel(m, theta, X, F):
    f1, f0 = m.predict(theta, X), m.f0(X)
    scale = np.abs(f1) + np.abs(f0) + np.abs(F) @ np.abs(theta)
    return float(np.max(np.abs(f1 - f0 - F @ theta) / np.maximum(scale, 1e-300)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4))
    y = np.tanh(X[:, 0]) + 0.1 * rng.normal(size=300)
    return X, y


@pytest.mark.parametrize("spec", ["relu2:1", "relu2:7", "relu2:7:sigmoid", "relu2:3:tanh",
                                  "relu2:3:swish(c1=0.5,c2=1)"])
def test_relu2_identity_and_layout(spec, data):
    X, _ = data
    m = get_model(spec, 4)
    assert isinstance(m, ReLU2) and m.n_params == m.hidden * 5 and m.homogeneous_degree == 2
    theta = np.random.default_rng(0).normal(size=m.n_params)
    F = nldist.adjoint(m, theta, X)
    assert id_rel(m, theta, X, F) < 1e-14
    # layout [a (h), B (h x d) row-major]: predict matches a direct evaluation
    a, B = theta[: m.hidden], theta[m.hidden :].reshape(m.hidden, 4)
    g = np.maximum(X @ B.T, 0) @ a
    np.testing.assert_allclose(m.predict(theta, X), m.activation.phi(g), rtol=1e-14)
    # homogeneous: f* = [(phi(g) - phi(0)) / (2 g)] grad g; for identity f* = grad g / 2
    # (Euler: <theta, grad g> = 2 g)
    if spec == "relu2:7":
        np.testing.assert_allclose(2 * F, m.jacobian(theta, X), rtol=1e-14)
        np.testing.assert_allclose(F @ theta, g, rtol=1e-12)


def test_relu2_at_g_zero_uses_the_stable_limit(data):
    X, _ = data
    m = get_model("relu2:4:sigmoid", 4)
    theta = np.zeros(m.n_params)
    theta[4:] = np.random.default_rng(1).normal(size=16)  # a = 0: g = 0 for every row
    F = m.adjoint(theta, X)
    assert np.all(np.isfinite(F))
    np.testing.assert_allclose(F[:, :4], 0.125 * np.maximum(X @ theta[4:].reshape(4, 4).T, 0))


def test_relu2_jacobian_and_torch_forms(data):
    X, _ = data
    m = get_model("relu2:5:sigmoid", 4)
    theta = np.random.default_rng(2).normal(size=m.n_params)
    th = torch.as_tensor(theta)
    Xt = torch.as_tensor(X)
    J_auto = torch.func.jacrev(lambda t: m.torch_forward(t, Xt))(th).numpy()
    np.testing.assert_allclose(m.jacobian(theta, X), J_auto, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.torch_jacobian(th, Xt).numpy(), J_auto, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m.torch_forward(th, Xt).numpy(), m.predict(theta, X), rtol=1e-14)


def test_relu2_trains_from_its_random_start(data):
    from nldist.train import train_on_sample

    X, y = data
    m = get_model("relu2:6", 4)
    assert np.linalg.norm(m.initial_theta()) > 0  # 0 is a stationary point of relu nets
    fit = train_on_sample(m, X, y, np.ones(len(y)), radius=20.0, tol=1e-10, max_iter=60)
    r0 = m.predict(m.initial_theta(), X) - y
    assert fit.loss < 0.5 * float(r0 @ r0)


def test_spec_errors_and_swish_ratio():
    for bad in ("relu2:0", "relu2:", "relu2:4:nope", "relu2:4:sigmoid:extra"):
        with pytest.raises(NldistError):
            get_model(bad, 3)
    assert swish_ratio(get_model("glm:swish(c1=0.5,c2=2)", 3)) == 4.0
    assert swish_ratio(get_model("glm:swish", 3)) == 2.0
    with pytest.raises(NldistError, match="glm:swish"):
        swish_ratio(get_model("glm:sigmoid", 3))


def _dense_reference(m, theta, X, y):
    """Nonlinear leverage from the dense dual and numpy's SVD (rank by the default rtol)."""
    A = nldist.dual_matrix(m, theta, X, y)
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    r = int(np.sum(s > s[0] * max(A.shape) * np.finfo(float).eps))
    return np.sum(U[:, :r] ** 2, axis=1) / r


@pytest.mark.slow
def test_relu2_and_torch_scores_on_a_local_cluster_equal_dense_reference(local_client):
    import dask.array as da

    rng = np.random.default_rng(11)
    X = rng.normal(size=(2000, 5))
    y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=2000)
    dX, dy = da.from_array(X, chunks=(333, 5)), da.from_array(y, chunks=(333,))
    cases = ["relu2:6", "relu2:6:sigmoid",
             "torch:nldist.examples.nets:mlp(hidden=4,depth=2,act=relu)"]
    for spec in cases:
        if spec.startswith("torch:"):  # closed-form relu2 never imported torch on workers
            imported = local_client.run(lambda: "torch" in __import__("sys").modules)
            assert not any(imported.values())
        m = get_model(spec, 5)
        theta = m.initial_theta() * 1.3
        got = nldist.scores(dX, dy, model=m, theta=theta).compute()
        ref = _dense_reference(m, theta, X, y)
        assert abs(got.sum() - 1) < 1e-12
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-14)
    # the workers rebuilt the torch module from spec + state_dict, one torch thread each
    threads = local_client.run(lambda: __import__("torch").get_num_threads())
    assert set(threads.values()) == {1}
