"""3D XANES: a fly tomography at every energy of a list, one run per energy (FXI style).

Sequence (after FXI's ``xanes_3D``, which calls ``fly_scan`` once per energy): for each
energy, in scan order (high → low by default, as FXI scans),

1. move the monochromator; the zone plate and detector follow to stay in focus (focus
   tracking is the energy device's job, :class:`txm_live.devices.energy.FocusTrackingMixin`,
   as in :func:`~txm_live.plans.xanes_2d`);
2. a complete :func:`~txm_live.plans.tomo_fly` scan at that energy: darks (shutter
   closed), the continuous rotation, flats with the sample out (FXI: after the rotation),
   so every energy has its own darks and flats;

and each energy is its **own run**: a complete tomography run (``scan_type='tomo'``)
that the tomography analysis, replay and export handle alone. The runs of one 3D XANES
scan are tied together by a group uid in their start documents, as an operando session
ties its measurement runs:

``xanes3d_uid``
    the group's uid (the same in every run of the scan);
``xanes3d_index``
    this run's position in the scan's energy list (0 = first measured);
``xanes3d_n_energies``, ``xanes3d_energies_ev``
    the planned number of energies and the list in scan order (eV);
``energy_ev``, ``energies_ev``
    this run's energy (``[energy_ev]``, the label's energy index 0), as any tomography;
``plan_name``
    ``'xanes_3d'`` (the live analysis routes it to
    :class:`txm_live.callbacks.Xanes3DAnalysis`, which gathers the group).

Every argument is checked before anything moves (including every energy against the
optics' range). The energy move is the run's first step (checkpointed: a pause during
it repeats the refocused move); a pause during a rotation re-takes that energy's whole
rotation, as in ``tomo_fly``. On abort or failure the run in progress closes with its
exit status, the shutter is closed, the sample put back and the stage returned to its
angle and velocity; the energies not reached are not measured (the group is short: the
live analysis says so).
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from txm_live.analysis import MIN_ENERGIES

from .tomo import TOMO_PLAN_KEYS, _run_tomo, _validate_common, fly_rotation
from .xanes import SCAN_ORDERS, _order, _validate_energies

__all__ = ["xanes_3d", "XANES3D_PLAN_KEYS", "XANES3D_GROUP_KEYS"]

#: Start-document keys that tie the runs of one 3D XANES scan together.
XANES3D_GROUP_KEYS = ("xanes3d_uid", "xanes3d_index", "xanes3d_n_energies", "xanes3d_energies_ev",
                      "xanes3d_scan_order")
#: Start-document keys the plan measures or decides; a caller's ``md`` may not set them.
XANES3D_PLAN_KEYS = TOMO_PLAN_KEYS + XANES3D_GROUP_KEYS + ("element", "edge", "focus_mode")


def _validate_energy_list(energy, energies_ev, scan_order):
    values = _order(_validate_energies(energies_ev, energy), scan_order)
    if values.size < MIN_ENERGIES:
        raise ValueError(f"energies_ev has {values.size} energies; a 3D XANES fit needs at least {MIN_ENERGIES}")
    return values


def _group_metadata(group_uid, index, energies, scan_order, energy, element, edge) -> dict:
    md = {"xanes3d_uid": group_uid, "xanes3d_index": int(index), "xanes3d_n_energies": int(energies.size),
          "xanes3d_energies_ev": energies.tolist(), "xanes3d_scan_order": scan_order,
          "element": element, "edge": edge}
    focus_mode = getattr(energy, "focus_mode", None)
    if focus_mode is not None:
        md["focus_mode"] = focus_mode.get()
    return md


def xanes_3d(detector, rotation, energy, energies_ev: Sequence[float], *, shutter, sample_stage,
             angle_range_deg: tuple[float, float] = (0.0, 180.0), n_projections: int | None = None,
             velocity_deg_s: float | None = None, exposure_s: float | None = None, n_darks: int = 20,
             n_flats: int = 20, flats_when: str = "after", sample_out_um: tuple[float, float] = (100.0, 0.0),
             scan_order: str = "descending", element: str = "Ni", edge: str = "K", md: dict | None = None):
    """3D XANES: one fly-scan tomography run per energy, tied by a group uid.

    Parameters
    ----------
    detector, rotation, shutter, sample_stage
        As for :func:`~txm_live.plans.tomo_fly`.
    energy : positioner
        Monochromator energy, eV; moves the zone plate and detector with it when it has
        focus tracking (``zone_plate_z`` / ``detector_z`` are then read with every frame
        and ``focus_mode`` recorded).
    energies_ev : sequence of float
        The energies, eV (:func:`txm_live.energies.xanes_energy_list`); at least
        ``MIN_ENERGIES`` (8), distinct, finite, within the optics' range.
    angle_range_deg, n_projections, velocity_deg_s, exposure_s, n_darks, n_flats, flats_when, sample_out_um
        Each energy's tomography, as for :func:`~txm_live.plans.tomo_fly` (darks and
        flats are taken at every energy, as FXI's ``xanes_3D`` does).
    scan_order : {'descending', 'ascending', 'as_given'}
        Energy order; FXI scans high → low.
    element, edge : str
        Recorded in every run's start document.
    md : dict, optional
        Extra start-document metadata (sample, operator ...); it may not set
        :data:`XANES3D_PLAN_KEYS`.

    Returns
    -------
    The uids of the runs (one per energy measured), as the RunEngine gives them.

    Notes
    -----
    See the module docstring for the documents. Everything is validated first: a bad
    argument raises ``ValueError`` before any message reaches the RunEngine.
    """
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"scan_order must be one of {SCAN_ORDERS}, got {scan_order!r}")
    energies = _validate_energy_list(energy, energies_ev, scan_order)
    clashing = sorted(set(md or {}) & set(XANES3D_PLAN_KEYS))
    if clashing:
        raise ValueError(f"md may not set {clashing}: the plan records what it measures there")
    args = _validate_common(detector, angle_range_deg, n_darks=n_darks, n_flats=n_flats, flats_when=flats_when,
                            sample_out_um=sample_out_um, exposure_s=exposure_s, md=md)
    fly = fly_rotation(args, detector, rotation, n_projections=n_projections, velocity_deg_s=velocity_deg_s)
    focus = [m for m in (getattr(energy, "zone_plate_z", None), getattr(energy, "detector_z", None)) if m is not None]
    group_uid = str(uuid.uuid4())
    plan_args = {"detector": repr(detector), "rotation": repr(rotation), "energy": repr(energy),
                 "energies_ev": [float(e) for e in energies_ev], "angle_range_deg": list(angle_range_deg),
                 "n_projections": n_projections, "velocity_deg_s": velocity_deg_s, "exposure_s": exposure_s,
                 "n_darks": n_darks, "n_flats": n_flats, "flats_when": flats_when,
                 "sample_out_um": list(sample_out_um), "scan_order": scan_order}
    uids = []
    for index, energy_ev in enumerate(energies):
        extra = {**fly.metadata, **_group_metadata(group_uid, index, energies, scan_order, energy, element, edge)}
        uid = yield from _run_tomo("xanes_3d", args, detector, rotation, shutter=shutter, sample_stage=sample_stage,
                                   energy=energy, label=fly.label, angle=fly.angle, md_extra=extra,
                                   plan_args=plan_args, n_projections=fly.n_frames, md=md,
                                   rotation_plan=fly.rotate, velocity_restore=True,
                                   move_energy_ev=float(energy_ev), readables=focus)
        uids.append(uid)
    return uids
