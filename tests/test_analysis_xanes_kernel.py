"""The numba helpers behind fit_xanes agree exactly with what they replace."""

import numpy as np
import pytest

from txm_live.analysis import _xanes_kernel as K


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subtract_interp_is_numpy_interp(dtype):
    """The bias correction gives the bits ``x -= np.interp(x, xp, fp)`` gives,
    at the table points, outside the table and for NaN/inf."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 9))
        xp = np.sort(rng.uniform(8340.0, 8350.0, n))
        fp = rng.normal(0.0, 0.1, n)
        x = rng.uniform(8338.0, 8352.0, 5000).astype(dtype)
        x[:n] = xp  # exactly on the table
        x[n:2 * n] = np.nextafter(xp.astype(dtype), dtype(-np.inf))
        x[-3:] = (np.nan, np.inf, -np.inf)
        expected = x.copy()
        expected -= np.interp(expected, xp, fp).astype(dtype)
        got = x.copy()
        K.subtract_interp(got, xp, fp)
        np.testing.assert_array_equal(got, expected)
    # negative control: a different table gives different bits
    other = x.copy()
    K.subtract_interp(other, xp, fp + 1e-3)
    assert not np.array_equal(other, expected, equal_nan=True)


def test_gather_pixels_is_fancy_indexing():
    rng = np.random.default_rng(1)
    stack = rng.random((7, 40, 33), dtype=np.float32)[:, ::-1]  # strided
    flat = np.sort(rng.choice(40 * 33, 300, replace=False))
    rows, cols = np.unravel_index(flat, (40, 33))
    np.testing.assert_array_equal(K.gather_pixels(stack, rows, cols), stack[:, rows, cols])


def test_line_sums_are_sequential_float64_sums_of_finite_values():
    rng = np.random.default_rng(2)
    view = rng.normal(1.0, 0.1, (3, 2, 5, 17)).astype(np.float32)
    view[0, 1, 2, 4] = np.nan
    view[2, 0, 0, :] = np.inf
    sums, counts = K.line_sums(view)
    for idx in np.ndindex(view.shape[:3]):
        acc, c = 0.0, 0
        for v in view[idx]:
            if np.isfinite(v):
                acc += float(v)
                c += 1
        assert sums[idx] == acc and counts[idx] == c
    assert counts[0, 1, 2] == 16 and counts[2, 0, 0] == 0
