"""The one-read sampler (nldist.scores.oneread, MATH.md §9): its row values against dense
oracles, the generalised leverage's bound, chunking invariance of the draws, unbiased
Horvitz–Thompson weights on a known answer, the predictor against a dense computation, and
`nldist select` with kind: auto / target_error on a real cluster path."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import nldist
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, select
from nldist.scores import oneread
from nldist.scores.rows import DualRows

ROOT = Path(__file__).resolve().parents[1]


def _problem(loss: str = "squared", n: int = 4000, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:, 0] *= np.exp(rng.standard_normal(n))  # heavy-tailed column: coherent rows
    if loss == "bce":
        m = nldist.get_model("glm:sigmoid", d)
        th = rng.standard_normal(m.n_params) * 0.5
        y = (rng.random(n) < m.predict(th, X)).astype(float)
    else:
        m = nldist.get_model("glm:swish", d)
        th = rng.standard_normal(m.n_params) * 0.3
        y = m.predict(th, X) + rng.standard_normal(n) * (1 + np.abs(X[:, 1]))
    return X, y, m, th


def _hat(A: np.ndarray) -> np.ndarray:
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    U = U[:, s > s[0] * 1e-12]
    return np.sum(U * U, axis=1)


@pytest.mark.parametrize("loss", ["squared", "bce"])
def test_exact_values_match_dense_leverage_and_influence(loss):
    X, y, m, th = _problem(loss)
    rows = DualRows(m, th, use_y=True, loss=loss)
    D = rows.matrix(X, y)
    A, c = D[:, :-1], D[:, -1]
    fac = oneread.factor_from_r(np.linalg.qr(D, mode="r"), X.shape[0])
    got = oneread.row_scores(X, y, rows=rows, theta=th, fac=fac)
    r = A @ th + c  # the residual, by (ID)
    np.testing.assert_allclose(got[:, 0], _hat(D), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], np.abs(r) * np.sqrt(_hat(A)), rtol=1e-8, atol=1e-12)
    # the API's exact kinds are these, normalised; nonlinear-leverage is the paper's score
    p = nldist.scores(X, y, model=m, theta=th, kind="influence", loss=loss)
    np.testing.assert_allclose(p, got[:, 1] / got[:, 1].sum(), rtol=1e-10)
    assert np.isclose(p.sum(), 1.0)
    lev = nldist.scores(X, y, model=m, theta=th, kind="nonlinear-leverage", loss=loss)
    np.testing.assert_allclose(lev, got[:, 0] / got[:, 0].sum(), rtol=1e-8)
    mix = nldist.scores(X, y, model=m, theta=th, kind="influence-mix", loss=loss)
    np.testing.assert_allclose(mix, 0.5 * p + 0.5 * lev, rtol=1e-8)


def test_pilot_leverage_never_underestimates_and_sums_as_cohen_et_al():
    X, y, m, th = _problem()
    n = X.shape[0]
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    pilot = np.random.default_rng(1).choice(n, 500, replace=False)
    fac = oneread.factor(D[pilot], n)
    tilde = oneread.row_scores(X, y, rows=rows, theta=th, fac=fac)[:, 0]
    exact = _hat(D)
    out = np.setdiff1d(np.arange(n), pilot)  # G_full >= G_pilot + a a^T off the pilot
    assert np.all(tilde[out] >= exact[out] - 1e-12)
    p = D.shape[1]
    assert tilde.sum() <= 2 * n * p / pilot.size
    # the pilot's leave-one-out estimate of the total is unbiased-ish: within 25 %
    z = oneread.estimate_totals(D[pilot], th, fac)
    assert abs(z["nonlinear-leverage"] / tilde.sum() - 1) < 0.25


def test_a_row_outside_the_pilots_span_gets_leverage_one():
    rng = np.random.default_rng(2)
    n = 2000
    X = np.c_[rng.standard_normal((n, 3)), np.zeros(n)]
    X[7, 3] = 1.0  # a rare category seen by one row only
    y = X @ [1.0, -1.0, 0.5, 3.0] + rng.standard_normal(n)
    m = nldist.get_model("linear", 4)
    th = np.zeros(m.n_params)
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    fac = oneread.factor(D[100:600], n)  # the pilot never saw row 7's category
    v = oneread.row_scores(X, y, rows=rows, theta=th, fac=fac)
    assert v[7, 0] == 1.0 and np.all(v[np.arange(n) != 7, 0] < 1.0)


def _draw(X, y, rows, th, fac, rates, seed, chunk):
    parts = [oneread.chunk(X[a:a + chunk], y[a:a + chunk], rows=rows, theta=th, fac=fac,
                           rates=rates, seed=seed, offset=a) for a in range(0, len(X), chunk)]
    return parts


def _setup(n=4000):
    X, y, m, th = _problem(n=n)
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X[:800], y[:800])
    fac = oneread.factor(D, X.shape[0], m=800)
    fac = replace(fac, z_hat=oneread.estimate_totals(D, th, fac))
    return X, y, m, th, rows, fac


def test_draws_and_sums_do_not_depend_on_the_chunking():
    X, y, m, th, rows, fac = _setup()
    rates = np.array([1.5 * 300 / fac.z_hat[c] for c in oneread.CANDIDATES])
    ref = None
    for chunk in (4000, 1000, 333, 57):
        parts = _draw(X, y, rows, th, fac, rates, 7, chunk)
        tot = oneread.totals(parts)
        idx = np.concatenate([p["idx"] for p in parts])
        q = np.concatenate([p["q"] for p in parts], axis=1)
        got = [oneread.finalize(idx, q, c, 300, rates[j], 7)
               for j, c in enumerate(oneread.CANDIDATES)]
        if ref is None:
            ref = (tot, idx, got)
            continue
        assert idx.tolist() == ref[1].tolist()
        for k in ("L", "B", "H", "Z", "A", "D"):
            np.testing.assert_allclose(tot[k], ref[0][k], rtol=1e-10)
        for (k1, w1, _), (k2, w2, _) in zip(got, ref[2], strict=True):
            assert idx[k1].tolist() == ref[1][k2].tolist()
            np.testing.assert_allclose(w1, w2, rtol=1e-10)
    for keep, _w, info in ref[2]:
        assert keep.size == 300 and info["method"].startswith("priority")


@pytest.mark.parametrize("name", oneread.CANDIDATES)
def test_horvitz_thompson_weights_are_unbiased(name):
    """Priority sampling's weights: the mean over seeds of sum_kept w_i f_i is sum_i f_i."""
    X, y, m, th, rows, fac = _setup(n=3000)
    j = oneread.CANDIDATES.index(name)
    rate = 1.5 * 150 / fac.z_hat[name]
    rates = np.zeros(4)
    rates[j] = rate
    f = y**2 + X[:, 0] ** 2  # a known answer: sum over all rows
    est = []
    for seed in range(200):
        parts = _draw(X, y, rows, th, fac, rates, seed, 3000)
        idx = np.concatenate([p["idx"] for p in parts])
        q = np.concatenate([p["q"] for p in parts], axis=1)
        keep, w, _ = oneread.finalize(idx, q, name, 150, rate, seed)
        est.append(np.sum(w * f[idx[keep]]))
    est = np.array(est)
    se = est.std() / np.sqrt(est.size)
    assert abs(est.mean() - f.sum()) < 4 * se


def test_the_predictor_is_the_dense_first_order_formula():
    X, y, m, th = _problem()
    n = X.shape[0]
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    fac = oneread.factor_from_r(np.linalg.qr(D, mode="r"), n)
    fac = replace(fac, z_hat={"nonlinear-leverage": 3.0, "raw-influence": 5.0,
                              "uniform": float(n)})
    tot = oneread.totals(_draw(X, y, rows, th, fac, np.zeros(4), 0, 1000))
    A, c = D[:, :-1], D[:, -1]
    r = A @ th + c
    tau = _hat(A)
    lev = _hat(D)
    infl = np.abs(r) * np.sqrt(tau)
    q = {"uniform": np.ones(n), "nonlinear-leverage": lev,
         "influence": 0.9 * infl / 5.0 + 0.1 / n,
         "influence-mix": 0.5 * infl / 5.0 + 0.5 * lev / 3.0}
    s = 400
    pred = oneread.predict(tot, s, m.n_params)
    L = np.sum(r**2)
    for name, qq in q.items():
        pi = s * qq / qq.sum()  # Poisson inclusion, uncapped
        dense = np.sum(r**2 * tau * (1 / pi - 1)) / L
        assert np.isclose(pred[name]["predicted"], dense, rtol=1e-8), name
        d_n = np.sum(tau**2 / (qq / qq.sum())) / m.n_params**2
        assert np.isclose(pred[name]["d_n"], d_n, rtol=1e-8)
    # the size for a target is the inverse of the prediction
    s_eps = oneread.size_for(tot, "influence", 0.01)
    assert np.isclose(oneread.predict(tot, s_eps, m.n_params)["influence"]["predicted"], 0.01)


@pytest.mark.parametrize("factor", ["exact", "pilot"])
def test_the_ball_multiplier_enters_the_prediction_as_a_ridge_and_nothing_else(factor):
    """On the sphere each row's term is ½ gᵀ(H + λI)⁻¹g = r² aᵀ(G + λ/2 I)⁻¹a: the
    prediction with ``with_ball(λ)`` is the dense formula with that ridge (the pilot's Gram
    scaled by m/n); the sampling values (q), the leverage and the guard do not change."""
    X, y, m, th = _problem()
    n = X.shape[0]
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    A, c = D[:, :-1], D[:, -1]
    if factor == "exact":
        fac, G, ratio = oneread.factor_from_r(np.linalg.qr(D, mode="r"), n), A.T @ A, 1.0
    else:
        pilot = np.random.default_rng(3).choice(n, 1500, replace=False)
        fac, G, ratio = oneread.factor(D[pilot], n), A[pilot].T @ A[pilot], 1500 / n
    fac = replace(fac, z_hat={"nonlinear-leverage": 3.0, "raw-influence": 5.0,
                              "uniform": float(n)})
    lam = 0.3 * float(np.linalg.eigvalsh(A.T @ A)[-1])  # a ridge that matters
    ball = fac.with_ball(lam)
    assert np.isclose(ball.ridge, ratio * lam / 2)
    parts0 = _draw(X, y, rows, th, fac, np.full(4, 1e300), 0, 1000)  # every row drawn
    parts = _draw(X, y, rows, th, ball, np.full(4, 1e300), 0, 1000)
    plain, tot = oneread.totals(parts0), oneread.totals(parts)
    r = A @ th + c
    inv = np.linalg.inv(G + ratio * lam / 2 * np.eye(G.shape[0]))
    gamma = r**2 * ratio * np.einsum("ij,jk,ik->i", A, inv, A)
    assert np.isclose(tot["B"], gamma.sum(), rtol=1e-8)
    assert tot["B"] < 0.9 * plain["B"]
    for k in ("Z", "D", "W", "L", "H"):  # the values drawn by and the guard: unchanged
        np.testing.assert_array_equal(tot[k], plain[k])
    for a, b in zip(parts0, parts, strict=True):
        np.testing.assert_array_equal(a["q"], b["q"])
    # the first-order formula at s with the ridge's terms
    s = 400
    pred = oneread.predict(tot, s, m.n_params)
    with pytest.raises(NldistError, match="multiplier must be finite and >= 0"):
        fac.with_ball(-1.0)
    u = pred["uniform"]["predicted"]
    assert np.isclose(u, (n / s - 1) * gamma.sum() / np.sum(r**2), rtol=1e-8)


def test_the_ball_multiplier_is_the_kkt_multiplier_on_the_sphere_and_0_inside():
    from nldist.precond.gradient import ball_multiplier, grad_block
    from nldist.train import train_on_sample

    X, y, m, _ = _problem("bce", n=3000)
    w = np.ones(len(y))
    free = train_on_sample(m, X, y, w, radius=1e3, loss="bce").theta
    assert ball_multiplier(m, free, X, y, 1e3, loss="bce") == 0.0  # interior
    R = 0.5 * float(np.linalg.norm(free))
    on = train_on_sample(m, X, y, w, radius=R, tol=1e-12, loss="bce").theta
    lam = ball_multiplier(m, on, X, y, R, loss="bce")
    g = grad_block(m, on, X, y, loss="bce")["grad"]
    assert lam > 0
    assert np.linalg.norm(g + lam * on) < 1e-4 * np.linalg.norm(g)  # KKT: ∇L + λθ = 0
    # counted n/m times (a pilot's rows): the multiplier scales with the weight
    assert np.isclose(ball_multiplier(m, on, X, y, R, weight=7.0, loss="bce"), 7.0 * lam)


def test_the_prediction_caps_the_rows_a_sample_takes_with_certainty():
    """With few rows of high leverage and large residuals, a sample of moderate size takes
    them with certainty (pi = 1): their terms vanish, and the prediction is the dense capped
    formula, never clipped at zero by the uncapped one."""
    X, y, m, th = _problem(n=3000)
    X[:30, 0] *= 40.0  # a few very high leverage rows
    y[:30] += 30.0  # with large residuals
    n = X.shape[0]
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    fac = oneread.factor_from_r(np.linalg.qr(D, mode="r"), n)
    fac = replace(fac, z_hat={"nonlinear-leverage": 3.0, "raw-influence": 5.0,
                              "uniform": float(n)})
    parts = [oneread.chunk(X[a:a + 500], y[a:a + 500], rows=rows, theta=th, fac=fac,
                           rates=np.zeros(4), seed=0, offset=a, heavy=np.zeros(4))
             for a in range(0, n, 500)]
    tot = oneread.totals(parts)
    A, c = D[:, :-1], D[:, -1]
    r = A @ th + c
    tau, lev = _hat(A), _hat(D)
    infl = np.abs(r) * np.sqrt(tau)
    L = np.sum(r**2)
    for s in (60, 300, 1500):
        pred = oneread.predict(tot, s, m.n_params)
        for name, qq in {"nonlinear-leverage": lev,
                         "influence": 0.9 * infl / 5.0 + 0.1 / n}.items():
            pi = np.minimum(1.0, s * qq / qq.sum())
            dense = np.sum(r**2 * tau * (1 / pi - 1)) / L
            assert np.isclose(pred[name]["predicted"], dense, rtol=1e-8), (name, s)
            assert dense > 0
        s_eps = oneread.size_for(tot, "influence", 0.01)
        assert np.isclose(oneread.predict(tot, s_eps, m.n_params)["influence"]["predicted"],
                          0.01, rtol=1e-4)


def test_auto_keeps_the_mixture_unless_a_trusted_candidate_is_clearly_better():
    base = {"predicted": 0.01, "d_n": 1.0, "trusted": True, "total": 1.0}
    pred = {c: dict(base) for c in oneread.CANDIDATES}
    assert oneread.choose(pred)[0] == "influence-mix"
    pred["uniform"] = {**base, "predicted": 0.001, "trusted": False}  # untrusted: ignored
    assert oneread.choose(pred)[0] == "influence-mix"
    pred["influence"] = {**base, "predicted": 0.005}
    assert oneread.choose(pred)[0] == "influence"


def test_the_effective_sample_size_is_the_dense_kish_formula_and_auto_falls_back_to_uniform():
    """ESS = n² / Σ 1/π_i (π capped at 1) from the pass's sums, s exactly for uniform; on a
    table whose few outlying rows draw the mixture's weights, ``auto`` samples uniformly while
    the mixture's ESS is below p (and says so), and keeps the mixture once it is not."""
    X, y, m, th = _problem(n=3000)
    X[:30, 0] *= 40.0  # a few very high leverage rows
    y[:30] += 30.0  # with large residuals: the influence half piles its mass on them
    n, p = X.shape[0], m.n_params
    rows = DualRows(m, th, use_y=True)
    D = rows.matrix(X, y)
    fac = oneread.factor_from_r(np.linalg.qr(D, mode="r"), n)
    fac = replace(fac, z_hat={"nonlinear-leverage": 3.0, "raw-influence": 5.0,
                              "uniform": float(n)})
    parts = [oneread.chunk(X[a:a + 700], y[a:a + 700], rows=rows, theta=th, fac=fac,
                           rates=np.zeros(4), seed=0, offset=a, heavy=np.zeros(4))
             for a in range(0, n, 700)]
    tot = oneread.totals(parts)
    A, c = D[:, :-1], D[:, -1]
    r = A @ th + c
    tau, lev = _hat(A), _hat(D)
    infl = np.abs(r) * np.sqrt(tau)
    mix = 0.5 * infl / 5.0 + 0.5 * lev / 3.0
    fell_back = kept = 0
    for s in (p, 2 * p, 3 * p, 10 * p, 20 * p, 600):
        pred = oneread.predict(tot, s, p)
        assert np.isclose(pred["uniform"]["ess"], s, rtol=1e-9)
        pi = np.minimum(1.0, s * mix / mix.sum())
        dense = n**2 / np.sum(1 / pi)
        assert np.isclose(pred["influence-mix"]["ess"], dense, rtol=1e-8), s
        assert dense <= s
        name, why = oneread.choose(pred)
        if dense < p:
            assert name == "uniform", s
            assert "effective sample size" in why and f"{dense:.3g}" in why, why
            fell_back += 1
        else:
            assert name == "influence-mix", (s, why)
            assert "effective" not in why
            kept += 1
    assert fell_back >= 2 and kept >= 2  # both sides of the floor were exercised
    # without the pass's W (an older totals dict) the floor is not applied
    old = {k: v for k, v in tot.items() if k != "W"}
    assert oneread.choose(oneread.predict(old, p, p))[0] == "influence-mix"


def test_auto_never_switches_to_a_candidate_below_the_ess_floor():
    base = {"predicted": 0.01, "d_n": 1.0, "trusted": True, "total": 1.0, "ess": 50.0,
            "ess_floor": 10.0, "ess_ok": True}
    pred = {c: dict(base) for c in oneread.CANDIDATES}
    pred["influence"] = {**base, "predicted": 0.001, "ess": 5.0, "ess_ok": False}
    assert oneread.choose(pred)[0] == "influence-mix"  # better predicted, too few rows
    pred["nonlinear-leverage"] = {**base, "predicted": 0.002}
    assert oneread.choose(pred)[0] == "nonlinear-leverage"


# ---------------------------------------------------------------------------------------
# through the pipeline and the CLI
# ---------------------------------------------------------------------------------------


@pytest.fixture()
def npz(tmp_path):
    X, y, _, _ = _problem(n=6000, seed=3)
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    return path


def _job(src, **kw):
    data = {"name": "one", "dataset": {"source": str(src), "chunk_rows": 700},
            "model": "glm:swish", "s": 300, "pilot_s": 300, "pilot_factor_s": 1000,
            "eval_s": 1000,
            "cache_x": "never", "cluster": {"address": "synchronous"}, **kw}
    return validate_job(data)


def test_auto_and_target_error_through_select(npz, tmp_path, sync_scheduler):
    m = select(RunContext(_job(npz, kind="auto"), tmp_path / "a"))
    smp = m["sampling"]
    assert smp["requested"] == "auto" and smp["kind"] in oneread.CANDIDATES
    assert m["cost"]["store_reads_counted"]["passes"] == 1.0
    assert smp["size"] == 300
    t = select(RunContext(_job(npz, kind="influence-mix", target_error=0.02), tmp_path / "t"))
    ts = t["sampling"]
    want = ts["sizes_for_target"]["influence-mix"]
    assert ts["requested_size"] == int(np.ceil(want)) and ts["target_error"] == 0.02
    assert ts["predicted"]["influence-mix"]["predicted"] <= 0.02 + 1e-12
    assert t["s"] == ts["size"]


@pytest.mark.parametrize("bad, msg", [
    ({"target_error": 0}, "target_error"),
    ({"target_error": 1.5}, "target_error"),
    ({"s": 0}, "s"),
    ({"pilot_factor_s": 0}, "pilot_factor_s"),
    ({"kind": "auto", "baselines": ["influence"]}, "response-aware"),
])
def test_bad_sampling_settings_are_one_line(npz, tmp_path, bad, msg):
    job = tmp_path / "job.yaml"
    body = {"name": "bad", "dataset": {"source": str(npz)}, "model": "glm:swish",
            "cluster": {"address": "synchronous"}, **bad}
    job.write_text(json.dumps(body))
    r = subprocess.run([sys.executable, "-m", "nldist", "validate", str(job)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and msg in out and "Traceback" not in out


def test_run_refuses_a_response_aware_kind_in_one_line(npz, tmp_path, sync_scheduler):
    from nldist import pipeline

    with pytest.raises(NldistError, match="response-aware"):
        pipeline.run(RunContext(_job(npz, kind="influence", theta="zeros", baselines=[]),
                                tmp_path / "r"), stop_after="score")


def test_select_on_a_parquet_directory_in_place_reads_it_once(tmp_path, sync_scheduler):
    """`format: parquet` (scored in place): the one-read sample equals the one of the same
    rows ingested to Zarr, and the partitions are read once each, counted where read."""
    import pandas as pd

    X, y, _, _ = _problem(n=3000, d=4, seed=5)
    src = tmp_path / "pq"
    src.mkdir()
    for i, part in enumerate(np.array_split(np.arange(3000), 10)):
        pd.DataFrame({**{f"x{j}": X[part, j] for j in range(4)}, "t": y[part]}).to_parquet(
            src / f"part-{i}.parquet")
    common = {"name": "pq", "model": "glm:swish", "s": 200, "pilot_s": 300,
              "pilot_factor_s": 1200, "eval_s": 500, "cache_x": "never", "kind": "auto",
              "cluster": {"address": "synchronous"}}
    got = {}
    for fmt in ("parquet", "zarr"):
        ds = {"source": str(src), "target": "t", "chunk_rows": 300}
        if fmt == "parquet":
            ds["format"] = "parquet"
        m = select(RunContext(validate_job({**common, "dataset": ds}), tmp_path / fmt))
        got[fmt] = (m, np.load(tmp_path / fmt / "samples" / "auto.npz"))
    mp, sp = got["parquet"]
    counted = mp["cost"]["store_reads_counted"]
    # no reservoir in place: the pilots read 4 whole partitions (once, shared by the
    # theta_0 pilot and the factor's), then the one read: 14 partition reads of 10
    assert (counted["chunk_reads"], counted["x_chunks"]) == (14, 10)
    assert "Parquet" in counted["note"]
    assert mp["cost"]["by"]["pilot"] == 0.4 + 0.4  # both pilots' 4 chunks, as planned
    mz, sz = got["zarr"]
    assert mz["cost"]["store_reads_counted"]["passes"] == 1.0  # the reservoir: no pilot read
    assert mp["sampling"]["kind"] == mz["sampling"]["kind"]
    assert sp["indices"].size == sz["indices"].size == 200


def test_select_sample_api_numpy_and_dask_agree_and_reach_the_target():
    import dask.array as da

    X, y, m, th = _problem(n=5000, seed=8)
    i1, w1, info = nldist.select_sample(X, y, m, th, s=250, kind="auto", pilot_rows=1000,
                                        random_state=4)
    assert i1.size == w1.size == 250 and np.all(np.diff(i1) > 0) and np.all(w1 >= 1)
    assert info["requested"] == "auto" and info["kind"] in oneread.CANDIDATES
    i2, w2, _ = nldist.select_sample(da.from_array(X, chunks=(613, -1)),
                                     da.from_array(y, chunks=613), m, th, s=250,
                                     pilot_rows=1000, random_state=4)
    assert i2.tolist() == i1.tolist()
    np.testing.assert_allclose(w2, w1, rtol=1e-9)
    i3, _, t = nldist.select_sample(X, y, m, th, target_error=0.05, kind="influence-mix",
                                    pilot_rows=1000)
    assert i3.size == t["requested_size"]
    assert t["predicted"]["influence-mix"]["predicted"] <= 0.05 + 1e-12
    for bad, msg in [({"s": 0}, "s must be"), ({"s": 10, "target_error": 0.1}, "not both"),
                     ({"target_error": 2.0}, "target_error"),
                     ({"s": 10, "kind": "linear-leverage"}, "one read"),
                     ({"s": 10, "pilot_rows": 0}, "pilot_rows")]:
        with pytest.raises(NldistError, match=msg):
            nldist.select_sample(X, y, m, th, **bad)


def test_a_pilot_row_alone_in_its_direction_with_zero_residual_keeps_the_totals_finite():
    """Leave-one-out u = inf and r = 0 (a level seen once in the pilot, theta_0 fitted on
    it): gamma was 0·inf = NaN, and target_error then found no finite size."""
    rng = np.random.default_rng(5)
    m, p = 200, 4
    A = np.zeros((m, p))
    A[:, :3] = rng.standard_normal((m, 3))
    A[0] = [0.0, 0.0, 0.0, 1.0]  # the only row with the 4th column
    theta = rng.standard_normal(p)
    r = rng.standard_normal(m)
    r[0] = 0.0  # fitted exactly
    D = np.column_stack([A, r - A @ theta])
    fac = oneread.factor(D, 10 * m)
    tot = oneread.pilot_totals(D, theta, fac)
    for key in ("L", "B", "H", "Z", "A", "D"):
        assert np.all(np.isfinite(tot[key])), key
    assert all(np.isfinite(v) for v in oneread.estimate_totals(D, theta, fac).values())
