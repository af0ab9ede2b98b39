"""estimate_shift, StackAligner, align_stack."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data, transform

from txm_live.analysis import StackAligner, align_stack, apply_shifts, estimate_shift


@pytest.fixture(scope="module")
def image():
    return transform.resize(data.camera().astype(np.float64), (256, 256), order=3)


def _fshift(img, shift):
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift)).real


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("true", [(3.37, -7.81), (-20.4, 5.55), (0.02, -0.49)])
def test_recovers_fourier_shift(image, dtype, true):
    moved = _fshift(image, true).astype(dtype)
    dy, dx = estimate_shift(image.astype(dtype), moved)
    # the shift that re-aligns `moved` with the reference is minus the drift
    assert abs(dy + true[0]) < 0.02 and abs(dx + true[1]) < 0.02


def test_sign_convention_with_ndimage_shift(image):
    moved = ndimage.shift(image, (2.3, -1.2), order=3, mode="nearest")
    s = estimate_shift(image, moved)
    back = ndimage.shift(moved, s, order=3, mode="nearest")
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(back - image)[inner].mean() < np.abs(moved - image)[inner].mean() / 5


def test_noise_and_roi(image):
    rng = np.random.default_rng(0)
    moved = _fshift(image, (1.25, 2.5)) + rng.normal(0, 0.02, image.shape)
    ref = image + rng.normal(0, 0.02, image.shape)
    s, peak = estimate_shift(ref, moved, roi=(slice(32, 224), slice(32, 224)), return_error=True)
    assert abs(s[0] + 1.25) < 0.05 and abs(s[1] + 2.5) < 0.05
    assert 0.1 < peak <= 1.0


def test_nan_pixels_tolerated(image):
    moved = _fshift(image, (1.0, -2.0))
    moved[10:12, 10:40] = np.nan
    s = estimate_shift(image, moved)
    assert abs(s[0] + 1.0) < 0.05 and abs(s[1] - 2.0) < 0.05


def test_bad_input(image):
    with pytest.raises(ValueError, match=r"same shape; got \(256, 256\) and \(256, 200\)"):
        estimate_shift(image, image[:, :200])
    with pytest.raises(ValueError, match="must be 2-D"):
        estimate_shift(image[None], image[None])
    with pytest.raises(ValueError, match=r"band must be in \(0, 0.5\]"):
        estimate_shift(image, image, band=0.7)
    with pytest.raises(TypeError, match="roi must be a tuple of two slices"):
        estimate_shift(image, image, roi=[0, 10])
    with pytest.raises(ValueError, match="mode must be one of"):
        StackAligner(mode="neighbor")


@pytest.mark.parametrize("mode", ["reference", "running_mean", "neighbour"])
def test_stack_alignment_modes(image, mode):
    rng = np.random.default_rng(1)
    drift = np.cumsum(rng.normal(0, 0.7, (8, 2)), axis=0)
    drift -= drift[0]
    # contrast changes frame to frame (as across an absorption edge)
    stack = np.stack([(1 + 0.1 * k) * _fshift(image, d) for k, d in enumerate(drift)])
    res = align_stack(stack, mode=mode)
    assert res.shifts.shape == (8, 2)
    assert np.sqrt(np.mean((res.shifts + drift) ** 2)) < 0.05
    assert res.aligned.shape == stack.shape and np.isnan(res.aligned).any()


def test_live_aligner_matches_batch(image):
    drift = np.array([[0, 0], [0.5, -0.3], [1.1, -0.2], [1.4, 0.6]])
    frames = [_fshift(image, d) for d in drift]
    aligner = StackAligner(mode="reference")
    live = np.array([aligner.add(f) for f in frames])
    np.testing.assert_allclose(live, -drift, atol=0.03)
    np.testing.assert_allclose(aligner.shifts, live)
    with pytest.raises(ValueError, match=r"frame shape \(10, 10\) differs"):
        aligner.add(np.zeros((10, 10)))
    aligner.reset()
    assert aligner.shifts.shape == (0, 2)


def test_apply_shifts_validation():
    with pytest.raises(ValueError, match=r"need stack \(n, ny, nx\) and shifts \(n, 2\)"):
        apply_shifts(np.zeros((3, 4, 4)), np.zeros((2, 2)))
