"""R-only QR kernels against a dense NumPy SVD: every method, conditioning and rank case.

Also pins the automatic method choice, the tree combination over ragged blocks, the
sliced pass-2 solve, and that scoring reads each block of X exactly twice (pass 1 + pass 2).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import _budget, _runtime
from nldist.scores import block, linalg
from nldist.scores.spec import ScoreSpec, make_spec

EPS = np.finfo(np.float64).eps
METHODS = ["auto", "cholqr", "cholqr2", "scholqr3", "householder"]


def svd_leverage(A: np.ndarray, rtol: float | None = None) -> tuple[np.ndarray, int]:
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    tol = (rtol or max(A.shape) * EPS) * s[0]
    r = int(np.sum(s > tol))
    return (U[:, :r] ** 2).sum(1), r


def with_condition(n: int, q: int, kappa: float, rng, scales=None) -> np.ndarray:
    """(n, q) with singular values geomspace(1, 1/kappa), optional column scales."""
    U, _ = np.linalg.qr(rng.standard_normal((n, q)))
    V, _ = np.linalg.qr(rng.standard_normal((q, q)))
    A = (U * np.geomspace(1.0, 1.0 / kappa, q)) @ V.T
    return A * scales if scales is not None else A


def leverage_via(A: np.ndarray, method: str, blocks: int = 1) -> tuple[np.ndarray, int, set]:
    """Leverage of A from per-block R's (given method), an R tree and the sliced solve."""
    parts = np.array_split(A, blocks)
    got = [linalg.block_r_method(b, method) for b in parts]
    R = linalg.combine_r([r for r, _ in got])
    fac = linalg.finalize_r(R, A.shape[0])
    return linalg.row_leverage(A, fac), fac.rank, {m for _, m in got}


def householder_error(A: np.ndarray, ref: np.ndarray) -> float:
    """Error of the textbook path (scipy Householder R, triangular solve) for comparison."""
    from scipy import linalg as sla

    R = sla.qr(A, mode="r")[0][: A.shape[1]]
    Z = sla.solve_triangular(R, A.T, trans="T")
    return float(np.max(np.abs((Z * Z).sum(0) - ref)))


# --------------------------------------------------------------------------------------
# Block R: R^T R = A^T A, upper triangular, every method
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_block_r_reproduces_the_gram_on_real_data(diabetes, method):
    X, y = diabetes
    A = np.hstack([X, np.ones((len(X), 1)), y[:, None]])
    R, used = linalg.block_r_method(A, method)
    assert used == method if method != "auto" else used == "cholqr"
    assert np.allclose(R, np.triu(R), atol=0)
    G = A.T @ A
    assert np.max(np.abs(R.T @ R - G)) <= 1e3 * EPS * np.max(np.abs(G))
    ref, r = svd_leverage(A)
    lev, rank, _ = leverage_via(A, method)
    assert rank == r == A.shape[1]
    np.testing.assert_allclose(lev, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (3, 4), (4, 4), (17, 4), (5, 0)])
def test_block_r_small_and_empty_blocks(method, shape, rng):
    A = rng.standard_normal(shape)
    R = linalg.block_r(A, method)
    assert R.shape == (shape[1], shape[1])
    np.testing.assert_allclose(R.T @ R, A.T @ A, atol=1e-12)


def test_unknown_method_is_an_error(rng):
    with pytest.raises(ValueError, match="unknown QR method"):
        linalg.block_r(rng.standard_normal((10, 2)), "gram")


# --------------------------------------------------------------------------------------
# Conditioning: auto picks the cheapest accurate method and is as accurate as Householder
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kappa, expected",
    [(1e1, "cholqr"), (1e4, "cholqr2"), (1e9, "scholqr3"), (1e11, "scholqr3")],
)
def test_auto_choice_and_accuracy_vs_condition(kappa, expected, rng):
    A = with_condition(6000, 12, kappa, rng)
    ref, r = svd_leverage(A)
    assert r == 12
    lev, rank, used = leverage_via(A, "auto")
    assert used == {expected} and rank == r
    err = np.max(np.abs(lev - ref))
    # no worse than the textbook Householder path (up to a small factor), and tight in
    # absolute terms: leverage <= 1, error ~ eps * kappa
    assert err <= 10 * householder_error(A, ref) + 1e-14
    assert err <= 1e-13 * max(kappa, 10.0)


def test_column_scaling_does_not_force_the_slow_path(rng):
    """Leverage is invariant to column scaling; the choice uses the equilibrated Gram."""
    scales = np.geomspace(1e-4, 1e4, 10)
    A = with_condition(4000, 10, 5.0, rng, scales)
    assert np.linalg.cond(A) > 1e8
    lev, rank, used = leverage_via(A, "auto", blocks=3)
    ref, r = svd_leverage(A / scales)
    assert used == {"cholqr"} and rank == r == 10
    np.testing.assert_allclose(lev, ref, atol=1e-14)


def test_forced_cholqr_is_inaccurate_when_ill_conditioned_but_auto_is_not(rng):
    A = with_condition(4000, 10, 1e6, rng)
    ref, _ = svd_leverage(A)
    err_chol = np.max(np.abs(leverage_via(A, "cholqr")[0] - ref))
    err_auto = np.max(np.abs(leverage_via(A, "auto")[0] - ref))
    assert err_chol > 1e3 * err_auto
    assert err_auto < 1e-9


# --------------------------------------------------------------------------------------
# Rank deficiency: correct scores and rank whatever the method
# --------------------------------------------------------------------------------------


def _deficient(kind: str, rng) -> tuple[np.ndarray, int]:
    X = rng.standard_normal((3000, 6))
    if kind == "zero-column":
        return np.hstack([X, np.zeros((3000, 1)), np.ones((3000, 1))]), 7
    if kind == "collinear":
        return np.hstack([X, X[:, :1] - 3 * X[:, 1:2], X[:, 2:3]]), 6
    if kind == "low-rank":
        return X @ rng.standard_normal((6, 9)), 6
    if kind == "near-collinear":  # rank 7 numerically: perturbation below n*eps*||A||
        return np.hstack([X, X[:, :1] + 1e-14 * rng.standard_normal((3000, 1))]), 6
    raise AssertionError(kind)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["zero-column", "collinear", "low-rank", "near-collinear"])
@pytest.mark.parametrize("blocks", [1, 5])
def test_rank_deficient_scores_and_rank(kind, method, blocks, rng):
    if method == "cholqr" and kind != "zero-column":
        pytest.skip("forced CholeskyQR (no condition check) is not rank-revealing")
    A, r_expected = _deficient(kind, rng)
    ref, r = svd_leverage(A)
    assert r == r_expected
    lev, rank, used = leverage_via(A, method, blocks)
    assert rank == r
    np.testing.assert_allclose(lev, ref, atol=1e-10)
    assert abs(lev.sum() - r) < 1e-8
    if method == "auto" and kind == "zero-column":
        assert used == {"cholqr"}  # the zero column is deflated, no slow path
    if method == "auto" and kind in ("collinear", "low-rank"):
        assert used == {"householder"}


def test_all_zero_block_and_all_zero_matrix():
    R, used = linalg.block_r_method(np.zeros((50, 3)))
    assert used == "zero" and not R.any()
    fac = linalg.finalize_r(R, 50)
    assert fac.rank == 0 and not linalg.row_leverage(np.zeros((50, 3)), fac).any()


# --------------------------------------------------------------------------------------
# Ragged blocks, the R tree, pass 2 in slices, the dask path
# --------------------------------------------------------------------------------------


def test_ragged_blocks_and_tree_reduction(rng):
    A = with_condition(5000, 8, 1e7, rng)
    ref, r = svd_leverage(A)
    cuts = [0, 1, 1, 9, 700, 2500, 4999, 5000]  # one-row, empty and tiny blocks
    blocks = [A[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    Rs = [linalg.block_r(b) for b in blocks]
    R = linalg.combine_r([linalg.combine_r(Rs[:3]), linalg.combine_r(Rs[3:])])
    fac = linalg.finalize_r(R, len(A))
    assert fac.rank == r
    np.testing.assert_allclose(linalg.row_leverage(A, fac), ref, atol=1e-9)


def test_sliced_solve_equals_unsliced(monkeypatch, rng):
    A = with_condition(3000, 5, 1e3, rng)
    fac = linalg.finalize_r(linalg.block_r(A), len(A))
    whole = linalg.row_leverage(A, fac)
    monkeypatch.setattr(_budget, "SUB_BYTES", 1)  # 256-row slices
    assert _budget.sub_rows(5) == 256
    A2 = A.copy()
    sliced = linalg.row_leverage(A2, fac, overwrite_a=True)
    np.testing.assert_allclose(sliced, whole, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(linalg.row_leverage(A, fac), sliced)
    # the input is not touched unless allowed
    np.testing.assert_array_equal(A, with_condition(3000, 5, 1e3, np.random.default_rng(12345)))


@pytest.mark.parametrize("kappa", [1.0, 1e2, 3e3, 3e4, 1e8])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_inverse_gemm_path_matches_solve_and_svd(kappa, ridge, rng):
    """Pass 2 multiplies by R^-1 exactly when cond <= INVERSE_MAX_COND; both paths agree
    with the SVD reference to ~cond * eps."""
    A = with_condition(4000, 12, kappa, rng)
    R = linalg.block_r(A)
    fac = linalg.finalize_r(R, len(A), ridge=ridge)
    cond = kappa if ridge == 0 else np.sqrt((1 + ridge) / (kappa**-2 + ridge))
    assert (fac.solve_r is None) == (cond <= linalg.INVERSE_MAX_COND)
    got = linalg.row_leverage(A, fac)
    solve = linalg.RFactor(fac.R, fac.svals, fac.rank, fac.ridge,
                           np.asfortranarray(np.linalg.inv(fac.basis)) if fac.solve_r is None
                           else fac.solve_r, None, fac.total)
    if ridge == 0:
        ref, _ = svd_leverage(A)
    else:
        U, sv, _ = np.linalg.svd(A, full_matrices=False)
        ref = (U**2 * (sv**2 / (sv**2 + ridge))).sum(1)
    tol = 50 * min(cond, 1e8) * EPS * ref.max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(linalg.row_leverage(A, solve), ref, rtol=0, atol=tol)
    assert got.sum() == pytest.approx(fac.total, rel=1e-9)


@pytest.mark.parametrize("qr_method", METHODS)
def test_pass_kernels_in_slices_match_dense(monkeypatch, diabetes, qr_method):
    """pass1_block / pass2_block with many row slices equal the dense dual-matrix reference."""
    monkeypatch.setattr(_budget, "SUB_BYTES", 1)
    X, y = diabetes
    m = nldist.get_model("glm:swish", X.shape[1])
    theta = 0.3 * np.random.default_rng(1).normal(size=m.n_params)
    spec = replace(make_spec("nonlinear-leverage", m, theta, X.shape[1], True),
                   qr_method=qr_method)
    stats = block.pass1_block(X, y, spec)
    assert stats["methods"] == {"cholqr" if qr_method == "auto" else qr_method: 1}
    norm = block.finalize_pass1(spec, stats)
    ref, r = svd_leverage(nldist.dual_matrix(m, theta, X, y))
    np.testing.assert_allclose(block.pass2_block(X, y, spec, norm), ref / r, atol=1e-15)


def test_dask_leverage_ill_conditioned_and_deficient(sync_scheduler, rng):
    A = np.hstack([with_condition(4000, 6, 1e9, rng), np.zeros((4000, 1))])
    A = np.hstack([A, A[:, :1] + A[:, 1:2]])
    ref, r = svd_leverage(A)
    assert r == 6
    lev = nldist.leverage(da.from_array(A, chunks=(700, -1))).compute()
    np.testing.assert_allclose(lev, ref, atol=1e-7)
    assert abs(lev.sum() - r) < 1e-6


def test_overflowing_gram_falls_back_to_householder(rng):
    """Finite entries ~1e160 overflow A^T A; the block R still comes out right."""
    X = rng.standard_normal((500, 3))
    A = X * 1e160
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(A.T @ A).all()
    ref, _ = svd_leverage(X)
    np.testing.assert_allclose(nldist.leverage(A), ref, atol=1e-13)


def test_nan_in_data_still_names_the_row(diabetes):
    X, y = diabetes
    Xn = X.copy()
    Xn[123, 4] = np.inf
    with pytest.raises(nldist.NldistError, match="first bad row 123"):
        nldist.scores(Xn, y, model="glm:sigmoid", theta=np.full(11, 0.1))


# --------------------------------------------------------------------------------------
# Each pass reads X once (issue 5 item 1)
# --------------------------------------------------------------------------------------


def counting_array(A: np.ndarray, chunk_rows: int) -> tuple[da.Array, Counter]:
    """A dask array whose every block read is counted (by block index)."""
    reads: Counter = Counter()
    lock = threading.Lock()
    starts = list(range(0, A.shape[0], chunk_rows))

    def load(i: int) -> np.ndarray:
        with lock:
            reads[i] += 1
        return A[starts[i] : starts[i] + chunk_rows]

    blocks = [
        da.from_delayed(dask.delayed(load, pure=False)(i),
                        shape=(min(chunk_rows, A.shape[0] - s), A.shape[1]), dtype=A.dtype)
        for i, s in enumerate(starts)
    ]
    return da.concatenate(blocks, axis=0), reads


@pytest.mark.parametrize("kappa", [1e1, 1e9])
def test_scores_read_each_block_exactly_twice(sync_scheduler, rng, kappa):
    A = with_condition(3000, 5, kappa, rng)
    y = rng.standard_normal(3000)
    dX, reads = counting_array(A, 500)
    p = nldist.scores(dX, y, model="glm:sigmoid", theta=np.full(6, 0.2))
    assert set(reads.values()) == {1} and len(reads) == 6  # pass 1: one read per block
    out = p.compute()
    assert set(reads.values()) == {2} and len(reads) == 6  # pass 2: one more
    ref, r = svd_leverage(nldist.dual_matrix(nldist.get_model("glm:sigmoid", 5),
                                             np.full(6, 0.2), A, y))
    np.testing.assert_allclose(out, ref / r, rtol=0, atol=1e-16 * kappa)


def test_uniform_scores_read_no_block(sync_scheduler, rng):
    A = rng.standard_normal((3000, 5))
    dX, reads = counting_array(A, 700)
    p = nldist.scores(dX, kind="uniform")
    assert p.chunks == dX.chunks[:1]
    np.testing.assert_array_equal(p.compute(), np.full(3000, 1 / 3000))
    assert not reads


@pytest.mark.parametrize("cost", ["closed_form", "costly"])
def test_ill_conditioned_dual_block_kept_or_rebuilt(monkeypatch, rng, cost):
    """The slow-path block is rebuilt (closed forms) or kept from the slices (costly)."""
    monkeypatch.setattr(_budget, "SUB_BYTES", 1)
    monkeypatch.setattr(ScoreSpec, "rebuild_cost", property(lambda self: cost))
    X = with_condition(2000, 4, 1e8, rng)
    y = rng.standard_normal(2000)
    m = nldist.get_model("glm:tanh", 4)
    theta = np.array([0.3, -0.2, 0.1, 0.5, 0.05])
    spec = make_spec("nonlinear-leverage", m, theta, 4, True)
    stats = block.pass1_block(X, y, spec)
    assert set(stats["methods"]) <= {"scholqr3", "householder"}
    norm = block.finalize_pass1(spec, stats)
    ref, r = svd_leverage(nldist.dual_matrix(m, theta, X, y))
    np.testing.assert_allclose(block.pass2_block(X, y, spec, norm) * r, ref, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_gram_without_copy_matches_dense(monkeypatch, diabetes, bias, augment, dtype):
    monkeypatch.setattr(_budget, "SUB_BYTES", 1)
    X, y = diabetes
    X = X.astype(dtype)
    spec = make_spec("linear-leverage", "linear" if bias else "linear:nobias", None, X.shape[1],
                     True, augment)
    norm = block.finalize_pass1(spec, block.pass1_block(X, y, spec))
    cols = [X.astype(np.float64)] + ([np.ones((len(X), 1))] if bias else []) + \
        ([y[:, None]] if augment else [])
    ref, r = svd_leverage(np.hstack(cols))
    assert norm.rank == r
    np.testing.assert_allclose(block.pass2_block(X, y, spec, norm) * r, ref, atol=1e-13)


def test_heap_reuse_context_in_worker_setting(monkeypatch, diabetes):
    """Dask workers set MALLOC_TRIM_THRESHOLD_: the kernels then run inside the heap-reuse
    context (nested, across threads) and give the same scores; the depth returns to 0."""
    from concurrent.futures import ThreadPoolExecutor

    X, y = diabetes
    m = nldist.get_model("glm:swish", X.shape[1])
    theta = np.full(m.n_params, 0.1)
    plain = nldist.scores(X, y, model=m, theta=theta)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with _runtime.reuse_freed_memory(), ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda _: nldist.scores(X, y, model=m, theta=theta), range(4)))
    assert _runtime._depth == 0
    for out in outs:
        np.testing.assert_array_equal(out, plain)
