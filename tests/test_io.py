"""Ingest: CSV/Parquet/NPZ/NPY/packaged -> Zarr v3, categorical, missing values, atomicity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from nldist import NldistError
from nldist._budget import x_chunk_rows
from nldist.ingest import ingest
from nldist.store.dataset import read_attrs


@pytest.fixture
def frame(rng):
    n = 257
    return pd.DataFrame({
        "a": rng.normal(size=n), "b": rng.integers(0, 5, n),
        "color": rng.choice(["r", "g", "b"], n),
        "flag": rng.random(n) > 0.5, "target": rng.normal(size=n),
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_ingest_roundtrip(frame, tmp_path, fmt):
    src = tmp_path / f"t.{fmt}"
    frame.to_csv(src, index=False) if fmt == "csv" else frame.to_parquet(src)
    out = ingest(src, tmp_path / "d.zarr", target="target", chunk_rows=50, standardize=True)
    g = zarr.open_group(str(out), mode="r")
    X, y = g["X"][:], g["y"][:]
    assert X.shape == (257, 5) and g["X"].chunks == (50, 5) and g["y"].chunks == (50,)
    np.testing.assert_allclose(y, frame["target"])
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    a = read_attrs(out)
    assert a["target"] == "target" and a["n_rows"] == 257 and a["chunk_rows"] == 50
    assert set(a["categories"]) == {"color", "flag"}
    assert a["features"][:2] == ["a", "b"] and len(a["standardize"]["mean"]) == 5
    assert str(src.resolve()) == a["source"]


def test_npz_and_npy(tmp_path, rng):
    X, y = rng.normal(size=(30, 3)), rng.normal(size=30)
    np.savez(tmp_path / "a.npz", X=X, y=y)
    g = zarr.open_group(str(ingest(tmp_path / "a.npz", tmp_path / "a.zarr")), mode="r")
    np.testing.assert_array_equal(g["X"][:], X)
    np.save(tmp_path / "b.npy", np.hstack([X, y[:, None]]))
    g = zarr.open_group(str(ingest(tmp_path / "b.npy", tmp_path / "b.zarr", dtype="float32")),
                        mode="r")
    assert g["X"].dtype == np.float32
    np.testing.assert_allclose(g["y"][:], y, rtol=1e-6)


def test_packaged_dataset(tmp_path):
    out = ingest("diabetes", tmp_path / "diab.zarr")
    a = read_attrs(out)
    assert a["n_rows"] == 442 and a["n_features"] == 10 and a["dataset"] == "diabetes"
    assert "license" in a and a["task"] == "regression"


def test_binary_classes_and_string_target(tmp_path):
    out = ingest("digits", tmp_path / "d17.zarr", classes=[1, 7])
    g = zarr.open_group(str(out), mode="r")
    assert set(np.unique(g["y"][:])) == {0.0, 1.0} and g["X"].shape[1] == 64
    assert read_attrs(out)["classes"] == ["1", "7"]


def test_missing_values(frame, tmp_path):
    frame.loc[[3, 9], "a"] = np.nan
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(NldistError, match="2 missing value.*--dropna"):
        ingest(tmp_path / "m.csv", tmp_path / "m.zarr", target="target")
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "m.zarr.partial").exists()
    out = ingest(tmp_path / "m.csv", tmp_path / "m.zarr", target="target", dropna=True)
    assert read_attrs(out)["n_rows"] == 255 and read_attrs(out)["dropped_rows"] == 2


@pytest.mark.parametrize(
    "setup, kwargs, match",
    [
        (lambda p: None, {"source": "nope.csv"}, "not found"),
        (lambda p: None, {"source": "imaginary"}, "not found.*packaged datasets"),
        (lambda p: (p / "x.txt").write_text("1"), {"source": "x.txt"}, "cannot read"),
        (lambda p: pd.DataFrame({"a": [1.0]}).to_csv(p / "t.csv", index=False),
         {"source": "t.csv", "target": "y"}, "target column 'y' not in"),
        (lambda p: pd.DataFrame({"a": []}).to_csv(p / "e.csv", index=False),
         {"source": "e.csv", "target": "a"}, "no rows|no feature"),
        (lambda p: pd.DataFrame({"a": [1.0, np.inf], "t": [1, 2]}).to_csv(p / "i.csv",
                                                                           index=False),
         {"source": "i.csv", "target": "t"}, "inf"),
        (lambda p: np.save(p / "v.npy", np.ones(3)), {"source": "v.npy"}, "2-D"),
    ],
)
def test_bad_sources(tmp_path, monkeypatch, setup, kwargs, match):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(NldistError, match=match) as err:
        ingest(kwargs.pop("source"), tmp_path / "o.zarr", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o.zarr").exists()


def test_existing_output_is_not_overwritten(tmp_path, rng):
    np.savez(tmp_path / "a.npz", X=rng.normal(size=(5, 2)), y=np.ones(5))
    ingest(tmp_path / "a.npz", tmp_path / "a.zarr")
    with pytest.raises(NldistError, match="--overwrite"):
        ingest(tmp_path / "a.npz", tmp_path / "a.zarr")
    ingest(tmp_path / "a.npz", tmp_path / "a.zarr", overwrite=True)


def test_default_chunk_rows_targets_tens_of_mib():
    assert x_chunk_rows(50) * 50 * 8 == pytest.approx(32 * 2**20, rel=1e-3)


@pytest.mark.parametrize("column, message", [
    ([f"{1000 + i:,}" for i in range(200)], "numbers written as text"),
    ([f"{1000 + i:_}" for i in range(200)], "numbers written as text"),
    ([f"user-{i}" for i in range(200)], "200 distinct values in 200 rows"),
])
def test_text_columns_that_one_hot_would_misread_are_refused(tmp_path, column, message):
    """Thousands-separated numbers and identifiers are not categories: one line naming the
    column, not 200 silent one-hot columns."""
    import pandas as pd

    from nldist.ingest import ingest

    rng = np.random.default_rng(0)
    src = tmp_path / "t.csv"
    pd.DataFrame({"x": rng.normal(size=200), "bad": column,
                  "y": rng.normal(size=200)}).to_csv(src, index=False)
    with pytest.raises(NldistError, match=rf"column 'bad' .*{message}"):
        ingest(src, tmp_path / "o.zarr", target="y")
    assert not (tmp_path / "o.zarr").exists()
    ingest(src, tmp_path / "o.zarr", target="y", features=["x"])  # the fix it names
