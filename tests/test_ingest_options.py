"""One options model for every ingest (issue 25 item 3) and the content fingerprint of text
tables (issue 29 item 3)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from nldist.errors import NldistError
from nldist.ingest import IngestOptions, prepare, source_fingerprint
from nldist.jobs import DatasetConfig, JobConfig
from nldist.store.records import tree_fingerprint


def _frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "c": rng.choice(list("xyz"), n),
                         "k": rng.choice(["p", "q", "r"], n), "t": rng.normal(size=n)})


def test_the_job_section_is_the_options_model():
    """A job's dataset: section is IngestOptions plus the source: the same fields, the same
    constraints, the same digest; the job's digest of it is unchanged by the refactor (the
    field names and values are what they were)."""
    ds = DatasetConfig(source="california", target="t", columns=["a"], standardize=True)
    assert isinstance(ds, IngestOptions)
    o = IngestOptions.of("ingest", target="t", features=["a"], standardize=True)
    assert ds.ingest_options() == o and ds.digest() == o.digest()
    assert o.digest() != IngestOptions.of("ingest", target="t", features=["a"]).digest()
    job = JobConfig.model_validate({"dataset": {"source": "california"}, "model": "glm:swish",
                                    "s": 10})
    assert set(job.model_dump()["dataset"]) == set(IngestOptions.model_fields) | {"source",
                                                                                   "format"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"classes": ["p"]}, r"classes must name two or more distinct target values"),
    ({"classes": ["p", "q", "r"], "standardize_target": True},
     r"3 classes are labels 0\.\.2, not a number to standardize"),
    ({"dtype": "int8"}, r"The 'dtype' parameter of prepare must be a str among"),
    ({"colour": 1}, r"prepare got unknown setting\(s\) colour"),
    # an optional int (int | None) is described as an int, not "a float"
    ({"chunk_rows": 0}, r"The 'chunk_rows' parameter of prepare must be an int in the "
                        r"range \[1, inf\)\. Got 0 instead\."),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(NldistError, match=message):
        prepare(_frame(), "k", **settings)


def test_options_or_keywords_not_both():
    df = _frame()
    o = IngestOptions.of("prepare", target="t", standardize=True)
    X1, y1, a1 = prepare(df, options=o)
    X2, y2, a2 = prepare(df, "t", standardize=True)
    assert X1.tobytes() == X2.tobytes() and y1.tobytes() == y2.tobytes() and a1 == a2
    with pytest.raises(NldistError, match="not both"):
        prepare(df, options=o, standardize=False)


def test_in_memory_attrs_are_the_plans():
    """prepare is one partition through the plan: sorted categories (the levels the one-hot
    columns are of), codes above onehot_max_levels, class labels' moments."""
    X, y, attrs = prepare(_frame(), "t", onehot_max_levels=2, standardize=True)
    assert "categories" not in attrs  # c and k have 3 levels > 2: codes
    assert attrs["codes"] == {"c": ["x", "y", "z"], "k": ["p", "q", "r"]}
    assert attrs["features"] == ["a", "c", "k"]
    assert attrs["standardize"]["mean"][1:] == [0.0, 0.0]
    X, y, attrs = prepare(_frame(), "k", classes=["q", "p"], standardize_target=True)
    assert attrs["categories"] == {"c": ["x", "y", "z"]} and attrs["classes"] == ["q", "p"]
    assert abs(y.mean()) < 1e-12 and abs(y.std() - 1) < 1e-12


def test_a_csv_rewrite_of_the_same_size_and_mtime_changes_the_fingerprint(tmp_path):
    """Issue 29 item 3: a CSV directory's fingerprint holds its files' content, so an edit
    that keeps the size with the mtime restored (os.utime) is seen (by size and mtime alone
    it is not)."""
    d = tmp_path / "t"
    d.mkdir()
    (d / "a.csv").write_text("x,y\n1.5,2\n3.5,4\n")
    (d / "b.csv").write_text("x,y\n5.5,6\n")
    st = os.stat(d / "a.csv")
    before, stat_before = source_fingerprint(str(d)), tree_fingerprint(d)
    (d / "a.csv").write_text("x,y\n2.5,2\n3.5,4\n")  # same size, another value
    os.utime(d / "a.csv", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tree_fingerprint(d) == stat_before  # what the listing alone saw
    after = source_fingerprint(str(d))
    assert after["contents"] != before["contents"] and after != before
    glob = str(d / "*.csv")
    g1 = source_fingerprint(glob)
    (d / "b.csv").write_text("x,y\n5.6,6\n")
    os.utime(d / "b.csv", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_fingerprint(glob)["contents"] != g1["contents"]
