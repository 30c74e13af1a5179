"""C-output models (issue 13): cross-entropy residual scores, exact block leverage, the class
sketch and the margin — against their oracles.

* (ID) of the residual r_i = sqrt(CE_i) (and of the margin) to ~1e-10 in float64 for
  ``softmax:<C>`` and MLPs with biases, ReLU and GELU;
* C = 2 with one logit pinned to zero reproduces the binary ``bce`` scores;
* ``block-leverage`` of ``softmax:<C>`` = the trace of the diagonal blocks of the GLM hat
  matrix W^1/2 X (X^T W X)^+ X^T W^1/2 computed densely;
* ``block-sketch:k`` is unbiased for the block leverage over seeds, error ~ sqrt(2/k);
* identical for any chunking (and worker count: a real LocalCluster), Σ scores = rank;
* cross-entropy training on the ball matches scikit-learn's multinomial fit;
* bad labels give one line naming the fix; a real ``nldist run`` end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import numpy as np
import pytest

import nldist
from nldist.errors import NldistError
from nldist.models.losses import MARGIN, check_labels, fisher_weights, get_loss, softmax
from nldist.scores import block
from nldist.scores.spec import make_spec
from nldist.store.scores import path_name
from nldist.train import ce_oracle, train_on_sample

CE = get_loss("cross_entropy")
NEW_KINDS = ["nonlinear-leverage", "block-leverage", "block-sketch:4", "margin-leverage"]


@pytest.fixture(scope="module")
def digits():
    """Real data: scikit-learn's 8x8 digits, 10 classes, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y.astype(np.float64)


def _ray_id(model, theta, X, y, loss):
    F = nldist.adjoint(model, theta, X, y, loss=loss.name) if loss is CE else \
        model.residual_adjoint(theta, X, y, loss)
    r1 = loss.residual(model.predict(theta, X), y)
    r0 = loss.residual(model.f0(X), y)
    scale = np.abs(r1) + np.abs(r0) + np.abs(F) @ np.abs(theta)
    return np.max(np.abs(F @ theta - (r1 - r0)) / scale)


@pytest.mark.parametrize("spec", ["softmax:10", "mlp:12:10", "mlp:12,8:10:gelu",
                                  "mlp:16:10:tanh"])
@pytest.mark.parametrize("loss", [CE, MARGIN], ids=["ce", "margin"])
def test_identity_holds_for_the_residual_and_the_margin(digits, spec, loss):
    X, y = digits[0][:150], digits[1][:150]
    m = nldist.get_model(spec, X.shape[1])
    rng = np.random.default_rng(3)
    theta = (rng.normal(size=m.n_params) * 2.0 if spec.startswith("softmax")
             else m.initial_theta() * 3.0)
    assert _ray_id(m, theta, X, y, loss) < 1e-10


def test_softmax_identity_at_large_logits():
    """Confident rows (p_y within rounding of 1) and far-off ones: the ray integral escalates."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = rng.integers(0, 5, 300).astype(float)
    m = nldist.get_model("softmax:5", 6)
    theta = rng.normal(size=m.n_params) * 15.0
    assert _ray_id(m, theta, X, y, CE) < 1e-10
    assert _ray_id(m, theta, X, y, MARGIN) < 1e-10


def test_adjoint_block_satisfies_the_identity_per_output(digits):
    X = digits[0][:60]
    for spec in ["softmax:10", "mlp:10:10:gelu"]:
        m = nldist.get_model(spec, X.shape[1])
        theta = m.initial_theta() if spec.startswith("mlp") else \
            np.random.default_rng(1).normal(size=m.n_params)
        A = m.adjoint_block(theta, X)
        assert A.shape == (60, 10, m.n_params)
        Z = m.predict(theta, X) - m.f0(X)
        assert np.max(np.abs(np.einsum("ncp,p->nc", A, theta) - Z)) < 1e-10 * np.abs(Z).max()


PINNED = '''
import torch
from torch import nn


class Pinned(nn.Module):
    """Two logits: 0 and <w, x> + b (a logistic regression written as a 2-class model)."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def forward(self, x):
        z = self.lin(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def make(d):
    return Pinned(d)
'''


def test_two_classes_with_a_pinned_logit_reproduce_bce_scores(tmp_path, diabetes):
    X = diabetes[0]
    y = (diabetes[1] > 0).astype(np.float64)
    (tmp_path / "pinned.py").write_text(PINNED)
    two = nldist.get_model(f"torch:{tmp_path / 'pinned.py'}:make", X.shape[1])
    assert two.n_outputs == 2
    rng = np.random.default_rng(5)
    w = rng.normal(size=X.shape[1] + 1) * 0.7
    theta = np.concatenate([w[:-1], w[-1:]])  # Linear's weight then bias = glm layout
    ce = nldist.scores(X, y, model=two, theta=theta, loss="cross_entropy")
    bce = nldist.scores(X, y, model="glm:sigmoid", theta=w, loss="bce")
    np.testing.assert_allclose(ce, bce, rtol=1e-9, atol=1e-14)


def _dense_block_leverage(m, theta, X):
    """trace of the diagonal blocks of W^1/2 X (X^T W X)^+ X^T W^1/2, densely."""
    n, C = X.shape[0], m.n_outputs
    P = softmax(m.predict(theta, X))
    Xk = m.adjoint_block(theta, X)  # (n, C, p): I_C (x) x~
    half = np.empty((n, C, C))
    for i in range(n):
        H = np.diag(P[i]) - np.outer(P[i], P[i])
        ev, V = np.linalg.eigh(H)
        half[i] = (V * np.sqrt(np.where(ev > 1e-12, ev, 0.0))) @ V.T
    WX = np.einsum("nab,nbp->nap", half, Xk).reshape(n * C, -1)
    hat = WX @ np.linalg.pinv(WX.T @ WX, rcond=1e-10, hermitian=True) @ WX.T
    return np.diag(hat).reshape(n, C).sum(axis=1), np.linalg.matrix_rank(WX, tol=1e-8)


def test_softmax_block_leverage_is_the_dense_hat_matrix_block():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 4))
    m = nldist.get_model("softmax:3", 4)
    theta = rng.normal(size=m.n_params)
    y = rng.integers(0, 3, 120).astype(float)
    lev = nldist.scores(X, y, model=m, theta=theta, kind="block-leverage")
    ref, rank = _dense_block_leverage(m, theta, X)
    assert rank == 2 * 5  # (C - 1)(d + 1): the softmax is shift invariant
    np.testing.assert_allclose(lev * rank, ref, rtol=1e-9, atol=1e-12)
    # and fisher_weights is B^T with B B^T = diag(pi) - pi pi^T (B^T A for A = I)
    P = softmax(m.predict(theta, X[:3]))
    G = fisher_weights(P) @ np.eye(3)[None].repeat(3, 0)
    for i in range(3):
        np.testing.assert_allclose(G[i].T @ G[i], np.diag(P[i]) - np.outer(P[i], P[i]),
                                   atol=1e-15)


def test_block_sketch_is_unbiased_for_the_block_leverage():
    rng = np.random.default_rng(4)
    n, d, C, k = 800, 3, 6, 4
    X = rng.normal(size=(n, d))
    m = nldist.get_model(f"softmax:{C}", d)
    theta = rng.normal(size=m.n_params) * 0.5
    y = rng.integers(0, C, n).astype(float)
    exact = nldist.scores(X, y, model=m, theta=theta, kind="block-leverage")
    draws = np.array([nldist.scores(X, y, model=m, theta=theta, kind=f"block-sketch:{k}",
                                    random_state=seed) for seed in range(120)])
    mean = draws.mean(axis=0)
    # mean over seeds -> the block leverage (up to the O(1/n) effect of the sketched R)
    assert np.median(np.abs(mean / exact - 1)) < 0.03
    # one draw: relative error of order sqrt(2/k) (C rows of similar weight)
    rel = np.sqrt(np.mean((draws / exact - 1) ** 2))
    assert 0.2 * np.sqrt(2 / k) < rel < 1.5 * np.sqrt(2 / k)
    # and more combinations are closer
    more = np.array([nldist.scores(X, y, model=m, theta=theta, kind="block-sketch:16",
                                   random_state=seed) for seed in range(20)])
    assert np.sqrt(np.mean((more / exact - 1) ** 2)) < rel


@pytest.mark.parametrize(("spec", "n", "chunkings"), [
    ("softmax:10", 400, (400, 97, 33)), ("mlp:6:10", 120, (120, 41))])
def test_new_kinds_sum_to_one_and_ignore_the_chunking(digits, spec, n, chunkings):
    X, y = digits[0][:n], digits[1][:n]
    m = nldist.get_model(spec, X.shape[1])
    theta = m.initial_theta() if spec.startswith("mlp") else \
        np.random.default_rng(0).normal(size=m.n_params) * 0.3
    with dask.config.set(scheduler="synchronous"):
        for kind in NEW_KINDS:
            ref = nldist.scores(X, y, model=m, theta=theta, kind=kind, random_state=7)
            assert abs(ref.sum() - 1) < 1e-12
            for chunks in chunkings:
                got = nldist.scores(da.from_array(X, chunks=(chunks, -1)),
                                    da.from_array(y, chunks=chunks), model=m, theta=theta,
                                    kind=kind, random_state=7).compute()
                np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)


def test_ill_conditioned_block_kinds_sum_to_one_and_ignore_the_chunking():
    """Raw digits pixels (some almost always 0) at the ball optimum of radius 3 (confident
    softmax: tiny Fisher weights) give block matrices with cond ~1e12. Pass 2 sums squares
    ``‖Bᵀa‖²`` (``linalg.leverage_factor``); the quadratic form ``aᵀPa`` with an explicit
    ``P = (RᵀR)⁻¹`` it replaced missed the sum by 4e-7 (block-leverage) and 2e-4
    (block-sketch:3), and chunkings disagreed by 4e-5 and 3 %."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X.astype(np.float64), y.astype(np.float64)
    m = nldist.get_model("softmax:10", X.shape[1])
    theta = train_on_sample(m, X, y, np.ones(len(y)), radius=3.0, loss="cross_entropy").theta
    with dask.config.set(scheduler="synchronous"):
        for kind in ("block-leverage", "block-sketch:3"):
            ref = nldist.scores(X, y, model=m, theta=theta, kind=kind, random_state=3)
            assert abs(ref.sum() - 1) < 1e-9, kind
            for chunks in (500, 300):
                got = nldist.scores(da.from_array(X, chunks=(chunks, -1)),
                                    da.from_array(y, chunks=chunks), model=m, theta=theta,
                                    kind=kind, random_state=3).compute()
                assert abs(got.sum() - 1) < 1e-9, (kind, chunks)
                np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=kind)


def test_scores_sum_to_rank_and_workers_do_not_matter(local_client, digits):
    X, y = digits
    m = nldist.get_model("softmax:10", X.shape[1])
    theta = np.random.default_rng(1).normal(size=m.n_params) * 0.2
    spec = make_spec("block-leverage", m, theta, X.shape[1], True)
    stats = block.pass1_block(X, y, spec)
    norm = block.finalize_pass1(spec, stats)
    # (C - 1) x rank [X, 1]: the softmax is shift invariant, 3 pixels of the digits are 0
    assert norm.rank == 9 * np.linalg.matrix_rank(np.hstack([X, np.ones((len(X), 1))]))
    ref = block.pass2_block(X, y, spec, norm)
    got = nldist.scores(da.from_array(X, chunks=(300, -1)), da.from_array(y, chunks=300),
                        model=m, theta=theta, kind="block-leverage").compute()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)


def test_cross_entropy_training_matches_scikit_learn(digits):
    from sklearn.linear_model import LogisticRegression

    X, y = digits[0][:600], digits[1][:600]
    m = nldist.get_model("softmax:10", X.shape[1])
    w = np.random.default_rng(0).uniform(0.5, 1.5, size=600)
    lam = 1.0
    sk = LogisticRegression(C=1.0 / lam, tol=1e-12, max_iter=10_000).fit(X, y, sample_weight=w)
    # scikit-learn minimizes sum w CE + lam/2 ||W||^2 (no bias penalty): its solution's norm
    # is a ball radius whose constrained optimum it is (same KKT point up to the multiplier)
    theta_sk = np.hstack([sk.coef_, sk.intercept_[:, None]]).ravel()
    radius = float(np.linalg.norm(theta_sk))
    fit = train_on_sample(m, X, y, w, radius=radius, loss="cross_entropy")
    assert fit.converged
    assert np.linalg.norm(fit.theta) <= radius * (1 + 1e-9)
    loss_sk = float(w @ CE.row_loss(m.predict(theta_sk, X), y))
    # the ball optimum is at least as good as any point of the ball, sklearn's included
    assert fit.loss <= loss_sk * (1 + 1e-9)
    # the optimum inside a large ball (5 pixels cannot separate 10 classes): gradient ~ 0
    Xs = X[:, 20:25]
    soft = nldist.get_model("softmax:10", 5)
    fit = train_on_sample(soft, Xs, y, np.ones(600), radius=1e3, loss="cross_entropy")
    g0 = np.max(np.abs(ce_oracle(soft, Xs, y)(np.zeros(soft.n_params))["grad"]))
    assert fit.converged and np.linalg.norm(fit.theta) < 1e3
    assert np.max(np.abs(ce_oracle(soft, Xs, y)(fit.theta)["grad"])) < 1e-6 * g0


def test_network_training_stops_at_a_stationary_point_of_the_ball(digits):
    """Networks: L-BFGS, the penalty search, else projected gradient; the stopping rule is
    the projected gradient (KKT on the sphere)."""
    from nldist.train import project_ball

    X, y = digits[0][:600, 20:25], digits[1][:600]
    net = nldist.get_model("mlp:3:10:tanh", 5)
    oracle = ce_oracle(net, X, y)
    g0 = np.max(np.abs(oracle(net.initial_theta())["grad"]))
    for radius in (2.0, 5.0):
        fit = train_on_sample(net, X, y, np.ones(600), radius=radius, loss="cross_entropy")
        assert fit.converged
        assert abs(np.linalg.norm(fit.theta) - radius) <= 1e-6 * radius
        g = oracle(fit.theta)["grad"]
        pg = project_ball(fit.theta - g, radius) - fit.theta
        assert np.max(np.abs(pg)) <= 1e-4 * g0
        assert fit.loss < oracle(net.initial_theta())["loss"]


@pytest.mark.parametrize(("y", "match"), [
    (np.array([0, 1, 2, 10.0]), "outside 0..9"),
    (np.array([0, 1, -1, 2.0]), "outside 0..9"),
    (np.array([0, 1.5, 2, 3]), "integer class labels"),
    (np.array([0, 1, np.nan, 3]), "NaN"),
])
def test_bad_labels_give_one_line(y, match):
    X = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(NldistError, match=match) as exc:
        nldist.scores(X, y, model="softmax:10", kind="nonlinear-leverage")
    assert "\n" not in str(exc.value)


def test_declared_classes_must_all_occur():
    with pytest.raises(NldistError, match=r"classes \[3\] .* never occur"):
        check_labels(np.array([0, 1, 2, 1.0]), 4, declared=True)
    assert check_labels(np.array([0, 1, 2, 3.0]), 4, declared=True).dtype == np.int64


@pytest.mark.parametrize(("kw", "match"), [
    ({"model": "glm:sigmoid", "kind": "block-leverage"}, "C >= 2 outputs"),
    ({"model": "softmax:3", "kind": "nonlinear-leverage", "loss": "squared"},
     "use loss: cross_entropy"),
    ({"model": "softmax:3", "kind": "margin-leverage", "y": None}, "needs labels"),
    ({"model": "softmax:3", "kind": "block-sketch:0"}, "k must be >= 1"),
])
def test_mismatched_model_kind_and_loss_give_one_line(kw, match):
    X = np.random.default_rng(0).normal(size=(6, 2))
    args = {"y": np.array([0, 1, 2, 0, 1, 2.0]), **kw}
    with pytest.raises(NldistError, match=match) as exc:
        nldist.scores(X, **args)
    assert "\n" not in str(exc.value)


def test_jobs_refuse_a_one_output_model_with_cross_entropy(tmp_path):
    from nldist.jobs import validate_job

    base = {"name": "j", "dataset": {"source": "digits"}}
    with pytest.raises(NldistError, match="C-output model"):
        validate_job({**base, "model": "glm:sigmoid", "loss": "cross_entropy"})
    with pytest.raises(NldistError, match=r"set loss: cross_entropy \(classes\) or loss: squared"):
        validate_job({**base, "model": "softmax:10", "loss": "bce"})
    with pytest.raises(NldistError, match="for C-output models"):
        validate_job({**base, "model": "glm:sigmoid", "kind": "block-leverage"})
    job = validate_job({**base, "model": "mlp:16:10", "loss": "cross_entropy",
                        "kind": "block-sketch:3"})
    assert job.kind == "block-sketch:3"


JOB = """
name: digits10
dataset: {source: digits, chunk_rows: 500}
model: softmax:10
loss: cross_entropy
theta: optimum
kind: block-leverage
baselines: [nonlinear-leverage, block-sketch:3, margin-leverage, uniform]
s: 300
radius: 3               # digits are separable: a small ball keeps L(theta*) well above 0
seed: 3
cluster: {address: local, n_workers: 2, memory_limit: 1GiB}
"""


def test_a_ten_class_job_runs_end_to_end_through_nldist_run(tmp_path):
    job = tmp_path / "digits10.yaml"
    job.write_text(textwrap.dedent(JOB))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nldist.cli", "run", str(job), "--out",
                          str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    got = metrics["kinds"]
    assert set(got) == {"block-leverage", "nonlinear-leverage", "block-sketch:3",
                        "margin-leverage", "uniform"}
    for r in got.values():
        assert np.isfinite(r["rel_error"]) and r["rel_error"] >= -1e-9
        assert r["fit"]["converged"]
    # the full-data optimum: CE over the ball (Levenberg-Marquardt, exact Hessian, passes)
    assert metrics["theta_star"]["converged"] and metrics["loss_opt"] > 1
    assert metrics["kinds"]["block-leverage"]["rel_error"] < metrics["kinds"]["uniform"][
        "rel_error"] * 5
    import zarr

    z = zarr.open_group(str(out / "scores.zarr"), mode="r")
    for k in got:
        s = np.asarray(z[path_name(k)][:])
        # digits' near-empty pixels make the block matrices ill-conditioned (singular values
        # 206 ... 7e-11 kept, cond ~3e12): the softmax block kinds' pass 2 sums squares
        # ||B^T a||^2 (linalg.leverage_factor), not a^T P a with an explicit P = (R^T R)^-1,
        # whose cancellation left the sum off by 1e-7 .. 3e-4 and the chunkings 5 % apart
        assert s.shape == (1797,) and abs(s.sum() - 1) < 1e-9
        assert z[path_name(k)].attrs["kind"] == k
    # no colon in any output name (Windows file names, URLs): block-sketch:3 -> block-sketch-3
    assert not [p for p in out.rglob("*") if ":" in p.name]
    assert (out / "samples" / "block-sketch-3.npz").exists()
    assert (out / "theta_block-sketch-3.npy").exists()
    # the block sketch's signs come from the job's random state (seed: 3), not a fixed 0
    X = np.asarray(zarr.open_group(str(out / "dataset.zarr"), mode="r")["X"][:])
    yy = np.asarray(zarr.open_group(str(out / "dataset.zarr"), mode="r")["y"][:])
    theta = np.load(out / "theta_star.npz")["theta"]
    m = nldist.get_model("softmax:10", X.shape[1])
    stored = np.asarray(z["block-sketch-3"][:], dtype=np.float64)
    kw = {"model": m, "theta": theta, "kind": "block-sketch:3", "loss": "cross_entropy"}
    seed3 = nldist.scores(X, yy, random_state=3, **kw)
    seed0 = nldist.scores(X, yy, random_state=0, **kw)
    # (equal to rounding, by CPU and chunking; another seed's signs change every row's value
    # by tens of percent: error ~sqrt(2/k))
    rel = np.abs(stored - seed3) / seed3
    assert rel.max() < 1e-6
    assert np.median(np.abs(stored - seed0) / seed0) > 0.1


def test_ingest_maps_k_classes_to_labels_on_both_paths(tmp_path, sync_scheduler):
    """``classes: [a, b, c]`` keeps those target values as labels 0..k-1 in that order, in
    the single-file ingest and in the distributed one (a directory of files)."""
    import pandas as pd
    import zarr

    from nldist.ingest import ingest, ingest_table

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=60), "x2": rng.normal(size=60),
                       "kind": rng.choice(["cat", "dog", "eel", "fox"], size=60)})
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    (tmp_path / "dir").mkdir()
    df.iloc[:30].to_csv(tmp_path / "dir" / "a.csv", index=False)
    df.iloc[30:].to_csv(tmp_path / "dir" / "b.csv", index=False)
    keep = df[df.kind != "fox"]
    want = keep.kind.map({"eel": 0.0, "cat": 1.0, "dog": 2.0}).to_numpy()
    for call, source in ((ingest, src), (ingest_table, str(tmp_path / "dir"))):
        out = tmp_path / f"out_{call.__name__}.zarr"
        call(source, out, target="kind", classes=["eel", "cat", "dog"])
        y = np.asarray(zarr.open_group(str(out), mode="r")["y"][:])
        np.testing.assert_array_equal(np.sort(y), np.sort(want))
        assert len(y) == len(keep)
    with pytest.raises(NldistError, match="not a number to standardize"):
        ingest(src, tmp_path / "bad.zarr", target="kind", classes=["eel", "cat", "dog"],
               standardize_target=True)
