"""FXI-style HDF5 files (2D XANES) and map export.

FXI (NSLS-II 18-ID) exports a 2D XANES scan as one HDF5 file with the
datasets ``X_eng`` (energies, keV), ``img_xanes`` (sample frames,
``(n_energies, ny, nx)``), ``img_bkg`` (flats, one per energy), ``img_dark``
(darks), and scalars ``Magnification`` and ``Pixel Size`` (a string such as
``'21.3nm'`` in FXI's files, or a number in nm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

__all__ = ["FxiXanes", "read_fxi_xanes", "write_fxi_xanes", "write_maps_h5"]


@dataclass(eq=False)
class FxiXanes:
    """Contents of an FXI-style 2D XANES file.

    Attributes
    ----------
    energies_ev : ndarray, shape (n_energies,)
        Energies in eV (FXI stores keV; converted on reading).
    frames : ndarray, shape (n_energies, ny, nx)
        ``img_xanes``: raw sample frames (or already-normalized transmission
        when the file has no flats).
    flats : ndarray or None, shape (n_energies or n, ny, nx)
        ``img_bkg``.
    darks : ndarray or None, shape (n, ny, nx)
        ``img_dark``.
    magnification : float or None
    pixel_size_nm : float or None
    path : Path or None
    attrs : dict
        Other scalar datasets and root attributes.
    """

    energies_ev: np.ndarray
    frames: np.ndarray
    flats: np.ndarray | None = None
    darks: np.ndarray | None = None
    magnification: float | None = None
    pixel_size_nm: float | None = None
    path: Path | None = None
    attrs: dict = field(default_factory=dict)


_UNIT_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "mm": 1e6, "m": 1e9}


def _pixel_size_nm(value) -> float | None:
    """Pixel size in nm from a number (nm) or a string like '21.3nm'."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value
        if isinstance(value, bytes):
            value = value.decode()
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([a-zµ]*)\s*", value)
        if not m:
            raise ValueError(f"cannot parse 'Pixel Size' {value!r} (expected e.g. '21.3nm')")
        unit = m.group(2) or "nm"
        if unit not in _UNIT_NM:
            raise ValueError(f"unknown unit {unit!r} in 'Pixel Size' {value!r}")
        return float(m.group(1)) * _UNIT_NM[unit]
    return float(value)


def _energies_ev(ds) -> np.ndarray:
    e = np.asarray(ds[()], dtype=np.float64).ravel()
    unit = ds.attrs.get("units", ds.attrs.get("unit"))
    if isinstance(unit, bytes):
        unit = unit.decode()
    if unit is not None:
        unit = str(unit).strip().lower()
        if unit == "kev":
            return e * 1e3
        if unit == "ev":
            return e
        raise ValueError(f"unknown X_eng units {unit!r} (expected 'keV' or 'eV')")
    # FXI writes keV without a unit attribute; no X-ray edge lies below 100 eV
    finite = e[np.isfinite(e)]
    return e * 1e3 if finite.size and np.nanmax(finite) < 100.0 else e


def read_fxi_xanes(path) -> FxiXanes:
    """Read an FXI-style 2D XANES HDF5 file into memory.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    FxiXanes

    Raises
    ------
    KeyError
        If ``X_eng`` or ``img_xanes`` is missing (message lists what is there).
    ValueError
        If the number of energies does not match the number of frames.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        missing = [k for k in ("X_eng", "img_xanes") if k not in f]
        if missing:
            raise KeyError(f"{path} lacks {missing}; it has {sorted(f.keys())}")
        energies = _energies_ev(f["X_eng"])
        frames = f["img_xanes"][()]
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[0] != energies.size:
            raise ValueError(
                f"img_xanes has shape {frames.shape}, expected ({energies.size}, ny, nx) "
                f"for {energies.size} energies in X_eng"
            )
        flats = f["img_bkg"][()] if "img_bkg" in f else None
        darks = f["img_dark"][()] if "img_dark" in f else None
        mag = float(np.asarray(f["Magnification"][()]).item()) if "Magnification" in f else None
        pix = _pixel_size_nm(f["Pixel Size"][()]) if "Pixel Size" in f else None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for k, ds in f.items():
            if isinstance(ds, h5py.Dataset) and ds.size == 1 and k not in (
                "X_eng", "Magnification", "Pixel Size"
            ):
                v = ds[()]
                attrs[k] = v.decode() if isinstance(v, bytes) else v
    return FxiXanes(energies_ev=energies, frames=frames, flats=flats, darks=darks,
                    magnification=mag, pixel_size_nm=pix, path=path, attrs=attrs)


def write_fxi_xanes(path, frames, energies_ev, *, flats=None, darks=None,
                    magnification: float | None = None, pixel_size_nm: float | None = None,
                    attrs: dict | None = None) -> Path:
    """Write a 2D XANES scan in FXI's layout (``X_eng`` in keV, as FXI does).

    Parameters
    ----------
    path : str or Path
    frames : array_like, shape (n_energies, ny, nx)
    energies_ev : array_like, shape (n_energies,)
        Energies in eV; stored in keV with ``units='keV'``.
    flats, darks : array_like, optional
        ``img_bkg`` and ``img_dark``.
    magnification : float, optional
    pixel_size_nm : float, optional
        Stored as FXI's string, e.g. ``'21.3nm'``.
    attrs : dict, optional
        Root attributes (scalars or strings).

    Returns
    -------
    Path
    """
    path = Path(path)
    frames = np.asarray(frames)
    e = np.asarray(energies_ev, dtype=np.float64).ravel()
    if frames.ndim != 3 or frames.shape[0] != e.size:
        raise ValueError(
            f"frames must be (n_energies, ny, nx) with n_energies={e.size}; got {frames.shape}"
        )
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("X_eng", data=e / 1e3)
        ds.attrs["units"] = "keV"
        f.create_dataset("img_xanes", data=frames, chunks=(1,) + frames.shape[1:])
        if flats is not None:
            flats = np.asarray(flats)
            f.create_dataset("img_bkg", data=flats, chunks=(1,) + flats.shape[1:])
        if darks is not None:
            f.create_dataset("img_dark", data=np.asarray(darks))
        if magnification is not None:
            f.create_dataset("Magnification", data=float(magnification))
        if pixel_size_nm is not None:
            f.create_dataset("Pixel Size", data=f"{float(pixel_size_nm):g}nm")
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def write_maps_h5(path, maps: dict, *, attrs: dict | None = None) -> Path:
    """Write named 2-D/3-D arrays (maps) and scalar attributes to HDF5.

    Parameters
    ----------
    path : str or Path
    maps : dict of str to array_like
        Each becomes a gzip-compressed dataset.
    attrs : dict, optional
        Root attributes; dicts are stored as JSON strings, None as ``'None'``.

    Returns
    -------
    Path
    """
    import json

    path = Path(path)
    with h5py.File(path, "w") as f:
        for name, arr in maps.items():
            a = np.asarray(arr)
            f.create_dataset(name, data=a, compression="gzip" if a.ndim >= 2 else None)
        for k, v in (attrs or {}).items():
            if isinstance(v, (dict, list, tuple)):
                v = json.dumps(v, default=float)
            elif v is None:
                v = "None"
            f.attrs[k] = v
    return path
