"""Multi-output regression (issue 13 item 1): a C-output model with ``loss: squared`` and
targets y of shape (n, C), the loss summed over the outputs.

Oracles:

* (ID) per output: the dual block [A_i, f_i(0) - y_i] (C, p + 1) times [theta, 1] is
  f_i(theta) - y_i, to rounding, for the linear C-output model and an MLP with biases;
* for ``softmax:<C>`` (logits linear in theta: a multivariate linear regression) the
  nonlinear leverage equals the diagonal C x C blocks of the dense hat matrix of the
  augmented dual, and the label-free block leverage equals C times the linear leverage of
  [X, 1] (each output has the same design);
* sums to rank, identical under any chunking;
* training on the sample: ``softmax:<C>`` recovers the weighted least-squares solution;
* a job through ``nldist run`` on a Zarr store with a 2-column y, on a real LocalCluster:
  scores, sample, train, relative error, and ``sample.parquet`` with one column per target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import nldist
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.train import train_on_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n, d, C = 240, 4, 3
    X = rng.normal(size=(n, d))
    Y = np.tanh(X @ rng.normal(size=(d, C))) + 0.1 * rng.normal(size=(n, C))
    return X, Y


@pytest.mark.parametrize("spec", ["softmax:3", "mlp:6:3"])
def test_identity_holds_output_by_output(data, spec):
    X, Y = data
    m = nldist.get_model(spec, n_features=X.shape[1])
    th = np.random.default_rng(1).normal(size=m.n_params)
    D = nldist.dual_matrix(m, th, X, Y, loss="squared")
    assert D.shape == (len(X), 3, m.n_params + 1)
    F = m.predict(th, X) - Y
    np.testing.assert_allclose(D @ np.r_[th, 1.0], F, rtol=1e-10, atol=1e-10 * np.abs(F).max())
    A = nldist.adjoint(m, th, X, Y, loss="squared")
    np.testing.assert_array_equal(A, D[:, :, :-1])


def test_linear_multi_output_leverage_equals_the_dense_hat_blocks(data):
    X, Y = data
    n, C = Y.shape
    m = nldist.get_model("softmax:3", n_features=X.shape[1])
    th = np.random.default_rng(2).normal(size=m.n_params)
    D = nldist.dual_matrix(m, th, X, Y, loss="squared").reshape(n * C, -1)
    H = D @ np.linalg.pinv(D.T @ D) @ D.T  # dense reference (small n)
    # an example's score: the trace of its C x C diagonal block of the hat matrix
    ref = H.reshape(n, C, n, C)[np.arange(n), :, np.arange(n), :].trace(axis1=1, axis2=2)
    rank = np.linalg.matrix_rank(D)
    assert np.isclose(ref.sum(), rank)
    p = nldist.scores(X, Y, model=m, theta=th, loss="squared")
    np.testing.assert_allclose(p, ref / rank, rtol=1e-9, atol=1e-14)
    # label-free block leverage: each output has the design [X, 1] -> C x linear leverage
    b = nldist.scores(X, Y, model=m, theta=th, loss="squared", kind="block-leverage")
    lin = nldist.scores(X, kind="linear-leverage")
    np.testing.assert_allclose(b, lin, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("kind", ["nonlinear-leverage", "block-leverage", "block-sketch:2"])
def test_any_chunking_gives_the_same_scores(data, kind, sync_scheduler):
    X, Y = data
    m = nldist.get_model("mlp:6:3", n_features=X.shape[1])
    th = np.random.default_rng(3).normal(size=m.n_params)
    ref = nldist.scores(X, Y, model=m, theta=th, loss="squared", kind=kind, random_state=5)
    assert np.isclose(ref.sum(), 1.0)
    for rows in (37, 100):
        got = nldist.scores(da.from_array(X, chunks=(rows, -1)),
                            da.from_array(Y, chunks=(rows, -1)), model=m, theta=th,
                            loss="squared", kind=kind, random_state=5).compute()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-15)


def test_training_on_a_weighted_sample_is_weighted_least_squares(data):
    X, Y = data
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=len(X))
    m = nldist.get_model("softmax:3", n_features=X.shape[1])
    fit = train_on_sample(m, X, Y, w, radius=1e3, loss="squared")
    assert fit.converged
    Xd = np.c_[X, np.ones(len(X))] * np.sqrt(w)[:, None]
    B = np.linalg.lstsq(Xd, Y * np.sqrt(w)[:, None], rcond=None)[0]
    np.testing.assert_allclose(fit.theta.reshape(3, -1), B.T, atol=1e-9)


def test_bad_targets_are_one_line(data):
    X, Y = data
    m = nldist.get_model("mlp:6:3", n_features=X.shape[1])
    with pytest.raises(NldistError, match=r"y has 2 column\(s\) .* takes 3 \(one per output\)"):
        nldist.scores(X, Y[:, :2], model=m, loss="squared")
    with pytest.raises(NldistError, match="for class labels use loss: cross_entropy"):
        nldist.scores(X, Y[:, 0], model=m, loss="squared")
    with pytest.raises(NldistError, match="pass loss='squared' for multi-output regression"):
        nldist.scores(X, Y, model=m, loss="cross_entropy")
    with pytest.raises(NldistError, match="margin-leverage.*takes one target|margin"):
        nldist.scores(X, Y, model=m, loss="squared", kind="margin-leverage")
    with pytest.raises(NldistError, match=r"shape \(240, 2\).*\(240, 3\)"):
        nldist.dual_matrix(m, np.zeros(m.n_params), X, Y[:, :2], loss="squared")
    with pytest.raises(ValueError, match="cross_entropy \\(classes\\) or loss: squared"):
        validate_job({"name": "x", "dataset": {"source": "x.zarr"}, "model": "mlp:6:3",
                      "loss": "bce"})


def test_a_two_target_job_runs_through_nldist_run(tmp_path):
    """California Housing as a 2-output regression (house value and the average number of
    rooms from the other features), a user-made Zarr store with y (n, 2), on a LocalCluster."""
    from nldist.datasets import load

    df, info = load("california")
    Z = df.to_numpy(np.float64)
    Z = (Z - Z.mean(0)) / Z.std(0)
    cols = list(df.columns)
    ti = [cols.index(info.target), cols.index("AveRooms")]
    Xf = np.delete(Z, ti, axis=1)
    g = zarr.open_group(str(tmp_path / "two.zarr"), mode="w", zarr_format=3)
    g.create_array("X", data=Xf, chunks=(3000, Xf.shape[1]))
    g.create_array("y", data=Z[:, ti], chunks=(3000, 2))
    job = tmp_path / "job.yaml"
    job.write_text(f"name: two\ndataset: {{source: {tmp_path / 'two.zarr'}}}\n"
                   "model: softmax:2\nloss: squared\ntheta: optimum\nkind: nonlinear-leverage\n"
                   "baselines: [block-leverage, linear-leverage, uniform]\ns: 400\n"
                   "radius: 10.0\nseed: 1\n"
                   "cluster: {address: local, n_workers: 2, memory_limit: 1GiB}\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "nldist", "run", str(job), "--out", str(out),
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["theta_star"]["converged"] and m["loss_opt"] > 0
    for kind in ("nonlinear-leverage", "block-leverage", "linear-leverage", "uniform"):
        rel = m["kinds"][kind]["rel_error"]
        assert np.isfinite(rel) and rel >= -1e-9, (kind, rel)
    # theta* is the multivariate least-squares fit (the ball is inactive here)
    theta = np.load(out / "theta_star.npz")["theta"]
    B = np.linalg.lstsq(np.c_[Xf, np.ones(len(Xf))], Z[:, ti], rcond=None)[0]
    np.testing.assert_allclose(theta.reshape(2, -1), B.T, atol=1e-6)
    S = nldist.load_sample(out)
    assert S.y.shape == (len(S), 2) and S.multiplicity.sum() == 400
    np.testing.assert_allclose(S.y, Z[:, ti][S.row], rtol=1e-12)


def test_sample_table_moves_targets_aside_when_a_feature_has_their_name(tmp_path):
    """Targets are written as y0 .. y<C-1>; a feature already named y0 keeps its name and
    the target moves aside (y0_), recorded in the metadata, read back by load_sample."""
    from nldist.store.sample_table import write_sample_table

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    path = write_sample_table(tmp_path / "sample.parquet", np.array([0, 2, 2, 5]),
                              np.ones(4), X[[0, 2, 2, 5]], Y[[0, 2, 2, 5]],
                              {"features": ["y0", "a", "y1_"]}, {"kind": "uniform"})
    S = nldist.load_sample(path)
    assert S.features == ["y0", "a", "y1_"]
    assert S.meta["columns"]["y"] == ["y0_", "y1"]
    np.testing.assert_array_equal(S.X, X[[0, 2, 5]])
    np.testing.assert_array_equal(S.y, Y[[0, 2, 5]])
    assert S.multiplicity.tolist() == [1, 2, 1]
