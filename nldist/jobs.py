"""Job files: a pydantic schema for jobs/*.yaml, safe YAML loading, overrides.

Errors name the field path and what is allowed, on one line, e.g.
``jobs/x.yaml: dataset.chunk_rows: Input should be greater than 0 (got -5)``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from dask.utils import parse_bytes
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nldist._budget import WORKER_MEMORY_FLOOR
from nldist.datasets import DATASETS
from nldist.errors import NldistError
from nldist.models import check_spec
from nldist.options import (
    AdjointOptions,
    Alpha,
    IngestOptions,
    PersistMode,
    Ridge,
    SampleSize,
    SketchOptions,
    SplitEvery,
    format_error,
)
from nldist.scores.backends import check_device
from nldist.scores.kinds import NAMES as KINDS
from nldist.scores.kinds import get_kind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(IngestOptions):
    """Where the rows come from (``source``, ``format``) and how they are ingested: the
    ingest's settings are :class:`nldist.options.IngestOptions`, the same model as the
    ``ingest`` verb's and the API's (:meth:`ingest_options`)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    source: str = Field(description="packaged dataset name, a .csv/.parquet/.npz/.npy file, "
                        "a directory, glob or URL of CSV/Parquet files, or an existing Zarr "
                        "dataset directory (*.zarr)")
    format: Literal["zarr", "parquet"] = Field(
        "zarr", description="zarr: ingest the source into OUT/dataset.zarr once (default) | "
        "parquet: score the Parquet files in place, no copy — one statistics pass, then every "
        "pass reads and encodes the row groups on the fly")

    @model_validator(mode="after")
    def _in_place(self) -> DatasetConfig:
        src = str(self.source)
        if self.format == "parquet" and (
                src.rstrip("/").endswith(".zarr") or "." + src.rsplit(".", 1)[-1].lower()
                in (".csv", ".tsv", ".npz", ".npy") or src in DATASETS):
            raise ValueError(f"format parquet reads Parquet files in place; {src!r} is not "
                             "Parquet: drop `format` (the source is ingested into Zarr)")
        return self


def _check_kind(v: str) -> str:
    try:
        return get_kind(v).name
    except NldistError as exc:
        raise ValueError(str(exc)) from None


#: a score kind string (``block-sketch:<k>`` included), checked against the registry
Kind = Annotated[str, AfterValidator(_check_kind)]


def _check_bytes(v: str) -> str:
    """A memory size Dask understands (``1GiB``, ``500MB``, ``auto``), else a ValueError."""
    text = str(v).strip()
    if text == "auto":
        return text
    try:
        if parse_bytes(text) < 0:  # 0: no limit, as in Dask
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError("must be a memory size such as 1GiB, 512MiB or 2GB (0: no limit; "
                         "or auto)") from None
    return text


class SlurmConfig(_Strict):
    """``cluster.address: slurm``: dask-jobqueue SLURMCluster, one Slurm job per Dask worker."""

    jobs: int = Field(2, gt=0, description="Slurm jobs to submit (one Dask worker each)")
    cores: int = Field(1, gt=0, description="CPU cores per job (= threads of its worker)")
    memory: str = Field("1GiB", description="memory per job: Slurm --mem and the worker limit")
    walltime: str = Field("01:00:00", description="time limit per job, HH:MM:SS")
    partition: str | None = Field(None, description="Slurm partition (-p); default partition")
    account: str | None = Field(None, description="Slurm account (-A)")
    interface: str | None = Field(None, description="network interface of scheduler and "
                                  "workers, e.g. ib0 (lo on a single node)")
    job_extra_directives: list[str] = Field(default_factory=list,
                                            description="extra #SBATCH options, e.g. --qos=high")
    job_script_prologue: list[str] = Field(default_factory=list, description="shell lines run "
                                           "before the worker, e.g. 'source venv/bin/activate'")
    python: str | None = Field(None, description="python on the compute nodes (default: this one)")
    log_directory: str | None = Field(None, description="where worker job logs go (default: "
                                      "a temporary directory)")
    timeout: float = Field(300.0, gt=0, description="seconds to wait for the first worker")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        return _check_bytes(v)


class K8sResources(_Strict):
    """Kubernetes resource requests and limits of each worker pod (e.g. cpu: '1', memory: 2Gi)."""

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})


class K8sConfig(_Strict):
    """``cluster.address: k8s``: a dask-kubernetes operator KubeCluster.

    Inside a DaskJob pod (``DASK_SCHEDULER_ADDRESS`` set by the operator) nldist connects to
    that job's scheduler instead of creating a cluster.
    """

    image: str = Field("nldist:0.1.0", description="job image (cluster/k8s/Dockerfile)")
    namespace: str | None = Field(None, description="namespace (default: the current context's)")
    n_workers: int = Field(2, gt=0)
    resources: K8sResources = Field(default_factory=K8sResources)
    name: str | None = Field(None, description="DaskCluster name (default: nldist-<job name>)")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the pods")
    timeout: float = Field(300.0, gt=0, description="seconds to wait for the first worker")


class TLSConfig(_Strict):
    """TLS for scheduler, worker and client comms (PEM files; see README 'Running on clusters')."""

    ca_file: str = Field(description="CA certificate that signed every certificate below")
    cert: str = Field(description="this side's certificate (PEM)")
    key: str | None = Field(None, description="its private key (PEM), if not inside cert")


CLUSTER_KINDS = ("local", "synchronous", "slurm", "k8s")


class ClusterConfig(_Strict):
    """Which Dask cluster runs the passes."""

    address: str = Field("local", description="local | slurm | k8s | synchronous | "
                         "tcp://HOST:PORT | tls://HOST:PORT | path to a scheduler file (*.json)")
    n_workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    memory_limit: str = "1GiB"
    connect_timeout: float = Field(20.0, gt=0, description="seconds to wait for an existing "
                                   "scheduler (tcp://, tls://, scheduler file)")
    start_timeout: float = Field(120.0, gt=0, description="seconds a local cluster's worker "
                                 "processes may take to start (then one error line)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    k8s: K8sConfig = Field(default_factory=K8sConfig)
    tls: TLSConfig | None = Field(None, description="encrypt comms with TLS (local, tls://, "
                                  "slurm)")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        v = _check_bytes(v)
        if v != "auto" and 0 < parse_bytes(v) < WORKER_MEMORY_FLOOR:
            raise ValueError(
                f"{v} is below the {WORKER_MEMORY_FLOOR // 2**20} MiB a worker needs (a worker "
                "process holds ~220 MiB after its first task, and it is restarted at 95 % of "
                f"its limit, over and over); use at least {WORKER_MEMORY_FLOOR // 2**20}MiB, "
                "or auto")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v in CLUSTER_KINDS or "://" in v or v.endswith(".json"):
            return v
        raise ValueError("must be local, slurm, k8s, synchronous, tcp://HOST:PORT, "
                         "tls://HOST:PORT or a scheduler file ending in .json")


class ExperimentConfig(_Strict):
    """The paper's protocol: repeated draws for several s, median relative error per kind."""

    s: list[int] = Field(description="sample sizes")
    repeats: int = Field(50, gt=0)
    kinds: list[Kind] = Field(
        default_factory=lambda: ["nonlinear-leverage", "nonlinear-norm", "linear-leverage",
                                 "linear-norm", "uniform"]
    )

    @field_validator("s")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v


#: a job name: one path component (it names runs/NAME)
NAME_RULE = re.compile(r"[A-Za-z0-9._-]+")


class JobConfig(_Strict):
    """One nldist job (see jobs/*.yaml)."""

    name: str = Field("job", description="the job's name: one path component (letters, "
                      "digits, '.', '_', '-'); outputs go to runs/<name> unless --out")
    dataset: DatasetConfig
    model: str = Field(description="model spec, e.g. glm:swish, linear, glm:sigmoid:nobias")
    theta: str = Field("optimum", description="zeros | init (the model's starting point) | "
                       "optimum (full-data theta*) | pilot (uniform pilot sample -> theta_0, "
                       "MATH.md §5) | path to a .npy or a torch .pt checkpoint")
    loss: Literal["squared", "bce", "poisson", "cross_entropy"] = Field(
        "squared", description="squared | bce (sigmoid outputs, 0/1 labels) | poisson "
        "(positive outputs, y >= 0) | cross_entropy (C-output models: softmax:<C>, "
        "mlp:<h>:<C>; integer labels 0..C-1); residuals sign(f-y) sqrt(loss) (MATH.md §6). "
        "A C-output model with squared: multi-output regression, y of shape (n, C)")
    pilot_s: int = Field(1000, gt=0, description="uniform pilot sample size for theta: pilot "
                         "(run, experiment, diagnose; select and fit fit theta_0 on the "
                         "one-read factor's pilot_factor_s rows)")
    pilot_from: Literal["auto", "reservoir", "chunks", "gather"] = Field(
        "auto", description="where the pilot's rows come from: reservoir (the uniform sample "
        "ingest writes beside the store: no read of X) | chunks (uniform within a seeded set "
        "of whole chunks: reads those only) | gather (uniform over all rows: about one read "
        "of X) | auto (reservoir if the store has one, else chunks)")
    evaluate: Literal["exact", "estimate"] = Field(
        "exact", description="full-data loss of the trained theta: exact (one distributed "
        "pass, and theta* for the relative error) | estimate (unbiased, with a 95% interval, "
        "from a seeded uniform evaluation sample taken in the fused sampling pass; the "
        "default of `nldist select`)")
    eval_s: int = Field(100_000, gt=0, description="expected rows of the evaluation sample "
                        "(Bernoulli, rate eval_s / n, at most 128 MiB of rows; gathered in "
                        "the fused pass, no extra read; its 95% interval narrows as "
                        "1/sqrt(eval_s))")
    swish_bound: bool = Field(False, description="glm:swish only: sample the main kind "
                              "(linear-leverage) with s scaled by c2/c1 (MATH.md §5)")
    adjoint: AdjointOptions | None = Field(None, description="quadrature settings for models "
                                           "without a closed-form adjoint (torch: specs)")
    kind: Kind = "nonlinear-leverage"
    baselines: list[Kind] = Field(default_factory=lambda: ["linear-leverage", "uniform"])
    ridge: Ridge = 0.0
    s: SampleSize = 1000
    alpha: Alpha = 0.0
    target_error: float | None = Field(
        None, gt=0, lt=1, description="select, instead of s: the smallest expected sample "
        "size whose predicted relative error of the full-data loss is at most this (MATH.md "
        "§9 (P), from the one read's sums)")
    one_read: bool = Field(
        True, description="select: score every row against the pilot's factor and draw the "
        "sample in ONE read of X (false: exact scores from pass 1's R, two reads)")
    pilot_factor_s: int = Field(
        10_000, gt=0, description="select: uniform rows behind the one-read factor (from the "
        "ingest reservoir, at most its rows; more rows, scores closer to the exact ones)")
    radius: float = Field(10.0, gt=0, description="ball radius R of ||theta|| <= R")
    seed: int = Field(0, ge=0)
    tol: float = Field(1e-12, gt=0, lt=1, description="relative-decrease tolerance of training")
    max_iter: int = Field(200, gt=0)
    split_every: SplitEvery = 8
    linear_augment_y: bool = False
    sketch: SketchOptions | None = Field(None, description="approximate the chosen kind")
    persist: PersistMode = Field(
        "auto", description="exact nonlinear scores: keep each chunk's dual block on disk "
        "(OUT/dual.zarr.partial, removed when the scores are complete) so pass 2 reads it "
        "instead of rebuilding it: never | always | auto (per chunk, when building the block "
        "took longer than a measured write + read of it, e.g. torch: models by quadrature); "
        "the scores are bit-identical either way")
    cache_x: Literal["never", "always", "auto"] = Field(
        "auto", description="keep X and y in the workers' memory after the first read, so "
        "the theta* fit, the score passes, the gathers and the evaluation read the store "
        "once: never | always | auto (when X and y take at most a quarter of the workers' "
        "summed memory limits)")
    device: str = Field(
        "numpy", description="where the exact scores' R factors and per-row leverages are "
        "computed: numpy (NumPy/LAPACK) | cpu | cuda | cuda:N (torch kernels on that device, "
        "float64) | auto (cuda when the worker has one, else numpy)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    out: str | None = Field(None, description="output directory (default runs/<name>)")
    experiment: ExperimentConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RULE.fullmatch(v) or v in (".", ".."):
            raise ValueError("must be one path component: letters, digits, '.', '_' or '-' "
                             "(not empty, '.' or '..'), e.g. california-run1")
        return v

    @field_validator("model")
    @classmethod
    def _model_spec(cls, v: str) -> str:
        try:
            check_spec(v)
        except NldistError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        try:
            return check_device(v)
        except NldistError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _outputs(self) -> JobConfig:
        spec = self.model.replace(" ", "")
        multi = spec.startswith(("softmax:", "mlp:"))
        single = spec.startswith(("linear", "glm:", "relu2:"))
        if multi and self.loss not in ("cross_entropy", "squared"):
            raise ValueError(f"model {spec} has C outputs; set loss: cross_entropy (classes) or "
                             "loss: squared (a target column per output)")
        if single and self.loss == "cross_entropy":
            raise ValueError(f"loss cross_entropy needs a C-output model (softmax:<C>, "
                             f"mlp:<h>:<C>); {spec} has one output — use loss: bce for two "
                             "classes")
        kinds = [*self.kinds(), *(self.experiment.kinds if self.experiment else [])]
        if single:
            for k in kinds:
                if get_kind(k).multi_output:
                    raise ValueError(f"kind {k} is for C-output models (softmax:<C>, "
                                     f"mlp:<h>:<C>); {spec} has one output")
        return self

    @model_validator(mode="after")
    def _response_aware(self) -> JobConfig:
        for k in (self.kind, *self.baselines):
            if get_kind(k).response_aware and k != self.kind:
                raise ValueError(f"baseline {k} is response-aware: sampled by select only; "
                                 "list it as kind")
        return self

    @model_validator(mode="after")
    def _swish_bound(self) -> JobConfig:
        if self.swish_bound:
            if self.kind != "linear-leverage":
                raise ValueError("swish_bound samples by linear leverage; set kind: "
                                 "linear-leverage (s is scaled by c2/c1)")
            if not self.model.replace(" ", "").startswith("glm:swish"):
                raise ValueError("swish_bound needs model glm:swish(c1=..,c2=..)")
        return self

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    def kinds(self) -> list[str]:
        """The chosen kind followed by the baselines (each once)."""
        return list(dict.fromkeys([self.kind, *self.baselines]))

    def digest(self, *fields: str) -> str:
        """Short hash of the given fields (all when none): provenance of stage outputs."""
        data = self.model_dump(include=set(fields) if fields else None)
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _allowed_fields(loc: tuple) -> list[str]:
    model: Any = JobConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
    return list(model.model_fields)


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted = "a.b"`` (creating dicts)."""
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise NldistError(f"cannot set {dotted!r}: {p!r} is not a mapping")
    cur[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["s=500", "cluster.n_workers=4"]`` -> [(path, YAML-parsed value)]."""
    out = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise NldistError(f"override {item!r} must look like field.path=value, e.g. s=500")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise NldistError(f"override {item!r}: {problem}; give a plain value (a number, a "
                              "word or a [list]; YAML tags such as !!python/... are refused)"
                              ) from None
        out.append((key.strip(), value))
    return out


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read and validate a job file (YAML, safe loader) with optional overrides."""
    path = Path(path)
    if not path.exists():
        raise NldistError(f"job file {str(path)!r} not found; `nldist example --list` lists "
                          "example jobs, `nldist example california job.yaml` writes one")
    if path.is_dir():
        raise NldistError(f"{str(path)!r} is a directory; give a job YAML file, e.g. "
                          "jobs/california.yaml")
    return parse_job(path.read_text(), str(path), overrides)


def parse_job(text: str, where: str = "job", overrides: list[str] | None = None) -> JobConfig:
    """Validate the YAML text of a job (``where`` names it in errors: a path, ``<stdin>``)
    with optional overrides."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise NldistError(f"{where}: bad YAML{at}: {problem}; fix the file") from None
    if not isinstance(data, dict):
        raise NldistError(f"{where}: a job file must be a YAML mapping (key: value), got "
                          f"{type(data).__name__}")
    for key, value in parse_overrides(overrides):
        set_path(data, key, value)
    return validate_job(data, where)


def validate_job(data: dict, where: str = "job") -> JobConfig:
    """Validate a job mapping; raise a one-line error naming the field path."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise NldistError(format_error(where, exc, _allowed_fields)) from None


# ---------------------------------------------------------------------------------------------
# The dataset source, checked before anything runs (`nldist validate`)
# ---------------------------------------------------------------------------------------------
def check_source(source: str) -> str:
    """Where ``dataset.source`` points, in words, or a one-line error when it cannot be read:
    a packaged dataset name; a local file, directory or glob that exists (relative to the
    working directory, as the run reads it); a URL with a scheme and a location (its syntax
    only: object storage is not contacted)."""
    src = str(source).strip()
    if src in DATASETS:
        return f"packaged dataset {src!r}"
    if "://" in src and not src.startswith("file://"):
        parts = urlsplit(src)
        if (not re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme)
                or not re.fullmatch(r"[A-Za-z0-9._~:@\[\]%-]+", parts.netloc)):  # a host/bucket
            raise NldistError(f"dataset.source {src!r} is not a valid URL; write "
                              "scheme://bucket/path, e.g. s3://bucket/table/")
        return f"URL {src} (not contacted)"
    path = src.removeprefix("file://")
    if any(ch in path for ch in "*?["):
        if not glob.glob(path):
            raise NldistError(f"dataset.source {src!r}: no file matches the glob (from "
                              f"{Path.cwd()}); check the pattern")
        return f"{len(glob.glob(path))} file(s) matching {path}"
    if not Path(path).exists():
        hint = (f"a packaged dataset ({', '.join(sorted(DATASETS)[:4])}, ...; nldist fetch "
                "--list) or " if "/" not in path and "." not in path else "")
        raise NldistError(f"dataset.source {src!r} does not exist (from {Path.cwd()}); give "
                          f"{hint}an existing file, directory, glob or URL")
    return f"local {'directory' if Path(path).is_dir() else 'file'} {path}"


__all__ = ["KINDS", "JobConfig", "check_source", "load_job", "validate_job"]
