"""Devices: the simulated TXM by default, the EPICS TXM when asked.

Environment:
  TXM_LIVE_DEVICES     'sim' (default), 'epics' (the EPICS classes over Channel Access;
                       needs the IOCs), 'epics-offline' (EPICS classes with fake signals:
                       checks the profile)
  TXM_LIVE_SIM_SIZE    simulated image size in pixels (default 256)
  TXM_LIVE_PV_ROOT     put in front of every PV name (default none: FXI-like names)
  TXM_LIVE_EPICS_TIMEOUT_S  how long to wait for every PV to connect (default 10)
  OPHYD_CONTROL_LAYER  'pyepics' (default) or 'caproto' (pure-Python client); read when
                       ophyd is first imported
  EPICS_CA_ADDR_LIST, EPICS_CA_AUTO_ADDR_LIST, EPICS_CA_SERVER_PORT …  where Channel
                       Access looks for the IOCs (standard EPICS variables)

With 'epics' the camera IOC writes its HDF5 files to $TXM_LIVE_DATA/frames, which must be
that same folder for the IOC (same machine or shared file system). Against the simulated
TXM's IOC (see profile_collection/README.md)::

    python -m simulators.ioc --size 256 &        # with the EPICS_CA_* variables set
    TXM_LIVE_DEVICES=epics ipython --profile-dir=profile_collection
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
    from txm_live.devices.txm import TXMPrefixes, connect_epics_txm, make_epics_txm

    _prefixes = TXMPrefixes().with_root(os.environ.get("TXM_LIVE_PV_ROOT", ""))
    if _mode == "epics-offline":
        from ophyd.sim import make_fake_device

        _devices = make_epics_txm(_prefixes, write_dir=FRAMES_DIR, device_factory=make_fake_device)  # noqa: F821
    else:
        _devices = make_epics_txm(_prefixes, write_dir=FRAMES_DIR)  # noqa: F821
        # Fails here, naming the PVs that do not answer, rather than in the first scan.
        connect_epics_txm(_devices, timeout_s=float(os.environ.get("TXM_LIVE_EPICS_TIMEOUT_S", "10")))
else:
    raise ValueError(f"TXM_LIVE_DEVICES must be 'sim', 'epics' or 'epics-offline', got {_mode!r}")

energy = _devices["energy"]
zp = _devices["zp"]
condenser = _devices["condenser"]
det_stage = _devices["det_stage"]
sample_stage = _devices["sample_stage"]
shutter = _devices["shutter"]
txm_det = _devices["txm_det"]
