"""Coded categoricals (issue 26 item 5) through every path a user takes: the verbs (select,
run, fit, diagnose) on a coded store give what the same job gives on the one-hot store
(``dataset.onehot_max_levels: 1000``); Parquet in place; float32 stores; many levels without
a dense one-hot block of the passes; the sample handed over (load_sample, scikit-learn); the
API on a Zarr dataset path with a spec string."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nldist
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.models import get_model
from nldist.models.coded import CodedModel, Codes
from nldist.pipeline import RunContext, diagnose, fit, run, select
from nldist.store.dataset import open_dataset, read_attrs
from nldist.train import ce_oracle

L = 41  # levels of the coded column (> onehot_max_levels = 32)
ONEHOT = {"onehot_max_levels": 1000}


def _frame(n: int = 1200, seed: int = 0, classes: int = 0, levels: int = L) -> pd.DataFrame:
    """Two numeric columns and one Zipf-distributed text column (every level occurs)."""
    rng = np.random.default_rng(seed)
    pz = 1.0 / np.arange(1, levels + 1) ** 1.1
    c = rng.choice(levels, n, p=pz / pz.sum())
    c[rng.permutation(n)[:levels]] = np.arange(levels)
    x1, x2 = rng.standard_normal(n), rng.standard_t(4, n)
    y = 0.5 * x1 - 0.3 * x2 + rng.standard_normal(levels)[c] + rng.standard_normal(n)
    if classes == 2:
        y = (y > np.median(y)).astype(int)
    elif classes:
        y = np.digitize(y, np.quantile(y, np.arange(1, classes) / classes)).astype(int)
    return pd.DataFrame({"x1": x1, "x2": x2, "cat": [f"L{v:04d}" for v in c], "y": y})


def _csv(tmp_path, **kw) -> str:
    src = tmp_path / "t.csv"
    _frame(**kw).to_csv(src, index=False)
    return str(src)


def _job(src: str, model: str, loss: str = "squared", ds: dict | None = None, **kw):
    return validate_job({
        "name": "c", "dataset": {"source": src, "target": "y", "chunk_rows": 500, **(ds or {})},
        "model": model, "loss": loss, "s": 200, "pilot_s": 200, "eval_s": 600,
        "cache_x": "never", "cluster": {"address": "synchronous"}, **kw})


def _sample(out, kind: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(out / "samples" / f"{kind}.npz") as z:
        return np.asarray(z["indices"]), np.asarray(z["weights"])


def _both(verb, tmp_path, src, model, loss="squared", **kw) -> dict:
    """The verb's metrics on the coded store and on the one-hot store of the same table."""
    got = {}
    for name, ds in (("codes", {}), ("onehot", ONEHOT)):
        got[name] = verb(RunContext(_job(src, model, loss, ds, **kw), tmp_path / name))
    assert got["codes"]["n_params"] == got["onehot"]["n_params"]
    return got


# -- select: the sample is the one-hot store's ---------------------------------------------

@pytest.mark.parametrize("model, loss, classes", [
    ("linear", "squared", 0), ("glm:sigmoid", "bce", 2), ("softmax:3", "cross_entropy", 3)])
def test_select_on_codes_draws_the_one_hot_sample(tmp_path, sync_scheduler, model, loss,
                                                  classes):
    src = _csv(tmp_path, n=800, classes=classes)
    got = _both(select, tmp_path, src, model, loss)
    c, o = got["codes"], got["onehot"]
    assert c["n_features"] == 3 and o["n_features"] == 2 + L - 1
    kind = c["sampling"]["kind"]
    assert o["sampling"]["kind"] == kind
    ic, wc = _sample(tmp_path / "codes", kind)
    io, wo = _sample(tmp_path / "onehot", kind)
    np.testing.assert_array_equal(ic, io)
    np.testing.assert_allclose(wc, wo, rtol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "codes" / "theta.npy"),
                               np.load(tmp_path / "onehot" / "theta.npy"), rtol=1e-6,
                               atol=1e-8)
    rc, ro = c["kinds"][kind], o["kinds"][kind]
    assert rc["loss_estimate"] == pytest.approx(ro["loss_estimate"], rel=1e-8)


def test_coded_softmax_oracles_are_the_one_hot_ones():
    """softmax:<C>'s cross-entropy oracle calls ``model.vjp`` (was: AttributeError on a
    CodedModel); relu2's torch_jacobian is forwarded the same way."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.standard_normal(300), rng.integers(0, L, 300)]).astype(float)
    X[:L, 1] = np.arange(L)
    y = rng.integers(0, 3, 300).astype(float)
    m = get_model("softmax:3", 2, Codes((L,), ("cat",)))
    D = m.expand(X)
    dense = get_model("softmax:3", D.shape[1])
    th = rng.standard_normal(m.n_params) * 0.2
    a, b = ce_oracle(m, X, y)(th), ce_oracle(dense, D, y)(th)
    for key in ("loss", "grad", "gn"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)
    r = get_model("relu2:3", 2, Codes((L,), ("cat",)))
    rd = get_model("relu2:3", D.shape[1])
    t = torch.as_tensor(r.initial_theta())
    np.testing.assert_allclose(r.torch_jacobian(t, torch.as_tensor(X)).numpy(),
                               rd.torch_jacobian(t, torch.as_tensor(D)).numpy(), rtol=1e-12)


def test_coded_torch_mlp_is_the_mlp_on_the_one_hot_design():
    """A torch model (mlp:<h>:<C>) over codes: predictions and the adjoint block are the
    dense model's on the expanded design (a full select with it is minutes here)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.standard_normal(60), rng.integers(0, L, 60)]).astype(float)
    m = get_model("mlp:4:3", 2, Codes((L,), ("cat",)))
    D = m.expand(X)
    dense = get_model("mlp:4:3", D.shape[1])
    th = m.initial_theta()
    np.testing.assert_array_equal(m.predict(th, X), dense.predict(th, D))
    np.testing.assert_array_equal(m.adjoint_block(th, X), dense.adjoint_block(th, D))


# -- run, fit, diagnose --------------------------------------------------------------------

def test_run_exact_scores_on_codes_equal_the_one_hot_run(tmp_path, sync_scheduler):
    src = _csv(tmp_path, n=800, classes=2)
    got = _both(run, tmp_path, src, "glm:sigmoid", "bce", kind="nonlinear-leverage",
                baselines=["uniform"])
    for kind in ("nonlinear-leverage", "uniform"):
        ic, wc = _sample(tmp_path / "codes", kind)
        io, wo = _sample(tmp_path / "onehot", kind)
        np.testing.assert_array_equal(ic, io)
        np.testing.assert_allclose(wc, wo, rtol=1e-8)
        c, o = got["codes"]["kinds"][kind], got["onehot"]["kinds"][kind]
        for key in ("loss_full", "rel_error"):
            assert c[key] == pytest.approx(o[key], rel=1e-6), (kind, key)


def test_linear_leverage_on_codes_is_the_one_hot_linear_leverage(tmp_path, sync_scheduler):
    src = _csv(tmp_path)
    got = _both(run, tmp_path, src, "linear", kind="linear-leverage", baselines=[])
    assert got["codes"]["kinds"]["linear-leverage"]["rank"] == \
        got["onehot"]["kinds"]["linear-leverage"]["rank"] == 2 + L - 1 + 1
    for name in ("codes", "onehot"):
        assert (tmp_path / name / "samples" / "linear-leverage.npz").exists()
    a = np.load(tmp_path / "codes" / "samples" / "linear-leverage.npz")
    b = np.load(tmp_path / "onehot" / "samples" / "linear-leverage.npz")
    np.testing.assert_array_equal(a["indices"], b["indices"])
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-8)


def test_fit_on_codes_reaches_the_one_hot_optimum(tmp_path, sync_scheduler):
    src = _csv(tmp_path, n=800, classes=2)
    got = _both(fit, tmp_path, src, "glm:sigmoid", "bce")
    tc = np.load(tmp_path / "codes" / "theta_fit.npy")
    to = np.load(tmp_path / "onehot" / "theta_fit.npy")
    assert tc.shape == to.shape == (2 + L - 1 + 1,)
    np.testing.assert_allclose(tc, to, rtol=1e-5, atol=1e-7)
    c, o = got["codes"], got["onehot"]
    assert c["sample"]["kind"] == o["sample"]["kind"] and c["sample"]["s"] == o["sample"]["s"]
    assert c["result"]["loss"] == pytest.approx(o["result"]["loss"], rel=1e-9)


def test_diagnose_on_codes_ranks_as_the_one_hot_store(tmp_path, sync_scheduler):
    src = _csv(tmp_path, n=800, classes=2)
    got = {name: diagnose(_job(src, "glm:sigmoid", "bce", ds), tmp_path / name, ks=[50, 120])
           for name, ds in (("codes", {}), ("onehot", ONEHOT))}
    assert "codes" in read_attrs(tmp_path / "codes" / "noisy.zarr")  # the flip keeps them
    for kind in ("nonlinear-leverage", "loss"):
        assert got["codes"]["precision"][kind] == got["onehot"]["precision"][kind], kind


# -- Parquet in place, float32, many levels, a level a chunk lacks ---------------------------

def test_parquet_in_place_draws_the_ingested_stores_sample(tmp_path, sync_scheduler):
    df = _frame(1500, seed=2)
    pq = tmp_path / "pq"
    pq.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(pq / f"p{i}.parquet")
    runs = {}
    for name, ds in (("zarr", {}), ("inplace", {"format": "parquet"}),
                     ("onehot", {"format": "parquet", **ONEHOT})):
        m = select(RunContext(_job(str(pq), "glm:swish", ds=ds), tmp_path / name))
        runs[name] = (m, *_sample(tmp_path / name, m["sampling"]["kind"]))
    assert runs["inplace"][0]["n_features"] == 3
    for name in ("inplace", "onehot"):
        np.testing.assert_array_equal(runs[name][1], runs["zarr"][1])
        np.testing.assert_allclose(runs[name][2], runs["zarr"][2], rtol=1e-9)


def test_float32_coded_store_draws_the_float32_one_hot_sample(tmp_path, sync_scheduler):
    src = _csv(tmp_path, n=1500, seed=3)
    runs = {}
    for name, ds in (("codes", {"dtype": "float32"}),
                     ("onehot", {"dtype": "float32", **ONEHOT})):
        m = select(RunContext(_job(src, "glm:swish", ds=ds), tmp_path / name))
        runs[name] = _sample(tmp_path / name, m["sampling"]["kind"])
    X, _ = open_dataset(tmp_path / "codes" / "dataset.zarr")
    assert X.dtype == np.float32
    codes = np.asarray(X[:, -1])
    np.testing.assert_array_equal(codes, np.round(codes))  # exact in float32 (L < 2**24)
    assert set(codes.astype(int)) == set(range(L))
    np.testing.assert_array_equal(runs["codes"][0], runs["onehot"][0])
    np.testing.assert_allclose(runs["codes"][1], runs["onehot"][1], rtol=1e-6)


def _many_levels(levels: int, n: int, chunk: int):
    """X (n, 2) [numeric, code] as a dask array in chunks, y, and a coded glm:swish; most
    levels are absent from any one chunk."""
    import dask.array as da

    df = _frame(n, seed=7, levels=levels)
    code = np.searchsorted(sorted(set(df["cat"])), df["cat"]).astype(float)
    X = np.column_stack([df["x1"], code])
    m = get_model("glm:swish", 2, Codes((levels,), ("cat",)))
    y = df["y"].to_numpy(np.float64)
    th = np.random.default_rng(8).standard_normal(m.n_params) * 0.1
    return (da.from_array(X, chunks=(chunk, -1)), da.from_array(y, chunks=chunk), m, th)


def _spy_expand(monkeypatch) -> list[int]:
    expanded: list[int] = []
    orig = CodedModel.expand

    def spy(self, X):
        out = orig(self, X)
        expanded.append(out.shape[0])
        return out

    monkeypatch.setattr(CodedModel, "expand", spy)
    return expanded


def test_many_levels_scores_and_one_read_sample_never_expand_a_chunk(sync_scheduler,
                                                                     monkeypatch):
    """400 levels in chunks of 1,000 rows: the exact two-pass scores and the one-read
    sample of a GLM never build a dense one-hot block of a chunk (only the pilot's rows
    are expanded, for its factor)."""
    X, y, m, th = _many_levels(levels=400, n=2000, chunk=1000)
    expanded = _spy_expand(monkeypatch)
    p = np.asarray(nldist.scores(X, y, model=m, theta=th, kind="nonlinear-leverage"))
    assert expanded == [] and abs(p.sum() - 1.0) < 1e-12 and np.all(p > 0)
    idx, w, info = nldist.select_sample(X, y, m, th, 300, kind="nonlinear-leverage",
                                        pilot_rows=400)
    assert expanded and max(expanded) <= 400, expanded
    assert idx.size > 0 and np.all(w > 0)


def test_many_levels_gradient_and_gauss_newton_passes_never_expand_a_chunk(sync_scheduler,
                                                                          monkeypatch):
    from nldist import graph
    from nldist.objectives import gn_block

    X, y, m, th = _many_levels(levels=400, n=2000, chunk=1000)
    Xa, ya = np.asarray(X), np.asarray(y)
    want = gn_block(get_model(m.spec, m.inner.n_features), th, m.expand(Xa), ya)
    expanded = _spy_expand(monkeypatch)
    g = graph.oracles.grad_pass(X, y, m, th)
    gn = graph.oracles.gn_pass(X, y, m, th)
    assert expanded == [], expanded
    for got in (g, gn):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
        np.testing.assert_allclose(got["grad"], want["grad"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gn["gn"], want["gn"], rtol=1e-9, atol=1e-9)


# -- the sample handed over ----------------------------------------------------------------

def test_load_sample_of_a_coded_run_fits_in_scikit_learn(tmp_path, sync_scheduler):
    sklearn = pytest.importorskip("sklearn.linear_model")
    df = _frame(1500, seed=5)
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    smp = {}
    for name, ds in (("codes", {"standardize": True}), ("onehot", ONEHOT)):
        select(RunContext(_job(str(src), "linear", ds=ds), tmp_path / name))
        smp[name] = nldist.load_sample(tmp_path / name)
    c, o = smp["codes"], smp["onehot"]
    assert c.features == ["x1", "x2", "cat"] and o.codes == {}
    levels = sorted(set(df["cat"]))
    assert c.codes == {"cat": levels}
    # X: the code; frame["cat__orig"]: the level (a Categorical); original: codes unchanged
    assert list(c.frame["cat__orig"].astype(str)) == [levels[int(v)] for v in c.X[:, 2]]
    assert list(c.frame["cat__orig"].astype(str)) == list(df["cat"].to_numpy()[c.row])
    orig = c.original  # was: ValueError (the levels' strings read as float64)
    np.testing.assert_allclose(orig[:, :2], df[["x1", "x2"]].to_numpy()[c.row], rtol=1e-12)
    np.testing.assert_array_equal(orig[:, 2], c.X[:, 2])
    # onehot(): the one-hot store's columns (same rows: standardizing moves no sample here)
    np.testing.assert_array_equal(c.row, o.row)
    D = c.onehot()
    assert D.shape == (len(c), 2 + L - 1)
    np.testing.assert_array_equal(D[:, 2:], o.X[:, 2:])
    # scikit-learn on it; its coefficients are nldist's theta layout for the coded model
    lr = sklearn.LinearRegression().fit(D, c.y, sample_weight=c.sample_weight)
    m = get_model("linear", 3, Codes((L,), ("cat",)))
    np.testing.assert_allclose(m.predict(np.append(lr.coef_, lr.intercept_), c.X),
                               lr.predict(D), rtol=1e-10, atol=1e-10)
    assert o.onehot() is o.X


# -- the API on a dataset path -------------------------------------------------------------

def test_api_on_a_coded_dataset_path_builds_the_coded_model(tmp_path, sync_scheduler):
    src = _csv(tmp_path, n=1500, seed=6)
    paths = {}
    for name, ds in (("codes", {}), ("onehot", ONEHOT)):
        out = tmp_path / name
        select(RunContext(_job(src, "glm:swish", ds=ds, kind="uniform"), out))
        paths[name] = str(out / "dataset.zarr")
    Xc, _ = open_dataset(paths["codes"])
    codes = Codes.from_attrs(read_attrs(paths["codes"]))
    m = get_model("glm:swish", Xc.shape[1], codes)
    th = np.random.default_rng(1).standard_normal(m.n_params) * 0.2
    want = np.asarray(nldist.scores(paths["onehot"], model="glm:swish", theta=th))
    got = np.asarray(nldist.scores(paths["codes"], model="glm:swish", theta=th))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(np.asarray(nldist.scores(paths["codes"], model=m, theta=th)),
                               want, rtol=1e-8, atol=1e-14)
    ic, wc, _ = nldist.select_sample(paths["codes"], open_dataset(paths["codes"])[1],
                                     "glm:swish", th, 150, pilot_rows=400)
    io, wo, _ = nldist.select_sample(paths["onehot"], open_dataset(paths["onehot"])[1],
                                     "glm:swish", th, 150, pilot_rows=400)
    np.testing.assert_array_equal(ic, io)
    np.testing.assert_allclose(wc, wo, rtol=1e-9)
    # a plain model of the raw width would read the codes as numbers: one line
    with pytest.raises(NldistError, match=r"stores cat as integer codes.*pass the spec"):
        nldist.scores(paths["codes"], model=get_model("glm:swish", 3), theta=np.zeros(4))
