"""``txm-live export UID``: stored runs written as FXI's own export files.

A run is read back from Tiled (HTTP) and written in FXI's layout, so PyXAS,
TXM_Sandbox or ``txm-live analyze`` read it as they read beamline files:

- ``scan_type='xanes2d'`` → ``{plan_name}_id_{scan_id}.h5`` (FXI's ``export_xanes_scan``:
  transmission per energy, averaged flats and darks); ``--with-raw`` also keeps the
  raw frames in ``/txm_live/raw``;
- ``scan_type='tomo'`` (or ``'fly_scan'``) → ``fly_scan_id_{scan_id}.h5`` (FXI's
  ``export_fly_scan``: raw projections, flats, darks, their medians, angles in degrees).

Frames come from the run's arrays (``run[stream][image_key].read()``, served by Tiled
from the detector files); when Tiled cannot serve them (its server was not given the
detector folder as readable storage) they are read from the files the run's
``stream_resource`` documents name, if this machine can see them.

Run contract used here (what the plans write): streams ``dark``, ``flat``, ``primary``;
one external 2-D image key per stream; 2D XANES start documents carry
``energies_ev`` (acquisition order), ``frames_per_energy``, ``flats_per_energy``,
``flat_energy_indices``, ``magnification`` (zone plate) and ``pixel_size_nm``. A tomography
run gives each projection's angle in the primary stream — ``theta_rad`` (radians), or the
rotation motor named first in ``start['motors']`` (degrees, as rotation stages report) —
and its energy as ``start['energy_ev']`` or an ``energy`` key (eV).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from .io import FXI_OBJECTIVE_MAGNIFICATION, fxi_fly_scan_from_frames, fxi_xanes_from_frames, write_fxi

logger = logging.getLogger(__name__)

__all__ = ["add_export_arguments", "export_run", "run_export"]

XANES_SCAN_TYPES = ("xanes2d",)
TOMO_SCAN_TYPES = ("tomo", "fly_scan")
FRAME_STREAMS = ("dark", "flat", "primary")
#: Primary-stream key holding each projection's angle in radians, when a plan records one.
THETA_KEY = "theta_rad"


class RunFrames:
    """Frames of a stored run, by stream: Tiled's arrays, else the files its documents name.

    Parameters
    ----------
    run : BlueskyRun (tiled client)
    """

    def __init__(self, run):
        self.run = run
        self._from_documents: tuple | None = None
        #: Why Tiled could not serve frames, once it failed (the other streams then go
        #: straight to the files: each failed read costs Tiled's client ~30 s of retries).
        self.served_error: Exception | None = None

    def image_key(self, stream: str) -> str:
        """The stream's one external 2-D image data key."""
        keys = self.run[stream].metadata["data_keys"]
        images = [k for k, dk in keys.items() if dk.get("external") is not None and len(dk.get("shape", [])) == 2]
        if len(images) != 1:
            raise ValueError(f"stream {stream!r} must have exactly one external 2-D image key; found {images}")
        return images[0]

    def frames(self, stream: str) -> np.ndarray:
        """All frames of ``stream``, shape (n, ny, nx), in the detector's dtype."""
        if stream not in self.run:
            raise ValueError(f"the run has no {stream!r} stream (streams: {list(self.run)})")
        key = self.image_key(stream)
        if self.served_error is None:
            try:
                return np.asarray(self.run[stream][key].read())
            except Exception as exc:  # Tiled could not serve the external file: read it here
                logger.warning("Tiled could not serve %s/%s (%s); reading the detector files the run names",
                               stream, key, exc)
                self.served_error = exc
        return self._document_frames(stream, key, self.served_error)

    def _document_frames(self, stream: str, key: str, served_error: Exception) -> np.ndarray:
        from .callbacks._frames import FrameReader

        if self._from_documents is None:
            self._from_documents = self._collect_documents()
        descriptors, resources, datums = self._from_documents
        reader = FrameReader(wait_s=0.0)
        chunks = {}
        try:
            for datum in datums:
                if descriptors.get(datum["descriptor"]) != stream:
                    continue
                resource = resources[datum["stream_resource"]]
                if resource.get("data_key", key) != key:
                    continue
                start, stop = int(datum["indices"]["start"]), int(datum["indices"]["stop"])
                chunks[start] = reader.read(resource["uri"], resource["parameters"]["dataset"], start, stop)
        except (OSError, TimeoutError, ValueError) as exc:
            raise RuntimeError(f"cannot read the {stream!r} frames: Tiled failed ({served_error}) and so did the "
                               f"detector files ({exc})") from exc
        finally:
            reader.close()
        if not chunks:
            raise RuntimeError(f"cannot read the {stream!r} frames: Tiled failed ({served_error}) and the run "
                               f"has no stream_datum for them")
        return np.concatenate([chunks[s] for s in sorted(chunks)])

    def _collect_documents(self):
        descriptors, resources, datums = {}, {}, []
        for name, doc in self.run.documents():
            if name == "descriptor":
                descriptors[doc["uid"]] = doc["name"]
            elif name == "stream_resource":
                resources[doc["uid"]] = doc
            elif name == "stream_datum":
                datums.append(doc)
        return descriptors, resources, datums

    def column(self, stream: str, key: str) -> np.ndarray:
        """A scalar data key of ``stream`` as a 1-D array."""
        return np.asarray(self.run[stream][key].read()).ravel()


def _identity(start: dict) -> dict:
    """FXI's identity and optics fields from a start document (total magnification, as FXI)."""
    mag = start.get("magnification")
    objective = float(start.get("objective_magnification", FXI_OBJECTIVE_MAGNIFICATION))
    return dict(
        uid=start["uid"], scan_id=start.get("scan_id"), note=str(start.get("note", "")),
        scan_time=float(start["time"]), magnification=None if mag is None else float(mag) * objective,
        pixel_size_nm=start.get("pixel_size_nm"),
    )


#: Event keys that say what each frame is (the plan stubs' frame labels).
LABEL_KEYS = ("frame_energy_index", "frame_repeat")


def _rows_by_label(frames: RunFrames, stream: str, energy_rows, per_energy: int):
    """Row of each (energy row, repeat) of a stream, chosen by the frames' labels.

    A frame re-taken after a pause appears twice; the later row wins (the analysis'
    rule). Returns the rows in scan order, and the energy row of each; None when the
    run's events carry no labels (recorded before labels existed: rows in file order).
    """
    keys = frames.run[stream].metadata["data_keys"]
    if not all(k in keys for k in LABEL_KEYS):
        return None
    index, repeat = (frames.column(stream, k).astype(np.int64) for k in LABEL_KEYS)
    latest = {(int(i), int(r)): row for row, (i, r) in enumerate(zip(index, repeat))}
    wanted = [(int(i), r) for i in energy_rows for r in range(per_energy)]
    missing = [w for w in wanted if w not in latest]
    if missing:
        raise ValueError(f"the run's {stream} stream lacks frames (energy index, repeat) {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (was it aborted?). Only complete runs are exported")
    return np.array([latest[w] for w in wanted]), np.array([w[0] for w in wanted])


def _select(frames: RunFrames, stream: str, energy_rows, per_energy: int):
    """A stream's frames in scan order and the energy row of each (labels, else file order)."""
    images = frames.frames(stream)
    chosen = _rows_by_label(frames, stream, energy_rows, per_energy)
    if chosen is None:
        expected = len(energy_rows) * per_energy
        if images.shape[0] != expected:
            raise ValueError(f"the run has {images.shape[0]} {stream} frames; a complete scan has {expected} "
                             f"(was it aborted?). Only complete runs are exported")
        return images, np.repeat(np.asarray(energy_rows), per_energy)
    rows, energy_index = chosen
    return images[rows], energy_index


def _xanes_from_run(frames: RunFrames, start: dict, *, with_raw: bool):
    energies = np.asarray(start["energies_ev"], dtype=np.float64)
    fpe = int(start.get("frames_per_energy", 1))
    flats_per = int(start.get("flats_per_energy", 1))
    flat_rows = list(start.get("flat_energy_indices", range(energies.size)))
    sample, sample_index = _select(frames, "primary", range(energies.size), fpe)
    flat, flat_index = _select(frames, "flat", flat_rows, flats_per)
    data = fxi_xanes_from_frames(
        sample, flat, frames.frames("dark"), energies, frame_energy_index=sample_index,
        flat_energy_index=flat_index, keep_raw=with_raw, **_identity(start),
    )
    return data, f"{start.get('plan_name', 'xanes_scan')}_id_{start.get('scan_id')}.h5"


def _angles_rad(frames: RunFrames, start: dict, angle_key: str | None) -> tuple[np.ndarray, str]:
    keys = frames.run["primary"].metadata["data_keys"]
    if angle_key is None:
        motors = [m for m in start.get("motors", []) if m in keys]
        angle_key = THETA_KEY if THETA_KEY in keys else (motors[0] if motors else None)
    if angle_key is None or angle_key not in keys:
        raise ValueError(f"cannot find the projection angles: give angle_key (primary keys: {sorted(keys)})")
    units = str(keys[angle_key].get("units", "rad" if angle_key == THETA_KEY else "deg")).lower()
    values = frames.column("primary", angle_key)
    if units in ("rad", "radian", "radians"):
        return values, f"{angle_key} (rad)"
    if units in ("deg", "degree", "degrees"):
        return np.deg2rad(values), f"{angle_key} (deg)"
    raise ValueError(f"angle key {angle_key!r} has units {units!r}; expected degrees or radians")


def _fly_scan_from_run(frames: RunFrames, start: dict, *, angle_key: str | None):
    theta, angle_source = _angles_rad(frames, start, angle_key)
    energy = start.get("energy_ev")
    if energy is None:
        if "energy" not in frames.run["primary"]:
            raise ValueError("the tomography run records no energy (start['energy_ev'] or an 'energy' key)")
        energy = float(np.mean(frames.column("primary", "energy")))
    positions = {}
    for field, key in (("x_ini_um", "sample_stage_x"), ("y_ini_um", "sample_stage_y"),
                       ("z_ini_um", "sample_stage_z")):
        stream = next((s for s in ("baseline", "primary") if s in frames.run and key in frames.run[s]), None)
        positions[field] = None if stream is None else float(frames.column(stream, key)[0])
    data = fxi_fly_scan_from_frames(
        frames.frames("primary"), theta, frames.frames("flat"), frames.frames("dark"), float(energy),
        r_ini_rad=float(theta[0]), **positions, **_identity(start),
    )
    logger.info("fly-scan angles from %s", angle_source)
    return data, f"fly_scan_id_{start.get('scan_id')}.h5"


def export_run(client, uid: str, output_dir, *, with_raw: bool = False, angle_key: str | None = None,
               overwrite: bool = False) -> Path:
    """Write the stored run ``uid`` as FXI's export file for its scan type.

    Parameters
    ----------
    client : tiled client
        Where the run is stored.
    uid : str
        The raw run.
    output_dir : str or Path
        Folder for the file (created if missing).
    with_raw : bool, optional
        2D XANES: also keep the raw sample, flat and dark frames in ``/txm_live/raw``.
    angle_key : str, optional
        Tomography: primary-stream key of the projection angles (default ``theta_rad``,
        else the first of ``start['motors']``).
    overwrite : bool, optional
        Replace an existing file. Default False.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    KeyError
        No run ``uid``.
    ValueError
        A scan type this export does not write, or an incomplete run.
    FileExistsError
        The file exists and ``overwrite`` is False.
    """
    run = client[uid]
    start = dict(run.metadata["start"])
    scan_type = start.get("scan_type")
    frames = RunFrames(run)
    if scan_type in XANES_SCAN_TYPES:
        data, name = _xanes_from_run(frames, start, with_raw=with_raw)
    elif scan_type in TOMO_SCAN_TYPES:
        data, name = _fly_scan_from_run(frames, start, angle_key=angle_key)
    else:
        raise ValueError(f"run {uid} has scan_type {scan_type!r}; export writes "
                         f"{XANES_SCAN_TYPES + TOMO_SCAN_TYPES}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    stop = run.metadata.get("stop") or {}
    return write_fxi(path, data, extra={"source_uid": uid, "scan_type": scan_type,
                                        "exit_status": str(stop.get("exit_status", "unknown")),
                                        "start": start})


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``txm-live export`` arguments to ``parser``."""
    parser.add_argument("uids", nargs="+", metavar="UID", help="uid(s) of stored raw runs")
    parser.add_argument("--tiled", default="txm-live-data/tiled",
                        help="Tiled URI, or the folder of an embedded server started by `txm-live serve` "
                             "(default: txm-live-data/tiled)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="folder for the files")
    parser.add_argument("--with-raw", action="store_true",
                        help="2D XANES: also keep the raw frames (group /txm_live/raw)")
    parser.add_argument("--angle-key", default=None, help="tomography: primary key of the angles")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run ``txm-live export`` from parsed arguments; print each file; 0 if all were written."""
    from .store import connect

    try:
        client = connect(args.tiled)
    except FileNotFoundError as exc:
        print(f"txm-live export: {exc}", file=sys.stderr)
        return 2
    status = 0
    for uid in args.uids:
        try:
            path = export_run(client, uid, args.output_dir, with_raw=args.with_raw, angle_key=args.angle_key,
                              overwrite=args.overwrite)
        except KeyError:
            print(f"txm-live export: no run {uid!r} in {args.tiled}", file=sys.stderr)
            status = 2
            continue
        except (ValueError, RuntimeError, OSError) as exc:
            print(f"txm-live export: run {uid}: {exc}", file=sys.stderr)
            status = max(status, 1)
            continue
        print(path)
    return status
