"""Device kernels: a block's R and per-row leverage on a torch device (no Dask).

The ``device`` option of :func:`nldist.scores` (job field ``device``) moves the O(n q²)
linear algebra of the two score passes onto a torch device; the matrix block itself (the
dual block of :mod:`nldist.kernels`) is built on the host exactly as with NumPy, so a
persisted block (:mod:`nldist.dualstore`) holds the same bytes whatever the device.

=============  ==========================================================================
device         meaning
=============  ==========================================================================
``numpy``      the NumPy/LAPACK kernels of :mod:`nldist.linalg` (default; nothing here)
``cpu``        these kernels on torch's CPU device (how CI exercises the torch path)
``cuda[:N]``   these kernels on a CUDA device; an error on a worker that has none
``auto``       ``cuda`` when ``torch.cuda.is_available()`` on the worker, else ``numpy``
=============  ==========================================================================

Blocks go to the device in row slices of at most :data:`SLICE_BYTES` (float32 input is
sent as float32 and upcast there); all arithmetic is float64, R factors are accumulated
in float64 (the Gram ``AᵀA`` of the slices), and results come back as float64 NumPy
arrays. Only the q × q decisions stay on the host, with :mod:`nldist.linalg`'s own code:
the column-equilibrated Cholesky and its condition estimate pick CholeskyQR (κ̂ <=
:data:`nldist.linalg.KAPPA_CHOLQR`) or CholeskyQR2 (κ̂ <= :data:`nldist.linalg.KAPPA_CHOLQR2`,
its triangular solve and second Gram on the device); anything else (Cholesky breakdown,
κ̂ above that bound, blocks with fewer than 4q rows, forced ``scholqr3``/``householder``)
falls back to :func:`nldist.linalg.block_r_method` on the host. Per-row leverage is one
GEMM with ``RFactor.basis`` when present (R⁻¹ of a well-conditioned R, or V_r / s_r of a
rank-deficient one), else a triangular solve with ``RFactor.solve_r``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from nldist import linalg
from nldist.errors import NldistError

__all__ = [
    "DEVICES",
    "SLICE_BYTES",
    "Reducer",
    "block_r",
    "check_device",
    "gram",
    "resolve",
    "row_leverage",
    "row_sqnorms",
]

#: the values of the ``device`` option (``cuda:N`` names device N)
DEVICES = ("numpy", "cpu", "cuda", "cuda:N", "auto")
_DEVICE_RE = re.compile(r"^(numpy|cpu|auto|cuda(:\d+)?)$")
#: largest row slice (bytes of float64 values) sent to the device at once; bounds the
#: device memory of a kernel at about three such slices
SLICE_BYTES = 2**26


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
        from nldist.quadrature import use_worker_threads

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


def _rows(q: int) -> int:
    """Rows of a device slice of a (., q) float64 matrix (at least 256)."""
    return max(256, SLICE_BYTES // max(1, 8 * q))


def _slices(n: int, q: int) -> list[slice]:
    step = _rows(q)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


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


class Reducer:
    """Running float64 reduction of row slices on a device: the Gram ``AᵀA`` or ``‖A‖_F²``.

    Pass 1 feeds it the matrix block slice by slice (:func:`nldist.kernels.pass1_block`);
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


def gram(A: np.ndarray, device: str) -> np.ndarray:
    """Gram ``AᵀA`` of a block A (n_b, q) on the device, float64 (q, q) ndarray."""
    A = _host(A)
    acc = Reducer(A.shape[1], device)
    acc.add(A)
    return acc.value()


def _cholqr2(A: np.ndarray, R1: np.ndarray, device: str) -> np.ndarray | None:
    """Second CholeskyQR step on the device: R = chol((A R1⁻¹)ᵀ(A R1⁻¹)) R1, or None."""
    torch = _torch()
    q = A.shape[1]
    R1t = _tensor(R1, device)
    G2 = torch.zeros((q, q), dtype=torch.float64, device=device)
    for s in _slices(A.shape[0], q):
        Q1 = torch.linalg.solve_triangular(R1t, _upload(A[s], device), upper=True, left=False)
        G2.addmm_(Q1.T, Q1)
    R2 = linalg._chol_upper(_numpy(G2))
    return None if R2 is None else R2 @ R1


def block_r(
    A: np.ndarray, device: str, method: str = "auto", G: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """R factor (q, q) of one row block, with its O(n q²) work on the device.

    The device version of :func:`nldist.linalg.block_r_method` (same arguments, same
    contract): the Gram and the CholeskyQR2 step run on the device; the q × q choice uses
    linalg's equilibrated Cholesky and condition estimate; what is not CholeskyQR or
    CholeskyQR2 is computed by :func:`nldist.linalg.block_r_method` on the host.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
        A row block, float32 or float64.
    device : str
        A torch device from :func:`resolve`.
    method : {"auto", "cholqr", "cholqr2", "scholqr3", "householder"}
    G : ndarray (q, q), optional
        ``AᵀA`` if the caller already has it (saves a pass over A).

    Returns
    -------
    R : ndarray, shape (q, q), float64
        Upper triangular with ``RᵀR = AᵀA`` to the accuracy of the method.
    method : str
        The method used (as :func:`nldist.linalg.block_r_method`).
    """
    A = _host(A)
    n, q = A.shape
    if method not in ("auto", "cholqr", "cholqr2") or n == 0 or q == 0 or n < 4 * q:
        return linalg.block_r_method(A, method, G)  # raises for an unknown method
    if G is None:
        G = gram(A, device)
    if not np.all(np.isfinite(G)):
        return linalg.block_r_method(A, method, G)
    nz = np.diag(G) > 0
    if not nz.any():
        return np.zeros((q, q)), "zero"
    if not nz.all():  # exactly zero columns: factor the others, embed
        sub, used = block_r(np.ascontiguousarray(A[:, nz]), device, method, G[np.ix_(nz, nz)])
        return linalg._embed(sub, nz), used
    R1, kappa = linalg._equilibrated_chol(G)
    auto = method == "auto"
    if R1 is not None and (method == "cholqr" or (auto and kappa <= linalg.KAPPA_CHOLQR)):
        return R1, "cholqr"
    if R1 is not None and (method == "cholqr2" or (auto and kappa <= linalg.KAPPA_CHOLQR2)):
        R = _cholqr2(A, R1, device)
        if R is not None:
            return R, "cholqr2"
    return linalg.block_r_method(A, method, G)


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


def row_leverage(A: np.ndarray, fac: linalg.RFactor, device: str) -> np.ndarray:
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


def row_sqnorms(A: np.ndarray, device: str) -> np.ndarray:
    """Squared Euclidean norm of each row on the device: (n_b, q) -> (n_b,) float64."""
    torch = _torch()
    A = _host(A)
    n = A.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=device)
    for s in _slices(n, A.shape[1]):
        T = _upload(A[s], device)
        out[s] = (T * T).sum(dim=1)
    return _numpy(out)
