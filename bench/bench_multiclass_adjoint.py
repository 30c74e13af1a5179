"""C-output adjoints (issue 13, item 7): rows per second per core, one thread, same process.

1. The adjoint rows of a C-output model: the cross-entropy residual r = sqrt(CE) (one row per
   example) and the block A_i (C rows per example), for ``softmax:C`` (closed form / ray
   integral in NumPy) and an MLP (``mlp:32:C``, quadrature on torch.func), against the
   simplest competent baseline: ``torch.func.vmap`` of ``jacrev`` (block) or ``grad``
   (residual) at a fixed 32-node Gauss-Legendre rule along t theta.
2. ``block-sketch:k`` against ``block-leverage``: the time to build one task's rows as k and
   C grow (MLP: k VJPs per node instead of C; softmax: both use the Kronecker structure).

Usage::

    .venv/bin/python bench/bench_multiclass_adjoint.py [--n 2000] [--d 100]

Writes bench/multiclass_adjoint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402

import nldist  # noqa: E402
from nldist.models.gauss import gauss_legendre  # noqa: E402
from nldist.models.losses import get_loss  # noqa: E402
from nldist.scores.rows import BlockRows  # noqa: E402

HERE = Path(__file__).resolve().parent
CE = get_loss("cross_entropy")


def _best(fn, repeats=3) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def baseline_fns(m, theta: np.ndarray, X: np.ndarray, y: np.ndarray):
    """vmap(jacrev) / vmap(grad) at 32 fixed Gauss-Legendre nodes (float64)."""
    t, w = gauss_legendre(32)
    T, W = torch.tensor(t), torch.tensor(w)
    Xt = torch.tensor(X)
    yt = torch.nn.functional.one_hot(torch.tensor(y).long(), int(m.n_outputs)).double()
    th = torch.tensor(theta)

    if hasattr(m, "_built"):
        built = m._built()
        names, shapes = built.names, built.shapes

        def f(vec, x):
            prm, i = {}, 0
            for n_, s_ in zip(names, shapes, strict=True):
                k = int(np.prod(s_))
                prm[n_] = vec[i:i + k].reshape(s_)
                i += k
            return functional_call(built.net, (prm, built.buffers), (x.unsqueeze(0),))[0]
    else:
        def f(vec, x):
            return m.torch_forward(vec, x.unsqueeze(0))[0]

    def r(vec, x, yy):
        z = f(vec, x)
        return torch.sqrt(torch.logsumexp(z, 0) - (z * yy).sum())  # yy: one-hot

    def block():
        J = vmap(lambda x: vmap(lambda tt: jacrev(f)(tt * th, x))(T))(Xt)  # (n, 32, C, p)
        return torch.einsum("k,nkcp->ncp", W, J)

    def resid():
        G = vmap(lambda x, yy: vmap(lambda tt: grad(r)(tt * th, x, yy))(T))(Xt, yt)
        return torch.einsum("k,nkp->np", W, G)

    return block, resid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--out", default=str(HERE / "multiclass_adjoint.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(a.n, a.d))
    res = {"command": f"bench/bench_multiclass_adjoint.py --n {a.n} --d {a.d}",
           "machine": f"{platform.node()}, 1 thread", "torch": torch.__version__,
           "adjoint": [], "sketch": []}
    for spec in ("softmax:10", "mlp:32:10"):
        m = nldist.get_model(spec, a.d)
        theta = (rng.normal(size=m.n_params) * 0.3 if spec.startswith("softmax")
                 else m.initial_theta())
        y = rng.integers(0, 10, a.n).astype(np.float64)
        block, resid = baseline_fns(m, theta, X, y)
        nb = min(a.n, 200)  # the jacrev baseline is slow: time it on fewer rows
        bblock, bresid = baseline_fns(m, theta, X[:nb], y[:nb])
        ours_r = _best(lambda m=m, theta=theta, y=y: m.residual_adjoint(theta, X, y, CE))
        ours_b = _best(lambda m=m, theta=theta: m.adjoint_block(theta, X))
        base_r = _best(bresid) * a.n / nb
        base_b = _best(bblock) * a.n / nb
        # agreement with the baseline on the timed rows
        diff_r = float(np.max(np.abs(bresid().numpy() - m.residual_adjoint(
            theta, X[:nb], y[:nb], CE))))
        for what, ours, base in (("residual sqrt(CE)", ours_r, base_r),
                                 ("block A_i (C rows)", ours_b, base_b)):
            row = {"model": spec, "p": m.n_params, "what": what,
                   "ours_rows_per_s": a.n / ours, "baseline_rows_per_s": a.n / base,
                   "speedup": base / ours}
            res["adjoint"].append(row)
            print(f"{spec:>11} {what:>20}: ours {a.n / ours:9.0f} rows/s, vmap(jacrev/grad) "
                  f"@32 nodes {a.n / base:9.0f} rows/s ({base / ours:.1f}x)", flush=True)
        res["adjoint"][-2]["max_abs_diff_vs_baseline"] = diff_r
    for C in (5, 10, 20):
        for spec in (f"softmax:{C}", f"mlp:32:{C}"):
            m = nldist.get_model(spec, a.d)
            theta = (rng.normal(size=m.n_params) * 0.3 if spec.startswith("softmax")
                     else m.initial_theta())
            n = a.n if spec.startswith("softmax") else max(200, a.n // 4)
            Xs = X[:n]
            t_exact = _best(lambda m=m, theta=theta, Xs=Xs: BlockRows(m, theta).matrix(Xs, None),
                            repeats=2)
            for k in (1, 2, 4, 8):
                t_k = _best(lambda k=k, m=m, theta=theta, Xs=Xs: BlockRows(m, theta, k=k).matrix(
                    Xs, None), repeats=2)
                res["sketch"].append({"model": spec, "C": C, "k": k, "rows": n,
                                      "block_s": t_exact, "sketch_s": t_k,
                                      "ratio": t_k / t_exact})
                print(f"{spec:>11} C={C:>2} k={k}: block-sketch {t_k:.3f} s vs block-leverage "
                      f"{t_exact:.3f} s ({t_k / t_exact:.2f}x)", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
