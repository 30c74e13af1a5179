"""Dask graph passes over a table of chunkings: results equal the in-memory reference."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import NldistError, graph

N = 442  # diabetes rows

CHUNKINGS = {
    "one chunk": (N,),
    "regular": (100,) * 4 + (42,),
    "irregular": (1, 200, 3, 97, 141),
    "one-row chunks at ends": (1,) + (110,) * 4 + (1,),
    "many chunks": (7,) * 63 + (1,),
    "empty chunk": (200, 0, 242),
}


@pytest.fixture(params=list(CHUNKINGS), ids=list(CHUNKINGS))
def chunked(request, diabetes):
    X, y = diabetes
    rows = CHUNKINGS[request.param]
    return X, y, da.from_array(X, chunks=(rows, -1)), da.from_array(y, chunks=(rows,))


@pytest.mark.parametrize("kind", ["nonlinear-leverage", "nonlinear-norm", "linear-leverage",
                                  "linear-norm", "uniform"])
def test_scores_unchanged_under_any_chunking(chunked, kind, sync_scheduler):
    X, y, dX, dy = chunked
    theta = np.linspace(-0.3, 0.3, 11)
    ref = nldist.scores(X, y, model="glm:swish", theta=theta, kind=kind)
    got = nldist.scores(dX, dy, model="glm:swish", theta=theta, kind=kind, split_every=2)
    assert isinstance(got, da.Array)
    np.testing.assert_allclose(got.compute(), ref, rtol=1e-10, atol=1e-15)


def test_sample_identical_under_any_chunking(chunked, sync_scheduler):
    X, y, dX, dy = chunked
    p = nldist.scores(X, y, model="glm:sigmoid", theta=np.full(11, 0.2))
    ref_idx, ref_w = nldist.sample(p, 300, random_state=7)
    dp = da.from_array(p, chunks=dX.chunks[0])
    idx, w = nldist.sample(dp, 300, random_state=7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(w, ref_w, rtol=1e-12)
    # also from scores computed block-wise by the graph itself
    dprobs = nldist.scores(dX, dy, model="glm:sigmoid", theta=np.full(11, 0.2))
    np.testing.assert_array_equal(nldist.sample(dprobs, 300, random_state=7)[0], ref_idx)


def test_unknown_chunk_sizes(diabetes, sync_scheduler):
    X, y = diabetes
    dX = da.from_array(X, chunks=(50, -1))
    keep = da.from_array(np.arange(N) % 3 != 0, chunks=50)
    Xm, ym = dX[keep], da.from_array(y, chunks=50)[keep]
    assert np.isnan(Xm.chunks[0][0])
    mask = np.arange(N) % 3 != 0
    ref = nldist.scores(X[mask], y[mask], model="linear", kind="linear-leverage")
    got = nldist.scores(Xm, ym, model="linear", kind="linear-leverage").compute()
    np.testing.assert_allclose(got, ref, atol=1e-14)


def test_column_chunked_input_is_rechunked(diabetes, sync_scheduler, caplog):
    X, y = diabetes
    dX = da.from_array(X, chunks=(100, 3))
    got = nldist.scores(dX, y, model="linear", kind="linear-leverage").compute()
    np.testing.assert_allclose(got, nldist.scores(X, y, model="linear", kind="linear-leverage"),
                               atol=1e-14)
    assert "column chunks" in caplog.text


def test_leverage_dask_and_zarr_path(diabetes, tmp_path, sync_scheduler):
    X, y = diabetes
    from nldist.store.dataset import write_dataset

    path = write_dataset(tmp_path / "d.zarr", X, y, {"features": []}, chunk_rows=64)
    ref = nldist.scores(X, y, model="glm:sigmoid", theta=np.full(11, 0.1))
    got = nldist.scores(str(path), model="glm:sigmoid", theta=np.full(11, 0.1))
    np.testing.assert_allclose(got.compute(), ref, atol=1e-14)
    lev = nldist.leverage(da.from_array(X, chunks=(33, -1)))
    assert isinstance(lev, da.Array)
    np.testing.assert_allclose(lev.compute(), nldist.leverage(X), atol=1e-13)
    np.testing.assert_allclose(nldist.leverage(da.from_array(X, chunks=(33, -1)), ridge=2.0)
                               .compute(), nldist.leverage(X, ridge=2.0), atol=1e-13)


def test_full_data_loss_and_gauss_newton_pass(diabetes, sync_scheduler):
    X, y = diabetes
    m = nldist.get_model("glm:softplus", X.shape[1])
    theta = np.linspace(-0.2, 0.2, m.n_params)
    dX, dy = graph.inputs.as_dask_xy(da.from_array(X, chunks=(61, -1)), y)
    out = graph.oracles.gn_pass(dX, dy, m, theta, split_every=3)
    r = m.predict(theta, X) - y
    J = m.jacobian(theta, X)
    np.testing.assert_allclose(out["loss"], r @ r, rtol=1e-12)
    np.testing.assert_allclose(out["grad"], 2 * J.T @ r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["gn"], 2 * J.T @ J, rtol=1e-10)
    thetas = np.vstack([theta, 2 * theta, np.zeros_like(theta)])
    losses = graph.oracles.losses_pass(dX, dy, m, thetas)
    np.testing.assert_allclose(losses, [np.sum((m.predict(t, X) - y) ** 2) for t in thetas],
                               rtol=1e-12)


def test_gather_rows_in_draw_order(diabetes, sync_scheduler):
    X, y = diabetes
    dX, dy = graph.inputs.as_dask_xy(da.from_array(X, chunks=(50, -1)), y)
    idx = np.array([400, 3, 3, 441, 0, 77])
    Xs, ys = graph.draws.gather_rows(dX, dy, idx)
    np.testing.assert_array_equal(Xs, X[idx])
    np.testing.assert_array_equal(ys, y[idx])


def test_graph_input_errors(diabetes, tmp_path):
    X, y = diabetes
    with pytest.raises(NldistError, match="does not exist"):
        graph.inputs.as_dask_xy(str(tmp_path / "missing.zarr"))
    with pytest.raises(NldistError, match=r"y has shape \(5,\)"):
        graph.inputs.as_dask_xy(da.from_array(X), y[:5])
    with pytest.raises(NldistError, match="dtype"):
        graph.inputs.as_dask_xy(da.from_array(np.array([["a"]])))
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(NldistError, match="not a Zarr group|no array 'X'"):
        graph.inputs.as_dask_xy(str(tmp_path / "notzarr"))


@pytest.mark.parametrize("persist", ["never", "always"])
def test_wide_dual_blocks_run_on_split_chunks(diabetes, monkeypatch, sync_scheduler, persist):
    """A dual wider than X (relu2: q = 12 h + 1) gets X's row chunks split so that no
    task builds a block over DUAL_BLOCK_BYTES; the scores keep X's chunks and values."""
    from nldist.scores import block
    from nldist.scores.spec import make_spec
    from nldist.store import dual_blocks

    X, y = diabetes
    m = nldist.get_model("relu2:6", n_features=X.shape[1])
    theta = m.init_theta(0) if hasattr(m, "init_theta") else 0.3 * np.ones(m.n_params)
    spec = make_spec("nonlinear-leverage", m, theta, X.shape[1], True)
    q = spec.n_cols(X.shape[1])
    monkeypatch.setattr(graph.passes, "DUAL_BLOCK_BYTES", 8 * q * 50)  # 50 rows per task
    seen = []
    orig = block.pass1_block

    def rec(Xb, *a, **k):
        seen.append(len(Xb))
        return orig(Xb, *a, **k)

    monkeypatch.setattr(block, "pass1_block", rec)
    dX, dy = da.from_array(X, chunks=(160, -1)), da.from_array(y, chunks=160)
    store = dual_blocks.temporary("always") if persist == "always" else None
    norm = graph.passes.pass1(dX, dy, spec, store=store)
    probs = graph.passes.pass2(dX, dy, spec, norm, store=store)
    assert probs.chunks == dX.chunks[:1]
    assert max(seen) <= 50 and sum(seen) == len(X) and len(seen) == 4 + 4 + 3  # 160, 160, 122 rows
    tasks = len(seen)
    ref = nldist.leverage(nldist.dual_matrix(m, theta, X, y))
    np.testing.assert_allclose(probs.compute(), ref / ref.sum(), rtol=1e-9, atol=1e-15)
    if store is not None:
        assert norm.persist["persisted"] == tasks
        dual_blocks.remove(store)
