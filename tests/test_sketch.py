"""Sketched scores: column sketch (large p) and row sketch + JL (huge n) against exact ones."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import NldistError
from nldist.scores.sketch import countsketch_rows, hash_rows, sparse_sign


@pytest.fixture(scope="module")
def heavy():
    rng = np.random.default_rng(3)
    X = rng.standard_t(3, size=(6000, 24))
    y = rng.normal(size=6000)
    m = nldist.get_model("glm:tanh", 24)
    theta = 0.1 * rng.normal(size=25)
    return X, y, m, theta, nldist.scores(X, y, model=m, theta=theta)


def test_hash_is_deterministic_and_balanced():
    b1, s1 = hash_rows(np.arange(100_000), 7, 50)
    b2, s2 = hash_rows(np.arange(100_000), 7, 50)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(s1, s2)
    counts = np.bincount(b1, minlength=50)
    assert counts.min() > 1800 and counts.max() < 2200
    assert abs(s1.mean()) < 0.02
    assert not np.array_equal(hash_rows(np.arange(100), 8, 50)[0], b1[:100])


def test_countsketch_is_linear_over_blocks(rng):
    A = rng.normal(size=(1000, 5))
    whole = countsketch_rows(A, 0, 1, 64)
    parts = countsketch_rows(A[:333], 0, 1, 64) + countsketch_rows(A[333:], 333, 1, 64)
    np.testing.assert_allclose(whole, parts, atol=1e-12)
    np.testing.assert_allclose(np.sum(whole**2), np.sum(A**2), rtol=0.2)


def test_sparse_sign_is_sparse_and_norm_preserving(rng):
    S = sparse_sign(10_000, 64, seed=2, nnz=4)
    assert S.shape == (10_000, 64) and S.nnz == 40_000
    np.testing.assert_allclose(np.asarray((S.multiply(S)).sum(axis=1)).ravel(), 1.0)
    x = rng.normal(size=10_000)
    assert abs(np.sum((S.T @ x) ** 2) / np.sum(x**2) - 1) < 0.5


def test_column_sketch_is_exact_when_k_covers_the_rank(heavy):
    X, y, m, theta, ref = heavy
    got = nldist.scores(X, y, model=m, theta=theta, sketch={"cols": 40})
    np.testing.assert_allclose(got, ref, atol=1e-15)


def test_column_sketch_error_shrinks_with_k(heavy):
    X, y, m, theta, ref = heavy
    errs = [np.median(np.abs(nldist.scores(X, y, model=m, theta=theta, sketch={"cols": k,
                                                                                 "seed": 1})
                             / ref - 1)) for k in (8, 16, 24)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("rows, jl, med, worst", [(2500, 200, 0.12, 0.6), (5000, 800, 0.06, 0.3)])
def test_row_sketch_relative_error(heavy, rows, jl, med, worst):
    """(1 +- eps) per row: median and worst relative errors bounded, tighter with r and k."""
    X, y, m, theta, ref = heavy
    got = nldist.scores(X, y, model=m, theta=theta, sketch={"rows": rows, "jl": jl, "seed": 5})
    rel = np.abs(got / ref - 1)
    assert abs(got.sum() - 1) < 1e-12
    assert np.median(rel) < med and rel.max() < worst


def test_sketches_do_not_depend_on_chunking(heavy, sync_scheduler):
    X, y, m, theta, _ = heavy
    for sk in ({"rows": 3000, "jl": 100, "seed": 9}, {"cols": 12, "seed": 9}):
        a = nldist.scores(X, y, model=m, theta=theta, sketch=sk)
        for rows in ((6000,), (1, 2999, 3000), (500,) * 12):
            b = nldist.scores(da.from_array(X, chunks=(rows, -1)), y, model=m, theta=theta,
                              sketch=sk).compute()
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-16)


def test_row_sketch_with_rank_deficient_dual(rng):
    X = rng.normal(size=(3000, 6))
    X = np.hstack([X, X[:, :1] - X[:, 1:2]])
    m = nldist.get_model("glm:softplus", 7)
    theta = np.full(8, 0.05)
    ref = nldist.scores(X, None, model=m, theta=theta)
    got = nldist.scores(X, None, model=m, theta=theta, sketch={"rows": 2000, "jl": 600})
    assert np.median(np.abs(got / ref - 1)) < 0.1


def test_sketch_errors(heavy):
    X, y, m, theta, _ = heavy
    with pytest.raises(NldistError,
                       match=r"^sketch: rows: Input should be greater than 0 \(got 0\)$"):
        nldist.scores(X, y, model=m, theta=theta, sketch={"rows": 0})
    with pytest.raises(NldistError,
                       match=r"^sketch: k: Extra inputs are not permitted \(got 3\)$"):
        nldist.scores(X, y, model=m, theta=theta, sketch={"k": 3})
    with pytest.raises(NldistError, match="row sketch approximates leverage"):
        nldist.scores(X, y, model=m, theta=theta, kind="nonlinear-norm", sketch={"rows": 10})


def test_job_with_sketch_runs_and_resumes(tmp_path, sync_scheduler):
    from nldist import pipeline
    from nldist.jobs import validate_job
    from nldist.pipeline import RunContext

    job = validate_job({"name": "sk", "dataset": {"source": "diabetes", "standardize": True},
                        "model": "glm:swish", "s": 80, "sketch": {"rows": 1500, "jl": 200},
                        "cluster": {"address": "synchronous"}})
    m = pipeline.run(RunContext(job, tmp_path / "o"))
    assert m["rank"] == 12 and m["kinds"]["nonlinear-leverage"]["rel_error"] > -1e-9
    import zarr

    attrs = dict(zarr.open_group(str(tmp_path / "o" / "scores.zarr"), mode="r")
                 ["nonlinear-leverage"].attrs)
    assert attrs["sketch"]["rows"] == 1500 and attrs["complete"]
    again = pipeline.run(RunContext(job, tmp_path / "o"))
    assert not any(k.startswith("score:") for k in again["timings"])
