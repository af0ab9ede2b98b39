"""Devices of the transmission X-ray microscope and the optics relations they share.

:mod:`txm_live.devices.optics` holds the zone-plate relations (pure functions) used by the
real EPICS devices here and by the simulated beamline in :mod:`simulators`.
"""
