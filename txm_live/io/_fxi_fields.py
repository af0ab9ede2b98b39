"""FXI's scalar fields, converted once at the edge (private module).

FXI's export writes energies in keV without a unit attribute, rotation angles in
degrees, the pixel size as a string such as ``'20.06nm'``, and strings (``uid``,
``note``, ``Pixel Size``) as variable-length HDF5 strings that h5py returns as bytes.
Everything here turns those into the project's units (eV, radians, nm) and Python
types, so no other module repeats a conversion.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = [
    "EV_PER_KEV",
    "FXI_OBJECTIVE_MAGNIFICATION",
    "decode_scalar",
    "energies_ev_from_x_eng",
    "format_pixel_size",
    "parse_pixel_size_nm",
]

EV_PER_KEV = 1000.0

#: FXI's visible-light objective after the scintillator; FXI's ``Magnification``
#: dataset is the zone-plate magnification times this (its export computes
#: ``(DetU_z / zp_z - 1) * 10``).
FXI_OBJECTIVE_MAGNIFICATION = 10.0

#: An ``X_eng`` without a unit attribute whose largest value is below this is in keV
#: (FXI's convention): no X-ray absorption edge used in a TXM lies below 100 eV, and no
#: TXM works above 100 keV.
_KEV_IF_BELOW = 100.0

_NM_PER_UNIT = {"nm": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "mm": 1e6, "m": 1e9}
_PIXEL_SIZE_PATTERN = re.compile(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµμ]*)\s*")


def decode_scalar(value):
    """A Python scalar or string from an HDF5 scalar (bytes decoded, 0-d arrays unwrapped).

    Parameters
    ----------
    value : bytes, str, number, numpy scalar or size-1 ndarray

    Returns
    -------
    str, int, float, bool or ndarray
        Arrays with more than one element are returned unchanged.
    """
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return value
        value = value.reshape(()).item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def parse_pixel_size_nm(value) -> float:
    """Pixel size in nm from FXI's ``'Pixel Size'`` (e.g. ``'20.06nm'``) or a number in nm.

    Parameters
    ----------
    value : str, bytes or number
        A string with an optional unit (nm, um/µm, mm, m; nm when absent) or a number
        taken as nm.

    Returns
    -------
    float
        Pixel size, nm.

    Raises
    ------
    ValueError
        Unparseable text, an unknown unit, or a size that is not positive and finite.
    """
    value = decode_scalar(value)
    if isinstance(value, str):
        match = _PIXEL_SIZE_PATTERN.fullmatch(value)
        if match is None:
            raise ValueError(f"cannot parse 'Pixel Size' {value!r} (expected e.g. '20.06nm')")
        unit = match.group(2) or "nm"
        if unit not in _NM_PER_UNIT:
            raise ValueError(
                f"unknown unit {unit!r} in 'Pixel Size' {value!r}; expected one of {sorted(_NM_PER_UNIT)}"
            )
        size_nm = float(match.group(1)) * _NM_PER_UNIT[unit]
    else:
        size_nm = float(value)
    if not (math.isfinite(size_nm) and size_nm > 0):
        raise ValueError(f"'Pixel Size' must be a positive length; got {value!r}")
    return size_nm


def format_pixel_size(pixel_size_nm: float) -> str:
    """FXI's ``'Pixel Size'`` string: the number as Python prints it, then ``'nm'``."""
    return f"{float(pixel_size_nm)!r}nm"


def energies_ev_from_x_eng(values, units=None) -> np.ndarray:
    """Energies in eV from FXI's ``X_eng`` (keV without a unit attribute).

    Parameters
    ----------
    values : array_like
        ``X_eng`` as stored (a scalar for a fly scan, a list for 2D XANES).
    units : str or bytes, optional
        The dataset's ``units`` attribute when there is one ('keV' or 'eV').

    Returns
    -------
    ndarray of float64, 1-D
        Energies, eV.

    Raises
    ------
    ValueError
        An unknown unit, non-finite or non-positive energies.
    """
    energies = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
    bad = energies[~(np.isfinite(energies) & (energies > 0))]
    if bad.size:
        raise ValueError(f"X_eng holds energies that are not positive and finite: {bad.tolist()[:5]}")
    units = decode_scalar(units)
    if units is None:
        # FXI writes keV with no unit attribute; eV values are far above this bound.
        return energies * EV_PER_KEV if energies.size and energies.max() < _KEV_IF_BELOW else energies
    key = str(units).strip().lower()
    if key == "kev":
        return energies * EV_PER_KEV
    if key == "ev":
        return energies
    raise ValueError(f"unknown X_eng units {units!r}; expected 'keV' or 'eV'")
