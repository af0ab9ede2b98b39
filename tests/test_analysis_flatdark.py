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


def _closed_form(frame, flat, darks):
    """-ln((I - D) / (F - D)) in float64, D the per-pixel median dark."""
    dark = np.median(darks.astype(np.float64), axis=0)
    return -np.log((frame.astype(np.float64) - dark) / (flat.astype(np.float64) - dark))


# achieved max error against the float64 closed form: 1.1e-7 (float32), 2.2e-16 (float64)
@pytest.mark.parametrize("dtype, atol", [(np.float32, 2e-7), (np.float64, 1e-15)])
def test_keeps_float_precision(dtype, atol):
    frames, flats, darks = _raw()
    a = flat_dark_correct(frames.astype(dtype), flats.astype(dtype), darks.astype(dtype))
    assert a.dtype == dtype
    expected = _closed_form(frames, flats, darks)  # one flat per frame
    np.testing.assert_allclose(a, expected, rtol=0, atol=atol)
    if dtype == np.float64:
        # negative control: the float64 result rounded to float32 is 6e-8 off, far
        # outside the float64 tolerance (a float32 computation would fail it)
        assert np.abs(a.astype(np.float32) - expected).max() > 1e3 * atol


def test_single_frame_and_median_flats():
    frames, flats, darks = _raw(n=3)
    a = flat_dark_correct(frames[0], flats, darks)  # 3 flats, 1 frame -> median
    assert a.shape == frames.shape[1:]
    expected = _closed_form(frames[0], np.median(flats, axis=0), darks)
    np.testing.assert_allclose(a, expected, rtol=0, atol=2e-7)  # achieved 1.1e-7 (float32)
    # negative controls: the mean of the flats (0.015 off) or the first flat (0.041 off)
    for wrong_flat in (flats.mean(axis=0), flats[0]):
        assert np.abs(a - _closed_form(frames[0], wrong_flat, darks)).max() > 1e-2
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
