"""Row-wise vector maths shared by the probes, the maps and the health checks: one L2 normaliser.

It was written three times with different zero handling (health and the probes divided by at least float32's
smallest normal number, the maps by 1 where a row was all zeros); every version left an all-zero row at zero,
which is the one rule kept here: such a row has cosine similarity 0 with everything.
"""

from __future__ import annotations

import numpy as np


def unit_rows(matrix: np.ndarray, *, dtype: np.dtype | type | None = None) -> np.ndarray:
    """Each row of ``matrix`` scaled to unit L2 length; an all-zero row stays zero.

    Parameters
    ----------
    matrix : array-like of shape (n, dim)
    dtype : numpy dtype or None
        Convert to this first (``np.float32`` for the health checks' large matrices); None keeps the input's.

    Returns
    -------
    ndarray of shape (n, dim)
        Dot products of its rows are cosine similarities.
    """
    rows = np.asarray(matrix, dtype=dtype)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1)
