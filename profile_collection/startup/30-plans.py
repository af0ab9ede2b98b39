"""Plans, bound to this beamline's devices for use at the IPython prompt.

    RE(xanes(xanes_energy_list(edge_energy_ev("Ni"))))
"""
from txm_live.energies import edge_energy_ev, xanes_energy_list  # noqa: F401
from txm_live.plans import xanes_2d


def xanes(energies_ev, **kwargs):
    """:func:`txm_live.plans.xanes_2d` with this beamline's detector, energy, shutter and stage."""
    return xanes_2d(txm_det, energy, energies_ev, shutter=shutter, sample_stage=sample_stage, **kwargs)  # noqa: F821
