"""FXI HDF5 files out, in FXI's exact export layout (private module).

The datasets, dtypes and shapes are those of FXI's own export (``export_xanes_scan``,
``export_fly_scan``), so PyXAS and TXM_Sandbox read the files as beamline files.
Whatever txm-live adds is out of their way: attributes (``units`` on ``X_eng`` and
``angle``, ``signal`` on the image dataset) and the group ``/txm_live`` (who wrote the
file, the layout, optional extra metadata, and — on request — the raw 2D XANES frames
in ``/txm_live/raw``).

Two steps, each testable alone: *build* the data model from raw frames the way FXI's
export reduces them (:func:`fxi_xanes_from_frames`, :func:`fxi_fly_scan_from_frames`),
then *write* it (:func:`write_fxi_xanes`, :func:`write_fxi_fly_scan`).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from ._fxi_detect import FLY_SCAN, SIGNAL_ATTRIBUTE, XANES2D
from ._fxi_fields import EV_PER_KEV, format_pixel_size
from .fxi import RAW_GROUP, TXM_LIVE_GROUP, FxiFlyScan, FxiXanes2D

__all__ = [
    "fxi_fly_scan_from_frames",
    "fxi_xanes_from_frames",
    "nearest_flat_rows",
    "write_fxi",
    "write_fxi_fly_scan",
    "write_fxi_xanes",
]

_UINT16_MAX = np.iinfo(np.uint16).max


def _txm_live_version() -> str:
    try:
        return version("txm-live")
    except PackageNotFoundError:
        return "unknown"


def _as_stack(name: str, array) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, ny, nx) stack; got shape {a.shape}")
    return a


def _as_uint16(name: str, array) -> np.ndarray:
    """Raw counts as uint16 (FXI's dtype), refusing values a uint16 cannot hold."""
    a = np.asarray(array)
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind not in "iuf" or (a.size and (
            not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > _UINT16_MAX
            or not np.array_equal(a, np.round(a)))):
        raise ValueError(f"{name} must hold raw counts (integers 0–{_UINT16_MAX}) to be stored as uint16; "
                         f"got {a.dtype} values {np.nanmin(a) if a.size else '-'}–{np.nanmax(a) if a.size else '-'}")
    return a.astype(np.uint16)


def nearest_flat_rows(flat_energy_index, n_energies: int) -> np.ndarray:
    """For every energy row, the energy row whose flats correct it.

    Parameters
    ----------
    flat_energy_index : array_like of int, shape (n_flats,)
        Energy row each flat frame was taken at.
    n_energies : int

    Returns
    -------
    ndarray of int, shape (n_energies,)
        The nearest row (by index) that has flats; ties go to the earlier row.
    """
    with_flats = np.unique(np.asarray(flat_energy_index, dtype=np.int64))
    rows = np.arange(n_energies)
    distance = np.abs(rows[:, None] - with_flats[None, :])
    return with_flats[np.argmin(distance, axis=1)]


def _check_index(name: str, index, n_frames: int, n_energies: int) -> np.ndarray:
    idx = np.asarray(index, dtype=np.int64).ravel()
    if idx.size != n_frames or (idx.size and (idx.min() < 0 or idx.max() >= n_energies)):
        raise ValueError(f"{name} must give each of the {n_frames} frames an energy row 0–{n_energies - 1}; "
                         f"got {idx.size} values {idx.min() if idx.size else '-'}–{idx.max() if idx.size else '-'}")
    return idx


def _fxi_transmission(frame_mean, flat_mean, dark_mean):
    """FXI's normalization in float64, stored float32; NaN/inf become invalid (NaN here, 0 on disk)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((frame_mean - dark_mean) / (flat_mean - dark_mean)).astype(np.float32)
    valid = np.isfinite(t) & (t != 0)
    return np.where(valid, t, np.float32(np.nan)), valid


def fxi_xanes_from_frames(frames, flats, darks, energies_ev, *, frame_energy_index, flat_energy_index,
                          keep_raw: bool = False, uid: str | None = None, scan_id: int | None = None,
                          note: str | None = None, scan_time: float | None = None,
                          magnification: float | None = None, pixel_size_nm: float | None = None
                          ) -> FxiXanes2D:
    """Reduce raw 2D XANES frames the way FXI's ``export_xanes_scan`` does.

    Per energy: mean of its sample frames, mean of its flats (from the nearest energy
    that has flats when flats were not taken at every energy), mean of all darks (one
    dark event); transmission ``(mean sample - mean dark) / (mean flat - mean dark)`` in
    float64, stored float32, invalid where that is 0, NaN or inf.

    Parameters
    ----------
    frames : array_like, shape (n_frames, ny, nx)
        Raw sample frames (counts).
    flats : array_like, shape (n_flats, ny, nx)
        Raw flat frames (counts).
    darks : array_like, shape (n_darks, ny, nx)
        Raw dark frames (counts), taken once.
    energies_ev : array_like, shape (n_energies,)
        Energies in acquisition order, eV.
    frame_energy_index, flat_energy_index : array_like of int
        Energy row of each sample frame / flat frame.
    keep_raw : bool, optional
        Keep the raw frames in the result (written to ``/txm_live/raw``). Default False.
    uid, scan_id, note, scan_time, magnification, pixel_size_nm
        Metadata, as in :class:`~txm_live.io.FxiXanes2D`.

    Returns
    -------
    FxiXanes2D
        Layout ``'xanes2d'``.
    """
    energies = np.asarray(energies_ev, dtype=np.float64).ravel()
    n = energies.size
    fr, fl, dk = _as_stack("frames", frames), _as_stack("flats", flats), _as_stack("darks", darks)
    for name, a in (("flats", fl), ("darks", dk)):
        if a.shape[1:] != fr.shape[1:]:
            raise ValueError(f"{name} image shape {a.shape[1:]} differs from the frames' {fr.shape[1:]}")
    f_idx = _check_index("frame_energy_index", frame_energy_index, fr.shape[0], n)
    b_idx = _check_index("flat_energy_index", flat_energy_index, fl.shape[0], n)
    missing = np.setdiff1d(np.arange(n), f_idx)
    if missing.size:
        raise ValueError(f"no sample frame at energy rows {missing.tolist()} ({energies[missing].tolist()} eV)")
    dark_mean = dk.mean(axis=0, dtype=np.float64)
    frame_mean = np.stack([fr[f_idx == i].mean(axis=0, dtype=np.float64) for i in range(n)])
    flat_rows = nearest_flat_rows(b_idx, n)
    flat_by_row = {int(r): fl[b_idx == r].mean(axis=0, dtype=np.float64) for r in np.unique(b_idx)}
    flat_mean = np.stack([flat_by_row[int(r)] for r in flat_rows])
    transmission, valid = _fxi_transmission(frame_mean, flat_mean, dark_mean[None])
    reason = (f"built from {fr.shape[0]} sample, {fl.shape[0]} flat and {dk.shape[0]} dark frames as FXI's "
              f"export does")
    raw = dict(frames=fr, frame_energy_index=f_idx, flats=fl, flat_energy_index=b_idx, darks=dk) if keep_raw else {}
    return FxiXanes2D(
        layout=XANES2D, layout_reason=reason, uid=uid, scan_id=scan_id, note=note, scan_time=scan_time,
        magnification=magnification, pixel_size_nm=pixel_size_nm, energies_ev=energies,
        signal="transmission", transmission=transmission, valid=valid,
        flat_avg=flat_mean.astype(np.float32), dark_avg=dark_mean[None].astype(np.float32), **raw,
    )


def fxi_fly_scan_from_frames(projections, theta_rad, flats, darks, energy_ev: float, *,
                             uid: str | None = None, scan_id: int | None = None, note: str | None = None,
                             scan_time: float | None = None, magnification: float | None = None,
                             pixel_size_nm: float | None = None, x_ini_um: float | None = None,
                             y_ini_um: float | None = None, z_ini_um: float | None = None,
                             r_ini_rad: float | None = None) -> FxiFlyScan:
    """A fly scan as FXI's ``export_fly_scan`` stores it: raw stacks plus per-pixel medians.

    Parameters
    ----------
    projections : array_like, shape (n_angles, ny, nx)
        Raw projections (counts, 0–65535).
    theta_rad : array_like, shape (n_angles,)
        Rotation of each projection, radians.
    flats, darks : array_like, shape (n, ny, nx)
        Raw flat and dark frames (counts).
    energy_ev : float
        Photon energy, eV.
    uid, scan_id, note, scan_time, magnification, pixel_size_nm, x_ini_um, y_ini_um, z_ini_um, r_ini_rad
        Metadata, as in :class:`~txm_live.io.FxiFlyScan`.

    Returns
    -------
    FxiFlyScan
        ``flat_avg``/``dark_avg``: float32 medians, shape (1, ny, nx).
    """
    proj = _as_uint16("projections", _as_stack("projections", projections))
    fl = _as_uint16("flats", _as_stack("flats", flats))
    dk = _as_uint16("darks", _as_stack("darks", darks))
    theta = np.asarray(theta_rad, dtype=np.float64).ravel()
    if theta.size != proj.shape[0]:
        raise ValueError(f"theta_rad has {theta.size} angles for {proj.shape[0]} projections")
    for name, a in (("flats", fl), ("darks", dk)):
        if a.shape[1:] != proj.shape[1:]:
            raise ValueError(f"{name} image shape {a.shape[1:]} differs from the projections' {proj.shape[1:]}")
    if not (np.isfinite(energy_ev) and energy_ev > 0):
        raise ValueError(f"energy_ev must be a positive energy in eV; got {energy_ev!r}")
    return FxiFlyScan(
        layout=FLY_SCAN, layout_reason=f"built from {proj.shape[0]} projections as FXI's export does",
        uid=uid, scan_id=scan_id, note=note, scan_time=scan_time, magnification=magnification,
        pixel_size_nm=pixel_size_nm, projections=proj, theta_rad=theta, flats=fl, darks=dk,
        energy_ev=float(energy_ev),
        flat_avg=np.median(fl, axis=0, keepdims=True).astype(np.float32),
        dark_avg=np.median(dk, axis=0, keepdims=True).astype(np.float32),
        x_ini_um=x_ini_um, y_ini_um=y_ini_um, z_ini_um=z_ini_um, r_ini_rad=r_ini_rad,
    )


def _write_identity(f: h5py.File, data) -> None:
    """``uid``, ``scan_id``, ``note``, ``scan_time`` as FXI writes them (str, int, str, float)."""
    if data.uid is not None:
        f.create_dataset("uid", data=str(data.uid))
    if data.scan_id is not None:
        f.create_dataset("scan_id", data=int(data.scan_id))
    if data.note is not None:
        f.create_dataset("note", data=str(data.note))
    if data.scan_time is not None:
        f.create_dataset("scan_time", data=float(data.scan_time))


def _write_optics(f: h5py.File, data) -> None:
    if data.magnification is not None:
        f.create_dataset("Magnification", data=float(data.magnification))
    if data.pixel_size_nm is not None:
        f.create_dataset("Pixel Size", data=format_pixel_size(data.pixel_size_nm))


def _image_dataset(f: h5py.File, name: str, array: np.ndarray, *, signal: str | None = None):
    ds = f.create_dataset(name, data=array, chunks=(1, *array.shape[1:]) if array.ndim == 3 else None)
    if signal is not None:
        ds.attrs[SIGNAL_ATTRIBUTE] = signal
        ds.attrs["units"] = "1" if signal == "transmission" else "counts"
    return ds


def _write_extras(f: h5py.File, layout: str, extra: dict | None) -> h5py.Group:
    group = f.create_group(TXM_LIVE_GROUP)
    group.attrs["layout"] = layout
    group.attrs["written_by"] = f"txm-live {_txm_live_version()}"
    for key, value in (extra or {}).items():
        group.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
    return group


def write_fxi_xanes(path, data: FxiXanes2D, *, extra: dict | None = None) -> Path:
    """Write a 2D XANES scan in FXI's export layout.

    ``img_xanes`` float32 transmission with 0 at invalid pixels, ``img_bkg`` float32
    ``(n_energies, ny, nx)``, ``img_dark`` float32 ``(n_dark_events, ny, nx)``,
    ``X_eng`` float64 keV, ``Magnification`` float, ``Pixel Size`` string ('20.06nm'),
    ``uid``, ``scan_id``, ``note``, ``scan_time``. Raw frames, when ``data`` has them, go
    to ``/txm_live/raw``.

    Parameters
    ----------
    path : str or Path
    data : FxiXanes2D
        With ``transmission`` (layout 'xanes2d'), e.g. from :func:`fxi_xanes_from_frames`.
    extra : dict, optional
        Attributes of ``/txm_live`` (e.g. the run's start document); dicts and lists
        are stored as JSON.

    Returns
    -------
    Path
    """
    if data.transmission is None or data.flat_avg is None or data.dark_avg is None:
        raise ValueError("FXI's 2D XANES layout stores transmission with averaged flats and darks; "
                         "build them from raw frames with fxi_xanes_from_frames")
    path = Path(path)
    valid = data.valid if data.valid is not None else np.isfinite(data.transmission) & (data.transmission != 0)
    on_disk = np.where(valid, data.transmission, 0).astype(np.float32)  # FXI's 0 marks invalid pixels
    with h5py.File(path, "w") as f:
        _write_identity(f, data)
        x_eng = f.create_dataset("X_eng", data=np.asarray(data.energies_ev, np.float64) / EV_PER_KEV)
        x_eng.attrs["units"] = "keV"
        _image_dataset(f, "img_bkg", np.asarray(data.flat_avg, np.float32))
        _image_dataset(f, "img_dark", np.asarray(data.dark_avg, np.float32))
        _image_dataset(f, "img_xanes", on_disk, signal="transmission")
        _write_optics(f, data)
        _write_extras(f, XANES2D, extra)
        if data.frames is not None:
            raw = f.create_group(RAW_GROUP)
            for name, array in (("sample", data.frames), ("flat", data.flats), ("dark", data.darks)):
                _image_dataset(raw, name, _as_uint16(f"raw {name} frames", array), signal="counts")
            raw.create_dataset("sample_energy_index", data=np.asarray(data.frame_energy_index, np.int64))
            raw.create_dataset("flat_energy_index", data=np.asarray(data.flat_energy_index, np.int64))
    return path


def write_fxi_fly_scan(path, data: FxiFlyScan, *, extra: dict | None = None) -> Path:
    """Write a fly scan in FXI's export layout.

    ``img_tomo``, ``img_bkg``, ``img_dark`` uint16 raw stacks; ``img_bkg_avg``,
    ``img_dark_avg`` float32 ``(1, ny, nx)``; ``angle`` float64 degrees; ``X_eng``
    scalar keV; ``x_ini``, ``y_ini``, ``z_ini`` (µm), ``r_ini`` (degrees);
    ``Magnification``, ``Pixel Size``, ``uid``, ``scan_id``, ``note``, ``scan_time``.

    Parameters
    ----------
    path : str or Path
    data : FxiFlyScan
        E.g. from :func:`fxi_fly_scan_from_frames`.
    extra : dict, optional
        Attributes of ``/txm_live``.

    Returns
    -------
    Path
    """
    path = Path(path)
    flat_avg = data.flat_avg if data.flat_avg is not None else np.median(data.flats, axis=0, keepdims=True)
    dark_avg = data.dark_avg if data.dark_avg is not None else np.median(data.darks, axis=0, keepdims=True)
    with h5py.File(path, "w") as f:
        _write_identity(f, data)
        x_eng = f.create_dataset("X_eng", data=float(data.energy_ev) / EV_PER_KEV)
        x_eng.attrs["units"] = "keV"
        _image_dataset(f, "img_bkg", _as_uint16("flats", data.flats), signal="counts")
        _image_dataset(f, "img_dark", _as_uint16("darks", data.darks), signal="counts")
        _image_dataset(f, "img_bkg_avg", np.asarray(flat_avg, np.float32))
        _image_dataset(f, "img_dark_avg", np.asarray(dark_avg, np.float32))
        _image_dataset(f, "img_tomo", _as_uint16("projections", data.projections), signal="counts")
        angle = f.create_dataset("angle", data=np.rad2deg(np.asarray(data.theta_rad, np.float64)))
        angle.attrs["units"] = "deg"
        for name, value, unit in (("x_ini", data.x_ini_um, "um"), ("y_ini", data.y_ini_um, "um"),
                                  ("z_ini", data.z_ini_um, "um"),
                                  ("r_ini", None if data.r_ini_rad is None else np.rad2deg(data.r_ini_rad), "deg")):
            if value is not None:
                f.create_dataset(name, data=float(value)).attrs["units"] = unit
        _write_optics(f, data)
        _write_extras(f, FLY_SCAN, extra)
    return path


def write_fxi(path, data: FxiXanes2D | FxiFlyScan, *, extra: dict | None = None) -> Path:
    """Write ``data`` in FXI's layout for its kind (2D XANES or fly scan)."""
    if isinstance(data, FxiFlyScan):
        return write_fxi_fly_scan(path, data, extra=extra)
    if isinstance(data, FxiXanes2D):
        return write_fxi_xanes(path, data, extra=extra)
    raise TypeError(f"data must be FxiXanes2D or FxiFlyScan; got {type(data).__name__}")
