"""Scores: which rows x which reduction, computed block by block (pure NumPy/torch, no Dask).

:mod:`.kinds` (the registry), :mod:`.rows`, :mod:`.reductions`, :mod:`.spec`,
:mod:`.block` (the pass-1 / pass-2 engine), :mod:`.backends` (NumPy | torch device),
:mod:`.linalg`, :mod:`.sketch`, :mod:`.sampling`.
"""
