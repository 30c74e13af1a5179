"""Every registered score kind, driven by the registry (issue 25 item 1): a kind added as one
row of ``nldist.scores.kinds.KINDS`` is tested here without editing this file.

For each kind, with a model of the family its rows need (one output for the dual and data
rows, three classes for the block and margin rows): the probabilities are finite, non-negative
and sum to 1; NumPy and chunked dask input agree (any chunking); pass 1's chunk masses equal
the sums of the pass-2 values per chunk (what the fused pass routes its draws by); a kind
that cannot be computed by the API says so in one line.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import graph
from nldist.errors import NldistError
from nldist.scores.kinds import KINDS, get_kind
from nldist.scores.spec import make_spec
from nldist.store import dual_blocks

#: parametrised kinds: every registry row (with a parameter where it takes one)
ALL = [f"{k.name}:4" if k.k is not None else k.name for k in KINDS.values()]


def _inputs(kind: str):
    k = get_kind(kind)
    rng = np.random.default_rng(11)
    n, d = 900, 4
    X = rng.standard_normal((n, d))
    X[:, 0] *= np.exp(rng.standard_normal(n))
    if k.multi_output:
        m = nldist.get_model("softmax:3", d)
        th = rng.standard_normal(m.n_params) * 0.3
        y = rng.integers(0, 3, n).astype(float)
        return X, y, m, th, "cross_entropy"
    m = nldist.get_model("glm:sigmoid", d)
    th = rng.standard_normal(m.n_params) * 0.3
    y = (rng.random(n) < m.predict(th, X)).astype(float)
    return X, y, m, th, "bce"


def _scores(kind, X, y, m, th, loss):
    k = get_kind(kind)
    return nldist.scores(X, y, model=m, theta=th, kind=kind, loss=loss,
                         ridge=0.5 if k.ridge else 0.0, random_state=3)


@pytest.mark.parametrize("kind", ALL)
def test_every_kind_is_a_probability_vector_for_any_chunking(kind):
    X, y, m, th, loss = _inputs(kind)
    if kind == "auto":  # a policy over distributions, not a vector: one line from the API
        with pytest.raises(NldistError, match="nldist select"):
            _scores(kind, X, y, m, th, loss)
        return
    p = _scores(kind, X, y, m, th, loss)
    assert p.shape == (X.shape[0],) and np.all(np.isfinite(p)) and np.all(p >= 0)
    assert abs(p.sum() - 1) < 1e-9
    for c in (900, 250, 61):
        q = np.asarray(_scores(kind, da.from_array(X, chunks=(c, -1)),
                               da.from_array(y, chunks=c), m, th, loss))
        np.testing.assert_allclose(q, p, rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("kind", [k for k in ALL if not get_kind(k).response_aware])
def test_pass1_masses_are_the_sums_of_pass2_per_chunk(kind, sync_scheduler):
    X, y, m, th, loss = _inputs(kind)
    k = get_kind(kind)
    spec = make_spec(k, m, th, X.shape[1], True, loss=loss, seed=3)
    dX, dy = da.from_array(X, chunks=(200, -1)), da.from_array(y, chunks=200)
    norm = graph.passes.pass1(dX, dy, spec, ridge=0.5 if k.ridge else 0.0, masses=True)
    p = np.asarray(graph.passes.pass2(dX, dy, spec, norm))
    sums = np.add.reduceat(p, np.arange(0, X.shape[0], 200))
    np.testing.assert_allclose(norm.masses, sums, rtol=1e-7, atol=1e-14)


@pytest.mark.parametrize("kind", ALL)
def test_every_kind_refuses_bad_input_in_one_line(kind):
    X, y, m, th, loss = _inputs(kind)
    with pytest.raises(NldistError) as err:
        _scores(kind, X, y[:-5], m, th, loss)  # y shorter than X
    assert "\n" not in str(err.value)
    k = get_kind(kind)
    if k.response_aware:  # weighs rows by their residual: y is required
        with pytest.raises(NldistError, match="needs y"):
            nldist.scores(X, None, model=m, theta=th, kind=kind, loss=loss)


@pytest.mark.parametrize("kind", [k for k in ALL if not get_kind(k).response_aware])
def test_persisted_blocks_give_the_rebuilt_scores_bit_for_bit(kind, sync_scheduler):
    """Pass 2 from the blocks pass 1 persisted equals pass 2 rebuilding them, bit for bit; a
    kind whose rows are persistable really stores every chunk's block."""
    X, y, m, th, loss = _inputs(kind)
    k = get_kind(kind)
    spec = make_spec(k, m, th, X.shape[1], True, loss=loss, seed=3)
    dX, dy = da.from_array(X, chunks=(250, -1)), da.from_array(y, chunks=250)
    ridge = 0.5 if k.ridge else 0.0
    got, stored = {}, {}
    for mode in ("never", "always"):
        store = dual_blocks.temporary(mode) if mode != "never" else None
        norm = graph.passes.pass1(dX, dy, spec, ridge=ridge, store=store)
        got[mode] = np.asarray(graph.passes.pass2(dX, dy, spec, norm, store=store))
        stored[mode] = (norm.persist or {}).get("chunks", 0)
    np.testing.assert_array_equal(got["always"], got["never"])
    assert stored["always"] == (4 if spec.persistable else 0)
