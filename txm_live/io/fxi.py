"""FXI HDF5 files in: 2D XANES, fly-scan tomography and 3D XANES (series of fly scans).

FXI (NSLS-II 18-ID) exports each scan as one HDF5 file of root datasets (see
:mod:`txm_live.io._fxi_detect` for the layouts and how a file is recognised). The
readers here return frozen dataclasses in the project's units, converted once:

- energies in eV (FXI: keV), angles in radians (FXI: degrees), pixel size in nm
  (FXI: a string such as ``'20.06nm'``);
- FXI's 2D XANES ``img_xanes`` is transmission with 0 for invalid pixels: it is
  returned as ``transmission`` with NaN there and a ``valid`` mask — never as
  transmission 0;
- raw counts stay in their dtype (uint16), untouched.

Every result says which layout it was read as and why (``layout``, ``layout_reason``).
Writing is in :mod:`txm_live.io._fxi_write`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ._fxi_detect import (
    AUTO,
    FLY_SCAN,
    XANES2D,
    XANES2D_RAW,
    FxiLayoutError,
    LayoutDecision,
    decide_layout,
)
from ._fxi_fields import decode_scalar, energies_ev_from_x_eng, parse_pixel_size_nm

__all__ = [
    "FxiFlyScan",
    "FxiXanes2D",
    "FxiXanes3D",
    "RAW_GROUP",
    "TXM_LIVE_GROUP",
    "open_fxi_xanes3d",
    "read_fxi",
    "read_fxi_fly_scan",
    "read_fxi_xanes",
]

#: Group txm-live adds beside FXI's datasets (FXI's readers never look at it).
TXM_LIVE_GROUP = "txm_live"
#: Raw frames of a 2D XANES export, when kept (``sample``, ``flat``, ``dark`` and the
#: energy row of each sample and flat frame).
RAW_GROUP = f"{TXM_LIVE_GROUP}/raw"

#: Root datasets the readers interpret; any other scalar lands in ``attrs``.
_KNOWN = {"X_eng", "img_xanes", "img_bkg", "img_dark", "img_tomo", "img_bkg_avg", "img_dark_avg",
          "angle", "Magnification", "Pixel Size", "uid", "scan_id", "note", "scan_time",
          "x_ini", "y_ini", "z_ini", "r_ini"}


@dataclass(frozen=True, eq=False, kw_only=True)
class _FxiScan:
    """Fields every FXI export has (documented on the subclasses)."""

    layout: str
    layout_reason: str
    path: Path | None = None
    uid: str | None = None
    scan_id: int | None = None
    note: str | None = None
    scan_time: float | None = None
    magnification: float | None = None
    pixel_size_nm: float | None = None
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False, kw_only=True)
class FxiXanes2D(_FxiScan):
    """A 2D XANES scan read from an FXI-style file.

    Attributes
    ----------
    layout : {'xanes2d', 'xanes2d_raw'}
        ``'xanes2d'``: FXI's export, ``img_xanes`` is transmission. ``'xanes2d_raw'``:
        ``img_xanes`` holds raw counts beside raw flats and darks.
    layout_reason : str
        Which datasets and content decided the layout.
    energies_ev : ndarray, shape (n_energies,)
        Energy of each image row, eV (FXI's ``X_eng`` is keV), in the file's order.
    signal : {'transmission', 'counts'}
        What ``img_xanes`` held.
    transmission : ndarray, shape (n_energies, ny, nx), or None
        ``(I - D) / (F - D)`` from FXI's export, in the file's float precision, NaN
        where FXI wrote 0 (its marker for NaN/inf) or a non-finite value. None for raw
        files.
    valid : ndarray of bool, shape (n_energies, ny, nx), or None
        True where ``transmission`` is a measurement.
    flat_avg, dark_avg : ndarray or None
        FXI's averaged ``img_bkg`` ``(n_energies, ny, nx)`` and ``img_dark``
        ``(n_dark_events, ny, nx)``, float32 counts (``xanes2d`` only).
    frames : ndarray, shape (n_frames, ny, nx), or None
        Raw sample frames (counts, file dtype): ``img_xanes`` of a raw file, or the
        frames txm-live keeps in ``/txm_live/raw`` when it exported the scan.
    frame_energy_index : ndarray of int, shape (n_frames,), or None
        Row of ``energies_ev`` each raw frame belongs to.
    flats : ndarray, shape (n_flats, ny, nx), or None
        Raw flat frames (counts).
    flat_energy_index : ndarray of int, shape (n_flats,), or None
        Row of ``energies_ev`` each flat was taken at; None when the flats are repeats
        to be combined into one flat field.
    darks : ndarray, shape (n_darks, ny, nx), or None
        Raw dark frames (counts).
    path, uid, scan_id, note, scan_time
        Source file and FXI's run identifiers (``scan_time``: start time, Unix s).
    magnification : float or None
        FXI's ``Magnification``: zone plate times the 10x visible-light objective (~325).
    pixel_size_nm : float or None
        Pixel at the sample, nm (from ``'Pixel Size'``).
    attrs : dict
        Other scalar datasets and root attributes, decoded.
    """

    energies_ev: np.ndarray
    signal: str
    transmission: np.ndarray | None = None
    valid: np.ndarray | None = None
    flat_avg: np.ndarray | None = None
    dark_avg: np.ndarray | None = None
    frames: np.ndarray | None = None
    frame_energy_index: np.ndarray | None = None
    flats: np.ndarray | None = None
    flat_energy_index: np.ndarray | None = None
    darks: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        stack = self.transmission if self.transmission is not None else self.frames
        return tuple(stack.shape[1:])


@dataclass(frozen=True, eq=False, kw_only=True)
class FxiFlyScan(_FxiScan):
    """A fly-scan tomography read from FXI's export (``export_fly_scan``).

    Attributes
    ----------
    layout : 'fly_scan'
    layout_reason : str
    projections : ndarray, shape (n_angles, ny, nx)
        ``img_tomo``: raw counts as stored (uint16).
    theta_rad : ndarray, shape (n_angles,)
        Rotation of each projection, radians (FXI's ``angle`` is degrees).
    flats, darks : ndarray, shape (n, ny, nx)
        ``img_bkg`` / ``img_dark``: raw counts as stored.
    flat_avg, dark_avg : ndarray, shape (1, ny, nx), or None
        ``img_bkg_avg`` / ``img_dark_avg``: FXI's per-pixel medians, float32.
    energy_ev : float
        Photon energy, eV (FXI's scalar ``X_eng`` is keV).
    x_ini_um, y_ini_um, z_ini_um : float or None
        Sample stage position at the start, µm (FXI's ``x_ini`` ...).
    r_ini_rad : float or None
        Rotation stage at the start, radians (FXI's ``r_ini`` is degrees).
    path, uid, scan_id, note, scan_time, magnification, pixel_size_nm, attrs
        As for :class:`FxiXanes2D`.
    """

    projections: np.ndarray
    theta_rad: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    energy_ev: float
    flat_avg: np.ndarray | None = None
    dark_avg: np.ndarray | None = None
    x_ini_um: float | None = None
    y_ini_um: float | None = None
    z_ini_um: float | None = None
    r_ini_rad: float | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return tuple(self.projections.shape[1:])


def _scalar(h5file, name, convert=None):
    if name not in h5file:
        return None
    value = decode_scalar(h5file[name][()])
    return value if convert is None else convert(value)


def _common_fields(h5file, path: Path, decision: LayoutDecision) -> dict:
    attrs = {k: decode_scalar(v) for k, v in h5file.attrs.items()}
    for name, obj in h5file.items():
        if isinstance(obj, h5py.Dataset) and name not in _KNOWN and obj.size == 1:
            attrs[name] = decode_scalar(obj[()])
    scan_id = _scalar(h5file, "scan_id")
    return dict(
        layout=decision.layout, layout_reason=decision.reason, path=path,
        uid=_scalar(h5file, "uid", str), note=_scalar(h5file, "note", str),
        scan_id=None if scan_id is None else int(scan_id),
        scan_time=_scalar(h5file, "scan_time", float),
        magnification=_scalar(h5file, "Magnification", float),
        pixel_size_nm=_scalar(h5file, "Pixel Size", parse_pixel_size_nm),
        attrs=attrs,
    )


def _stack(h5file, name: str, where: str, *, n=None, image_shape=None, context: str = "") -> np.ndarray:
    """A dataset as an (n, ny, nx) stack, its shape checked against the image's."""
    data = h5file[name][()]
    if data.ndim == 2:
        data = data[None]
    expected = f"({n if n is not None else 'n'}, ny, nx)"
    if data.ndim != 3 or (n is not None and data.shape[0] != n) or (
            image_shape is not None and data.shape[1:] != tuple(image_shape)):
        shape_note = f" with (ny, nx) = {tuple(image_shape)}" if image_shape is not None else ""
        raise FxiLayoutError(f"{where}: {name} has shape {data.shape}, expected {expected}{shape_note}{context}")
    return data


def _energies(h5file) -> np.ndarray:
    ds = h5file["X_eng"]
    return energies_ev_from_x_eng(ds[()], ds.attrs.get("units"))


def _raw_group(h5file, where: str, n_energies: int, image_shape) -> dict:
    """Raw frames txm-live keeps beside FXI's datasets (empty dict when absent)."""
    if RAW_GROUP not in h5file:
        return {}
    g = h5file[RAW_GROUP]
    out = {
        "frames": _stack(g, "sample", where, image_shape=image_shape),
        "flats": _stack(g, "flat", where, image_shape=image_shape),
        "darks": _stack(g, "dark", where, image_shape=image_shape),
        "frame_energy_index": np.asarray(g["sample_energy_index"][()], dtype=np.int64),
        "flat_energy_index": np.asarray(g["flat_energy_index"][()], dtype=np.int64),
    }
    for frames, index in (("frames", "frame_energy_index"), ("flats", "flat_energy_index")):
        idx = out[index]
        if idx.shape != (out[frames].shape[0],) or (idx.size and (idx.min() < 0 or idx.max() >= n_energies)):
            raise FxiLayoutError(f"{where}: {RAW_GROUP}/{index} must give each of the "
                                 f"{out[frames].shape[0]} frames a row of the {n_energies} energies")
    return out


def _read_xanes(h5file, path: Path, decision: LayoutDecision) -> FxiXanes2D:
    where = str(path)
    energies = _energies(h5file)
    n = energies.size
    image = _stack(h5file, "img_xanes", where, n=n, context=f" ({n} energies in X_eng)")
    shape = image.shape[1:]
    fields = _common_fields(h5file, path, decision)
    if decision.layout == XANES2D_RAW:
        flats = _stack(h5file, "img_bkg", where, image_shape=shape)
        return FxiXanes2D(
            **fields, energies_ev=energies, signal="counts", frames=image,
            frame_energy_index=np.arange(n), flats=flats,
            flat_energy_index=np.arange(n) if flats.shape[0] == n else None,
            darks=_stack(h5file, "img_dark", where, image_shape=shape),
        )
    if image.dtype.kind != "f":
        image = image.astype(np.float32)  # forced 'xanes2d' on integers: warned already
    valid = np.isfinite(image) & (image != 0)
    transmission = np.where(valid, image, np.nan).astype(image.dtype, copy=False)
    flat_avg = _stack(h5file, "img_bkg", where, image_shape=shape) if "img_bkg" in h5file else None
    dark_avg = _stack(h5file, "img_dark", where, image_shape=shape) if "img_dark" in h5file else None
    return FxiXanes2D(**fields, energies_ev=energies, signal="transmission", transmission=transmission,
                      valid=valid, flat_avg=flat_avg, dark_avg=dark_avg,
                      **_raw_group(h5file, where, n, shape))


def _read_fly(h5file, path: Path, decision: LayoutDecision) -> FxiFlyScan:
    where = str(path)
    energies = _energies(h5file)
    if energies.size != 1:
        raise FxiLayoutError(f"{where}: X_eng holds {energies.size} energies; a fly scan has one")
    angle_deg = np.asarray(h5file["angle"][()], dtype=np.float64).ravel()
    projections = _stack(h5file, "img_tomo", where, n=angle_deg.size,
                         context=f" ({angle_deg.size} angles in 'angle')")
    shape = projections.shape[1:]
    averages = {name: _stack(h5file, ds, where, n=1, image_shape=shape) if ds in h5file else None
                for name, ds in (("flat_avg", "img_bkg_avg"), ("dark_avg", "img_dark_avg"))}
    r_ini = _scalar(h5file, "r_ini", float)
    return FxiFlyScan(
        **_common_fields(h5file, path, decision), projections=projections,
        theta_rad=np.deg2rad(angle_deg), energy_ev=float(energies[0]),
        flats=_stack(h5file, "img_bkg", where, image_shape=shape),
        darks=_stack(h5file, "img_dark", where, image_shape=shape), **averages,
        x_ini_um=_scalar(h5file, "x_ini", float), y_ini_um=_scalar(h5file, "y_ini", float),
        z_ini_um=_scalar(h5file, "z_ini", float),
        r_ini_rad=None if r_ini is None else float(np.deg2rad(r_ini)),
    )


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise OSError(f"cannot open {path} as HDF5: {exc}") from exc


def read_fxi(path, *, layout: str = AUTO) -> FxiXanes2D | FxiFlyScan:
    """Read an FXI 2D XANES or fly-scan file, recognising which it is.

    Parameters
    ----------
    path : str or Path
    layout : {'auto', 'xanes2d', 'xanes2d_raw', 'fly_scan'}, optional
        ``'auto'`` (default): recognise the layout from the datasets and their content
        and refuse contradictions (raw counts in FXI's 2D XANES ``img_xanes``,
        transmission in ``img_tomo``). A named layout overrides that (with a
        :class:`~txm_live.io.FxiLayoutWarning` if the content disagrees).

    Returns
    -------
    FxiXanes2D or FxiFlyScan
        ``layout`` and ``layout_reason`` say how the file was read.

    Raises
    ------
    FxiLayoutError
        Ambiguous, incomplete, inconsistent or mislabelled files; the message names the
        datasets found and how to override.
    OSError
        The file cannot be opened as HDF5.
    """
    path = Path(path)
    with _open(path) as f:
        decision = decide_layout(f, layout=layout, where=str(path), stacklevel=3)
        if decision.layout == FLY_SCAN:
            return _read_fly(f, path, decision)
        return _read_xanes(f, path, decision)


def read_fxi_xanes(path, *, layout: str = AUTO) -> FxiXanes2D:
    """Read an FXI 2D XANES file (see :func:`read_fxi`); a fly scan is refused.

    Raises
    ------
    FxiLayoutError
        As :func:`read_fxi`, and when the file is a fly scan.
    """
    if layout == FLY_SCAN:
        raise ValueError(f"layout must be 'auto', {XANES2D!r} or {XANES2D_RAW!r}; got {layout!r}")
    data = read_fxi(path, layout=layout)
    if isinstance(data, FxiFlyScan):
        raise FxiLayoutError(f"{path} is a fly scan (img_tomo, angle), not a 2D XANES scan; "
                             f"read it with read_fxi_fly_scan")
    return data


def read_fxi_fly_scan(path, *, layout: str = AUTO) -> FxiFlyScan:
    """Read an FXI fly-scan file (see :func:`read_fxi`); a 2D XANES file is refused.

    Raises
    ------
    FxiLayoutError
        As :func:`read_fxi`, and when the file is a 2D XANES scan.
    """
    if layout not in (AUTO, FLY_SCAN):
        raise ValueError(f"layout must be 'auto' or {FLY_SCAN!r}; got {layout!r}")
    data = read_fxi(path, layout=layout)
    if not isinstance(data, FxiFlyScan):
        raise FxiLayoutError(f"{path} is a 2D XANES scan (img_xanes), not a fly scan; "
                             f"read it with read_fxi_xanes")
    return data


# --------------------------------------------------------------------------- 3D XANES
#: FXI's file name of a fly scan.
FLY_SCAN_NAME = "fly_scan_id_{scan_id}.h5"
_FLY_SCAN_ID = re.compile(r"fly_scan_id_(\d+)\.h5")


@dataclass(frozen=True, eq=False)
class FxiXanes3D:
    """A 3D XANES scan: FXI fly scans, one per energy (headers read, pixels on demand).

    Attributes
    ----------
    paths : tuple of Path
        One fly-scan file per energy, in scan-id order.
    scan_ids : tuple of int or None
    energies_ev : ndarray, shape (n_energies,)
        Each file's energy, eV, in the same order.
    n_angles : tuple of int
        Projections in each file.
    image_shape : tuple of int
        ``(ny, nx)``, the same for every file.
    """

    paths: tuple
    scan_ids: tuple
    energies_ev: np.ndarray
    n_angles: tuple
    image_shape: tuple

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> FxiFlyScan:
        """The fly scan at position ``index`` (pixels read now)."""
        return read_fxi_fly_scan(self.paths[index])

    def __iter__(self):
        return (self.read(i) for i in range(len(self)))


def _fly_scan_files(source, scan_ids) -> list[Path]:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        if scan_ids is None:
            found = [(int(m.group(1)), p) for p in folder.iterdir()
                     if (m := _FLY_SCAN_ID.fullmatch(p.name))]
            if not found:
                raise FileNotFoundError(f"no {FLY_SCAN_NAME.format(scan_id='*')} files in {folder}")
            return [p for _, p in sorted(found)]
        paths = [folder / FLY_SCAN_NAME.format(scan_id=int(i)) for i in scan_ids]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing}")
        return paths
    if scan_ids is not None:
        raise ValueError("scan_ids selects files in a folder; give a folder, or a list of files without scan_ids")
    paths = [Path(p) for p in ([source] if isinstance(source, (str, Path)) else source)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such files: {missing}")
    return paths


def _fly_header(path: Path) -> tuple:
    with _open(path) as f:
        decision = decide_layout(f, where=str(path))
        if decision.layout != FLY_SCAN:
            raise FxiLayoutError(f"{path} is not a fly scan ({decision.reason}); a 3D XANES scan is a "
                                 f"series of fly scans")
        energies = _energies(f)
        if energies.size != 1:
            raise FxiLayoutError(f"{path}: X_eng holds {energies.size} energies; a fly scan has one")
        shape = f["img_tomo"].shape
        return float(energies[0]), int(shape[0]), tuple(shape[1:]), _scalar(f, "scan_id", int)


def open_fxi_xanes3d(source, *, scan_ids: Iterable[int] | None = None) -> FxiXanes3D:
    """Open a 3D XANES scan stored as FXI fly-scan files, one per energy.

    Parameters
    ----------
    source : folder, file or sequence of files
        A folder of ``fly_scan_id_<scan_id>.h5`` files (FXI's names), or the files.
    scan_ids : iterable of int, optional
        With a folder: which scans (e.g. ``range(1200, 1260)``); default every fly
        scan in it.

    Returns
    -------
    FxiXanes3D
        Headers only; ``read(i)`` loads one energy's projections.

    Raises
    ------
    FileNotFoundError
        Missing files (named).
    FxiLayoutError
        A file that is not a fly scan, two files at the same energy, or image shapes
        that differ.
    """
    paths = _fly_scan_files(source, None if scan_ids is None else list(scan_ids))
    headers = [_fly_header(p) for p in paths]
    energies = np.array([h[0] for h in headers])
    shapes = {h[2] for h in headers}
    if len(shapes) > 1:
        raise FxiLayoutError(f"fly scans of one 3D XANES scan must share the image shape; found {sorted(shapes)}")
    uniq, counts = np.unique(energies, return_counts=True)
    if (counts > 1).any():
        repeated = [p.name for p, e in zip(paths, energies) if e in uniq[counts > 1]]
        raise FxiLayoutError(f"fly scans at the same energy {uniq[counts > 1].tolist()} eV: {repeated}")
    return FxiXanes3D(paths=tuple(paths), scan_ids=tuple(h[3] for h in headers), energies_ev=energies,
                      n_angles=tuple(h[1] for h in headers), image_shape=shapes.pop())
