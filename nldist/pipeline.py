"""The job: ingest -> theta -> scores -> sample -> gather -> train -> evaluate -> metrics.

A thin orchestration layer over the Python API and :mod:`nldist.graph`; the CLI calls
:class:`Runner`. Every stage writes its output into the job's output directory with
provenance (a digest of the inputs it depends on) and reuses a finished output whose
provenance matches, so re-running a job resumes instead of redoing work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from nldist import graph, ingest
from nldist._budget import MEMORY_FORMULA, cache_budget, memory_per_task
from nldist._checks import as_rng
from nldist._version import __version__
from nldist.api import as_sketch
from nldist.errors import NldistError
from nldist.jobs import JobConfig
from nldist.models import get_model
from nldist.models.base import Model
from nldist.models.glm import swish_ratio
from nldist.scores.block import ScoreSpec
from nldist.scores.kinds import get_kind
from nldist.scores.reductions import Normalizer
from nldist.scores.linalg import RFactor
from nldist.scores.spec import make_spec
from nldist.store import dual_blocks as dualstore
from nldist.store import scores as resume
from nldist.store.dataset import is_dataset, read_attrs, write_dataset
from nldist.store.records import array_digest, save_npz, write_json
from nldist.train import FitResult, fit_ball, train_on_sample

log = logging.getLogger("nldist")


#: the dataclasses a stored pass-1 result may hold (nothing else is ever constructed)
PASS1_CLASSES = {"Normalizer": Normalizer, "RFactor": RFactor}


def safe_out_dir(out: str | Path) -> Path:
    """Resolve the output directory; refuse a path that is an existing regular file."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise NldistError(f"output path {out} is a file; choose a directory with --out")
    return out


def _client() -> Any:
    """The distributed client dask computes on now, or None (a local scheduler is in
    force, e.g. ``dask.config.set(scheduler="synchronous")``, or there is no client)."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None
    from dask.base import get_scheduler

    return client if getattr(get_scheduler(), "__self__", None) is client else None


def _bytes(size: str) -> int | None:
    """``"1GiB"`` -> bytes; None for what dask decides itself (``"auto"``) or cannot parse."""
    try:
        return int(dask.utils.parse_bytes(size))
    except (ValueError, TypeError):
        return None


def worker_limits(client: Any) -> list[int]:
    """Memory limit in bytes of each worker of ``client`` (0: none); [] without a client."""
    if client is None:
        return []
    return [w.get("memory_limit") or 0
            for w in client.scheduler_info().get("workers", {}).values()]


class Runner:
    """Runs one job's stages on the current Dask client.

    Parameters
    ----------
    job : JobConfig
    out : str or Path
        Output directory (created). Everything the job writes stays inside it.
    """

    def __init__(self, job: JobConfig, out: str | Path) -> None:
        self.job = job
        self.out = safe_out_dir(out)
        self.timings: dict[str, float] = {}
        self.run_id = resume.new_run_id()
        self.resume_stats: dict[str, dict] = {}  # per kind: chunks reused / computed
        self._model: Model | None = None
        self._xy: tuple[da.Array, da.Array] | None = None
        self.cached_x = False

    # -- helpers ---------------------------------------------------------------------
    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # -- stage: dataset --------------------------------------------------------------
    def dataset_path(self) -> Path:
        """The Zarr dataset: the source itself when it is one, else OUT/dataset.zarr."""
        ds = self.job.dataset
        src = Path(ds.source)
        if is_dataset(src):
            return src
        return self.out / "dataset.zarr"

    def ingest(self) -> Path:
        """Ingest the source into OUT/dataset.zarr unless a matching one is there."""
        path = self.dataset_path()
        ds = self.job.dataset
        if path != self.out / "dataset.zarr":
            return path
        key = self.job.digest("dataset")
        if path.exists():
            if read_attrs(path).get("ingest_key") == key:
                return path
            shutil.rmtree(path)
        with self.timed("ingest"):
            df, meta = ingest.read_source(ds.source, ds.target)
            X, y, attrs = ingest.prepare(
                df, meta["target"], features=ds.features, classes=ds.classes, dropna=ds.dropna,
                standardize=ds.standardize, standardize_target=ds.standardize_target,
                dtype=ds.dtype,
            )
            attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
            attrs["ingest_key"] = key
            self.out.mkdir(parents=True, exist_ok=True)
            write_dataset(path, X, y, attrs, chunk_rows=ds.chunk_rows, overwrite=True)
        return path

    def _open_xy(self) -> tuple[da.Array, da.Array]:
        """Lazy X, y of the dataset (not cached; cheap: metadata only)."""
        X, y = graph.open_zarr_xy(self.dataset_path())
        if y is None:
            raise NldistError(f"dataset {self.dataset_path()} has no y; ingest with a target")
        return graph.as_dask_xy(X, y)

    def xy(self) -> tuple[da.Array, da.Array]:
        """X, y for the passes: cached in worker memory per ``job.cache_x`` on first use."""
        if self._xy is None:
            self._xy = self._cache(*self._open_xy())
        return self._xy

    def _cache(self, X: da.Array, y: da.Array) -> tuple[da.Array, da.Array]:
        """X, y persisted in the workers' memory per ``job.cache_x`` (else unchanged)."""
        mode = self.job.cache_x
        if mode == "never":
            return X, y
        nbytes = int(X.nbytes + y.nbytes)
        client = _client()
        budget = cache_budget(worker_limits(client))
        if mode == "auto" and (budget is None or nbytes > budget):
            log.info("X not cached in worker memory (%.0f MiB; budget %s)", nbytes / 2**20,
                     "none without a distributed client" if budget is None
                     else f"{budget / 2**20:.0f} MiB")
            return X, y
        with self.timed("cache"):
            if client is not None:
                from distributed import wait

                X, y = client.persist([X, y])
                wait([X, y])
            else:
                X, y = dask.persist(X, y)
        log.info("X and y cached in worker memory (%.0f MiB, one read of the store)",
                 nbytes / 2**20)
        self.cached_x = True
        return X, y

    @property
    def model(self) -> Model:
        if self._model is None:
            X, _ = self._xy or self._open_xy()
            self._model = get_model(self.job.model, X.shape[1])
            if self.job.adjoint is not None:
                self._model.configure(**self.job.adjoint.model_dump())
        return self._model

    # -- plan ------------------------------------------------------------------------
    def plan(self) -> dict:
        """What the run will do, its bytes read and a per-worker memory bound (n-independent)."""
        X, y = self._open_xy()
        n, d = X.shape
        p = self.model.n_params
        q = p + 1
        chunk = int(max(X.chunks[0]))
        itemsize = X.dtype.itemsize
        kinds = self.job.kinds()
        # two per exact kind, one gather of all samples, one evaluation (uniform: none)
        passes = 2 * len([k for k in kinds if not get_kind(k).uniform]) + 2
        nbytes = int(X.nbytes + y.nbytes)
        c = self.job.cluster
        if self.job.cache_x == "never":
            cache = "never: every pass reads the store"
        elif c.address == "local" and _bytes(c.memory_limit) is not None:
            budget = cache_budget([_bytes(c.memory_limit)] * c.n_workers)
            fits = self.job.cache_x == "always" or (budget is not None and nbytes <= budget)
            cache = (f"{self.job.cache_x}: X+y {nbytes / 2**20:,.1f} MiB vs budget "
                     + (f"{budget / 2**20:,.1f} MiB" if budget is not None else "none")
                     + " -> "
                     + ("read once, then every pass from worker memory" if fits
                        else "streamed from the store every pass"))
        else:
            cache = f"{self.job.cache_x}: decided at run time from the workers' memory limits"
        per_task = memory_per_task(self.model, chunk, d, itemsize)
        return {
            "n_rows": n, "n_features": d, "n_params": p, "chunks": len(X.chunks[0]),
            "chunk_rows": chunk, "kinds": kinds,
            "passes_over_X": f"{passes} + 1 per training iteration of theta*",
            "bytes_per_pass": int(n * d * itemsize),
            "memory_per_task_bytes": int(per_task),
            "memory_per_worker_bytes": int(per_task * self.job.cluster.threads_per_worker),
            "device": self.job.device,
            "cache_x": cache,
            "memory_formula": MEMORY_FORMULA,
        }

    # -- stage: theta ----------------------------------------------------------------
    def optimum(self) -> tuple[np.ndarray, dict]:
        """Full-data theta* over the ball (distributed Gauss-Newton passes), cached."""
        key = self.job.digest("dataset", "model", "radius", "tol", "max_iter", "loss")
        npz = self.path("theta_star.npz")
        if npz.exists():
            with np.load(npz) as z:
                if str(z["key"]) == key:
                    return z["theta"], json.loads(str(z["info"]))
        X, y = self.xy()
        m = self.model
        with self.timed("optimum"):
            fit = fit_ball(lambda t: graph.gn_pass(X, y, m, t, self.job.split_every,
                                                   loss=self.job.loss),
                           m.initial_theta(), self.job.radius, tol=self.job.tol,
                           max_iter=self.job.max_iter)
        info = _fit_info(fit)
        if not fit.converged:
            log.warning("theta* did not converge in %d iterations", fit.iterations)
        save_npz(npz, theta=fit.theta, key=key, info=json.dumps(info))
        return fit.theta, info

    def theta(self) -> np.ndarray:
        """Parameters the nonlinear scores are taken at (job.theta)."""
        src = self.job.theta
        if src == "zeros":
            return np.zeros(self.model.n_params)
        if src == "optimum":
            return self.optimum()[0]
        if src == "init":
            return self.model.initial_theta()
        if src == "pilot":
            return self.pilot()
        path = Path(src)
        if not path.exists():
            raise NldistError(f"theta file {src!r} not found; use zeros, init, optimum, pilot, "
                              "a .npy file or a torch state_dict .pt file")
        if path.suffix in (".pt", ".pth"):
            return self.model.theta_from_checkpoint(path)
        try:
            t = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise NldistError(f"cannot read theta from {src}: {exc}") from None
        return self.model.check_theta(np.asarray(t).reshape(-1))

    def pilot(self) -> np.ndarray:
        """theta_0 of the pilot scheme (MATH.md §5): train on a uniform sample of pilot_s rows.

        Uniform draws with replacement (weights n / s), seeded from ``seed``; trained like
        the final sample (same loss, ball and tolerance). Cached in OUT/theta_pilot.npz.
        """
        key = self.job.digest("dataset", "model", "radius", "tol", "max_iter", "loss", "pilot_s",
                              "seed")
        npz = self.path("theta_pilot.npz")
        if npz.exists():
            with np.load(npz) as z:
                if str(z["key"]) == key:
                    return z["theta"]
        X, y = self.xy()
        n = int(X.shape[0])
        rng = np.random.default_rng([self.job.seed, 0x9170])
        idx = rng.integers(0, n, size=min(self.job.pilot_s, n))
        w = np.full(idx.size, n / idx.size)
        with self.timed("pilot"):
            with self.timed("gather"):
                Xs, ys = graph.gather_rows(X, y, idx)
            fit = train_on_sample(self.model, Xs, ys, w, self.job.radius, tol=self.job.tol,
                                  max_iter=self.job.max_iter, loss=self.job.loss)
        save_npz(npz, theta=fit.theta, key=key, indices=idx, info=json.dumps(_fit_info(fit)))
        return fit.theta

    def start_theta(self) -> np.ndarray:
        """Where training on a sample starts: the pilot theta_0 (pilot scheme) or the default."""
        return self.pilot() if self.job.theta == "pilot" else self.model.initial_theta()

    def sample_size(self, kind: str) -> int:
        """s for a kind: with ``swish_bound`` the main kind draws ceil(s * c2 / c1) rows."""
        if self.job.swish_bound and kind == self.job.kind:
            return int(np.ceil(self.job.s * swish_ratio(self.model)))
        return self.job.s

    # -- stage: scores ---------------------------------------------------------------
    def scores(self, kind: str, theta: np.ndarray) -> tuple[da.Array, dict]:
        """Scores of one kind written to OUT/scores.zarr/<kind> (reused when provenance matches)."""
        X, y = self.xy()
        k = get_kind(kind)
        nonlinear = k.nonlinear
        sk = None
        if self.job.sketch is not None and kind == self.job.kind and not k.uniform:
            sk = as_sketch(self.job.sketch.model_dump())
        spec = make_spec(k, self.model, theta, X.shape[1], True, self.job.linear_augment_y,
                         loss=self.job.loss, sketch=sk, device=self.job.device)
        prov = {
            "kind": kind, "model": self.job.model, "theta_sha": array_digest(theta)
            if nonlinear else None, "loss": self.job.loss if nonlinear else None,
            "ridge": self.job.ridge if k.ridge else 0.0,
            "dataset_key": self.job.digest("dataset"),
            "linear_augment_y": True if nonlinear else self.job.linear_augment_y,
            "n": int(X.shape[0]), "nldist_version": __version__,
        }
        if sk is not None:
            prov["sketch"] = dataclasses.asdict(sk)
        # per-chunk completion records (nldist.resume): a re-run verifies them and computes
        # only unfinished or damaged chunks; pass 1 is kept once done
        out = resume.ChunkedScores(self.path("scores.zarr"), kind, prov, X.chunks[0],
                                   self.run_id)
        out.check(graph.map_tasks)
        self.resume_stats[kind] = out.stats
        scratch = self.out / "dual.zarr.partial" / kind
        if out.finished:
            dualstore.remove(scratch)  # left by a run killed after its last chunk
            return da.from_zarr(out.array), out.attrs
        with self.timed(f"score:{kind}"):
            if sk is not None and sk.rows:
                probs, info = graph.rowsketch_scores(X, y, spec, sk, self.job.split_every)
                out.write(probs, graph.store_chunks, graph.store_whole)
                arr = out.array
                out.finish({**prov, "rank": info["rank"], "complete": True})
                return da.from_zarr(arr), out.attrs
            store = self.dual_store(spec, out.key, scratch)
            t0 = time.perf_counter()
            norm = out.load_pass1(PASS1_CLASSES)
            if norm is None:
                norm = graph.pass1(X, y, spec, ridge=self.job.ridge,
                                   split_every=self.job.split_every, store=store)
                out.save_pass1(norm, PASS1_CLASSES)
            t1 = time.perf_counter()
            probs = graph.pass2(X, y, spec, norm, store=store)
            out.write(probs, graph.store_chunks, graph.store_whole)
            t2 = time.perf_counter()
            arr = out.array
            attrs = {**prov, "rank": norm.rank, "total": norm.total, "complete": True}
            if norm.factor is not None:
                attrs["svals"] = norm.factor.svals.tolist()
                attrs["R"] = norm.factor.R.tolist()
                if k.ridge:
                    attrs["effective_dimension"] = norm.total
            if spec.persistable:
                attrs["persist"] = {"mode": self.job.persist, **(norm.persist or {}),
                                    "pass1": out.stats["pass1"], "pass1_s": round(t1 - t0, 4),
                                    "pass2_s": round(t2 - t1, 4)}
            out.finish(attrs)
            dualstore.remove(scratch)
        return da.from_zarr(arr), out.attrs

    def dual_store(self, spec: ScoreSpec, key: str, scratch: Path) -> Any:
        """The scratch store of persisted dual blocks for one kind (job.persist), or None.

        Lives in OUT/dual.zarr.partial/<kind>; its key ties it to the scores' resume key and
        the quadrature settings, so blocks of other inputs are deleted rather than read. It
        is removed when the kind's scores are complete; a killed run's blocks are reused.
        """
        if self.job.persist == "never" or not spec.persistable:
            dualstore.remove(scratch)
            return None
        adj = self.job.digest("adjoint")
        dkey = hashlib.sha256(f"{key}:{adj}".encode()).hexdigest()[:32]
        return dualstore.prepare(scratch, dkey, self.job.persist)

    # -- stages: sample, gather, train, evaluate --------------------------------------
    def sample(self, kind: str, probs: da.Array, s: int, rng: Any) -> tuple[np.ndarray, np.ndarray]:
        with self.timed("sample"):
            return graph.sample_blocks(probs, s, rng, self.job.alpha)

    def train(self, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray) -> FitResult:
        with self.timed("train"):
            return train_on_sample(self.model, Xs, ys, w, self.job.radius,
                                   theta0=self.start_theta(), tol=self.job.tol,
                                   max_iter=self.job.max_iter, loss=self.job.loss)

    def evaluate(self, thetas: np.ndarray) -> np.ndarray:
        X, y = self.xy()
        with self.timed("evaluate"):
            return graph.losses_pass(X, y, self.model, thetas, self.job.split_every,
                                     loss=self.job.loss)

    # -- whole run ---------------------------------------------------------------------
    def run(self, stop_after: str = "evaluate") -> dict:
        """Run every stage for the chosen kind and its baselines; write metrics.json.

        Parameters
        ----------
        stop_after : {"score", "sample", "train", "evaluate"}
            Last stage to run (the CLI verbs of the same names); earlier outputs are reused.
        """
        stages = ("score", "sample", "train", "evaluate")
        if stop_after not in stages:
            raise NldistError(f"stop_after must be one of {stages}, got {stop_after!r}")
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.ingest()
        X, y = self.xy()
        theta = self.theta()
        results: dict[str, dict] = {}
        draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind in self.job.kinds():
            probs, attrs = self.scores(kind, theta)
            results[kind] = {"rank": attrs.get("rank")}
            if stop_after == "score":
                continue
            idx, w = self.sample(kind, probs, self.sample_size(kind),
                                 as_rng(self.job.seed))
            save_npz(self.path("samples", f"{kind}.npz"), indices=idx, weights=w,
                      seed=self.job.seed, kind=kind, s=self.job.s, alpha=self.job.alpha,
                      n=int(X.shape[0]), model=self.job.model,
                      theta_sha=str(attrs.get("theta_sha")), nldist_version=__version__)
            draws[kind] = (idx, w)
            results[kind]["unique_rows"] = int(np.unique(idx).size)
            if attrs.get("persist"):
                results[kind]["persist"] = attrs["persist"]
        thetas = []
        if stop_after in ("train", "evaluate") and draws:
            # every kind's rows in one pass over X (random rows touch every chunk)
            allidx = np.unique(np.concatenate([idx for idx, _ in draws.values()]))
            with self.timed("gather"):
                Xu, yu = graph.gather_rows(X, y, allidx)
            for kind, (idx, w) in draws.items():
                pos = np.searchsorted(allidx, idx)
                fit = self.train(Xu[pos], None if yu is None else yu[pos], w)
                np.save(self.path(f"theta_{kind}.npy"), fit.theta)
                thetas.append(fit.theta)
                results[kind] = {"rank": results[kind]["rank"], "fit": _fit_info(fit),
                                 "unique_rows": results[kind]["unique_rows"],
                                 "max_weight": float(w.max()), "s": int(idx.size),
                                 **({"persist": results[kind]["persist"]}
                                    if "persist" in results[kind] else {})}
        if stop_after != "evaluate":
            return {"stage": stop_after, "kinds": results, "out": str(self.out)}
        theta_star, star_info = self.optimum()
        losses = self.evaluate(np.vstack([theta_star, *thetas]))
        loss_opt = float(losses[0])
        for res, loss in zip(results.values(), losses[1:], strict=True):
            res["loss_full"] = float(loss)
            res["rel_error"] = (float(loss) - loss_opt) / loss_opt if loss_opt > 0 else None
        self.timings["total"] = time.perf_counter() - t0
        main = results[self.job.kind]
        metrics = {
            "name": self.job.name, "dataset": str(self.dataset_path()),
            "n_rows": int(X.shape[0]), "n_features": int(X.shape[1]),
            "n_params": self.model.n_params, "model": self.job.model, "loss": self.job.loss,
            "kind": self.job.kind, "rank": main["rank"], "s": self.job.s, "seed": self.job.seed,
            "alpha": self.job.alpha, "radius": self.job.radius, "theta_source": self.job.theta,
            "loss_full": main["loss_full"], "loss_opt": loss_opt, "rel_error": main["rel_error"],
            "theta_star": star_info, "kinds": results,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "resume": self.resume_stats,
            "cached_x": self.cached_x,
            "nldist_version": __version__,
        }
        np.save(self.path("theta.npy"), thetas[0])
        write_json(self.path("metrics.json"), metrics)
        return metrics

    # -- experiment (paper Fig. 1 protocol) -------------------------------------------
    def experiment(self) -> dict:
        """Median relative error over repeated draws, per s and score kind."""
        exp = self.job.experiment
        if exp is None:
            raise NldistError("the job has no 'experiment:' section; add s: [..] and repeats")
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.ingest()
        X, y = self.xy()
        theta = self.theta()
        theta_star, star_info = self.optimum()
        rel: dict[str, list[list[float]]] = {}
        ranks: dict[str, Any] = {}
        for kind in exp.kinds:
            probs, attrs = self.scores(kind, theta)
            ranks[kind] = attrs.get("rank")
            keys = [(s, r) for s in exp.s for r in range(exp.repeats)]
            with self.timed("sample"):
                got = graph.sample_many(
                    probs, [(s, np.random.default_rng([self.job.seed, s, r])) for s, r in keys],
                    self.job.alpha)
            draws = dict(zip(keys, got, strict=True))
            allidx = np.unique(np.concatenate([d[0] for d in draws.values()]))
            with self.timed("gather"):
                Xu, yu = graph.gather_rows(X, y, allidx)
            thetas = []
            for s in exp.s:
                for r in range(exp.repeats):
                    idx, w = draws[s, r]
                    pos = np.searchsorted(allidx, idx)
                    thetas.append(self.train(Xu[pos], yu[pos], w).theta)
            losses = self.evaluate(np.vstack([theta_star, *thetas]))
            errs = (losses[1:] - losses[0]) / losses[0]
            rel[kind] = errs.reshape(len(exp.s), exp.repeats).tolist()
            log.info("experiment %s done", kind)
        self.timings["total"] = time.perf_counter() - t0
        summary = {
            kind: {str(s): {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                            "q75": float(np.quantile(v, 0.75))}
                   for s, v in zip(exp.s, rows, strict=True)}
            for kind, rows in rel.items()
        }
        result = {
            "name": self.job.name, "dataset": str(self.dataset_path()), "model": self.job.model,
            "n_rows": int(X.shape[0]), "n_params": self.model.n_params, "s": exp.s,
            "repeats": exp.repeats, "seed": self.job.seed, "radius": self.job.radius,
            "theta_source": self.job.theta, "loss_opt": star_info["loss"],
            "theta_star": star_info, "ranks": ranks, "summary": summary, "rel_error": rel,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "nldist_version": __version__,
        }
        write_json(self.path("experiment.json"), result)
        return result


def _fit_info(fit: FitResult) -> dict:
    return {"loss": fit.loss, "iterations": fit.iterations, "converged": bool(fit.converged),
            "oracle_calls": fit.oracle_calls, "theta_norm": float(np.linalg.norm(fit.theta))}
