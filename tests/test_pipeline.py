"""The staged 2D XANES pipeline (txm_live.analysis.Xanes2DPipeline) and partial maps.

Frames from the simulated TXM (64², Ni K edge, FXI order high → low) go in with their
labels. The pipeline must equal its documented stages composed by hand, whatever order the
frames arrive in; a re-taken frame must replace the earlier one; corrected frames must give
the same stack as raw ones.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from simulators.model import SimConfig, SimTXM
from simulators.phantom import make_nmc_phantom
from simulators.stacks import simulate_xanes_stack
from txm_live.analysis import (
    NO_ENERGY_INDEX,
    FrameLabel,
    StackAligner,
    Xanes2DPipeline,
    XanesScanLayout,
    apply_shifts,
    fit_xanes,
    flat_dark_correct,
    partial_xanes_maps,
    passed_peak_ev,
    peak_whiteline_map,
    remove_zingers,
    sample_mask,
    transmission_to_absorbance,
)
from txm_live.energies import xanes_energy_list

N_DARKS = 3


@pytest.fixture(scope="module")
def scan():
    sim = SimTXM(SimConfig(shape=(64, 64), flat_counts=1e4, seed=4),
                 sample=make_nmc_phantom(state_of_charge=0.5, seed=4))
    energies = xanes_energy_list(8333.0, near_edge_step_ev=1.0)[::-1]  # FXI order: high -> low
    return simulate_xanes_stack(sim, energies, n_darks=N_DARKS)


def _frames(st):
    """(label, image) of every frame in acquisition order: darks, then sample + flat per energy."""
    out = [(FrameLabel("dark", NO_ENERGY_INDEX, r), d) for r, d in enumerate(st.darks)]
    for i in range(st.energies_ev.size):
        out += [(FrameLabel("sample", i, 0), st.frames[i]), (FrameLabel("flat", i, 0), st.flats[i])]
    return out


def _run(st, frames, **options):
    pipe = Xanes2DPipeline(XanesScanLayout(st.energies_ev, n_darks=N_DARKS), partial_every=0, **options)
    for label, image in frames:
        pipe.add_frame(label, image)
    pipe.finish()
    pipe.fit_final()
    return pipe


def _by_hand(st):
    """The documented stages composed from the public functions (the reference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dark = np.median(st.darks.astype(np.float32), axis=0)
        aligner = StackAligner(mode="running_mean")
        stack = []
        for frame, flat in zip(st.frames, st.flats):
            flat, _ = remove_zingers(flat.astype(np.float32), dark, sigma=10.0)
            raw, _ = remove_zingers(frame, dark, sigma=10.0)
            absorbance = flat_dark_correct(raw, flat, dark, zinger_sigma=None)
            stack.append(apply_shifts(absorbance[None], [aligner.add(absorbance)])[0])
    return np.stack(stack), aligner.shifts


@pytest.fixture(scope="module")
def reference(scan):
    return _run(scan, _frames(scan))


def test_pipeline_is_its_documented_stages(scan, reference):
    stack, shifts = _by_hand(scan)
    np.testing.assert_array_equal(reference.stack, stack)
    np.testing.assert_array_equal(np.asarray(reference.shifts), shifts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fit_xanes(stack, scan.energies_ev)
    np.testing.assert_array_equal(reference.final.whiteline, expected.whiteline)
    np.testing.assert_array_equal(reference.final.mask, expected.mask)


def test_drift_and_whiteline_against_the_truth(scan, reference):
    truth_rel = -(scan.drift_px - scan.drift_px[0])
    err = np.asarray(reference.shifts) - truth_rel
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) <= 0.09  # achieved 0.057 px (64², 1e4 counts)
    # the maps are aligned to frame 0; shift the truth there
    from scipy import ndimage

    t = scan.truth
    wl_true = ndimage.shift(np.nan_to_num(t.whiteline_ev), scan.drift_px[0], order=1, mode="nearest")
    inside = ndimage.binary_erosion(ndimage.shift(t.mask.astype(float), scan.drift_px[0], order=0) > 0.5,
                                    iterations=2)
    sel = inside & reference.final.mask & (reference.final.edge_jump >= 0.2)
    assert sel.sum() > 0.8 * inside.sum()  # achieved 0.97
    rms = np.sqrt(np.mean((reference.final.whiteline - wl_true)[sel] ** 2))
    assert rms <= 0.5  # achieved 0.32 eV: 1 eV steps across the edge at 64²


def test_arrival_order_does_not_change_the_numbers(scan, reference):
    frames = _frames(scan)
    shuffled = [frames[k] for k in np.random.default_rng(0).permutation(len(frames))]
    pipe = _run(scan, shuffled)
    np.testing.assert_array_equal(pipe.stack, reference.stack)
    np.testing.assert_array_equal(pipe.final.whiteline, reference.final.whiteline)


def test_a_retaken_frame_replaces_the_earlier_one(scan, reference):
    frames = _frames(scan)
    k = next(j for j, (label, _) in enumerate(frames) if label == FrameLabel("sample", 5, 0))
    spoiled = frames[:k] + [(frames[k][0], scan.frames[20])] + frames[k:]  # first take: wrong image
    pipe = _run(scan, spoiled)
    assert pipe.n_retaken == 1
    np.testing.assert_array_equal(pipe.stack, reference.stack)
    # negative control: keeping the first take changes the stack at that energy
    kept_first = _run(scan, frames[:k] + [(frames[k][0], scan.frames[20])] + frames[k + 1:])
    assert np.nanmax(np.abs(kept_first.stack[5] - reference.stack[5])) > 0.1


def test_the_last_frame_waits_for_the_next_one(scan):
    pipe = Xanes2DPipeline(XanesScanLayout(scan.energies_ev, n_darks=N_DARKS), partial_every=0)
    for r, dark in enumerate(scan.darks):
        pipe.add_frame(FrameLabel("dark", NO_ENERGY_INDEX, r), dark)
    pipe.add_frame(FrameLabel("sample", 0, 0), scan.frames[0])
    pipe.add_frame(FrameLabel("flat", 0, 0), scan.flats[0])
    assert pipe.shifts == []          # the flat may still be re-taken: not used yet
    pipe.add_frame(FrameLabel("sample", 1, 0), scan.frames[1])
    assert len(pipe.shifts) == 1      # now final: energy 0 is in the stack
    pipe.add_frame(FrameLabel("sample", 0, 0), scan.frames[0])
    assert any("re-taken after it was used" in note for note in pipe.notes)


def test_corrected_frames_give_the_same_stack(scan, reference):
    stack, _ = _by_hand(scan)
    # undo the alignment's shift: feed the per-frame absorbance the pipeline corrected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dark = np.median(scan.darks.astype(np.float32), axis=0)
        absorbance = [flat_dark_correct(remove_zingers(f, dark, sigma=10.0)[0],
                                        remove_zingers(fl.astype(np.float32), dark, sigma=10.0)[0], dark,
                                        zinger_sigma=None) for f, fl in zip(scan.frames, scan.flats)]
    layout = XanesScanLayout(scan.energies_ev)
    pipe = Xanes2DPipeline(layout, partial_every=0)
    for i, a in enumerate(absorbance):
        pipe.add_absorbance(FrameLabel("sample", i, 0), a)
    pipe.finish()
    np.testing.assert_array_equal(pipe.stack, reference.stack)
    via_t = Xanes2DPipeline(layout, partial_every=0)
    for i, a in enumerate(absorbance):
        via_t.add_transmission(FrameLabel("sample", i, 0), np.exp(-a))
    via_t.finish()
    # float32 round trip through exp/log; the alignment sees the same frames to that precision
    np.testing.assert_allclose(via_t.stack, reference.stack, atol=1e-6, equal_nan=True)  # achieved 2.1e-7
    with pytest.raises(ValueError, match="takes absorbance frames"):
        pipe_mixed = Xanes2DPipeline(layout, partial_every=0)
        pipe_mixed.add_absorbance(FrameLabel("sample", 0, 0), absorbance[0])
        pipe_mixed.add_frame(FrameLabel("sample", 1, 0), scan.frames[1])


def test_transmission_to_absorbance():
    t = np.array([1.0, 0.5, 0.0, -0.1, np.nan, np.inf], dtype=np.float32)
    a = transmission_to_absorbance(t)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a[:2], [0.0, np.log(2.0)], rtol=1e-6)
    assert np.isnan(a[2:]).all()  # FXI's zeros are invalid pixels, never full absorption
    assert transmission_to_absorbance(t.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize("kwargs, match", [
    ({"frame_type": "bright", "energy_index": 0, "repeat": 0}, "frame_type must be one of"),
    ({"frame_type": "sample", "energy_index": 0, "repeat": -1}, "repeat must be >= 0"),
    ({"frame_type": "sample", "energy_index": 1.5, "repeat": 0}, "energy_index must be an integer"),
])
def test_bad_labels(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameLabel(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"energies_ev": []}, "non-empty"),
    ({"energies_ev": [8333.0, 8340.0], "flat_energy_indices": (0, 5)}, "flat_energy_indices"),
    ({"energies_ev": [8333.0], "frames_per_energy": 0}, "frames_per_energy"),
])
def test_bad_layouts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XanesScanLayout(**kwargs)


def test_bad_pipeline_options(scan):
    layout = XanesScanLayout(scan.energies_ev)
    with pytest.raises(ValueError, match="registration_mode must be one of"):
        Xanes2DPipeline(layout, registration_mode="fourier")
    with pytest.raises(ValueError, match="must be 2-D"):
        Xanes2DPipeline(layout).add_frame(FrameLabel("sample", 0, 0), scan.frames[:2])


# ---- partial maps -------------------------------------------------------------------
def test_sample_mask_thresholds():
    img = np.zeros((40, 40))
    img[10:20, 10:20] = 1.0
    mask = sample_mask(img)
    assert mask.sum() == 100 and mask[10:20, 10:20].all()
    assert not sample_mask(np.full((8, 8), 0.01)).any()  # below SAMPLE_MASK_MIN_ABSORBANCE


def test_passed_peak_and_the_parabola_vertex():
    e = np.array([8360.0, 8350.0, 8344.0, 8341.0, 8339.5, 8338.0, 8336.0])  # high -> low, uneven
    rising = np.array([1.0, 1.1, 1.3, 1.4, 1.5, 1.6, 1.7])
    assert passed_peak_ev(e, rising) is None                     # still climbing toward the edge
    peaked = np.array([1.0, 1.1, 1.3, 1.45, 1.5, 1.45, 1.2])
    assert passed_peak_ev(e, peaked) == 8339.5
    # per pixel an exact parabola: the vertex is recovered in closed form
    centre = np.array([[8339.0, 8340.2], [8338.6, 8341.1]])
    stack = 2.0 - 0.01 * (e[:, None, None] - centre) ** 2
    wl = peak_whiteline_map(stack, e, 8339.5)
    np.testing.assert_allclose(wl, centre, atol=1e-3)  # float32 output


def test_partial_maps_before_and_after_the_pre_edge(scan, reference):
    n_high = int(np.count_nonzero(scan.energies_ev > 8318.0))  # whiteline passed, no pre-edge yet
    maps = partial_xanes_maps(reference.stack[:n_high], scan.energies_ev[:n_high],
                              mask=reference.sample_mask)
    assert maps is not None and maps.method.startswith("parabola")
    assert np.isnan(maps.edge).all()
    sel = maps.mask & reference.final.mask & (reference.final.edge_jump >= 0.2)
    # the quick vertex tracks the full fit's whiteline (achieved 0.53 eV RMS at 1 eV steps)
    assert np.sqrt(np.mean((maps.whiteline - reference.final.whiteline)[sel] ** 2)) <= 0.8
    full = partial_xanes_maps(reference.stack, scan.energies_ev, mask=reference.sample_mask)
    assert full.method == "fit_xanes"
    np.testing.assert_array_equal(full.whiteline, reference.final.whiteline)
    assert partial_xanes_maps(reference.stack[:5], scan.energies_ev[:5]) is None  # peak not yet passed
