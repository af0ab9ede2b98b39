"""Plans, bound to this beamline's devices for use at the IPython prompt.

    RE(xanes(xanes_energy_list(edge_energy_ev("Ni"))))
    RE(tomo(n_projections=900))            # fly scan over 180°, flats after
"""
from txm_live.energies import edge_energy_ev, xanes_energy_list  # noqa: F401
from txm_live.plans import tomo_fly, tomo_step, xanes_2d


def xanes(energies_ev, **kwargs):
    """:func:`txm_live.plans.xanes_2d` with this beamline's detector, energy, shutter and stage."""
    return xanes_2d(txm_det, energy, energies_ev, shutter=shutter, sample_stage=sample_stage, **kwargs)  # noqa: F821


def tomo(**kwargs):
    """:func:`txm_live.plans.tomo_fly` with this beamline's detector, rotation stage, shutter and
    stage (the rotation must be flyable: the simulated stage is; see txm_live.devices.rotation)."""
    return tomo_fly(txm_det, sample_stage.r, shutter=shutter, sample_stage=sample_stage,  # noqa: F821
                    energy=energy, **kwargs)  # noqa: F821


def tomo_steps(**kwargs):
    """:func:`txm_live.plans.tomo_step` with this beamline's devices."""
    return tomo_step(txm_det, sample_stage.r, shutter=shutter, sample_stage=sample_stage,  # noqa: F821
                     energy=energy, **kwargs)  # noqa: F821
