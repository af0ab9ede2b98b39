"""Devices: the simulated TXM by default, the EPICS TXM when asked.

Environment:
  TXM_LIVE_DEVICES   'sim' (default), 'epics' (needs pyepics and the IOCs),
                     'epics-offline' (EPICS classes with fake signals: checks the profile)
  TXM_LIVE_SIM_SIZE  simulated image size in pixels (default 256)
"""
import os

_mode = os.environ.get("TXM_LIVE_DEVICES", "sim")
if _mode == "sim":
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    _size = int(os.environ.get("TXM_LIVE_SIM_SIZE", "256"))
    sim = make_sim_beamline(FRAMES_DIR, config=SimConfig(shape=(_size, _size)))  # noqa: F821
    _devices = {"energy": sim.energy, "zp": sim.zone_plate, "condenser": sim.condenser,
                "det_stage": sim.detector_stage, "sample_stage": sim.sample_stage,
                "shutter": sim.shutter, "txm_det": sim.detector}
elif _mode in ("epics", "epics-offline"):
    from txm_live.devices.txm import make_epics_txm

    if _mode == "epics-offline":
        from ophyd.sim import make_fake_device

        _devices = make_epics_txm(device_factory=make_fake_device)
    else:
        _devices = make_epics_txm()
else:
    raise ValueError(f"TXM_LIVE_DEVICES must be 'sim', 'epics' or 'epics-offline', got {_mode!r}")

energy = _devices["energy"]
zp = _devices["zp"]
condenser = _devices["condenser"]
det_stage = _devices["det_stage"]
sample_stage = _devices["sample_stage"]
shutter = _devices["shutter"]
txm_det = _devices["txm_det"]
