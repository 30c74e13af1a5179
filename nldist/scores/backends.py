"""Where the O(n q²) work of the score passes runs: :class:`NumpyBackend` or :class:`TorchBackend`.

A backend is injected into the block engine (:mod:`nldist.scores.block`); the matrix block
itself (the dual block of :mod:`nldist.scores.rows`) is built on the host either way, so a
persisted block holds the same bytes whatever the device. The ``device`` option of
:func:`nldist.scores` (job field ``device``) picks it, on the worker that runs the block:

=============  ==========================================================================
device         backend
=============  ==========================================================================
``numpy``      :class:`NumpyBackend`: the NumPy/LAPACK kernels of :mod:`.linalg` (default)
``cpu``        :class:`TorchBackend` on torch's CPU device (how CI exercises the torch path)
``cuda[:N]``   :class:`TorchBackend` on a CUDA device; an error on a worker that has none
``auto``       ``cuda`` when ``torch.cuda.is_available()`` on the worker, else ``numpy``
=============  ==========================================================================

Every backend has the same five operations: ``reducer(q, gram)`` (running Gram ``AᵀA`` or
``‖A‖_F²`` of row slices), ``gram(A)``, ``cholqr2(A, R1)``, ``row_leverage(A, factor)`` and
``row_sqnorms(A)``; ``block_r`` is :func:`nldist.scores.linalg.block_r_method` — the one
decision tree of the block R — with the backend's ``gram`` and ``cholqr2``. A new device
(CuPy, MPS) is one more class with these methods.

On a torch device, blocks go up in row slices of at most
:data:`nldist._budget.DEVICE_SLICE_BYTES` (float32 input is sent as float32 and upcast
there); all arithmetic is float64, and results come back as float64 NumPy arrays. Per-row
leverage is one GEMM with ``RFactor.basis`` when present (R⁻¹ of a well-conditioned R, or
V_r / s_r of a rank-deficient one), else a triangular solve with ``RFactor.solve_r``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from nldist._budget import device_rows
from nldist._budget import slices as _row_slices
from nldist._runtime import use_worker_threads
from nldist.errors import NldistError
from nldist.scores import linalg

__all__ = ["DEVICES", "NumpyBackend", "TorchBackend", "backend", "check_device", "resolve"]

#: the values of the ``device`` option (``cuda:N`` names device N)
DEVICES = ("numpy", "cpu", "cuda", "cuda:N", "auto")
_DEVICE_RE = re.compile(r"^(numpy|cpu|auto|cuda(:\d+)?)$")


def check_device(device: Any) -> str:
    """Return the device string or raise a one-line error listing the allowed values.

    Cheap: no torch import, no device query (availability is checked on the worker by
    :func:`resolve`).

    Parameters
    ----------
    device : str
        ``"numpy"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns
    -------
    str
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise NldistError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return device


def _torch() -> Any:
    import torch

    return torch


def resolve(device: str) -> str | None:
    """The torch device the kernels run on here, or None for the NumPy kernels.

    Called on the worker that runs the block, so ``auto`` follows that worker's GPU.

    Parameters
    ----------
    device : str
        A value accepted by :func:`check_device`.

    Returns
    -------
    str or None
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None for ``numpy`` (and for ``auto``
        without a CUDA device).

    Raises
    ------
    NldistError
        ``cuda``/``cuda:N`` requested but torch sees no (or not that) CUDA device.
    """
    check_device(device)
    if device == "numpy":
        return None
    torch = _torch()
    if device == "cpu":
        use_worker_threads()  # one torch thread per Dask worker thread
        return "cpu"
    has_cuda = bool(torch.cuda.is_available())
    if device == "auto":
        return "cuda" if has_cuda else None
    if not has_cuda:
        raise NldistError(f"device {device!r} requested but torch sees no CUDA device on the "
                          "worker; use device: auto or numpy")
    if ":" in device:
        index, count = int(device.split(":")[1]), int(torch.cuda.device_count())
        if index >= count:
            raise NldistError(f"device {device!r} requested but torch sees {count} CUDA "
                              f"device(s) on the worker (cuda:0..cuda:{count - 1}); use "
                              "device: cuda, auto or numpy")
    return device


def _slices(n: int, q: int) -> list[slice]:
    return _row_slices(n, device_rows(q)) if n else []


def _host(A: np.ndarray) -> np.ndarray:
    """A as a float32/float64 array torch can wrap without a warning."""
    A = np.asarray(A)
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    return A


def _upload(A: np.ndarray, dev: str) -> Any:
    """One host slice (n_s, q) to a float64 tensor on the device (upcast there)."""
    torch = _torch()
    a = np.ascontiguousarray(A)
    if not a.flags.writeable:  # torch cannot wrap read-only memory
        a = a.copy()
    return torch.from_numpy(a).to(device=dev, dtype=torch.float64)


def _tensor(M: np.ndarray, dev: str) -> Any:
    """A small host matrix as a float64 tensor on the device."""
    torch = _torch()
    return torch.as_tensor(np.ascontiguousarray(M, dtype=np.float64), device=dev)


def _numpy(t: Any) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


class _TorchReducer:
    """Running float64 reduction of row slices on a device: the Gram ``AᵀA`` or ``‖A‖_F²``.

    Pass 1 feeds it the matrix block slice by slice (:func:`nldist.scores.block.pass1_block`);
    the sum stays on the device until :meth:`value`.

    Parameters
    ----------
    q : int
        Columns of the slices.
    device : str
        A torch device from :func:`resolve`.
    gram : bool, default True
        Accumulate ``AᵀA`` (q, q); else the sum of squares of all entries.
    """

    def __init__(self, q: int, device: str, gram: bool = True) -> None:
        torch = _torch()
        self.q, self.device, self.gram = int(q), device, gram
        shape = (self.q, self.q) if gram else ()
        self._acc = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, A: np.ndarray) -> None:
        """Add a slice A (n_s, q), float32 or float64."""
        A = _host(A)
        for s in _slices(A.shape[0], self.q):
            T = _upload(A[s], self.device)
            if self.gram:
                self._acc.addmm_(T.T, T)
            else:
                self._acc += (T * T).sum()

    def value(self) -> np.ndarray | float:
        """The Gram (q, q) float64 ndarray, or ``‖A‖_F²`` as a float."""
        if self.gram:
            return _numpy(self._acc)
        return float(self._acc.item())


#: device copies of recent factors: pass 2 calls row_leverage once per cache-sized slice
#: with the same factor; the entry holds the factor itself so its id stays unique
_FACTORS: OrderedDict[tuple[int, str], tuple[linalg.RFactor, Any]] = OrderedDict()
_FACTORS_MAX = 4
_FACTORS_LOCK = threading.Lock()


def _factor(fac: linalg.RFactor, device: str) -> Any:
    """``fac.basis`` (or ``fac.solve_r``) as a float64 tensor on the device, cached."""
    key = (id(fac), device)
    with _FACTORS_LOCK:
        hit = _FACTORS.get(key)
        if hit is not None and hit[0] is fac:
            _FACTORS.move_to_end(key)
            return hit[1]
    M = _tensor(fac.basis if fac.solve_r is None else fac.solve_r, device)
    with _FACTORS_LOCK:
        _FACTORS[key] = (fac, M)
        while len(_FACTORS) > _FACTORS_MAX:
            _FACTORS.popitem(last=False)
    return M


def _row_leverage(A: np.ndarray, fac: linalg.RFactor, device: str) -> np.ndarray:
    """Per-row leverage of a row block given the global factor, on the device.

    ``l_i = ||a_i B||²`` by one GEMM per slice when ``fac.basis`` B is set (R⁻¹ of a
    well-conditioned R, V_r / s_r of a rank-deficient one), else ``||a_i T⁻¹||²`` by a
    triangular solve with ``T = fac.solve_r`` (R, or the R of ``[R; √λ I]`` with ridge).

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
        Float32 or float64.
    fac : nldist.linalg.RFactor
    device : str
        A torch device from :func:`resolve`.

    Returns
    -------
    ndarray, shape (n_b,), float64
    """
    torch = _torch()
    A = _host(A)
    n = A.shape[0]
    if linalg.zero_leverage(n, fac):
        return np.zeros(n)
    gemm = fac.solve_r is None
    M = _factor(fac, device)
    out = torch.empty(n, dtype=torch.float64, device=device)
    for s in _slices(n, A.shape[1]):
        T = _upload(A[s], device)
        if gemm:
            Z = T @ M
        else:
            Z = torch.linalg.solve_triangular(M, T, upper=True, left=False)
        out[s] = Z.square_().sum(dim=1)
    return _numpy(out)


def _row_sqnorms(A: np.ndarray, device: str) -> np.ndarray:
    """Squared Euclidean norm of each row on the device: (n_b, q) -> (n_b,) float64."""
    torch = _torch()
    A = _host(A)
    n = A.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=device)
    for s in _slices(n, A.shape[1]):
        T = _upload(A[s], device)
        out[s] = (T * T).sum(dim=1)
    return _numpy(out)


def _gram(A: np.ndarray, device: str) -> np.ndarray:
    """Gram ``AᵀA`` of a block A (n_b, q) on the device, float64 (q, q) ndarray."""
    A = _host(A)
    acc = _TorchReducer(A.shape[1], device)
    acc.add(A)
    return acc.value()


def _cholqr2(A: np.ndarray, R1: np.ndarray, device: str) -> np.ndarray | None:
    """Second CholeskyQR step on the device: R = chol((A R1⁻¹)ᵀ(A R1⁻¹)) R1, or None."""
    torch = _torch()
    A = _host(A)
    q = A.shape[1]
    R1t = _tensor(R1, device)
    G2 = torch.zeros((q, q), dtype=torch.float64, device=device)
    for s in _slices(A.shape[0], q):
        Q1 = torch.linalg.solve_triangular(R1t, _upload(A[s], device), upper=True, left=False)
        G2.addmm_(Q1.T, Q1)
    R2 = linalg.chol_upper(_numpy(G2))
    return None if R2 is None else R2 @ R1


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------


class _NumpyReducer:
    """Running float64 Gram ``G += AᵀA`` (or ``‖A‖_F²``) of host row slices."""

    def __init__(self, q: int, gram: bool = True) -> None:
        self.gram = gram
        self.G = np.zeros((q, q)) if gram else None
        self.fro2 = 0.0

    def add(self, A: np.ndarray) -> None:
        if self.gram:
            self.G += A.T @ A
        else:
            self.fro2 += float(np.einsum("ij,ij->", A, A))

    def value(self) -> np.ndarray | float:
        return self.G if self.gram else self.fro2


class NumpyBackend:
    """The NumPy/LAPACK kernels of :mod:`nldist.scores.linalg` on the host."""

    name = "numpy"
    #: the Gram of ``[X, 1, y]`` may be added without forming the block (linear rows)
    host_gram = True

    def reducer(self, q: int, gram: bool = True) -> _NumpyReducer:
        return _NumpyReducer(q, gram)

    def gram(self, A: np.ndarray) -> np.ndarray:
        return linalg.gram(A)

    def cholqr2(self, A: np.ndarray, R1: np.ndarray) -> np.ndarray | None:
        return linalg.cholqr2(A, R1)

    def block_r(self, A: np.ndarray, method: str = "auto", G: np.ndarray | None = None
                ) -> tuple[np.ndarray, str]:
        return linalg.block_r_method(A, method, G)

    def row_leverage(self, A: np.ndarray, fac: linalg.RFactor, overwrite: bool = False
                     ) -> np.ndarray:
        return linalg.row_leverage(A, fac, overwrite_a=overwrite)

    def row_sqnorms(self, A: np.ndarray) -> np.ndarray:
        return linalg.row_sqnorms(A)


class TorchBackend:
    """The same kernels on a torch device (float64), ``device`` from :func:`resolve`."""

    host_gram = False

    def __init__(self, device: str) -> None:
        self.name = self.device = device

    def reducer(self, q: int, gram: bool = True) -> _TorchReducer:
        return _TorchReducer(q, self.device, gram)

    def gram(self, A: np.ndarray) -> np.ndarray:
        return _gram(A, self.device)

    def cholqr2(self, A: np.ndarray, R1: np.ndarray) -> np.ndarray | None:
        return _cholqr2(A, R1, self.device)

    def block_r(self, A: np.ndarray, method: str = "auto", G: np.ndarray | None = None
                ) -> tuple[np.ndarray, str]:
        return linalg.block_r_method(A, method, G, ops=self)

    def row_leverage(self, A: np.ndarray, fac: linalg.RFactor, overwrite: bool = False
                     ) -> np.ndarray:
        return _row_leverage(A, fac, self.device)

    def row_sqnorms(self, A: np.ndarray) -> np.ndarray:
        return _row_sqnorms(A, self.device)


_NUMPY = NumpyBackend()


def backend(device: str) -> NumpyBackend | TorchBackend:
    """The backend of ``device`` on this worker (``auto`` follows this worker's GPU)."""
    dev = None if device == "numpy" else resolve(device)
    return _NUMPY if dev is None else TorchBackend(dev)
