"""fit_xanes on analytic spectra: accuracy, rules and bad input."""

import numpy as np
import pytest

from txm_live.analysis import XanesInputWarning, find_e0, fit_xanes, normalization_parameters
from txm_live.analysis._synthetic import analytic_spectrum, synthetic_xanes_stack


@pytest.fixture(scope="module")
def noisy():
    return synthetic_xanes_stack((64, 64), flat_counts=1e4, seed=3)


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_free_recovery(dtype):
    st, E, tr = synthetic_xanes_stack((16, 16), flat_counts=0, dtype=dtype)
    r = fit_xanes(st, E, e0=tr["e0"])
    assert r.whiteline.dtype == dtype and r.mask.all()
    assert _rms(r.whiteline - tr["whiteline"]) < 0.08
    assert _rms(r.edge - tr["edge"]) < 0.03
    # the arctan tail is still rising at the post-edge range: ~5 % below 0.5
    np.testing.assert_allclose(r.edge_jump, 0.5, rtol=0.1)


def test_noisy_accuracy(noisy):
    st, E, tr = noisy
    r = fit_xanes(st, E, e0=tr["e0"])
    assert r.mask.mean() > 0.99
    dw = (r.whiteline - tr["whiteline"])[r.mask]
    de = (r.edge - tr["edge"])[r.mask]
    assert _rms(dw) < 0.3 and abs(dw.mean()) < 0.1
    assert _rms(de) < 0.3 and abs(de.mean()) < 0.1


def test_energy_order_irrelevant(noisy):
    st, E, tr = noisy
    perm = np.random.default_rng(0).permutation(E.size)
    a = fit_xanes(st, E, e0=tr["e0"])
    b = fit_xanes(st[perm], E[perm], e0=tr["e0"])
    np.testing.assert_array_equal(a.whiteline, b.whiteline)
    np.testing.assert_array_equal(b.energies, np.sort(E))


def test_params_reported_and_derived_e0(noisy):
    st, E, tr = noisy
    r = fit_xanes(st, E)
    for k in ("e0", "pre1", "pre2", "norm1", "norm2", "nnorm"):
        assert k in r.params
    assert abs(r.params["e0"] - tr["e0"]) < 2.0
    assert r.params["pre1"] == pytest.approx(E.min() - r.params["e0"])
    assert r.params["pre2"] == pytest.approx(-10.0)
    r2 = fit_xanes(st, E, e0=8333.0, pre1=-40, pre2=-15, norm1=30, norm2=140, nnorm=2)
    assert (r2.params["pre1"], r2.params["pre2"], r2.params["norm1"], r2.params["norm2"],
            r2.params["nnorm"]) == (-40, -15, 30, 140, 2)


def test_normalized_stack_on_request(noisy):
    st, E, tr = noisy
    assert fit_xanes(st, E).normalized is None
    r = fit_xanes(st, E, return_normalized=True)
    assert r.normalized.shape == st.shape and r.normalized.dtype == np.float32
    # not flattened (as Larch's norm): close to 1 just above the edge
    post = r.normalized[(E > tr["e0"] + 25) & (E < tr["e0"] + 60)]
    assert abs(np.nanmean(post) - 1.0) < 0.06
    pre = r.normalized[E < tr["e0"] - 15]
    assert abs(np.nanmean(pre)) < 0.02


def test_duplicates_averaged_with_warning(noisy):
    st, E, tr = noisy
    st2 = np.concatenate([st, st[40:42]])
    E2 = np.concatenate([E, E[40:42]])
    with pytest.warns(XanesInputWarning, match="2 duplicate energies averaged"):
        r = fit_xanes(st2, E2, e0=tr["e0"])
    assert r.energies.size == E.size


def test_nan_frames_and_pixels(noisy):
    st, E, tr = noisy
    st = st.copy()
    st[5] = np.nan  # a whole bad frame: dropped with a warning
    st[:, 3, 4] = np.nan  # a bad pixel: masked
    st[50, 7, 7] = np.inf
    with pytest.warns(XanesInputWarning, match=r"dropping 1 frame\(s\) with no finite pixel at index \[5\]"):
        r = fit_xanes(st, E, e0=tr["e0"])
    assert r.energies.size == E.size - 1
    assert not r.mask[3, 4] and not r.mask[7, 7] and r.status[7, 7] == 1
    assert np.isnan(r.whiteline[3, 4])
    E2 = E.copy()
    E2[0] = np.nan
    with pytest.warns(XanesInputWarning, match="non-finite energy at index \\[0\\]"):
        fit_xanes(noisy[0], E2, e0=tr["e0"])


def test_background_pixels_masked():
    st, E, tr = synthetic_xanes_stack((16, 16), flat_counts=1e4, seed=1)
    st = st.copy()
    rng = np.random.default_rng(0)
    st[:, :4] = rng.normal(0, 0.01, st[:, :4].shape)  # no sample: no edge
    r = fit_xanes(st, E, e0=tr["e0"])
    assert not r.mask[:4].any() and r.mask[4:].mean() > 0.95
    assert (r.status[:4] == 2).mean() > 0.9
    assert "edge jump below" in " ".join(r.status_counts())


def test_user_mask(noisy):
    st, E, tr = noisy
    m = np.zeros(st.shape[1:], bool)
    m[10:20, 10:20] = True
    r = fit_xanes(st, E, mask=m)
    assert r.mask.sum() <= 100 and not r.mask[~m].any() and (r.status[~m] == 5).all()
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) does not match the image shape \(64, 64\)"):
        fit_xanes(st, E, mask=np.ones((3, 3), bool))


def test_two_whiteline_rule():
    """Two separate maxima of equal height: the lower-energy one, whatever the noise."""
    E = np.arange(8280.0, 8460.0, 0.5)
    base = 0.5 + np.arctan((E - 8333) / 2.0) / np.pi
    peak = lambda c: 0.5 * 1.5**2 / ((E - c) ** 2 + 1.5**2)  # noqa: E731
    spec = base * (1 + peak(8345) + peak(8357))
    rng = np.random.default_rng(0)
    st = spec[:, None, None] + rng.normal(0, 0.005, (E.size, 8, 8))
    r = fit_xanes(st, E, e0=8333.0, whiteline_halfwidth=1.5)
    assert r.mask.all()
    assert np.all(np.abs(r.whiteline - 8345) < 0.6)
    # a clearly higher second peak wins
    spec2 = base * (1 + peak(8345) + 1.6 * peak(8357))
    r2 = fit_xanes(spec2[:, None, None] + 0 * st, E, e0=8333.0, whiteline_halfwidth=1.5)
    assert np.all(np.abs(r2.whiteline - 8357) < 0.6)


def test_bad_input_messages(noisy):
    st, E, tr = noisy
    with pytest.raises(ValueError, match="energies has 99 values but the stack has 100 frames"):
        fit_xanes(st, E[:-1])
    # (n_energies, n) is a valid line of pixels since N-D stacks are accepted
    with pytest.raises(ValueError, match=r"at least one spatial axis.*got shape \(100,\)"):
        fit_xanes(st[:, 0, 0], E)
    with pytest.raises(ValueError, match="needs at least 8 distinct energies; got 5"):
        fit_xanes(st[:5], E[:5])
    with pytest.raises(ValueError, match="energies must be in eV"):
        fit_xanes(st, E / 1000)
    above = E > tr["e0"] + 5
    with pytest.raises(ValueError, match="do not span the edge"):
        fit_xanes(st[above], E[above])
    with pytest.raises(ValueError, match="e0=9000 eV is outside the energies"):
        fit_xanes(st, E, e0=9000)
    with pytest.raises(ValueError, match="whiteline_order must be 2 or 3; got 4"):
        fit_xanes(st, E, whiteline_order=4)
    with pytest.raises(ValueError, match="pre1 must be <= pre2"):
        fit_xanes(st, E, pre1=-10, pre2=-30)


def test_find_e0_and_larch_rule():
    E = np.arange(8280.0, 8460.0, 1.0)
    mu = analytic_spectrum(E, 0.0)
    assert abs(find_e0(E, mu) - 8333) <= 1.0
    p = normalization_parameters(E, 8333.0, rule="larch")
    assert p["pre1"] == -50.0 and p["pre2"] == -25.0 and p["norm2"] == 125.0
    with pytest.raises(ValueError, match="rule must be 'xanes' or 'larch'"):
        normalization_parameters(E, 8333.0, rule="athena")


def test_input_not_modified(noisy):
    st, E, tr = noisy
    before = st.copy()
    fit_xanes(st, E, return_normalized=True)
    np.testing.assert_array_equal(st, before)
