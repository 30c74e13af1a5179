"""The example job files shipped with nldist (``nldist example``): their names, texts and
one-line summaries, read from the package data ``nldist/examples/jobs/*.yaml``.

A leaf (imports yaml, importlib.resources and :mod:`nldist.errors` only), so that the CLI's
``example`` verb costs what ``nldist --help`` costs: the job schema (:mod:`nldist.jobs`:
pydantic, pandas, SciPy, dask.utils) is not imported to copy a file.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from nldist.errors import NldistError


def example_dir() -> Any:
    """The shipped job files' folder (a :class:`importlib.resources.abc.Traversable`)."""
    return resources.files("nldist.examples").joinpath("jobs")


def example_names() -> list[str]:
    """Names of the example job files shipped with the package (``nldist example --list``)."""
    return sorted(f.name[:-len(".yaml")] for f in example_dir().iterdir()
                  if f.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The text of the example job ``name`` (a job file that runs as is)."""
    stem = str(name).removesuffix(".yaml")
    if stem not in example_names():
        raise NldistError(f"no example job {name!r}; choose one of "
                          f"{', '.join(example_names())} (nldist example --list)")
    return example_dir().joinpath(f"{stem}.yaml").read_text(encoding="utf-8")


def example_summary(name: str) -> str:
    """One line about an example: its dataset, model and sample size."""
    data = yaml.safe_load(example_text(name))
    ds = data.get("dataset") or {}
    return f"{ds.get('source', '?')}: {data.get('model', '?')}, s={data.get('s', '?')}"
