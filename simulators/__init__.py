"""The simulated TXM beamline: physics in plain numpy (this package's top level) and the
ophyd devices that wrap it (``simulators.devices``, imported separately so the physics
never needs ophyd).

Physics modules, one concern each:

- ``spectra``        Ni K-edge XANES per oxidation state (measured NiO line shape) + xraydb
- ``phantom``        analytic 3D NMC cathode phantom, chord-length projections
- ``drift``          thermal drift, random walk and monochromator jumps
- ``detector_model`` illumination, Poisson/read noise, dark, defects, zingers, 16 bits
- ``model``          ``SimTXM``: optics + sample + drift + detector → ``acquire`` frames
- ``stacks``         a 2D XANES scan without bluesky (``simulate_xanes_stack``)
- ``tomography``     a fly/step tomography scan without bluesky (``simulate_tomo_scan``),
                     per-frame truth and the true attenuation volume

Optics relations shared with the real instrument live in ``txm_live.devices.optics``.
"""

from .detector_model import DetectorModel
from .drift import DriftModel
from .model import Frame, FrameTruth, SimConfig, SimTXM, TruthMaps
from .phantom import NMCPhantom, Particle, Void, make_nmc_phantom
from .spectra import NiXanesModel
from .stacks import XanesStack, simulate_xanes_stack
from .tomography import (
    TomoScan,
    attenuation_volume,
    make_tomo_phantom,
    make_tomo_sim,
    simulate_tomo_scan,
)

__all__ = [
    "DetectorModel", "DriftModel", "Frame", "FrameTruth", "NMCPhantom", "NiXanesModel",
    "Particle", "SimConfig", "SimTXM", "TruthMaps", "Void", "XanesStack",
    "make_nmc_phantom", "simulate_xanes_stack",
    "TomoScan", "attenuation_volume", "make_tomo_phantom", "make_tomo_sim", "simulate_tomo_scan",
]
