"""High-cardinality categoricals stored as integer codes (nldist.models.coded, issue 26 item
5): the coded model equals the same model on the dense one-hot design; the sparse dual rows,
their Gram and leverage equal the dense ones; (ID) holds; both ingest paths write the same
codes; exact scores and the one-read sample of a coded store equal those of the one-hot
store, under any chunking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nldist
from nldist.errors import NldistError
from nldist.ingest import ingest_table, prepare
from nldist.jobs import validate_job
from nldist.models import get_model
from nldist.models.coded import Codes
from nldist.models.losses import get_loss
from nldist.pipeline import RunContext, select
from nldist.scores.rows import DualRows
from nldist.store.dataset import open_dataset, read_attrs
from nldist.store.sample_table import read_sample_table

LEVELS = (40, 57)


def _raw(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Codes]:
    """Two numeric columns and two Zipf-coded categorical columns (rare levels included)."""
    rng = np.random.default_rng(seed)
    cols = []
    for L in LEVELS:
        pz = 1.0 / np.arange(1, L + 1) ** 1.2
        c = rng.choice(L, n, p=pz / pz.sum())
        c[:L] = np.arange(L)  # every level occurs
        cols.append(c)
    C = np.stack(cols, axis=1)
    X = np.column_stack([rng.standard_t(3, n), rng.standard_normal(n), C.astype(float)])
    eff = [rng.standard_normal(L) for L in LEVELS]
    y = 0.4 * X[:, 0] + eff[0][C[:, 0]] - eff[1][C[:, 1]] + rng.standard_normal(n)
    return X, y, Codes(LEVELS, ("origin", "dest"))


@pytest.mark.parametrize("spec", ["linear", "glm:swish", "glm:sigmoid", "relu2:3"])
def test_the_coded_model_is_the_model_on_the_one_hot_design(spec):
    X, _, codes = _raw(400)
    m = get_model(spec, X.shape[1], codes)
    D = m.expand(X)
    dense = get_model(spec, D.shape[1])
    assert D.shape[1] == 2 + sum(L - 1 for L in LEVELS) and m.n_params == dense.n_params
    th = np.random.default_rng(1).standard_normal(m.n_params) * 0.3
    np.testing.assert_allclose(m.predict(th, X), dense.predict(th, D), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(m.adjoint(th, X), dense.adjoint(th, D), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(m.jacobian(th, X), dense.jacobian(th, D), rtol=1e-13,
                               atol=1e-13)
    torch = pytest.importorskip("torch")
    t = m.torch_forward(torch.as_tensor(th), torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(t, dense.predict(th, D), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec, loss", [("linear", "squared"), ("glm:swish", "squared"),
                                        ("glm:sigmoid", "bce")])
def test_sparse_dual_rows_gram_and_leverage_equal_the_dense_ones(spec, loss):
    X, y, codes = _raw(1500)
    if loss == "bce":
        y = (y > 0).astype(float)
    m = get_model(spec, X.shape[1], codes)
    th = np.random.default_rng(2).standard_normal(m.n_params) * 0.2
    rows = DualRows(m, th, True, loss)
    assert rows.structured and rows.gram_direct and not rows.persistable
    Dn = rows.matrix(X, y)  # dense (the expanded design)
    A, c = rows.sparse_parts(X, y)
    assert A.vals.shape == (X.shape[0], 2 + len(LEVELS) + 1)  # never a dense one-hot block
    np.testing.assert_allclose(A.dense(), Dn[:, :-1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c, Dn[:, -1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(m.sparse_design(X, np.ones(X.shape[0])).toarray(),
                               m.expand(X) if not m.has_bias else np.column_stack(
                                   [m.expand(X), np.ones(X.shape[0])]), rtol=0, atol=0)
    np.testing.assert_allclose(A.sq_norms(), np.sum(Dn[:, :-1] ** 2, axis=1), rtol=1e-12)
    # (ID): the dual rows reproduce the residual at theta
    f = m.predict(th, X)
    r = f - y if loss == "squared" else get_loss(loss).residual(f, y)
    np.testing.assert_allclose(A.dot(th) + c, r, rtol=1e-10, atol=1e-10)
    G = np.zeros((m.n_params + 1,) * 2)
    rows.add_gram(G, X, y)
    np.testing.assert_allclose(G, Dn.T @ Dn, rtol=1e-12, atol=1e-9)
    P = np.linalg.pinv(Dn.T @ Dn)
    lev = np.einsum("ij,jk,ik->i", Dn, P, Dn)
    np.testing.assert_allclose(rows.row_values(X, y, 0, P), lev, rtol=1e-9, atol=1e-12)


def test_a_code_that_is_not_a_level_is_one_line():
    X, _, codes = _raw(200)
    m = get_model("linear", X.shape[1], codes)
    bad = X.copy()
    bad[7, 3] = 57.0  # dest has levels 0..56
    with pytest.raises(NldistError, match=r"'dest' holds 57.0 in row 7, not a code 0..56"):
        m.predict(np.zeros(m.n_params), bad)
    bad[7, 3] = 2.5
    with pytest.raises(NldistError, match="not a code"):
        m.adjoint(np.zeros(m.n_params), bad)


def _table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    X, y, _ = _raw(n, seed)
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame({
        "x1": X[:, 0], "x2": X[:, 1],
        "origin": [f"A{int(v):03d}" for v in X[:, 2]],
        "carrier": rng.choice(list("PQRS"), n),  # few levels: one-hot
        "dest": [f"B{int(v):03d}" for v in X[:, 3]], "y": y})


def test_both_ingest_paths_store_codes_not_one_hot_columns(tmp_path, sync_scheduler):
    df = _table()
    X, y, attrs = prepare(df, "y")
    # numeric, one-hot of carrier (3 columns), then the codes of origin and dest
    assert attrs["features"] == ["x1", "x2", "carrier_Q", "carrier_R", "carrier_S", "origin",
                                 "dest"]
    assert list(attrs["codes"]) == ["origin", "dest"]
    assert attrs["codes"]["origin"] == sorted(set(df["origin"]))
    np.testing.assert_array_equal(X[:, 5], [attrs["codes"]["origin"].index(v)
                                            for v in df["origin"]])
    # the distributed ingest of the same rows in 3 Parquet files: same X, y and codes
    src = tmp_path / "pq"
    src.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(src / f"p{i}.parquet")
    out = ingest_table(str(src), tmp_path / "t.zarr", target="y", chunk_rows=900)
    Xd, yd = open_dataset(out)
    np.testing.assert_array_equal(np.asarray(Xd), X)
    np.testing.assert_array_equal(np.asarray(yd), y)
    assert read_attrs(out)["codes"] == attrs["codes"]
    # one-hot beyond the threshold when asked: 2 + 3 + 39 + 56 columns
    X1, _, a1 = prepare(df, "y", onehot_max_levels=100)
    assert X1.shape[1] == 2 + 3 + 39 + 56 and "codes" not in a1
    with pytest.raises(NldistError, match="onehot_max_levels"):
        prepare(df, "y", onehot_max_levels=0)


def test_exact_scores_of_a_coded_store_equal_the_one_hot_ones_any_chunking(
        monkeypatch, sync_scheduler):
    import dask.array as da

    X, y, codes = _raw(2400)
    m = get_model("glm:swish", X.shape[1], codes)
    D = m.expand(X)
    dense = get_model("glm:swish", D.shape[1])
    th = np.random.default_rng(3).standard_normal(m.n_params) * 0.2
    want = nldist.scores(D, y, model=dense, theta=th, kind="nonlinear-leverage")
    calls = {"add_gram": 0, "row_values": 0}
    for name in calls:  # the passes take the sparse path (no dense one-hot block)
        orig = getattr(DualRows, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(DualRows, name, spy)
    for chunks in (2400, 700):
        got = nldist.scores(da.from_array(X, chunks=(chunks, -1)), da.from_array(
            y, chunks=chunks), model=m, theta=th, kind="nonlinear-leverage")
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-8, atol=1e-14)
        assert abs(float(np.sum(got)) - 1.0) < 1e-12
    assert calls["add_gram"] >= 5 and calls["row_values"] >= 5


def _job(src, **kw):
    return validate_job({"name": "c", "dataset": {"source": str(src), "target": "y", **kw},
                         "model": "glm:swish", "kind": "auto", "s": 400, "pilot_s": 300,
                         "pilot_factor_s": 1000, "eval_s": 1000, "cache_x": "never",
                         "cluster": {"address": "synchronous"}})


def test_one_read_sample_of_a_coded_store_equals_the_one_hot_stores(tmp_path, sync_scheduler):
    df = _table(5000, seed=4).drop(columns=["carrier"])
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    runs = {}
    for name, kw in {"codes": {"chunk_rows": 1300}, "codes-chunked": {"chunk_rows": 777},
                     "onehot": {"chunk_rows": 1300, "onehot_max_levels": 1000}}.items():
        m = select(RunContext(_job(src, **kw), tmp_path / name))
        with np.load(tmp_path / name / "samples" / "auto.npz") as z:
            runs[name] = (m, np.asarray(z["indices"]), np.asarray(z["weights"]))
    mc, ic, wc = runs["codes"]
    assert mc["n_features"] == 4 and mc["n_params"] == 2 + 39 + 56 + 1
    assert mc["cost"]["store_reads_counted"]["passes"] <= 1.1
    for other in ("codes-chunked", "onehot"):
        m2, i2, w2 = runs[other]
        assert m2["sampling"]["kind"] == mc["sampling"]["kind"]
        np.testing.assert_array_equal(i2, ic)
        np.testing.assert_allclose(w2, wc, rtol=1e-8)
    assert runs["onehot"][0]["n_features"] == 2 + 39 + 56
    # the handed-over sample names each coded row's level beside its code
    tab, meta = read_sample_table(tmp_path / "codes" / "sample.parquet")
    rows = tab["row"].to_numpy()
    assert list(tab["origin__orig"].astype(str)) == list(df["origin"].to_numpy()[rows])
    assert list(tab["dest__orig"].astype(str)) == list(df["dest"].to_numpy()[rows])
    levels = sorted(set(df["dest"]))
    assert [levels[int(c)] for c in tab["dest"]] == list(tab["dest__orig"].astype(str))


def test_the_report_shows_a_code_as_its_level():
    from nldist import report

    attrs = {"features": ["x", "origin"], "codes": {"origin": ["ATL", "LAS", "ORD"]}}
    names, cols = report.decode_columns(np.array([[0.5, 2.0], [1.0, 0.0]]), attrs)
    assert names == ["x", "origin"] and cols[1] == ["ORD", "ATL"]


@pytest.mark.parametrize("use_y", [False, True])
def test_linear_kinds_take_the_one_hot_design_not_the_codes(use_y):
    from nldist.scores.rows import CodedDataRows

    X, y, codes = _raw(900)
    m = get_model("glm:swish", X.shape[1], codes)
    rows = CodedDataRows(m, bias=True, use_y=use_y)
    D = rows.matrix(X, y)
    assert D.shape[1] == rows.n_cols(X.shape[1]) == m.n_params + int(use_y)
    np.testing.assert_array_equal(D[:, :-1 - int(use_y)], m.expand(X))
    G = np.zeros((D.shape[1],) * 2)
    rows.add_gram(G, X, y)
    np.testing.assert_allclose(G, D.T @ D, rtol=1e-12, atol=1e-9)
    P = np.linalg.pinv(D.T @ D)
    np.testing.assert_allclose(rows.row_values(X, y, 0, P),
                               np.einsum("ij,jk,ik->i", D, P, D), rtol=1e-9, atol=1e-12)
    got = nldist.scores(X, y, model=m, kind="linear-leverage", linear_augment_y=use_y)
    want = nldist.scores(m.expand(X), y, kind="linear-leverage", linear_augment_y=use_y)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)


def test_the_swish_bound_reads_the_wrapped_glm():
    from nldist.models.glm import swish_ratio

    X, _, codes = _raw(200)
    assert swish_ratio(get_model("glm:swish(c1=1,c2=3)", X.shape[1], codes)) == 3.0
    with pytest.raises(NldistError, match="glm:swish"):
        swish_ratio(get_model("glm:sigmoid", X.shape[1], codes))


def test_rows_of_levels_the_pilot_never_saw_are_predicted_by_their_level_counts():
    """A 40-row pilot of a 60-level categorical (~100 rows a level) misses half the levels:
    their rows are outside the pilot's span and keep generalised leverage 1 for sampling,
    but the predicted error counts them by ``1/n_level`` (their exact leverage, about) from
    the pass's per-column sums — not as leverage 1, which made the prediction ~40x high.
    The same sums from the codes and from the dense one-hot design, any chunking."""
    from dataclasses import replace

    from nldist.scores import oneread
    from nldist.scores.oneread_predict import effective

    rng = np.random.default_rng(0)
    n, L = 6000, 60
    c = rng.integers(0, L, n)
    X = np.column_stack([rng.standard_t(3, n), rng.standard_normal(n), c.astype(float)])
    y = 0.5 * X[:, 0] + rng.standard_normal(L)[c] + rng.standard_normal(n)
    m = get_model("linear", 3, Codes((L,), ("c",)))
    dense = get_model("linear", m.expand(X).shape[1])
    th = np.random.default_rng(1).standard_normal(m.n_params) * 0.2
    pilot = np.sort(rng.choice(n, 40, replace=False))
    got = {}
    for name, model, XX in (("codes", m, X), ("dense", dense, m.expand(X))):
        rows = DualRows(model, th, True, "squared")
        Dp = rows.matrix(XX[pilot], y[pilot])
        fac = oneread.factor(Dp, n, m=pilot.size)
        fac = replace(fac, z_hat=oneread.estimate_totals(Dp, th, fac))
        assert fac.unseen is not None and fac.unseen.sum() >= 20  # levels the pilot missed
        for ch in (1000, 777):
            tot = oneread.totals([oneread.chunk(
                XX[a:a + ch], y[a:a + ch], rows=rows, theta=th, fac=fac, rates=np.zeros(4),
                seed=0, offset=a) for a in range(0, n, ch)])
            got[name, ch] = tot, effective(tot)
        old = oneread.totals([oneread.chunk(
            XX[a:a + 1000], y[a:a + 1000], rows=rows, theta=th, fac=replace(fac, unseen=None),
            rates=np.zeros(4), seed=0, offset=a) for a in range(0, n, 1000)])
        D = rows.matrix(XX, y)
        r = D[:, :-1] @ th + D[:, -1]
        U, s, _ = np.linalg.svd(D[:, :-1], full_matrices=False)
        U = U[:, s > s[0] * 1e-12]
        exact = float(np.sum(r**2 * np.sum(U * U, axis=1)))  # Σ r² τ, τ the exact leverage
        B = got[name, 1000][1][1]
        assert 0.8 < B / exact < 1.5, (name, B, exact)
        assert old["B"] / exact > 20  # leverage 1 for the missed levels' rows
        # the uniform prediction at s: (n/s - 1) Σ r²τ / L
        pred = oneread.predict(got[name, 1000][0], 600, m.n_params)["uniform"]["predicted"]
        dense_pred = (n / 600 - 1) * exact / float(np.sum(r**2))
        assert 0.8 < pred / dense_pred < 1.5
    for key in got:  # any chunking, codes or dense one-hot: the same sums
        np.testing.assert_allclose(got[key][1][0], got["codes", 1000][1][0], rtol=1e-9)
        assert np.isclose(got[key][1][1], got["codes", 1000][1][1], rtol=1e-9)
