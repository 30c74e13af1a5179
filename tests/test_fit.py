"""``nldist fit`` (issue 27): exact full-data gradients with the leverage sample's Gauss-Newton
matrix as the Hessian, or full Gauss-Newton by measured cost — the gradient pass for every
model class, theta* of a GLM to 1e-8, a full loss that never increases, chunking invariance,
a uniform preconditioner slower on rare categories, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import optimize

import nldist
from nldist import graph, precond
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, fit, stages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    """sklearn's diabetes table (442 x 10, real), standardized, tiled with noise to 3,000 rows;
    y standardized, its 0/1 split at the median and 3 classes at the 50th/80th percentiles."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    rng = np.random.default_rng(0)
    X = np.tile(X, (7, 1))[:3000] + 0.05 * rng.normal(size=(3000, X.shape[1]))
    y = np.tile(y, 7)[:3000] + 0.05 * rng.normal(size=3000)
    return X, y


@pytest.fixture()
def threads():
    with dask.config.set(scheduler="threads"):
        yield


def _families(X, y):
    yb = (y > np.median(y)).astype(float)
    yc = (y > np.median(y)).astype(float) + (y > np.percentile(y, 80))
    Y3 = np.column_stack([y, np.tanh(y), np.sin(y)])
    Xs = X[:, :5]
    return [("linear", "squared", X, y), ("glm:sigmoid", "bce", X, yb),
            ("relu2:3", "squared", Xs, y), ("softmax:3", "cross_entropy", Xs, yc),
            ("softmax:3", "squared", Xs, Y3),
            ("torch:nldist.examples.nets:mlp(hidden=4,depth=1,act=tanh)", "squared", Xs, y),
            ("mlp:4:3:tanh", "cross_entropy", Xs, yc), ("mlp:4:3:tanh", "squared", Xs, Y3)]


@pytest.mark.parametrize("case", range(8))
def test_gradient_pass_is_the_gauss_newton_pass_gradient_for_every_model_class(data, case,
                                                                              sync_scheduler):
    """The gradient pass (no p x p work per row) gives the loss and gradient of the Gauss-Newton
    pass for GLMs, relu2, softmax (cross-entropy and multi-output regression), torch modules
    (one and C outputs), whatever the chunking; the sample's H_S with all rows at weight 1 is
    the Gauss-Newton pass's matrix (where the pass forms one)."""
    spec, loss, X, y = _families(*data)[case]
    X, y = X[:600], y[:600]
    m = nldist.get_model(spec, n_features=X.shape[1])
    theta = m.initial_theta() * 1.5 + 0.05
    ref = None
    for c in (600, 173):
        Xd = da.from_array(X, chunks=(c, -1))
        yd = da.from_array(y, chunks=(c,) + y.shape[1:])
        got = graph.oracles.grad_pass(Xd, yd, m, theta, loss=loss)
        if ref is None:
            ref = graph.oracles.gn_pass(Xd, yd, m, theta, loss=loss)
        assert got.keys() == {"loss", "grad"}
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-12)
        np.testing.assert_allclose(got["grad"], ref["grad"], rtol=1e-9,
                                   atol=1e-12 * np.abs(ref["grad"]).max())
    H = precond.sample_gn(m, X, y, np.ones(len(X)), loss)(theta)
    if "gn" in ref:
        np.testing.assert_allclose(H, ref["gn"], rtol=1e-9, atol=1e-12 * np.abs(ref["gn"]).max())
    else:  # C-output networks: v^T H v = (J v)^T H_loss (J v), J v by forward mode
        import torch
        from torch.func import jvp

        v = np.random.default_rng(1).normal(size=m.n_params)
        Xt = torch.as_tensor(X)
        Z, Jv = jvp(lambda t: m.torch_forward(t, Xt), (torch.as_tensor(theta),),
                    (torch.as_tensor(v),))
        Z, Jv = Z.detach().numpy(), Jv.detach().numpy()
        if loss == "cross_entropy":
            P = np.exp(Z - Z.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            want = float(np.sum(P * Jv**2) - np.sum(np.sum(P * Jv, 1) ** 2))
        else:
            want = 2.0 * float(np.sum(Jv**2))
        assert v @ H @ v == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("spec,loss", [("linear", "squared"), ("glm:swish", "squared"),
                                       ("glm:sigmoid", "bce")])
def test_gradient_block_of_a_glm_on_coded_columns_is_the_dense_designs(data, spec, loss):
    """A GLM on categorical codes (airports: many levels, some rare) takes its gradient from
    the sparse design: the same loss and gradient as the inner model on the dense one-hot
    design, and as the Gauss-Newton block's."""
    from nldist.models.coded import Codes
    from nldist.train import gn_block

    X, y = data
    rng = np.random.default_rng(3)
    n = 900
    codes = Codes((40, 7), ("origin", "dest"))
    C = np.column_stack([rng.integers(0, 40, n) ** 2 // 40, rng.integers(0, 7, n)])  # skewed
    Xc = np.column_stack([X[:n, :4], C]).astype(float)
    yc = y[:n] if loss == "squared" else (y[:n] > 0).astype(float)
    m = nldist.get_model(spec, n_features=Xc.shape[1], codes=codes)
    assert m.sparse_rows
    theta = 0.2 * rng.normal(size=m.n_params)
    got = precond.grad_block(m, theta, Xc, yc, 0, loss)
    ref = precond.grad_block(m.inner, theta, m.expand(Xc), yc, 0, loss)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-12)
    np.testing.assert_allclose(got["grad"], ref["grad"], rtol=1e-10,
                               atol=1e-12 * np.abs(ref["grad"]).max())
    gn = gn_block(m, theta, Xc, yc, 0, loss)
    np.testing.assert_allclose(got["grad"], gn["grad"], rtol=1e-9,
                               atol=1e-12 * np.abs(gn["grad"]).max())


def _monotone(losses):
    """Never an increase beyond rounding (precond.SLACK of the loss)."""
    L = np.asarray(losses)
    return bool(np.all(np.diff(L) <= precond.SLACK * np.abs(L[:-1])))


def _oracles(m, X, y, loss="squared"):
    def full(theta):
        return precond.grad_block(m, theta, X, y, 0, loss)

    return full


def test_the_full_loss_never_increases_and_bad_steps_are_rejected(data):
    """Monotone full loss, also with a preconditioner 100x too small (its steps overshoot and
    are rejected, the damping grows and the loss still decreases), for a GLM and a network;
    with the sample's own H_S the GLM converges."""
    X, y = data
    for spec in ("glm:swish", "torch:nldist.examples.nets:mlp(hidden=3,depth=1,act=tanh)"):
        Xm = X if spec == "glm:swish" else X[:800, :4]
        ym = y[: len(Xm)]
        m = nldist.get_model(spec, n_features=Xm.shape[1])
        t0 = m.initial_theta()
        idx = np.random.default_rng(0).choice(len(Xm), 8 * m.n_params)
        w = np.full(idx.size, len(Xm) / idx.size)
        Hs = precond.sample_gn(m, Xm[idx], ym[idx], w)
        for scale in (1.0, 0.01):
            res = precond.fit_precond(_oracles(m, Xm, ym), lambda t, Hs=Hs, scale=scale:
                                      scale * Hs(t), t0, 10.0, xtol=1e-8,
                                      max_iter=300 if spec == "glm:swish" else 15)
            losses = [h["loss"] for h in res.history]
            assert _monotone(losses)
            assert losses[-1] < losses[0]
            assert res.history[-1]["passes"] <= res.passes and res.iterations < res.passes
            if scale < 1:
                assert sum(h["rejected"] for h in res.history) >= 1
            if spec == "glm:swish" and scale == 1.0:
                assert res.converged, res.reason


def test_reaches_theta_star_of_a_glm_to_1e_8(data, tmp_path, threads):
    """On a Zarr store with the threaded scheduler: the preconditioned fit from the pilot
    reaches theta* of glm:swish (squared loss) to 1e-8 relative (the reference: MINPACK's
    Levenberg-Marquardt on all rows at full precision) and agrees with the full Gauss-Newton
    fit (stages.theta.optimum) to that fit's own tolerance."""
    X, y = data
    m = nldist.get_model("glm:swish", n_features=X.shape[1])
    ref = optimize.least_squares(lambda t: m.predict(t, X) - y, np.zeros(m.n_params),
                                 jac=lambda t: m.jacobian(t, X), method="lm", xtol=1e-15,
                                 ftol=1e-15, gtol=1e-15)
    star = ref.x
    assert np.linalg.norm(star) < 10.0  # the ball is inactive: theta* is the unconstrained one
    src = tmp_path / "d.npz"
    np.savez(src, X=X, y=y)
    ctx = RunContext(_job(src), tmp_path / "o")
    got = fit(ctx, method="precond")
    theta = np.load(tmp_path / "o" / "theta_fit.npy")
    assert got["mode"] == "fit" and got["method"] == "precond" and got["result"]["converged"]
    assert np.linalg.norm(theta - star) <= 1e-8 * np.linalg.norm(star)
    assert got["cost"]["by"]["gradient pass"] == got["result"]["passes"]
    hist = got["history"]
    assert [h["passes"] for h in hist] == sorted({h["passes"] for h in hist})
    losses = [h["loss"] for h in hist]
    assert _monotone(losses)
    gn_theta, info = stages.theta.optimum(ctx)
    assert np.linalg.norm(gn_theta - star) <= 1e-5 * np.linalg.norm(star)
    assert got["result"]["loss"] <= info["loss"] * (1 + 1e-12)


def _job(src, **kw):
    data = {"name": "fit", "dataset": {"source": str(src), "chunk_rows": 400},
            "model": "glm:swish", "s": 300, "radius": 10.0, "pilot_s": 300,
            "cluster": {"address": "synchronous"}, **kw}
    return validate_job(data)


def test_the_fit_is_chunking_invariant(data, tmp_path, threads):
    X, y = data
    src = tmp_path / "d.npz"
    np.savez(src, X=X, y=y)
    thetas, samples = [], []
    for rows in (400, 1100):
        out = tmp_path / f"c{rows}"
        got = fit(RunContext(_job(src, dataset={"source": str(src), "chunk_rows": rows}), out),
                  method="precond")
        assert got["result"]["converged"]
        thetas.append(np.load(out / "theta_fit.npy"))
        samples.append(got["sample"])
    a, b = samples  # the same rows, weights to rounding
    assert a["unique_rows"] == b["unique_rows"] and a["s"] == b["s"]
    assert a["max_weight"] == pytest.approx(b["max_weight"], rel=1e-12)
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-8, atol=1e-10)


def _rare(data):
    """The diabetes rows with three rare one-hot categories (6, 10 and 15 of 3,000 rows set)
    and a response that depends on them."""
    X, y = data
    rng = np.random.default_rng(3)
    cols = []
    for k in (6, 10, 15):
        c = np.zeros(len(X))
        c[rng.choice(len(X), k, replace=False)] = 1.0
        cols.append(c)
    C = np.column_stack(cols)
    return np.column_stack([X, C]), y + C @ np.array([3.0, -2.0, 2.5])


def test_a_uniform_preconditioner_is_slower_on_rare_categories(data, tmp_path, threads):
    """Linear least squares with three rare one-hot categories: a uniform sample of s rows
    misses or barely holds them, its H_S is (near) singular there, and the preconditioned
    method needs more passes than with the leverage sample of the same size — both from the
    pilot, both to the same optimum."""
    X, y = _rare(data)
    src = tmp_path / "rare.npz"
    np.savez(src, X=X, y=y)
    got = {}
    for kind in ("nonlinear-leverage", "uniform"):
        job = _job(src, model="linear", kind=kind, s=60, baselines=[], max_iter=120)
        got[kind] = fit(RunContext(job, tmp_path / kind), method="precond")
    lev, uni = got["nonlinear-leverage"], got["uniform"]
    assert lev["sample"]["kind"] == "nonlinear-leverage" and uni["sample"]["kind"] == "uniform"
    assert lev["result"]["converged"]
    assert lev["result"]["passes"] < uni["result"]["passes"]
    star = np.linalg.lstsq(np.column_stack([X, np.ones(len(X))]), y, rcond=None)[0]
    theta = np.load(tmp_path / "nonlinear-leverage" / "theta_fit.npy")
    assert np.linalg.norm(theta - star) <= 1e-8 * np.linalg.norm(star)


def test_the_choice_is_recorded_and_gauss_newton_runs_when_forced(data, tmp_path, threads):
    X, y = data
    src = tmp_path / "d.npz"
    np.savez(src, X=X, y=y)
    got = fit(RunContext(_job(src), tmp_path / "auto"))
    ch = got["choice"]
    assert ch["method"] in ("gn", "precond", "lbfgs") and not ch["forced"] and ch["reason"]
    est = ch["estimate"]
    assert est["gn"]["passes"] >= 1 and est["precond"]["passes"] >= 1
    assert est["lbfgs"]["passes"] >= 1  # the swish optimum lies inside the ball: a candidate
    assert ch["costs"]["grad_s_per_row"] > 0 and ch["costs"]["gn_s_per_row"] > 0
    gn = fit(RunContext(_job(src), tmp_path / "gn"), method="gn")
    assert gn["method"] == "gn" and gn["choice"]["forced"] and gn["result"]["converged"]
    assert gn["cost"]["by"]["Gauss-Newton pass"] == gn["result"]["passes"]
    assert gn["result"]["loss"] == pytest.approx(got["result"]["loss"], rel=1e-9)
    with pytest.raises(NldistError, match="method must be one of"):
        fit(RunContext(_job(src), tmp_path / "bad"), method="adam")


def test_fit_on_the_command_line(data, tmp_path):
    X, y = data
    src = tmp_path / "d.npz"
    np.savez(src, X=X, y=y)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: cli\ndataset: {{source: {src}, chunk_rows: 500}}\n"
                   "model: glm:swish\ns: 200\npilot_s: 200\ncluster: {address: synchronous}\n")
    r = subprocess.run([sys.executable, "-m", "nldist", "fit", str(job), "--out",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(fit)" in r.stdout and "full-data loss" in r.stdout
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["mode"] == "fit" and m["method"] in ("gn", "precond", "lbfgs")
    assert m["choice"]["reason"]
    assert m["method"] in r.stdout
    assert (tmp_path / "o" / "theta_fit.npy").exists()


def test_the_api_fits_a_softmax_and_a_multi_output_regression(data, tmp_path, threads):
    """nldist.fit (a Zarr store path, and dask arrays): softmax:3 with cross-entropy and the
    same model as a 3-output regression reach the loss of the full-data optimum (the exact
    Hessian / Gauss-Newton fit of all rows in memory) to 1e-10 relative."""
    from nldist.store.dataset import write_dataset
    from nldist.train import ce_oracle, fit_ball, multi_squared_oracle

    X, y = data
    Xs = X[:, :5]
    yc = (y > np.median(y)).astype(float) + (y > np.percentile(y, 80))
    Y3 = np.column_stack([y, np.tanh(y), np.sin(y)])
    m = nldist.get_model("softmax:3", n_features=5)
    store = write_dataset(tmp_path / "c.zarr", Xs, yc, {}, chunk_rows=700, reservoir=0)
    for src, yy, loss, oracle in (
            (str(store), None, "cross_entropy", ce_oracle(m, Xs, yc)),
            (da.from_array(Xs, chunks=(700, -1)), da.from_array(Y3, chunks=(700, -1)),
             "squared", multi_squared_oracle(m, Xs, Y3))):
        ref = fit_ball(oracle, np.zeros(m.n_params), 10.0, tol=1e-15)
        got = nldist.fit(src, yy, "softmax:3", loss=loss, s=300, max_iter=60)
        assert got["converged"], got["reason"]
        assert got["loss"] == pytest.approx(ref.loss, rel=1e-10)
        assert got["indices"].size == 300 and _monotone([h["loss"] for h in got["history"]])


def test_lbfgs_reaches_the_optimum_and_finishes_in_the_ball_by_the_preconditioned_method(
        data, tmp_path, threads):
    """`--method lbfgs`: L-BFGS on all rows reaches Gauss-Newton's full loss when the optimum
    lies inside the ball, one counted gradient pass per evaluation, the loss never above the
    start's; with a ball that cuts the optimum off (L-BFGS does not see it) the
    preconditioned method finishes from the projection, on the sphere, at Gauss-Newton's
    constrained loss."""
    X, y = data
    src = tmp_path / "d.npz"
    np.savez(src, X=X, y=y)
    for radius in (10.0, 0.3):
        gn = fit(RunContext(_job(src, radius=radius), tmp_path / f"gn{radius}"), method="gn")
        lb = fit(RunContext(_job(src, radius=radius), tmp_path / f"lb{radius}"),
                 method="lbfgs")
        res = lb["result"]
        assert lb["method"] == "lbfgs" and res["converged"], res["reason"]
        assert res["loss"] == pytest.approx(gn["result"]["loss"], rel=1e-7)
        assert lb["cost"]["by"]["gradient pass"] == res["passes"] == len(lb["history"])
        assert res["loss"] <= lb["history"][0]["loss"]
        theta = np.load(tmp_path / f"lb{radius}" / "theta_fit.npy")
        if radius == 10.0:
            assert "left the ball" not in res["reason"]
            assert min(h["loss"] for h in lb["history"]) == pytest.approx(res["loss"],
                                                                          rel=1e-12)
        else:
            assert "left the ball" in res["reason"]
            assert np.linalg.norm(theta) == pytest.approx(radius, rel=1e-9)


def test_the_choice_takes_lbfgs_only_where_it_is_cheapest_and_converged():
    """choose(): L-BFGS's estimate is its passes x the measured gradient pass; it wins where
    that is lowest, and is no candidate where its run on the sample did not converge or left
    the ball (None), whatever its passes would cost."""
    costs = {"grad_s_per_row": 1e-6, "gn_s_per_row": 3e-6}
    base = {"gn_passes": 7, "precond_passes": 6, "driver_s_per_iteration": 0.5}
    got = precond.choose(10.0, 1_000_000, costs, {**base, "lbfgs_passes": 5})
    assert got["method"] == "lbfgs" and got["estimate"]["lbfgs"]["seconds"] == 50.0
    assert got["reason"].startswith("L-BFGS: L-BFGS est. 50 s")
    got = precond.choose(10.0, 1_000_000, costs, {**base, "lbfgs_passes": 9})
    assert got["method"] == "precond"  # 6 x 10.5 s = 63 s < GN 7 x 12 s = 84 s < 9 x 10 s
    got = precond.choose(10.0, 1_000_000, costs, {**base, "lbfgs_passes": None})
    assert got["method"] == "precond" and "L-BFGS did not converge" in got["reason"]
    got = precond.choose(10.0, 1_000_000, costs, {**base, "precond_passes": None,
                                                  "lbfgs_passes": None})
    assert got["method"] == "gn"
