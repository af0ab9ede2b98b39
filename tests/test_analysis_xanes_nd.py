"""fit_xanes on volumes (n_energies, nz, ny, nx) and on dask arrays.

Ground truth comes from outside the code under test: analytic line shapes
(arctan edge + Lorentzian whiteline) normalized by Larch's ``pre_edge``, their
maximum and 0.5 crossing found on a 0.002 eV grid.
"""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from larch import Group
from larch.xafs import pre_edge

from txm_live.analysis import XanesInputWarning, fit_xanes
from txm_live.analysis._synthetic import analytic_spectrum, default_energies

E0 = 8333.0
JUMP = 0.5
SLOPE_PER_EV = -2e-4
LEVELS_EV = np.linspace(-1.5, 1.5, 31)  # per-voxel edge shifts (eV)
FIELDS = ("whiteline", "edge", "edge_jump", "pre_edge", "whiteline_height", "noise", "status")


def _mu(energy, shift_ev):
    return 1.0 + SLOPE_PER_EV * (energy - E0) + JUMP * analytic_spectrum(energy, shift_ev)


def _volume(shape=(24, 32, 32), n_energies=40, flat_counts=1e4, seed=0):
    """Absorbance volume stack with Poisson noise; per-voxel shift level index.

    The shift field is different along every axis (a z ramp, a step in x, a
    ripple in y), so maps with mixed-up axes cannot match the truth.
    """
    rng = np.random.default_rng(seed)
    E = default_energies(E0, n=n_energies)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.clip(0.8 * z + 0.6 * (x > 0.3) - 0.3 + 0.25 * np.sin(5 * y), -1, 1)
    level = np.abs(1.5 * field[..., None] - LEVELS_EV).argmin(-1)
    mu = _mu(E[:, None, None, None], LEVELS_EV[level][None])
    counts = rng.poisson(flat_counts * np.exp(-mu))
    flat = rng.poisson(flat_counts, mu.shape)
    return (-np.log(np.maximum(counts, 1) / flat)).astype(np.float32), E, level


def _larch_truth(E, params):
    """Whiteline, edge (eV) and edge step per shift level: Larch normalizes the
    noise-free samples with the ranges the fit used; the continuous curve is
    then searched on a 0.002 eV grid."""
    dense = np.arange(E0 - 20.0, E0 + 45.0, 0.002)
    out = np.empty((3, LEVELS_EV.size))
    for i, s in enumerate(LEVELS_EV):
        g = Group(energy=E, mu=_mu(E, s))
        pre_edge(g, e0=params["e0"], pre1=params["pre1"], pre2=params["pre2"],
                 norm1=params["norm1"], norm2=params["norm2"], nnorm=params["nnorm"], nvict=0)
        d = g.pre_edge_details
        norm = (_mu(dense, s) - (d.pre_offset + d.pre_slope * dense)) / g.edge_step
        k = int(np.argmax(norm > 0.5))
        out[:, i] = (dense[np.argmax(norm)],
                     np.interp(0.5, norm[k - 1:k + 1], dense[k - 1:k + 1]), g.edge_step)
    return out


@pytest.fixture(scope="module")
def vol():
    return _volume()


@pytest.fixture(scope="module")
def fitted(vol):
    st, E, level = vol
    r = fit_xanes(st, E, e0=E0)
    wl, edge, step = _larch_truth(E, r.params)
    return r, wl[level], edge[level], step[level]


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


def _assert_same(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)),
                                      err_msg=f)
    np.testing.assert_array_equal(a.mean_spectrum, b.mean_spectrum)
    assert a.params == b.params


# --------------------------------------------------------------------------
# accuracy on a volume against Larch-normalized analytic truth
# --------------------------------------------------------------------------
#: Tolerances, 1.5x what the fit achieves on this volume (40 energies, 1e4
#: flat counts): whiteline RMS 0.280 eV, edge RMS 0.291 eV, edge step 6.2 %.
WL_RMS_TOL_EV = 0.42
EDGE_RMS_TOL_EV = 0.44
STEP_REL_TOL = 0.093
#: Mean error: achieved -0.010 eV (whiteline) and +0.003 eV (edge); without
#: the bias correction the whiteline is +0.049 eV off.
MEAN_TOL_EV = 0.02


def test_volume_maps_match_truth(vol, fitted):
    st, E, level = vol
    r, wl_true, edge_true, step_true = fitted
    assert r.whiteline.shape == st.shape[1:] and r.whiteline.dtype == np.float32
    assert r.mask.mean() > 0.999  # achieved: every voxel fitted
    m = r.mask
    dw = (r.whiteline - wl_true)[m]
    de = (r.edge - edge_true)[m]
    assert _rms(dw) < WL_RMS_TOL_EV and abs(dw.mean()) < MEAN_TOL_EV
    assert _rms(de) < EDGE_RMS_TOL_EV and abs(de.mean()) < MEAN_TOL_EV
    assert _rms((r.edge_jump - step_true)[m] / step_true[m]) < STEP_REL_TOL
    # Pearson r with the true shift: achieved 0.947
    assert np.corrcoef(r.whiteline[m], LEVELS_EV[level][m])[0, 1] > 0.9
    # negative control: the same maps read with y and x swapped miss the
    # truth (achieved 0.77 eV RMS)
    assert _rms((r.whiteline - wl_true.transpose(0, 2, 1))[m]) > WL_RMS_TOL_EV


def test_volume_bias_correction_is_global(vol, fitted):
    """Negative control for the bias correction measured on a volume sample."""
    st, E, level = vol
    r, wl_true, _, _ = fitted
    raw = fit_xanes(st, E, e0=E0, whiteline_bias_correction=False)
    m = raw.mask
    assert (raw.whiteline - wl_true)[m].mean() > 2 * MEAN_TOL_EV  # achieved +0.049 eV
    assert len(r.params["whiteline_bias_ev"]) == 8  # all bins filled from the volume sample


# --------------------------------------------------------------------------
# 2-D vs 3-D
# --------------------------------------------------------------------------
def test_volume_equals_its_2d_reshape(vol):
    """A volume and the same voxels as one tall image (rows of all slices
    stacked: the same rows sampled, the same pixel order) give the same bits."""
    st, E, _ = vol
    r3 = fit_xanes(st, E)
    r2 = fit_xanes(st.reshape(st.shape[0], -1, st.shape[-1]), E)
    assert r3.whiteline.ndim == 3 and r2.whiteline.ndim == 2
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(r3, f).reshape(-1), getattr(r2, f).reshape(-1))
    np.testing.assert_array_equal(r3.mean_spectrum, r2.mean_spectrum)
    assert r3.params == r2.params
    # not vacuous: real maps, spread over the shifts
    assert r3.mask.mean() > 0.999 and np.ptp(r3.whiteline) > 2.0


def test_slices_fitted_alone_match_the_volume(vol):
    """With the global quantities pinned (e0, whiteline range, no bias table),
    every voxel's numbers depend only on its spectrum: each z slice fitted as
    a 2-D image equals that slice of the volume fit, bit for bit."""
    st, E, _ = vol
    kw = dict(e0=E0, whiteline_range=(2.0, 22.0), whiteline_bias_correction=False)
    r3 = fit_xanes(st, E, **kw)
    for z in (0, 11, 23):
        r2 = fit_xanes(st[:, z], E, **kw)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(r2, f), getattr(r3, f)[z], err_msg=f)


def test_one_spatial_axis(vol):
    st, E, _ = vol
    line = st[:, 5, 7]  # (n_energies, nx): a line of pixels
    r1 = fit_xanes(line, E, e0=E0, whiteline_range=(2.0, 22.0))
    r2 = fit_xanes(line[:, None, :], E, e0=E0, whiteline_range=(2.0, 22.0))
    assert r1.whiteline.shape == (32,)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f)[0])
    with pytest.raises(ValueError, match=r"at least one spatial axis.*got shape \(40,\)"):
        fit_xanes(st[:, 0, 0, 0], E)


def test_volume_mask_and_normalized(vol):
    st, E, _ = vol
    m = np.zeros(st.shape[1:], bool)
    m[2:5, 10:20, :] = True
    r = fit_xanes(st, E, mask=m, return_normalized=True)
    assert (r.status[~m] == 5).all() and r.mask[m].all()
    assert r.normalized.shape == (E.size,) + st.shape[1:]
    with pytest.raises(ValueError, match=r"mask shape \(32, 32\) does not match the image "
                                         r"shape \(24, 32, 32\)"):
        fit_xanes(st, E, mask=np.ones((32, 32), bool))


# --------------------------------------------------------------------------
# dask
# --------------------------------------------------------------------------
UNEVEN = [
    (-1, (7, 17), (5, 20, 7), 32),  # uneven over z and y
    (-1, 24, 32, (13, 19)),  # x split: lines cut across chunks
    (-1, 1, 32, 32),  # one slice per chunk
]


@pytest.mark.parametrize("chunks", UNEVEN)
def test_dask_equals_numpy_bit_for_bit(vol, chunks):
    """The global quantities are computed line by line the same way for both,
    and every voxel depends only on its spectrum: identical bits."""
    st, E, _ = vol
    ref = fit_xanes(st, E, return_normalized=True)
    d = da.from_array(st, chunks=chunks)
    with dask.config.set(scheduler="threads"):
        lazy = fit_xanes(d, E, return_normalized=True)
        assert isinstance(lazy.whiteline, da.Array) and isinstance(lazy.mask, da.Array)
        assert lazy.whiteline.chunks == d.chunks[1:]
        got = lazy.compute()
    _assert_same(got, ref)
    np.testing.assert_array_equal(got.normalized, ref.normalized)
    assert ref.mask.mean() > 0.999  # not vacuous


def test_dask_is_lazy_and_reads_each_chunk_once_per_step(vol):
    st, E, _ = vol
    reads = []

    def load(block, block_info=None):
        reads.append(block_info[0]["chunk-location"])
        return block

    d = da.from_array(st, chunks=(-1, 6, 32, 32)).map_blocks(load, dtype=st.dtype)
    r = fit_xanes(d, E)
    assert len(reads) == 4  # the prepare step: one read of each chunk
    assert isinstance(r.edge, da.Array)
    assert len(reads) == 4  # nothing more until asked
    r.compute(scheduler="synchronous")
    assert len(reads) == 8  # the apply step: one more read of each chunk


def test_dask_mask_nan_frames_and_ints(vol):
    """User mask given as dask, a frame with no finite value in the sampled
    rows (summed in full) and a non-finite voxel: still identical to numpy."""
    st, E, _ = vol
    st = st.copy()
    st[3, :, ::4, :] = np.nan  # every sampled row of frame 3
    st[:, 1, 21, 3] = np.inf
    mask = np.ones(st.shape[1:], bool)
    mask[:, :4] = False
    ref = fit_xanes(st, E, mask=mask)
    d = da.from_array(st, chunks=(-1, (10, 14), 16, 32))
    got = fit_xanes(d, E, mask=da.from_array(mask, chunks=(5, 8, 8))).compute()
    _assert_same(got, ref)
    assert got.energies.size == E.size  # frame 3 kept: it has finite values elsewhere
    assert got.status[1, 21, 3] == 1 and (got.status[:, 1:4] == 5).all()
    assert (got.status[:, ::4] == 1).all()  # the NaN rows: non-finite wins over the mask
    # integer stacks become float32, lazily
    q = np.round(st * 1000)
    q[~np.isfinite(q)] = 0
    qi = q.astype(np.int32)
    ri = fit_xanes(da.from_array(qi, chunks=(-1, 8, 32, 32)), E).compute()
    _assert_same(ri, fit_xanes(qi, E))
    assert ri.whiteline.dtype == np.float32


def test_dask_bad_input(vol):
    st, E, _ = vol
    d = da.from_array(st, chunks=(20, 24, 32, 32))
    with pytest.raises(ValueError, match=r"energy axis of a dask stack must be one chunk.*"
                                         r"\(20, 20\).*rechunk"):
        fit_xanes(d, E)
    above = E > E0 + 5
    with pytest.raises(ValueError, match="do not span the edge"):
        fit_xanes(da.from_array(st[above], chunks=(-1, 8, 32, 32)), E[above])


@pytest.mark.parametrize("lazy", [False, True])
def test_warning_points_at_the_caller(vol, lazy):
    st, E, _ = vol
    E2 = E.copy()
    E2[0] = np.nan
    data = da.from_array(st, chunks=(-1, 12, 32, 32)) if lazy else st
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit_xanes(data, E2, e0=E0)
    w = [x for x in rec if issubclass(x.category, XanesInputWarning)]
    assert len(w) == 1 and "non-finite energy at index [0]" in str(w[0].message)
    assert w[0].filename == __file__


def test_strided_volume_and_input_untouched(vol):
    """A non-contiguous view gives the bits of its contiguous copy, and the
    caller's array is not modified."""
    st, E, _ = vol
    before = st.copy()
    view = st[:, ::-1, :, ::2]  # strided in z and x
    _assert_same(fit_xanes(view, E), fit_xanes(np.ascontiguousarray(view), E))
    np.testing.assert_array_equal(st, before)
