"""The one row normaliser (``core.base.vectors.unit_rows``) against scikit-learn's, and its zero rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from core.base.vectors import unit_rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_rows_matches_scikit_learn_and_keeps_zero_rows_zero(dtype):
    rng = np.random.default_rng(0)
    matrix = rng.normal(scale=100.0, size=(12, 7)).astype(dtype)
    matrix[3] = 0.0  # an all-zero row: cosine similarity 0 with everything, never NaN
    unit = unit_rows(matrix)
    assert unit.dtype == dtype and np.isfinite(unit).all()
    np.testing.assert_allclose(unit, normalize(matrix), rtol=1e-6)
    np.testing.assert_array_equal(unit[3], 0.0)
    norms = np.linalg.norm(np.delete(unit, 3, axis=0), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


def test_unit_rows_converts_when_asked():
    unit = unit_rows([[3, 4], [0, 0]], dtype=np.float32)
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(unit, np.array([[0.6, 0.8], [0.0, 0.0]], dtype=np.float32))
