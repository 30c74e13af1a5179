"""Each Rows class checks its own fields when built (issue 25 item 1): a wrong-length or
non-finite theta, an unknown loss, a bad k or sketch size is a one-line NldistError."""

from __future__ import annotations

import numpy as np
import pytest

import nldist
from nldist.errors import NldistError
from nldist.options import SketchOptions
from nldist.scores.rows import (
    BlockRows,
    CodedDataRows,
    DataRows,
    DualRows,
    MarginRows,
    RawRows,
    SketchedRows,
)

D = 4


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture
def glm():
    return nldist.get_model("glm:sigmoid", D)


@pytest.fixture
def soft():
    return nldist.get_model("softmax:3", D)


def _theta_classes(glm, soft):
    return [(DualRows, glm, {}), (BlockRows, soft, {}), (MarginRows, soft, {})]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_wrong_length_theta(glm, soft, which):
    cls, m, kw = _theta_classes(glm, soft)[which]
    with pytest.raises(NldistError, match="theta has shape") as exc:
        cls(m, np.zeros(m.n_params + 1), **kw)
    _one_line(exc)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_non_finite_theta(glm, soft, which):
    cls, m, kw = _theta_classes(glm, soft)[which]
    th = np.zeros(m.n_params)
    th[0] = np.nan
    with pytest.raises(NldistError, match="NaN or inf") as exc:
        cls(m, th, **kw)
    _one_line(exc)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_theta_kept_as_checked_array(glm, soft, which):
    cls, m, kw = _theta_classes(glm, soft)[which]
    th = np.zeros(m.n_params)
    assert cls(m, th, **kw).theta is th  # no copy of an already checked theta
    rows = cls(m, [0.0] * m.n_params, **kw)
    assert isinstance(rows.theta, np.ndarray) and rows.theta.dtype == np.float64


def test_not_a_model(glm):
    with pytest.raises(NldistError, match="needs a Model") as exc:
        DualRows("glm:sigmoid", np.zeros(glm.n_params))
    _one_line(exc)
    with pytest.raises(NldistError, match="needs a CodedModel") as exc:
        CodedDataRows(glm)
    _one_line(exc)


def test_dual_unknown_loss(glm):
    with pytest.raises(NldistError, match="unknown loss 'hinge'") as exc:
        DualRows(glm, np.zeros(glm.n_params), loss="hinge")
    _one_line(exc)


def test_dual_loss_fits_outputs(glm, soft):
    with pytest.raises(NldistError, match="needs a model with C >= 2") as exc:
        DualRows(glm, np.zeros(glm.n_params), loss="cross_entropy")
    _one_line(exc)
    with pytest.raises(NldistError, match="need labels y") as exc:
        DualRows(soft, np.zeros(soft.n_params), use_y=False, loss="cross_entropy")
    _one_line(exc)
    DualRows(soft, np.zeros(soft.n_params), use_y=True, loss="cross_entropy")
    DualRows(soft, np.zeros(soft.n_params), use_y=False, loss="squared")


def test_block_rows_checks(glm, soft):
    th = np.zeros(soft.n_params)
    for kw, match in (({"loss": "bce"}, "loss must be"), ({"k": 0}, "k .* positive"),
                      ({"k": 2.5}, "positive integer"), ({"k": 2, "seed": None}, "seed"),
                      ({"k": 2, "seed": -1}, "integer >= 0")):
        with pytest.raises(NldistError, match=match) as exc:
            BlockRows(soft, th, **kw)
        _one_line(exc)
    with pytest.raises(NldistError, match="C >= 2 outputs") as exc:
        BlockRows(glm, np.zeros(glm.n_params))
    _one_line(exc)
    assert BlockRows(soft, th, k=np.int64(3), seed=np.int64(1)).group == 3
    assert BlockRows(soft, th, seed=None).group == 3  # no signs: the seed is unused


def test_margin_rows_needs_c_outputs(glm):
    with pytest.raises(NldistError, match="C >= 2 outputs") as exc:
        MarginRows(glm, np.zeros(glm.n_params))
    _one_line(exc)


def test_data_rows_flags():
    DataRows(bias=np.bool_(True), use_y=False)
    RawRows()
    for kw in ({"bias": "yes"}, {"use_y": 2}):
        with pytest.raises(NldistError, match="must be True or False") as exc:
            DataRows(**kw)
        _one_line(exc)


def test_sketched_rows_checks(glm):
    inner = DualRows(glm, np.zeros(glm.n_params))
    assert SketchedRows(inner, SketchOptions(cols=3)).n_cols(D) == 3
    for sk in (SketchOptions(), SketchOptions.model_construct(cols=0, nnz=4)):
        with pytest.raises(NldistError, match="sketch cols must be a positive") as exc:
            SketchedRows(inner, sk)
        _one_line(exc)
    with pytest.raises(NldistError, match="projects a Rows") as exc:
        SketchedRows(np.eye(3), SketchOptions(cols=3))
    _one_line(exc)
