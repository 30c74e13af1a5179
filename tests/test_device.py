"""The ``device`` option (nldist.scores.backends): torch kernels for the block R and per-row
leverage give the NumPy path's scores to ~1e-12 relative on every kind, chunking, rank-
deficient and float32 input; persisted blocks keep their bytes; one-line device errors.
The CUDA class runs the same equalities on a GPU and skips without one."""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import torch

import nldist
from nldist import _budget, graph, pipeline
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, stages
from nldist.scores import backends, block, linalg
from nldist.scores.kinds import get_kind
from nldist.scores.rows import DualRows, linear_block
from nldist.scores.spec import ScoreSpec, make_spec, with_device
from nldist.store import dual_blocks
from nldist.store.records import read_record

HAS_CUDA = torch.cuda.is_available()
RTOL = 1e-12
CPU = backends.TorchBackend("cpu")

#: (id, model spec, kind, ridge)
CASES = [
    ("linear-leverage", "linear", "linear-leverage", 0.0),
    ("swish-leverage", "glm:swish", "nonlinear-leverage", 0.0),
    ("relu2-leverage", "relu2:8", "nonlinear-leverage", 0.0),
    ("swish-ridge", "glm:swish", "ridge-leverage", 0.5),
    ("swish-norm", "glm:swish", "nonlinear-norm", 0.0),
]
CHUNKS = (442, 100, 37)


@pytest.fixture
def calls(monkeypatch):
    """Counts of device-kernel calls made in this process (the device path was taken)."""
    counts = {"reduce": 0, "rows": 0}

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    reducer = type(CPU.reducer(1))  # the device reducer class of TorchBackend
    monkeypatch.setattr(reducer, "add", counted("reduce", reducer.add))
    for name in ("row_leverage", "row_sqnorms"):
        monkeypatch.setattr(backends.TorchBackend, name,
                            counted("rows", getattr(backends.TorchBackend, name)))
    return counts


def _theta(model, seed=1):
    return np.random.default_rng(seed).standard_normal(model.n_params) * 0.3


def _spec(X, spec_str, kind, device="numpy"):
    m = nldist.get_model(spec_str, n_features=X.shape[1])
    theta = _theta(m) if get_kind(kind).nonlinear else None
    spec = make_spec(kind, m, theta, X.shape[1], True)
    return replace(spec, device=device)


def _passes(X, y, spec, chunks, ridge=0.0):
    """Pass 1 + pass 2 through nldist.graph: (scores (n,), Normalizer)."""
    dX, dy = graph.inputs.as_dask_xy(da.from_array(X, chunks=(chunks, -1)),
                              da.from_array(y, chunks=chunks))
    norm = graph.passes.pass1(dX, dy, spec, ridge=ridge)
    return graph.passes.pass2(dX, dy, spec, norm).compute(), norm


def assert_same_scores(got, ref, rtol=RTOL):
    """Equal to ``rtol`` relative, entry by entry (scores are positive here)."""
    assert got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * float(np.max(np.abs(ref))))


def _check_graph_equal(X, y, spec_str, kind, ridge, chunks, device):
    ref, nref = _passes(X, y, _spec(X, spec_str, kind), chunks, ridge)
    got, ngot = _passes(X, y, _spec(X, spec_str, kind, device), chunks, ridge)
    assert_same_scores(got, ref)
    assert ngot.rank == nref.rank
    assert ngot.total == pytest.approx(nref.total, rel=RTOL)
    assert ngot.qr_methods == nref.qr_methods
    assert got.sum() == pytest.approx(1.0, rel=1e-12)


def _ill(diabetes, eps=1e-4):
    """Diabetes X with a near-copy of column 0 (equilibrated condition ~ 1/eps)."""
    X, _ = diabetes
    rng = np.random.default_rng(7)
    return np.hstack([X, X[:, :1] + eps * rng.standard_normal((X.shape[0], 1))])


# --------------------------------------------------------------------------------------
# option values and errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["numpy", "cpu", "cuda", "cuda:0", "cuda:3", "auto"])
def test_check_device_accepts(value):
    assert backends.check_device(value) == value


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "", None, 0])
def test_check_device_rejects_with_allowed_values(value, diabetes):
    with pytest.raises(NldistError) as err:
        backends.check_device(value)
    msg = str(err.value)
    assert "\n" not in msg and "use one of numpy, cpu, cuda, cuda:N, auto" in msg
    X, y = diabetes
    with pytest.raises(NldistError, match="unknown device"):  # before any work
        nldist.scores(X, y, model="linear", kind="linear-leverage", device=value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_a_one_line_error(diabetes):
    X, y = diabetes
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(NldistError) as err:
            backends.resolve(dev)
        assert str(err.value) == (f"device {dev!r} requested but torch sees no CUDA device on "
                                  "the worker; use device: auto or numpy")
        with pytest.raises(NldistError, match="no CUDA device"):
            nldist.scores(X, y, model="glm:swish", device=dev)
    assert backends.resolve("auto") is None  # auto without a GPU: the NumPy kernels
    ref = nldist.scores(X, y, model="glm:swish")
    np.testing.assert_array_equal(nldist.scores(X, y, model="glm:swish", device="auto"), ref)


def test_resolve_names_the_cuda_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert backends.resolve("auto") == "cuda"
    assert backends.resolve("cuda:0") == "cuda:0"
    with pytest.raises(NldistError, match=r"sees 1 CUDA device\(s\) on the worker "
                       r"\(cuda:0..cuda:0\); use device: cuda, auto or numpy"):
        backends.resolve("cuda:1")
    assert backends.resolve("numpy") is None and backends.resolve("cpu") == "cpu"


def test_job_schema_device():
    base = {"dataset": {"source": "x.npz"}, "model": "linear"}
    job = validate_job(base)
    assert job.device == "numpy"
    assert "auto" in type(job).model_fields["device"].description
    for value in ("cpu", "cuda", "cuda:1", "auto"):
        assert validate_job({**base, "device": value}).device == value
    with pytest.raises(NldistError) as err:
        validate_job({**base, "device": "gpu"})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("job: device: ")
    assert "use one of numpy, cpu, cuda, cuda:N, auto" in msg


# --------------------------------------------------------------------------------------
# kernels: block R, leverage, norms against nldist.scores.linalg
# --------------------------------------------------------------------------------------


def _blocks(diabetes):
    X, y = diabetes
    lin = linear_block(X, y)
    zero = np.hstack([lin[:, :3], np.zeros((X.shape[0], 1)), lin[:, 3:]])
    return {
        "cholqr": lin,
        "cholqr2": _ill(diabetes, 1e-4),
        "scholqr3": _ill(diabetes, 1e-9),
        "zero-column": zero,
        "short": lin[:40],  # n < 4q: Householder
        "float32": lin.astype(np.float32),
    }


@pytest.mark.parametrize("name", ["cholqr", "cholqr2", "scholqr3", "zero-column", "short",
                                  "float32"])
def test_block_r_matches_linalg(diabetes, name, monkeypatch):
    monkeypatch.setattr(_budget, "DEVICE_SLICE_BYTES", 1)  # 256-row device slices
    A = _blocks(diabetes)[name]
    R, method = CPU.block_r(A)
    Rref, mref = linalg.block_r_method(A)
    assert method == mref
    expect = {"zero-column": "cholqr", "short": "householder", "float32": "cholqr"}
    assert method == expect.get(name, name)
    assert R.dtype == np.float64 and R.shape == Rref.shape
    np.testing.assert_allclose(R, Rref, rtol=0, atol=1e-10 * np.abs(Rref).max())
    # leverage from either R (the quantity that matters): same to ~eps * kappa
    lev = linalg.row_leverage(A, linalg.finalize_r(R, A.shape[0]))
    ref = linalg.row_leverage(A, linalg.finalize_r(Rref, A.shape[0]))
    rtol = 1e-8 if name == "scholqr3" else 1e-11
    np.testing.assert_allclose(lev, ref, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("method", ["cholqr", "cholqr2", "scholqr3", "householder"])
def test_block_r_forced_methods(diabetes, method):
    A = _ill(diabetes, 1e-3)
    R, used = CPU.block_r(A, method, G=CPU.gram(A))
    Rref, uref = linalg.block_r_method(A, method)
    assert used == uref == method
    np.testing.assert_allclose(R, Rref, rtol=0, atol=1e-10 * np.abs(Rref).max())
    with pytest.raises(ValueError, match="unknown QR method"):
        CPU.block_r(A, "qr")


def test_gram_and_reducer_match_numpy(diabetes, monkeypatch):
    monkeypatch.setattr(_budget, "DEVICE_SLICE_BYTES", 1)
    A = _blocks(diabetes)["cholqr"]
    np.testing.assert_allclose(CPU.gram(A), A.T @ A, rtol=1e-13, atol=1e-11)
    acc = CPU.reducer(A.shape[1], gram=False)
    acc.add(A[:300])
    acc.add(A[300:].astype(np.float32))  # float32 slices are upcast on the device
    B = np.vstack([A[:300], A[300:].astype(np.float32).astype(np.float64)])
    assert acc.value() == pytest.approx(float(np.sum(B * B)), rel=1e-14)
    np.testing.assert_allclose(CPU.row_sqnorms(A), linalg.row_sqnorms(A),
                               rtol=1e-14)


def _factors(diabetes):
    """Global factors taking each pass-2 path: inverse GEMM, TRSM, V_r / s_r, ridge."""
    X, y = diabetes
    lin = linear_block(X, y)
    scaled = lin * np.r_[np.ones(lin.shape[1] - 1), 1e6]  # cond(R) ~ 1e6 > INVERSE_MAX_COND
    zero = np.hstack([lin, np.zeros((lin.shape[0], 1))])
    out = {}
    for name, A, ridge in [("inverse", lin, 0.0), ("trsm", scaled, 0.0), ("rank", zero, 0.0),
                           ("ridge", lin, 3.0)]:
        out[name] = (A, linalg.finalize_r(linalg.block_r(A), A.shape[0], ridge=ridge))
    return out


@pytest.mark.parametrize("name", ["inverse", "trsm", "rank", "ridge"])
def test_row_leverage_matches_linalg(diabetes, name, monkeypatch):
    monkeypatch.setattr(_budget, "DEVICE_SLICE_BYTES", 1)
    A, fac = _factors(diabetes)[name]
    assert (fac.solve_r is not None) == (name == "trsm")
    assert fac.rank == A.shape[1] - (name == "rank")
    ref = linalg.row_leverage(A, fac)
    got = CPU.row_leverage(A, fac)
    assert_same_scores(got, ref)
    assert got.sum() == pytest.approx(ref.sum(), rel=1e-12) and got.sum() == pytest.approx(
        fac.total, rel=1e-10)
    B = A.astype(np.float32)  # float32 blocks: upcast on the device
    assert_same_scores(CPU.row_leverage(B, fac), linalg.row_leverage(B, fac))
    ro = A.copy()
    ro.flags.writeable = False  # read-only blocks (e.g. from a store) are copied, not wrapped
    assert_same_scores(CPU.row_leverage(ro, fac), ref)
    assert CPU.row_leverage(A[:0], fac).shape == (0,)


def test_float32_blocks_upcast_on_the_device(diabetes):
    A = _blocks(diabetes)["float32"]
    A64 = A.astype(np.float64)
    _, fac = _factors(diabetes)["inverse"]
    np.testing.assert_array_equal(CPU.gram(A), CPU.gram(A64))
    np.testing.assert_array_equal(CPU.row_leverage(A, fac), CPU.row_leverage(A64, fac))
    np.testing.assert_array_equal(CPU.row_sqnorms(A), CPU.row_sqnorms(A64))


# --------------------------------------------------------------------------------------
# the passes: device "cpu" (torch) equals device "numpy"
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_cpu_equals_numpy(diabetes, case, chunks, sync_scheduler, calls):
    _, spec_str, kind, ridge = case
    X, y = diabetes
    _check_graph_equal(X, y, spec_str, kind, ridge, chunks, "cpu")
    nblocks = -(-X.shape[0] // chunks)
    assert calls["reduce"] >= nblocks and calls["rows"] >= nblocks


def test_scores_api_device_cpu(diabetes, sync_scheduler, calls):
    X, y = diabetes
    m = nldist.get_model("relu2:8", n_features=X.shape[1])
    th = _theta(m)
    for kind in ("nonlinear-leverage", "linear-leverage", "nonlinear-norm", "uniform"):
        ref = nldist.scores(X, y, model=m, theta=th, kind=kind)
        got = nldist.scores(X, y, model=m, theta=th, kind=kind, device="cpu")
        assert isinstance(got, np.ndarray)
        assert_same_scores(got, ref)
    dX, dy = da.from_array(X, chunks=(60, -1)), da.from_array(y, chunks=60)
    ref = nldist.scores(dX, dy, model=m, theta=th, kind="ridge-leverage", ridge=0.5)
    got = nldist.scores(dX, dy, model=m, theta=th, kind="ridge-leverage", ridge=0.5,
                        device="cpu")
    assert_same_scores(got.compute(), ref.compute())
    assert calls["reduce"] >= 3 + 442 // 60 and calls["rows"] >= 3 + 442 // 60


@pytest.mark.parametrize("chunks", [442, 50])
def test_rank_deficient_dual_same_rank_and_scores(diabetes, chunks, sync_scheduler, calls):
    X, y = diabetes
    Xz = np.hstack([X[:, :4], np.zeros((X.shape[0], 1)), X[:, 4:]])  # a zero feature
    for spec_str, kind in [("glm:swish", "nonlinear-leverage"), ("linear", "linear-leverage"),
                           ("relu2:8", "nonlinear-leverage")]:
        ref, nref = _passes(Xz, y, _spec(Xz, spec_str, kind), chunks)
        got, ngot = _passes(Xz, y, _spec(Xz, spec_str, kind, "cpu"), chunks)
        q = _spec(Xz, spec_str, kind).n_cols(Xz.shape[1])
        assert ngot.rank == nref.rank < q  # the zero column's parameters are dead
        assert ngot.factor.basis.shape[1] == nref.rank  # V_r / s_r path in pass 2
        assert_same_scores(got, ref)
    assert calls["reduce"] and calls["rows"]


def test_ill_conditioned_block_takes_device_cholqr2(diabetes, sync_scheduler):
    """A block with equilibrated condition ~1e4: pass 1 needs CholeskyQR2 (on the device)."""
    A = _ill(diabetes, 1e-4)
    out = {}
    for device in ("numpy", "cpu"):
        spec = with_device(graph.passes.raw_spec(), device)
        stats = block.pass1_block(A, None, spec)
        norm = block.finalize_pass1(spec, stats)
        out[device] = (block.pass2_block(A, None, spec, norm), stats["methods"], norm.rank)
    assert out["cpu"][1] == out["numpy"][1] == {"cholqr2": 1}
    assert out["cpu"][2] == out["numpy"][2] == A.shape[1]
    assert_same_scores(out["cpu"][0], out["numpy"][0], rtol=1e-11)


@pytest.mark.parametrize("kind", ["linear-leverage", "nonlinear-leverage", "nonlinear-norm"])
def test_float32_input(diabetes, kind, sync_scheduler, calls):
    X, y = diabetes
    X32 = X.astype(np.float32)
    m = nldist.get_model("glm:swish", n_features=X.shape[1])
    th = _theta(m)
    for chunks in (442, 100):
        dX = da.from_array(X32, chunks=(chunks, -1))
        dy = da.from_array(y, chunks=chunks)
        ref = nldist.scores(dX, dy, model=m, theta=th, kind=kind).compute()
        got = nldist.scores(dX, dy, model=m, theta=th, kind=kind, device="cpu").compute()
        assert_same_scores(got, ref)
    assert calls["reduce"] and calls["rows"]


def _no_rebuild(*args):
    raise AssertionError("pass 2 rebuilt a persisted block")


def test_persisted_blocks_same_bytes(diabetes, sync_scheduler, calls):
    """persist: always writes the host block whatever the device; pass 2 reads it back."""
    X, y = diabetes
    shas, scores = {}, {}
    for device in ("numpy", "cpu"):
        spec = _spec(X, "relu2:8", "nonlinear-leverage", device)
        dX, dy = graph.inputs.as_dask_xy(da.from_array(X, chunks=(150, -1)),
                                  da.from_array(y, chunks=150))
        store = dual_blocks.temporary("always")
        try:
            norm = graph.passes.pass1(dX, dy, spec, store=store)
            assert norm.persist["persisted"] == 3
            shas[device] = [read_record(store.path, i)["sha256"] for i in range(3)]
            with pytest.MonkeyPatch.context() as mp:  # pass 2 reads, never rebuilds
                mp.setattr(ScoreSpec, "matrix", _no_rebuild)
                mp.setattr(DualRows, "matrix", _no_rebuild)
                scores[device] = graph.passes.pass2(dX, dy, spec, norm, store=store).compute()
        finally:
            store.owner.cleanup()
    assert shas["cpu"] == shas["numpy"]
    assert calls["rows"] >= 3  # pass 2 on the device read the persisted blocks
    ref, _ = _passes(X, y, _spec(X, "relu2:8", "nonlinear-leverage"), 150)
    np.testing.assert_array_equal(scores["numpy"], ref)
    assert_same_scores(scores["cpu"], ref)


def test_runner_device_field(tmp_path, diabetes, sync_scheduler, calls):
    X, y = diabetes
    npz = tmp_path / "diab.npz"
    np.savez(npz, X=X[:200], y=y[:200])
    probs = {}
    for device in ("numpy", "cpu"):
        job = validate_job({"name": "d", "dataset": {"source": str(npz), "chunk_rows": 70},
                            "model": "glm:swish", "theta": "init", "s": 50,
                            "baselines": ["linear-leverage"], "device": device,
                            "cluster": {"address": "synchronous"}})
        ctx = RunContext(job, tmp_path / device)
        pipeline.run(ctx, stop_after="score")
        assert pipeline.plan(ctx)["device"] == device
        assert (calls["reduce"] > 0) == (device == "cpu")  # 2 kinds x 3 chunks
        probs[device] = {k: stages.scoring.scores(ctx, k, stages.theta.theta(ctx))[0].compute()
                         for k in ("nonlinear-leverage", "linear-leverage")}
    for k, ref in probs["numpy"].items():
        assert_same_scores(probs["cpu"][k], ref)


def test_device_cpu_on_local_cluster(diabetes, local_client):
    """Worker processes: the spec travels with its device; torch runs there."""
    X, y = diabetes
    m = nldist.get_model("glm:swish", n_features=X.shape[1])
    th = _theta(m)
    dX, dy = da.from_array(X, chunks=(120, -1)), da.from_array(y, chunks=120)
    ref = nldist.scores(dX, dy, model=m, theta=th).compute()
    got = nldist.scores(dX, dy, model=m, theta=th, device="cpu").compute()
    assert_same_scores(got, ref)


# --------------------------------------------------------------------------------------
# CUDA: the same equalities on a GPU (skipped without one)
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device visible to torch")
class TestCuda:
    @pytest.mark.parametrize("chunks", CHUNKS)
    @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
    def test_cuda_equals_numpy(self, diabetes, case, chunks, sync_scheduler):
        _, spec_str, kind, ridge = case
        X, y = diabetes
        _check_graph_equal(X, y, spec_str, kind, ridge, chunks, "cuda")

    def test_auto_picks_cuda(self):
        assert backends.resolve("auto") == "cuda"
        assert backends.resolve("cuda:0") == "cuda:0"

    @pytest.mark.parametrize("name", ["cholqr", "cholqr2", "zero-column", "float32"])
    def test_block_r(self, diabetes, name):
        A = _blocks(diabetes)[name]
        R, method = backends.TorchBackend("cuda").block_r(A)
        Rref, mref = linalg.block_r_method(A)
        assert method == mref
        np.testing.assert_allclose(R, Rref, rtol=0, atol=1e-10 * np.abs(Rref).max())

    @pytest.mark.parametrize("name", ["inverse", "trsm", "rank", "ridge"])
    def test_row_leverage(self, diabetes, name):
        A, fac = _factors(diabetes)[name]
        assert_same_scores(backends.TorchBackend("cuda").row_leverage(A, fac),
                           linalg.row_leverage(A, fac))

    def test_scores_api_rank_deficient_float32(self, diabetes, sync_scheduler):
        X, y = diabetes
        Xz = np.hstack([X, np.zeros((X.shape[0], 1))]).astype(np.float32)
        m = nldist.get_model("glm:swish", n_features=Xz.shape[1])
        th = _theta(m)
        ref = nldist.scores(Xz, y, model=m, theta=th)
        assert_same_scores(nldist.scores(Xz, y, model=m, theta=th, device="cuda"), ref)
        assert_same_scores(nldist.scores(Xz, y, model=m, theta=th, device="auto"), ref)
