"""A Channel Access IOC (caproto) serving the simulated TXM, for tests and demos.

The same physics as the simulated ophyd devices (:class:`simulators.model.SimTXM`), behind
the PVs a real FXI-like beamline has, so the EPICS device classes of
:mod:`txm_live.devices.txm` run the plans against it over Channel Access.

Start it (loopback only; pick your own free ports)::

    export EPICS_CA_SERVER_PORT=5064 EPICS_CA_REPEATER_PORT=5065 \\
           EPICS_CA_ADDR_LIST=127.0.0.1 EPICS_CA_AUTO_ADDR_LIST=NO \\
           EPICS_CAS_INTF_ADDR_LIST=127.0.0.1
    python -m simulators.ioc --size 256 --seed 0 [--time-scale 0.02] [--root SIM:]

or from Python with :class:`IOCProcess` (free ports, waits until the PVs answer, stop/kill).

PVs (``TXMPrefixes`` names, see :mod:`txm_live.devices.pv_names`):

- motor records (``.VAL .RBV .DMOV .MOVN .VELO .DLY .HLM .LLM .STOP .SET .EGU`` …) for the
  energy (eV), zone plate x/y/z and condenser x/y/z (mm), detector z (mm), sample
  x/y/z (µm) and rotation r (deg): :mod:`simulators.ioc.motor`;
- the photon shutter ``Pos-Sts``, ``Cmd:Opn-Cmd``, ``Cmd:Cls-Cmd``: :mod:`~simulators.ioc.shutter`;
- the camera ``cam1:`` (Acquire, AcquireTime, ImageMode, NumImages, ArrayCounter_RBV,
  DetectorState_RBV, BinX_RBV …) and ``Stats1:MeanValue_RBV``: :mod:`~simulators.ioc.camera`;
- three NDFileHDF5 plugins ``HDF1:`` (darks), ``HDF2:`` (flats), ``HDF3:`` (sample frames),
  Stream mode, SWMR: :mod:`~simulators.ioc.hdf5_plugin`;
- the IOC's own ``TXMSIM:Ready``, ``TXMSIM:Time_RBV`` (beamline time of the last frame),
  ``TXMSIM:TimeScale_RBV``, ``TXMSIM:Seed_RBV``, and ``TXMSIM:Reset`` (write 1: fresh
  simulated state, as after a restart, without one).
"""
from .launcher import IOCProcess, ca_environment, ca_ports_from_environment, free_port_pair, probe_pv, put_pv
from .server import DEFAULT_TIME_SCALE, TXMIOC, serve

__all__ = ["DEFAULT_TIME_SCALE", "IOCProcess", "TXMIOC", "ca_environment", "ca_ports_from_environment",
           "free_port_pair", "probe_pv", "put_pv", "serve"]
