"""flat_dark_correct and remove_zingers."""

import numpy as np
import pytest

from txm_live.analysis import FlatDarkWarning, flat_dark_correct, remove_zingers


def _raw(n=4, shape=(32, 32), seed=0, trans=0.3):
    rng = np.random.default_rng(seed)
    darks = rng.poisson(100, (5,) + shape).astype(np.uint16)
    flats = (rng.poisson(1e4, (n,) + shape) + 100).astype(np.uint16)
    frames = (rng.poisson(1e4 * trans, (n,) + shape) + 100).astype(np.uint16)
    return frames, flats, darks


def test_absorbance_value_and_dtype():
    frames, flats, darks = _raw()
    a = flat_dark_correct(frames, flats, darks)
    assert a.shape == frames.shape and a.dtype == np.float32
    assert abs(np.mean(a) - (-np.log(0.3))) < 0.01


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_float_precision(dtype):
    frames, flats, darks = _raw()
    a = flat_dark_correct(frames.astype(dtype), flats.astype(dtype), darks.astype(dtype))
    assert a.dtype == dtype


def test_single_frame_and_median_flats():
    frames, flats, darks = _raw(n=3)
    a = flat_dark_correct(frames[0], flats, darks)  # 3 flats, 1 frame -> median
    assert a.shape == frames.shape[1:]
    with pytest.raises(ValueError, match="one flat per frame; got 3 flats for 2 frames"):
        flat_dark_correct(frames[:2], flats, darks, flat_mode="per_frame")


def test_zinger_removed():
    frames, flats, darks = _raw()
    frames[1, 10, 10] = 60000
    flats[2, 5, 5] = 60000
    a = flat_dark_correct(frames, flats, darks)
    assert abs(a[1, 10, 10] - (-np.log(0.3))) < 0.1
    assert abs(a[2, 5, 5] - (-np.log(0.3))) < 0.1
    b = flat_dark_correct(frames, flats, darks, zinger_sigma=None)
    assert b[1, 10, 10] < -1


def test_remove_zingers_counts():
    img = np.full((16, 16), 1000.0)
    img[3, 4] = 5000.0
    out, n = remove_zingers(img, sigma=10)
    assert n == 1 and out[3, 4] == 1000.0 and img[3, 4] == 5000.0  # input untouched


def test_nonpositive_denominator_masked_not_inf():
    frames, flats, darks = _raw()
    flats[:, :4, :4] = 0  # dead flat region (a lone dead pixel is a zinger: replaced)
    frames[:, 10:16, 10:16] = 0  # fully absorbing region
    frames = frames.astype(np.float32)
    frames[0, 20, 20] = np.nan
    with pytest.warns(FlatDarkWarning, match="pixels set to NaN"):
        a, mask = flat_dark_correct(frames, flats, darks, return_mask=True)
    assert not np.isinf(a).any()
    assert np.isnan(a[:, 0, 0]).all() and np.isnan(a[:, 12, 12]).all() and np.isnan(a[0, 20, 20])
    assert not mask[:, 0, 0].any() and not mask[0, 20, 20] and mask[1, 20, 20]
    assert (np.isnan(a) == ~mask).all()


def test_all_zero_flats_error():
    frames, flats, darks = _raw()
    with pytest.raises(ValueError, match="not above the dark in any pixel"):
        flat_dark_correct(frames, np.zeros_like(flats), darks)


def test_shape_mismatch_error():
    frames, flats, darks = _raw()
    with pytest.raises(ValueError, match=r"flats image shape \(16, 32\) does not match the frames' \(32, 32\)"):
        flat_dark_correct(frames, flats[:, :16], darks)
    with pytest.raises(ValueError, match="flat_mode must be one of"):
        flat_dark_correct(frames, flats, darks, flat_mode="perframe")
