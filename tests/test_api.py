"""Public API against dense references: SVD leverage, statsmodels hat diagonal, (ID)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import NldistError


def svd_leverage(A, rtol=None):
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    tol = (rtol or max(A.shape) * np.finfo(float).eps) * s[0]
    r = int(np.sum(s > tol))
    return (U[:, :r] ** 2).sum(1), r


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_leverage_matches_svd_and_sums_to_rank(diabetes, dtype, tol):
    A = np.hstack([diabetes[0], np.ones((len(diabetes[0]), 1))]).astype(dtype)
    lev = nldist.leverage(A)
    ref, r = svd_leverage(A.astype(np.float64))
    assert lev.dtype == np.float64 and lev.shape == (len(A),)
    np.testing.assert_allclose(lev, ref, atol=tol)
    assert abs(lev.sum() - r) < 1e-10 and r == 11


def test_linear_leverage_equals_statsmodels_hat_diagonal(diabetes):
    import statsmodels.api as sm

    X, y = diabetes
    hat = sm.OLS(y, sm.add_constant(X)).fit().get_influence().hat_matrix_diag
    lin = nldist.scores(X, y, kind="linear-leverage")
    np.testing.assert_allclose(lin * 11, hat, atol=1e-12)


def test_nonlinear_equals_linear_for_a_linear_model(diabetes, rng):
    """For f = <w,x> + b the dual is [X, 1, -y]: nonlinear = linear leverage augmented with y."""
    X, y = diabetes
    m = nldist.get_model("linear", X.shape[1])
    theta = rng.normal(size=m.n_params)
    nl = nldist.scores(X, y, model=m, theta=theta)
    lin = nldist.scores(X, y, model=m, kind="linear-leverage", linear_augment_y=True)
    np.testing.assert_allclose(nl, lin, atol=1e-14)
    # without labels: exactly the linear leverage of [X, 1]
    np.testing.assert_allclose(nldist.scores(X, model=m, theta=theta),
                               nldist.scores(X, y, model=m, kind="linear-leverage"), atol=1e-14)


@pytest.mark.parametrize("spec", ["glm:sigmoid", "glm:swish", "glm:tanh:nobias", "glm:exp"])
def test_nonlinear_leverage_matches_dense_reference(diabetes, rng, spec):
    X, y = diabetes
    m = nldist.get_model(spec, X.shape[1])
    theta = 0.3 * rng.normal(size=m.n_params)
    p = nldist.scores(X, y, model=m, theta=theta)
    ref, r = svd_leverage(nldist.dual_matrix(m, theta, X, y))
    np.testing.assert_allclose(p, ref / r, atol=1e-14)
    assert abs(p.sum() - 1) < 1e-12 and np.all(p >= 0)


def test_rank_deficient_dual_gives_correct_scores(diabetes, rng):
    """Zero and collinear columns: scores from the SVD of R, rank reported correctly."""
    X, y = diabetes
    Xd = np.hstack([X, X[:, :1] + 2 * X[:, 1:2], np.zeros((len(X), 1)), X[:, 3:4]])
    m = nldist.get_model("glm:sigmoid", Xd.shape[1])
    theta = 0.2 * rng.normal(size=m.n_params)
    D = nldist.dual_matrix(m, theta, Xd, y)
    ref, r = svd_leverage(D)
    assert r == D.shape[1] - 3
    lev = nldist.leverage(D)
    np.testing.assert_allclose(lev, ref, atol=1e-12)
    assert abs(lev.sum() - r) < 1e-9
    p = nldist.scores(Xd, y, model=m, theta=theta)
    np.testing.assert_allclose(p, ref / r, atol=1e-13)


def test_ridge_leverage_matches_definition(diabetes):
    X, y = diabetes
    m = nldist.get_model("glm:softplus", X.shape[1])
    theta = np.full(m.n_params, 0.1)
    D = nldist.dual_matrix(m, theta, X, y)
    lam = 3.0
    ref = np.einsum("ij,ij->i", D, np.linalg.solve(D.T @ D + lam * np.eye(D.shape[1]), D.T).T)
    np.testing.assert_allclose(nldist.leverage(D, ridge=lam), ref, atol=1e-12)
    p = nldist.scores(X, y, model=m, theta=theta, kind="ridge-leverage", ridge=lam)
    np.testing.assert_allclose(p, ref / ref.sum(), atol=1e-14)
    # ridge leverage stays defined for a wide matrix
    wide = D[:5]
    assert np.all(np.isfinite(nldist.leverage(wide, ridge=1.0)))


@pytest.mark.parametrize("kind", ["nonlinear-leverage", "nonlinear-norm", "linear-leverage",
                                  "linear-norm", "uniform"])
def test_every_kind_is_a_probability_vector(diabetes, kind):
    X, y = diabetes
    p = nldist.scores(X, y, model="glm:sigmoid", theta=np.full(11, 0.1), kind=kind)
    assert p.shape == (len(X),) and p.dtype == np.float64
    assert abs(p.sum() - 1) < 1e-12 and np.all(p >= 0)


def test_norm_scores_definition(diabetes):
    X, y = diabetes
    m = nldist.get_model("glm:tanh", X.shape[1])
    theta = np.full(m.n_params, -0.2)
    D = nldist.dual_matrix(m, theta, X, y)
    p = nldist.scores(X, y, model=m, theta=theta, kind="nonlinear-norm")
    np.testing.assert_allclose(p, (D**2).sum(1) / (D**2).sum(), atol=1e-15)


def test_bad_inputs(diabetes):
    X, y = diabetes
    Xn = X.copy()
    Xn[7, 2] = np.nan
    with pytest.raises(NldistError, match="NaN or inf .*first bad row 7"):
        nldist.scores(Xn, y, model="linear", kind="linear-leverage")
    with pytest.raises(NldistError, match="unknown score kind"):
        nldist.scores(X, y, model="linear", kind="leverage")
    with pytest.raises(NldistError, match=r"y has shape \(5,\) but X has \d+ rows"):
        nldist.scores(X, y[:5], model="linear")
    with pytest.raises(NldistError, match="no rows"):
        nldist.scores(X[:0], y[:0], model="linear")
    with pytest.raises(NldistError, match="needs a model"):
        nldist.scores(X, y)
    with pytest.raises(NldistError, match="ridge > 0"):
        nldist.scores(X, y, model="linear", kind="ridge-leverage")
    with pytest.raises(NldistError, match="all zeros"):
        nldist.scores(np.zeros((4, 2)), kind="linear-leverage", model="linear:nobias")
    with pytest.raises(NldistError, match="dtype"):
        nldist.scores(np.array([["a", "b"]]), kind="uniform")
    with pytest.raises(NldistError, match="2-D"):
        nldist.leverage(np.ones(3))


def test_a_live_torch_module_is_a_model_everywhere(local_client):
    """model=<nn.Module> (issue 13): turned into architecture + state_dict for the workers;
    the same scores as the spec naming the same network, on a real LocalCluster."""
    import dask.array as da
    import torch

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach().double().numpy()
    X = np.random.default_rng(0).normal(size=(60, 3))
    y = X[:, 0]
    ref = nldist.get_model("torch:nldist.examples.nets:mlp(hidden=4,depth=1,act=tanh)", 3)
    F = nldist.adjoint(net, theta, X)
    np.testing.assert_allclose(F, ref.adjoint(theta, X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(nldist.dual_matrix(net, theta, X, y),
                               nldist.dual_matrix(ref, theta, X, y), rtol=1e-12, atol=1e-14)
    got = nldist.scores(da.from_array(X, chunks=20), da.from_array(y, chunks=20), model=net,
                        theta=theta).compute()
    np.testing.assert_allclose(got, nldist.scores(X, y, model=ref, theta=theta), rtol=1e-10)
    # the user's module is untouched (no dtype change, no hooks left behind)
    assert next(net.parameters()).dtype == torch.float32
    with pytest.raises(NldistError, match="theta has shape"):
        nldist.scores(X, y, model=net, theta=np.zeros(3))


@pytest.mark.parametrize("bad", ["y short", "X 1-D", "X str", "X no rows", "X no cols",
                                 "y str", "y 2 cols"])
def test_numpy_and_dask_input_share_one_front_door(bad):
    """nldist.scores validates X and y in one place (nldist._checks.check_xy): NumPy and
    dask input fail with the same one-line message, before anything is read."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    X, y = {"y short": (X, y[:5]), "X 1-D": (X[:, 0], y), "X str": (X.astype(str), y),
            "X no rows": (X[:0], y[:0]), "X no cols": (X[:, :0], y),
            "y str": (X, y.astype(str)), "y 2 cols": (X, np.stack([y, y, y], 1)[:7])}[bad]
    msgs = []
    for wrap in (np.asarray, da.from_array):
        with pytest.raises(NldistError) as err:
            nldist.scores(wrap(X), wrap(y), model="linear", kind="linear-leverage")
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] and "\n" not in msgs[0]
