"""fit_lcf constraints, masks, errors; xanes_mask."""

import numpy as np
import pytest

from txm_live.analysis import fit_lcf, fit_xanes, xanes_mask
from txm_live.analysis._synthetic import analytic_spectrum, synthetic_xanes_stack

E = np.linspace(8300, 8420, 80)
R1 = analytic_spectrum(E, 0.0)
R2 = analytic_spectrum(E, 3.0, wl_amp=0.3)
R3 = analytic_spectrum(E, -2.0, wl_amp=0.9)


def _mix(frac, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    st = frac[0][None] * R1[:, None, None] + frac[1][None] * R2[:, None, None]
    return st + rng.normal(0, noise, st.shape) if noise else st


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_recovery(dtype):
    f = np.random.default_rng(1).uniform(0, 1, (2, 8, 8))
    r = fit_lcf(_mix(f).astype(dtype), E, np.stack([R1, R2]))
    assert r.fractions.dtype == dtype
    np.testing.assert_allclose(r.fractions, f, atol=1e-4)
    assert np.nanmax(r.residual) < 1e-4


def test_nonnegative_and_sum_to_one():
    f = np.zeros((2, 4, 4))
    f[0] = 1.2
    f[1] = -0.2  # outside the simplex: the constrained optimum lies on its edge
    st = _mix(f)
    free = fit_lcf(st, E, np.stack([R1, R2]), nonnegative=False)
    np.testing.assert_allclose(free.fractions, f, atol=1e-6)
    nn = fit_lcf(st, E, np.stack([R1, R2]))
    assert (nn.fractions >= 0).all() and np.allclose(nn.fractions[1], 0)
    s1 = fit_lcf(st, E, np.stack([R1, R2, R3]), sum_to_one=True)
    assert (s1.fractions >= 0).all()
    np.testing.assert_allclose(s1.fractions.sum(0), 1.0, atol=1e-9)


def test_nnls_matches_scipy():
    from scipy.optimize import nnls

    rng = np.random.default_rng(2)
    st = rng.normal(0.5, 0.3, (E.size, 3, 3))
    refs = np.stack([R1, R2, R3])
    r = fit_lcf(st, E, refs)
    for y in range(3):
        for x in range(3):
            c, _ = nnls(refs.T, st[:, y, x])
            np.testing.assert_allclose(r.fractions[:, y, x], c, atol=1e-8)


def test_reference_interpolation_mask_and_nan():
    f = np.full((2, 6, 6), 0.5)
    st = _mix(f)
    st[:, 0, 0] = np.nan
    fine = np.linspace(8290, 8430, 500)
    refs = np.stack([analytic_spectrum(fine, 0.0), analytic_spectrum(fine, 3.0, wl_amp=0.3)])
    m = np.ones((6, 6), bool)
    m[5, 5] = False
    r = fit_lcf(st, E, refs, reference_energies=fine, mask=m)
    assert not r.mask[0, 0] and not r.mask[5, 5] and np.isnan(r.fractions[:, 5, 5]).all()
    np.testing.assert_allclose(r.fractions[:, 1:5, 1:5], 0.5, atol=2e-3)


def test_bad_input():
    st = _mix(np.full((2, 4, 4), 0.5))
    with pytest.raises(ValueError, match="references have 79 energies but the stack has 80"):
        fit_lcf(st, E, np.stack([R1, R2])[:, :-1])
    with pytest.raises(ValueError, match="exceed the reference energies"):
        fit_lcf(st, E, np.stack([R1, R2])[:, :40], reference_energies=E[:40])
    with pytest.raises(ValueError, match="linearly dependent"):
        fit_lcf(st, E, np.stack([R1, 2 * R1]))
    with pytest.raises(ValueError, match="need 1 to 6 references; got 7"):
        fit_lcf(st, E, np.stack([R1] * 7))
    with pytest.raises(ValueError, match="background must be None, 0, 1 or 2; got 3"):
        fit_lcf(st, E, np.stack([R1, R2]), background=3)
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) does not match"):
        fit_lcf(st, E, np.stack([R1, R2]), mask=np.ones((2, 2), bool))


def test_xanes_mask():
    st, En, tr = synthetic_xanes_stack((16, 16), flat_counts=1e4, seed=4)
    r = fit_xanes(st, En, e0=tr["e0"])
    base = xanes_mask(r)
    np.testing.assert_array_equal(base, r.mask)
    assert not xanes_mask(r, edge_jump_min=10).any()
    assert not xanes_mask(r, absorbance_max=0.5).any()  # pre-edge alone is ~1
    um = np.zeros((16, 16), bool)
    um[:8] = True
    assert not xanes_mask(r, user_mask=um)[8:].any()
    with pytest.raises(ValueError, match=r"user_mask shape \(4, 4\) does not match the maps' \(16, 16\)"):
        xanes_mask(r, user_mask=np.ones((4, 4), bool))
