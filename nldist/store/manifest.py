"""The run manifest (``OUT/run.json``): one job per output directory, what it wrote, and
the confinement of its outputs to the directory (a symbolic link never followed out of it).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from nldist._version import __version__
from nldist.errors import NldistError
from nldist.store.records import write_json
from nldist.store.remote import as_path, check_bucket, is_remote, rmtree

log = logging.getLogger("nldist")


#: the run manifest in the output directory
MANIFEST = "run.json"

#: outputs that belong to one completed verb: removed when it starts again
VERB_OUTPUTS = {
    "run": ("metrics.json", "report.html", "report.md"),
    "experiment": ("experiment.json", "report.html", "report.md"),
    "diagnose": ("diagnostics.json", "report.html", "report.md"),
    "select": ("metrics.json", "report.html", "report.md"),
    "fit": ("metrics.json", "report.html", "report.md", "theta_fit.npy"),
}

#: outputs of any earlier settings of the job: removed when the job's settings change
SETTINGS_OUTPUTS = ("metrics.json", "experiment.json", "diagnostics.json", "report.html",
                    "report.md", "samples", "theta.npy", "sample.parquet")

#: the names nldist writes at the top of an output directory (with :data:`OWN_PATTERNS`):
#: what a ``--force`` of another job may remove, beside what its manifest records
OWN_NAMES = frozenset({
    MANIFEST, "run.log", "metrics.json", "experiment.json", "diagnostics.json", "report.html",
    "report.md", "table.json", "dataset.zarr", "dataset.zarr.partial", "scores.zarr",
    "dual.zarr.partial", "samples", "sample.parquet", "theta.npy", "theta_star.npz",
    "theta_pilot.npz", "noisy.zarr", "noisy.zarr.partial", "experiment.png", "scores.png",
    "timings.png", "diagnostics.png"})

OWN_PATTERNS = ("theta_*.npy", "top_*.png", "bottom_*.png")

#: run-memo key of the names in the output directory when :func:`claim` made it this job's
CLAIMED = "claim:entries"

def is_own(name: str) -> bool:
    """Whether ``name`` (an entry at the top of an output directory) is one nldist writes."""
    return name in OWN_NAMES or any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS)

def identity(job: Any) -> dict:
    """What makes an output directory one job's: its name, data source, model and loss."""
    return {"name": job.name, "source": str(job.dataset.source), "model": job.model,
            "loss": job.loss}

def _remove(path: Path) -> None:
    """Remove a file or directory tree; a symbolic link is unlinked, never followed."""
    if is_remote(path):
        rmtree(path)
    elif path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)

def _entries(out: Path) -> set[str]:
    """Names at the top of the output directory (none when it does not exist)."""
    try:
        if is_remote(out):
            return {p.name for p in out.iterdir()} if out.exists() else set()
        return {p.name for p in out.iterdir()} if out.is_dir() else set()
    except (FileNotFoundError, NotADirectoryError):
        return set()

def _sources_inside(out: Path, sources: list[str]) -> set[str]:
    """Top-level names of ``out`` that are, or hold, one of the jobs' data sources (never
    removed)."""
    names = set()
    base = str(out).rstrip("/") + "/"
    for src in sources:
        p = as_path(src)
        text = str(p if is_remote(p) else p.absolute())
        if not is_remote(p):
            try:
                text = str(p.resolve())
            except OSError:
                pass
        if text.startswith(base):
            names.add(text[len(base):].split("/", 1)[0])
    return names

def check_confined(out: Path) -> None:
    """Every output nldist writes resolves inside ``out``: a symbolic link among them (at
    the top, or inside a directory nldist writes, such as ``samples/`` or ``scores.zarr``)
    that points outside ``out`` is a one-line error; nothing is written through it."""
    if is_remote(out) or not out.is_dir():
        return
    root = out.resolve()

    def check(p: Path) -> None:
        if p.is_symlink():
            target = p.resolve()
            if not target.is_relative_to(root):
                raise NldistError(f"{p} is a symbolic link to {target}, outside the output "
                                  f"directory {root}; nldist writes only inside --out: remove "
                                  "the link or choose another --out")

    for name in sorted(_entries(out)):
        if not is_own(name):
            continue
        top = out / name
        check(top)
        if top.is_dir() and not top.is_symlink():
            for d, dirs, files in os.walk(top):
                for n in [*dirs, *files]:
                    check(Path(d) / n)

def claim(out: Path, verb: str, job: Any, force: bool = False) -> set[str]:
    """Make the output directory this job's before a verb writes into it.

    A directory whose manifest names another job (:func:`identity`) is refused with a
    one-line error, unless ``force``: then that job's outputs are removed first — the names
    its manifest records as written and the names nldist writes (:func:`is_own`), never an
    entry that was there before it ran (recorded as ``foreign``), a job's data source or
    anything else (a user's notes.txt stays); a symbolic link is unlinked, never followed.
    The outputs of this verb's previous run (and, when the job's settings changed, every
    per-settings output) are removed, so a failed run never leaves an old metrics.json or
    report looking current; the manifest is marked incomplete until :func:`complete`, which
    records what this job wrote.

    Returns
    -------
    set of str: the names in ``out`` once claimed (what :func:`complete` compares against).
    """
    check_bucket(out)
    check_confined(out)
    path = out / MANIFEST
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
    ident = identity(job)
    if old is None and out.is_dir() and (out / "metrics.json").exists():
        try:  # a run written before manifests existed
            m = json.loads((out / "metrics.json").read_text())
            old = {"identity": {"name": m.get("name"), "model": m.get("model"),
                                "loss": m.get("loss"), "source": ident["source"]}}
        except (OSError, ValueError):
            old = {}
    present = _entries(out)
    keep = _sources_inside(out, [ident["source"], str((old or {}).get("identity", {}).get(
        "source") or ident["source"])])
    if old is not None and old.get("identity") != ident:
        if not force:
            who = (old.get("identity") or {})
            raise NldistError(
                f"output directory {out} holds the outputs of another job ({who.get('name')!r}, "
                f"model {who.get('model')!r}, data {who.get('source')!r}); choose another "
                "--out, or pass --force to delete them and run this job there")
        theirs = set(old.get("outputs") or [])
        foreign = set(old.get("foreign") or [])
        for name in sorted(present):
            if (name in theirs or is_own(name)) and name not in foreign | keep:
                _remove(out / name)
        old = None
        present = _entries(out)
    digest_now = job.digest()
    stale = set(VERB_OUTPUTS[verb])
    if old is not None and old.get("job_digest") != digest_now:
        stale |= set(SETTINGS_OUTPUTS) | {p.name for p in out.glob("theta_*.npy")}
    for name in sorted(stale - keep):
        _remove(out / name)
    if old is None:  # what was here before any job wrote: never this job's
        foreign = sorted(n for n in present if not is_own(n) or n in keep)
        outputs: list[str] = []
    else:
        foreign = list(old.get("foreign") or [])
        outputs = list(old.get("outputs") or [])
    out.mkdir(parents=True, exist_ok=True)
    claimed = _entries(out)
    write_json(path, {"identity": ident, "job_digest": digest_now, "verb": verb,
                      "complete": False, "started": time.time(), "nldist_version": __version__,
                      "foreign": foreign, "outputs": outputs})
    return claimed


def complete(out: Path, claimed: set[str] | None = None) -> None:
    """Mark the manifest's current verb complete (its outputs are current) and record the
    names this job has written in the output directory (``outputs``: what a ``--force`` of
    another job removes)."""
    path = out / MANIFEST
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    now = _entries(out)
    new = now - (now if claimed is None else claimed)  # appeared while this job ran
    foreign = set(man.get("foreign") or [])
    outputs = sorted((set(man.get("outputs") or []) | new | {n for n in now if is_own(n)})
                     - foreign)
    write_json(path, {**man, "complete": True, "finished": time.time(), "outputs": outputs})
