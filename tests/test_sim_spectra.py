"""Ni K-edge XANES model: anchored to the measured NiO spectrum and to xraydb."""

from pathlib import Path

import numpy as np
import pytest
import xraydb

from simulators.spectra import NiXanesModel

NIO_PRJ = Path(__file__).resolve().parent / "data" / "xas" / "NiO.prj"  # see its README
MATERIAL = "LiNi0.8Mn0.1Co0.1O2"


@pytest.fixture(scope="module")
def model():
    return NiXanesModel()


def test_default_edge_is_xraydb_ni_k(model):
    assert model.edge_ev(2.0) == xraydb.xray_edge("Ni", "K").energy == 8333.0


@pytest.mark.parametrize("valence", [2.0, 2.7, 3.0, 3.55, 4.0])
def test_half_step_crossing_is_edge_ev(model, valence):
    energy = np.arange(8300.0, 8360.0, 0.01)
    norm = model.normalized(energy, valence)
    i = np.nonzero(norm >= 0.5)[0][0]
    crossing = np.interp(0.5, norm[i - 1 : i + 1], energy[i - 1 : i + 1])
    assert crossing == pytest.approx(model.edge_ev(valence), abs=0.02)


def test_edges_and_whitelines_shift_with_valence(model):
    assert model.edge_ev(4.0) - model.edge_ev(2.0) == pytest.approx(2.5)
    wl = [model.whiteline_ev(v) for v in (2.0, 2.5, 3.0, 3.5, 4.0)]
    assert np.all(np.diff(wl) > 0)
    # DESIGN: ~1–1.5 eV per valence unit, Ni2+→Ni4+ ≈ 2–3 eV (reshaping adds a little)
    assert 2.0 < wl[-1] - wl[0] < 3.6
    # Ni2+ whiteline of NiO sits ~8 eV above its half-step
    assert 6.0 < wl[0] - model.edge_ev(2.0) < 10.0


def test_whiteline_is_argmax_and_weakens_broadens_with_valence(model):
    energy = np.arange(8320.0, 8380.0, 0.01)
    peaks, widths = [], []
    for v in (2.0, 4.0):
        norm = model.normalized(energy, v)
        assert energy[np.argmax(norm)] == pytest.approx(model.whiteline_ev(v), abs=0.02)
        peak = norm.max()
        above = energy[norm > 1.0 + 0.5 * (peak - 1.0)]
        peaks.append(peak)
        widths.append(np.ptp(above[above < model.whiteline_ev(v) + 15]))
    assert peaks[0] > peaks[1] + 0.1  # Ni4+ whiteline weaker
    assert widths[1] > widths[0]  # and broader


def test_normalized_limits_and_broadcasting(model):
    assert np.all(model.normalized(np.array([7000.0, 8200.0, 8280.0]), 3.0) < 0.01)
    far = model.normalized(np.linspace(8533.0, 9033.0, 400), 2.0)
    assert far.mean() == pytest.approx(1.0, abs=0.03)
    out = model.normalized(np.array([8330.0, 8340.0])[:, None], np.array([2.0, 3.0, 4.0]))
    assert out.shape == (2, 3)
    assert np.all(np.diff(out[1]) < 0)  # at 8340 eV a higher valence is less advanced


def test_valence_out_of_range_rejected(model):
    with pytest.raises(ValueError, match=r"valence must lie in \[2, 4\]"):
        model.normalized(8333.0, 4.5)


def test_mu_matches_xraydb_away_from_edge(model):
    below = np.array([7800.0, 8000.0, 8250.0])
    np.testing.assert_allclose(
        model.mu_per_um(below, 2.0),
        xraydb.material_mu(MATERIAL, below, density=4.75) * 1e-4, rtol=0.005)
    above = np.linspace(8800.0, 9300.0, 200)  # EXAFS wiggles average out over 500 eV
    ratio = model.mu_per_um(above, 3.0) / (xraydb.material_mu(MATERIAL, above, density=4.75) * 1e-4)
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    # the edge jump is xraydb's (~0.065 /µm for NMC811 at 4.75 g/cm³)
    tab = xraydb.material_mu(MATERIAL, np.array([8332.9, 8333.1]), density=4.75) * 1e-4
    assert model.edge_jump_per_um(8333.0) == pytest.approx(tab[1] - tab[0], rel=0.01)
    grid = model.mu_grid_per_um(8341.0)
    assert grid.shape == model.valence_grid.shape


def test_parameters_are_settable():
    m = NiXanesModel(edge_ev=8345.0, shift_ev_per_valence=1.0)
    assert m.edge_ev(3.0) == pytest.approx(8346.0)
    assert m.whiteline_ev(2.0) == pytest.approx(NiXanesModel().whiteline_ev(2.0) + 12.0, abs=0.01)


def test_line_shape_is_the_measured_nio_spectrum(model):
    """Re-normalize NiO.prj with Larch and compare to the model's Ni2+ spectrum."""
    from larch.io import read_athena
    from larch.xafs import pre_edge

    group = read_athena(str(NIO_PRJ)).NiO
    pre_edge(group)
    e, flat = group.energy, group.flat
    sel = (e > group.e0 - 20) & (e < group.e0 + 10)
    i = np.nonzero(flat[sel] >= 0.5)[0][0]
    half = np.interp(0.5, flat[sel][i - 1 : i + 1], e[sel][i - 1 : i + 1])
    window = (e > half - 25) & (e < half + 60)
    sim = model.normalized(e[window] - half + model.edge_ev(2.0), 2.0)
    np.testing.assert_allclose(sim, flat[window], atol=0.01)
    # real NiO's half-step is several eV above the metal's tabulated edge
    assert half - 8333.0 > 5.0
