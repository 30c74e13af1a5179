"""Rows with a fixed number of nonzeros: the dual rows of a GLM over coded categoricals.

A row of the design ``[x_numeric, onehot(code_1)[1:], ..., onehot(code_k)[1:], 1]`` scaled by
the GLM's per-row factor has K = d0 + k + 1 entries (a reference level's entry is a stored 0),
plus the augmented column c. :class:`FixedRows` keeps them as two (n, K) arrays — column
indices and values — and gives what the passes need by gathers and one ``bincount``, never
a dense (n, p) block and never a general sparse-matrix product:

* ``dot(v)``: ``A v`` (n,), a gather;
* ``quad(M)``: ``a_iᵀ M a_i`` per row (n,), K² gathers per row (the leverage against a
  factor: M = R⁻¹R⁻ᵀ or V diag(s⁻²) Vᵀ);
* ``sq_norms()``: ``‖a_i‖²``;
* ``gram()`` / ``add_gram_to(G)``: ``AᵀA`` by one sort and ``bincount`` over the K² pairs
  of every row — the scatter-add of a one-hot block's Gram, with no (q, q) temporary.

Duplicate column indices in a row are allowed (their values add, as in a sparse matrix):
every formula above is bilinear in the entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedRows:
    """n rows of width q with K stored entries each.

    Attributes
    ----------
    cols : ndarray of shape (n, K), int64
        Column of each entry (0 <= col < q).
    vals : ndarray of shape (n, K), float64
        Its value.
    q : int
        Columns of the matrix.
    """

    cols: np.ndarray
    vals: np.ndarray
    q: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.cols.shape[0]), int(self.q)

    def augment(self, c: np.ndarray) -> FixedRows:
        """``[A, c]``: one more column (q) holding c."""
        n = self.cols.shape[0]
        return FixedRows(np.column_stack([self.cols, np.full(n, self.q, dtype=np.int64)]),
                         np.column_stack([self.vals, np.asarray(c, dtype=np.float64)]),
                         self.q + 1)

    def dot(self, v: np.ndarray) -> np.ndarray:
        """``A v`` (n,) for v (q,)."""
        return np.einsum("nk,nk->n", self.vals, np.asarray(v, dtype=np.float64)[self.cols])

    def sq_norms(self) -> np.ndarray:
        """``‖a_i‖²`` (n,)."""
        return self.quad_diag(np.ones(self.q))

    def quad_diag(self, dvec: np.ndarray) -> np.ndarray:
        """``a_iᵀ diag(dvec) a_i`` (n,) (duplicates summed first)."""
        same = self.cols[:, :, None] == self.cols[:, None, :]
        pair = self.vals[:, :, None] * self.vals[:, None, :] * same
        return np.einsum("nkl,nk->n", pair, dvec[self.cols])

    def quad(self, M: np.ndarray) -> np.ndarray:
        """``a_iᵀ M a_i`` (n,) for a (q, q) matrix M."""
        sub = M[self.cols[:, :, None], self.cols[:, None, :]]  # (n, K, K)
        return np.einsum("nk,nkl,nl->n", self.vals, sub, self.vals)

    def gram(self) -> np.ndarray:
        """``AᵀA`` (q, q)."""
        G = np.zeros((self.q, self.q))
        self.add_gram_to(G)
        return G

    def add_gram_to(self, G: np.ndarray) -> None:
        """``G += AᵀA`` in place, touching only the entries this block's rows reach: one
        sort of its n K² pairs, no (q, q) temporary (q runs to thousands with one coded
        column of thousands of levels)."""
        q = self.q
        idx = (self.cols[:, :, None] * q + self.cols[:, None, :]).ravel()
        w = (self.vals[:, :, None] * self.vals[:, None, :]).ravel()
        at, inv = np.unique(idx, return_inverse=True)
        flat = G.reshape(-1)  # a view of a C-contiguous G (checked: writes must land)
        if not np.shares_memory(flat, G):
            raise ValueError("add_gram_to needs a C-contiguous G")
        flat[at] += np.bincount(inv.ravel(), weights=w, minlength=at.size)

    def dense(self) -> np.ndarray:
        """The dense (n, q) block (tests, small blocks)."""
        n = self.cols.shape[0]
        out = np.zeros((n, self.q))
        np.add.at(out, (np.repeat(np.arange(n), self.cols.shape[1]), self.cols.ravel()),
                  self.vals.ravel())
        return out
