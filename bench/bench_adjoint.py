"""Adjoint engine vs the paper's reference algorithm, same rows, same model, same process.

The reference (the paper's public research code, MATH.md §1 pitfall): a Python loop over
rows, and for each row a 5000-step Riemann sum of ``torch.autograd.grad(f(t theta), theta)``
— which is ``t grad f(t theta)``, not the adjoint. It is timed on a few rows and
extrapolated per row; its (ID) residual is reported next to ours.

Ours: ``model.adjoint`` (closed forms for glm/relu2, quadrature for torch modules), one
thread (rows/s per core). Models: glm:swish, relu2:32, relu2:128, and 3-layer MLPs with
biases (8 -> 32 -> 32 -> 1, tanh and relu; relu has kinks along t theta).

Data: California Housing (20,640 x 8, standardized), real rows. theta: each model's
starting point (``initial_theta``, i.e. the module's init) scaled by 1.5, or a seeded normal
draw for the GLM.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_adjoint.py [--rows 4096] [--ref-rows 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nldist.models import get_model, quadrature  # noqa: E402

MODELS = [
    ("glm:swish", "glm:swish"),
    ("relu2 h=32", "relu2:32"),
    ("relu2 h=128", "relu2:128"),
    ("MLP tanh 8-32-32-1", "torch:nldist.examples.nets:mlp(hidden=32,depth=2,act=tanh)"),
    ("MLP relu 8-32-32-1", "torch:nldist.examples.nets:mlp(hidden=32,depth=2,act=relu)"),
]


def load_data(n: int) -> np.ndarray:
    from nldist import datasets

    df, info = datasets.load("california")
    X = df.drop(columns=[info.target]).to_numpy(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X[:n]


def reference_adjoint(model, theta: np.ndarray, X: np.ndarray, steps: int = 5000) -> np.ndarray:
    """The paper's algorithm: per row, per step, autograd.grad(f(t theta), theta) (WRONG)."""
    th0 = torch.as_tensor(theta)
    out = np.empty((X.shape[0], theta.size))
    for i in range(X.shape[0]):
        x = torch.as_tensor(X[i : i + 1])
        acc = torch.zeros_like(th0)
        for k in range(1, steps + 1):
            th = th0.clone().requires_grad_(True)
            f = model.torch_forward((k / steps) * th, x).sum()
            (g,) = torch.autograd.grad(f, th)
            acc += g
        out[i] = (acc / steps).numpy()
    return out


def id_rel(model, theta, X, F) -> float:
    """max_i |f_i(theta) - f_i(0) - <theta, F_i>| / max_i |f_i(theta) - f_i(0)|."""
    f1, f0 = model.predict(theta, X), model.f0(X)
    return float(np.max(np.abs(f1 - f0 - F @ theta)) / np.max(np.abs(f1 - f0)))


def bench_one(name: str, spec: str, X: np.ndarray, ref_rows: int, repeats: int) -> dict:
    m = get_model(spec, X.shape[1])
    if spec.startswith("glm"):
        theta = np.random.default_rng(0).normal(size=m.n_params) * 0.5
    else:
        theta = m.initial_theta() * 1.5
    m.adjoint(theta, X[:64])  # warm up (module build, torch.func tracing caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        F = m.adjoint(theta, X)
        times.append(time.perf_counter() - t0)
    ours = min(times) / X.shape[0]
    info = None
    if spec.startswith("torch:"):
        _, info = quadrature.adjoint(m, theta, X, return_info=True)
    Xr = X[:ref_rows]
    t0 = time.perf_counter()
    Fref = reference_adjoint(m, theta, Xr)
    ref = (time.perf_counter() - t0) / ref_rows
    row = {
        "model": name, "spec": spec, "p": m.n_params, "rows": X.shape[0],
        "ours_us_per_row": ours * 1e6, "ours_rows_per_s_per_core": 1.0 / ours,
        "ref_s_per_row": ref, "ref_rows": ref_rows, "speedup": ref / ours,
        "ours_id_residual": id_rel(m, theta, X, F),
        "ref_id_residual": id_rel(m, theta, Xr, Fref),
        "ref_vs_ours_rel_diff": float(np.abs(Fref - F[:ref_rows]).max()
                                      / np.abs(F[:ref_rows]).max()),
    }
    if info is not None:
        row["quadrature"] = {"q": info.q, "kink_rows": info.kink_rows,
                             "breakpoints_per_row": info.breakpoints / X.shape[0],
                             "escalated_rows": info.escalated_rows,
                             "refined_rows": info.refined_rows}
        quadrature.configure(m, dtype="float32")
        m.adjoint(theta, X[:64])
        t0 = time.perf_counter()
        F32 = m.adjoint(theta, X)
        row["ours_float32_us_per_row"] = (time.perf_counter() - t0) / X.shape[0] * 1e6
        row["float32_id_residual"] = id_rel(m, theta, X, F32)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096, help="rows for our timing")
    ap.add_argument("--ref-rows", type=int, default=3, help="rows for the reference timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    X = load_data(args.rows)
    results = []
    for name, spec in MODELS:
        r = bench_one(name, spec, X, args.ref_rows, args.repeats)
        results.append(r)
        print(f"{name:22s} p={r['p']:5d}  ours {r['ours_us_per_row']:9.2f} us/row "
              f"({r['ours_rows_per_s_per_core']:10.0f} rows/s/core)  ref "
              f"{r['ref_s_per_row']:7.3f} s/row  speedup {r['speedup']:10.3g}x  "
              f"(ID) ours {r['ours_id_residual']:.1e} ref {r['ref_id_residual']:.1e}  "
              f"f32 {r.get('ours_float32_us_per_row', float('nan')):.1f} us/row", flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
