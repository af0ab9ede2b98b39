"""Batch analysis of FXI-style files (``txm-live analyze FILE.h5``).

A 2D XANES file goes through the same staged pipeline as the live analysis
(:class:`txm_live.analysis.Xanes2DPipeline`: flat/dark, alignment, fit) and its maps are
written as HDF5 and PNG; a fly scan goes through the live tomography's pipeline
(:class:`txm_live.analysis.TomoPipeline`: zingers, flat/dark, centre, reconstruction) and
its volume is written as HDF5 with PNGs of the centre slice and sinogram
(:func:`reconstruct_fly_scan`). The CLI only dispatches to
:func:`add_analyze_arguments` and :func:`run_analyze`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .analysis import NO_ENERGY_INDEX, FrameLabel, TomoPipeline, Xanes2DPipeline, XanesScanLayout
from .io import FxiFlyScan, read_fxi, write_maps_h5

__all__ = ["ReconstructionUnavailableError", "analyze_fxi_file", "reconstruct_fly_scan", "add_analyze_arguments",
           "run_analyze"]

_PNG_MAPS = ("whiteline", "edge", "edge_jump")
_ALIGN_MODES = ("running_mean", "reference", "neighbour", "none")
_LAYOUT_CHOICES = ("auto", "xanes2d", "xanes2d_raw", "fly_scan")


class ReconstructionUnavailableError(NotImplementedError):
    """A scan this version cannot reconstruct (a 3D XANES folder)."""


def _png(path: Path, image: np.ndarray, title: str, label: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    finite = image[np.isfinite(image)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    im = ax.imshow(image, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, label=label)
    fig.savefig(path)
    return path


def _repeats(energy_index) -> np.ndarray:
    """``repeat`` of each frame: how many frames of its energy row came before it."""
    seen: dict[int, int] = {}
    out = np.empty(len(energy_index), dtype=np.int64)
    for k, i in enumerate(energy_index):
        out[k] = seen.get(int(i), 0)
        seen[int(i)] = out[k] + 1
    return out


def _per_energy_count(energy_index, what: str, path) -> int:
    counts = np.bincount(np.asarray(energy_index, dtype=np.int64))
    counts = counts[counts > 0]
    if counts.size and counts.min() != counts.max():
        raise ValueError(f"{path}: the {what} frames are not the same number per energy "
                         f"({counts.min()} to {counts.max()}); the pipeline needs a regular scan")
    return int(counts.max()) if counts.size else 0


def _layout(data) -> XanesScanLayout:
    """The scan layout of a 2D XANES file (:class:`txm_live.io.FxiXanes2D`)."""
    energies = data.energies_ev
    if data.frames is not None:  # raw counts: img_xanes of a raw file, or /txm_live/raw
        n_darks = 0 if data.darks is None else data.darks.shape[0]
        fpe = _per_energy_count(data.frame_energy_index, "sample", data.path)
        if data.flat_energy_index is None:  # repeated flats, one set
            return XanesScanLayout(energies, frames_per_energy=fpe, n_darks=n_darks,
                                   flats_per_energy=data.flats.shape[0], flat_energy_indices=(0,))
        rows = sorted({int(i) for i in data.flat_energy_index})
        return XanesScanLayout(energies, frames_per_energy=fpe, n_darks=n_darks,
                               flats_per_energy=_per_energy_count(data.flat_energy_index, "flat", data.path),
                               flat_energy_indices=rows)
    n_darks = 0 if data.dark_avg is None else data.dark_avg.shape[0]
    if data.flat_avg is None or data.flat_avg.shape[0] == energies.size:
        return XanesScanLayout(energies, n_darks=n_darks)
    return XanesScanLayout(energies, n_darks=n_darks, flats_per_energy=data.flat_avg.shape[0],
                           flat_energy_indices=(0,))


def _feed_raw(pipeline: Xanes2DPipeline, data, bar) -> None:
    """Raw darks, flats and sample frames, labelled by their energy rows in the file."""
    for r, dark in enumerate(data.darks if data.darks is not None else []):
        pipeline.add_frame(FrameLabel("dark", NO_ENERGY_INDEX, r), dark, source=("dark", r))
    flat_rows = (np.zeros(data.flats.shape[0], np.int64) if data.flat_energy_index is None
                 else np.asarray(data.flat_energy_index))
    for k, (i, r) in enumerate(zip(flat_rows, _repeats(flat_rows))):
        pipeline.add_frame(FrameLabel("flat", int(i), int(r)), data.flats[k], source=("flat", k))
    rows = np.asarray(data.frame_energy_index)
    for k, (i, r) in enumerate(zip(rows, _repeats(rows))):
        pipeline.add_frame(FrameLabel("sample", int(i), int(r)), data.frames[k], source=("sample", k))
        bar.update(1)


def _feed_transmission(pipeline: Xanes2DPipeline, data, bar) -> None:
    """FXI's transmission ``T``, turned back into counts when FXI's flats and darks are there.

    ``S = T (F - D) + D`` with FXI's averaged flat ``F`` and dark ``D``: the pipeline then
    removes zingers before ``-ln`` as it does live. FXI's export removes none, and on the
    simulated 128² Ni scan the zingers left in ``T`` raise the drift error from 0.04 to
    0.19 px. Without ``img_bkg``/``img_dark`` the frames are ``-ln T``. Pixels FXI marked
    invalid (its zeros, NaN in ``data.transmission``) stay NaN.
    """
    if data.flat_avg is None or data.dark_avg is None:
        warnings.warn(f"{data.path.name} has no img_bkg/img_dark: img_xanes is taken as transmission I/I0 "
                      "(no zinger removal)", UserWarning, stacklevel=3)
        for i, frame in enumerate(data.transmission):
            pipeline.add_transmission(FrameLabel("sample", i, 0), frame, source=("img_xanes", i))
            bar.update(1)
        return
    for r, dark in enumerate(data.dark_avg):
        pipeline.add_frame(FrameLabel("dark", NO_ENERGY_INDEX, r), dark, source=("img_dark", r))
    dark = data.dark_avg[0] if data.dark_avg.shape[0] == 1 else np.median(data.dark_avg, axis=0)
    per_energy = data.flat_avg.shape[0] == data.energies_ev.size
    for r, flat in enumerate(data.flat_avg):
        label = FrameLabel("flat", r, 0) if per_energy else FrameLabel("flat", 0, r)
        pipeline.add_frame(label, flat, source=("img_bkg", r))
    for i, t in enumerate(data.transmission):
        flat = data.flat_avg[i] if per_energy else np.median(data.flat_avg, axis=0)
        counts = (t * (flat - dark) + dark).astype(np.float32)
        pipeline.add_frame(FrameLabel("sample", i, 0), counts, source=("img_xanes", i))
        bar.update(1)


def _feed(pipeline: Xanes2DPipeline, data, bar) -> None:
    """Every frame of the file into the pipeline (raw frames when the file keeps them)."""
    if data.frames is not None:
        _feed_raw(pipeline, data, bar)
    else:
        _feed_transmission(pipeline, data, bar)


def _write_outputs(path: Path, out_dir: Path, data, pipeline: Xanes2DPipeline, align: str) -> dict[str, Path]:
    res = pipeline.result
    stem = path.stem
    outputs: dict[str, Path] = {}
    outputs["maps"] = write_maps_h5(
        out_dir / f"{stem}_maps.h5",
        {
            "whiteline": res.whiteline, "edge": res.edge, "edge_jump": res.edge_jump,
            "pre_edge": res.pre_edge, "whiteline_height": res.whiteline_height,
            "noise": res.noise, "status": res.status, "mask": res.mask,
            "shifts": np.asarray(pipeline.shifts, dtype=float).reshape(-1, 2), "energies_ev": res.energies,
        },
        attrs={"source": str(path), "layout": data.layout, "layout_reason": data.layout_reason, "align": align, "fit_params": dict(res.params),
               "pixel_size_nm": data.pixel_size_nm, "magnification": data.magnification,
               "quality": pipeline.quality, "quality_warnings": "\n".join(pipeline.quality_warnings)},
    )
    labels = {"whiteline": "eV", "edge": "eV", "edge_jump": "absorbance"}
    for name in _PNG_MAPS:
        img = np.asarray(getattr(res, name), dtype=np.float64)
        if name != "edge_jump":
            img = np.where(res.mask, img, np.nan)
        outputs[name] = _png(out_dir / f"{stem}_{name}.png", img, f"{stem}: {name.replace('_', ' ')}", labels[name])
    return outputs


def analyze_fxi_file(
    path,
    output_dir,
    *,
    progress: bool = True,
    layout: str = "auto",
    align: str = "running_mean",
    roi=None,
    zinger_sigma: float | None = 10.0,
    **fit_params,
) -> dict[str, Path]:
    """Analyse one FXI-style 2D XANES file and write its maps.

    The frames go through the same :class:`txm_live.analysis.Xanes2DPipeline` as the
    live analysis (dark/flat, per-frame correction, registration in acquisition order,
    :func:`~txm_live.analysis.fit_xanes`), so a file exported from a stored run gives the
    live run's maps.

    Parameters
    ----------
    path : str or Path
        FXI 2D XANES HDF5 file (``X_eng``, ``img_xanes``, ``img_bkg``, ``img_dark``),
        read with :func:`txm_live.io.read_fxi`; raw frames are used when the file keeps
        them (a raw file, or txm-live's export with ``/txm_live/raw``).
    output_dir : str or Path
        Folder for the outputs (created if missing).
    progress : bool, optional
        Show a tqdm progress bar on stderr. Default True.
    layout : {'auto', 'xanes2d', 'xanes2d_raw', 'fly_scan'}, optional
        How to read the file (see :func:`txm_live.io.read_fxi`); ``'auto'`` recognises
        it and refuses a file whose content contradicts its layout.
    align : {'running_mean', 'reference', 'neighbour', 'none'}, optional
        Drift correction before fitting (see :class:`txm_live.analysis.StackAligner`);
        frames are registered in the file's (acquisition) order. Default ``'running_mean'``.
    roi : tuple of two slices, optional
        Region used for registration.
    zinger_sigma : float or None, optional
        Zinger/hot-pixel threshold (:func:`~txm_live.analysis.remove_zingers`); None: off.
    **fit_params
        Passed to :func:`txm_live.analysis.fit_xanes` (``e0``, ``pre1``, ...).

    Returns
    -------
    dict of str to Path
        ``'maps'`` (HDF5 with ``whiteline``, ``edge``, ``edge_jump``,
        ``pre_edge``, ``whiteline_height``, ``noise``, ``status``, ``mask``,
        ``shifts``, ``energies_ev``; the fit parameters as attributes) and one
        PNG per map in ``whiteline``, ``edge``, ``edge_jump``.
    """
    from tqdm.auto import tqdm

    if align not in _ALIGN_MODES:
        raise ValueError(f"align must be one of {_ALIGN_MODES}; got {align!r}")
    path = Path(path)
    out_dir = Path(output_dir)
    data = read_fxi(path, layout=layout)
    if isinstance(data, FxiFlyScan):
        return reconstruct_fly_scan(data, out_dir, progress=progress, zinger_sigma=zinger_sigma)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = Xanes2DPipeline(_layout(data), registration_mode=align, roi=roi, zinger_sigma=zinger_sigma,
                               fit_params=fit_params, partial_every=0)
    n = data.energies_ev.size if data.frames is None else data.frames.shape[0]
    with tqdm(total=n + 2, desc=path.name, disable=not progress, unit="frame", file=sys.stderr) as bar:
        bar.set_postfix_str("correct + align")
        _feed(pipeline, data, bar)
        pipeline.finish()
        for warning in pipeline.quality_warnings:  # also in the maps file's attributes
            warnings.warn(f"{path.name}: the maps are suspect: {warning}", UserWarning, stacklevel=2)
        bar.set_postfix_str("fit")
        pipeline.fit_final()
        bar.update(1)
        bar.set_postfix_str("write")
        outputs = _write_outputs(path, out_dir, data, pipeline, align)
        bar.update(1)
    return outputs


def _feed_fly_scan(pipeline: TomoPipeline, data) -> None:
    """Darks, flats and projections of an FXI fly scan, labelled by their rows in the file."""
    for k, dark in enumerate(data.darks):
        pipeline.add_frame(FrameLabel("dark", NO_ENERGY_INDEX, k), dark)
    for k, flat in enumerate(data.flats):
        pipeline.add_frame(FrameLabel("flat", 0, k), flat)
    for i, (projection, theta) in enumerate(zip(data.projections, data.theta_rad)):
        pipeline.add_frame(FrameLabel("sample", 0, i), projection, theta_rad=float(theta))


def reconstruct_fly_scan(data, output_dir, *, progress: bool = True, zinger_sigma: float | None = 10.0,
                         **pipeline_options) -> dict[str, Path]:
    """Reconstruct an FXI fly scan (:class:`txm_live.io.FxiFlyScan`) and write the volume.

    The frames go through :class:`txm_live.analysis.TomoPipeline` as the live
    tomography's do (zingers removed, ``−ln((I − D)/(F − D))`` with the medians of the
    file's flats and darks, :func:`~txm_live.analysis.find_center`,
    :func:`~txm_live.analysis.reconstruct`), so a file exported from a stored run gives
    the live run's volume.

    Parameters
    ----------
    data : FxiFlyScan
    output_dir : str or Path
        Folder for the outputs (created if missing).
    progress : bool
        tqdm progress bar on stderr.
    zinger_sigma : float or None
        Zinger threshold; None: off.
    **pipeline_options
        Other :class:`~txm_live.analysis.TomoPipeline` options (``center_px``,
        ``algorithm``, ``stripe_method`` ...).

    Returns
    -------
    dict of str to Path
        ``'volume'``: HDF5 with ``volume`` ``(ny, nx, nx)`` float32 (attenuation per pixel
        length, ``reconstruct``'s geometry), ``theta_rad``, ``center_px``; attributes
        ``center_method``, ``energy_ev``, ``pixel_size_nm``, the parameters and notes.
        ``'slice'`` and ``'sinogram'``: PNGs of the middle detector row.
    """
    from tqdm.auto import tqdm

    out_dir = Path(output_dir)
    stem = data.path.stem
    pipeline = TomoPipeline(n_projections=data.projections.shape[0], n_darks=data.darks.shape[0],
                            zinger_sigma=zinger_sigma, preview_every=0, **pipeline_options)
    with tqdm(total=3, desc=data.path.name, disable=not progress, unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("read + zingers")
        _feed_fly_scan(pipeline, data)
        bar.update(1)
        bar.set_postfix_str("centre + reconstruct")
        result = pipeline.reconstruct_volume()
        bar.update(1)
        bar.set_postfix_str("write")
        out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        row = data.projections.shape[1] // 2
        outputs = {"volume": write_maps_h5(
            out_dir / f"{stem}_recon.h5",
            {"volume": result.volume, "theta_rad": result.theta_rad, "center_px": np.float64(result.center_px)},
            attrs={"source": str(data.path), "layout": data.layout, "center_method": result.center_method,
                   "energy_ev": data.energy_ev, "pixel_size_nm": data.pixel_size_nm,
                   "parameters": result.parameters, "notes": list(result.notes),
                   "geometry": "volume[j, row, col]: detector row j; x = col - nx//2, z = nx//2 - row (px)"})}
        outputs["slice"] = _png(out_dir / f"{stem}_slice.png", result.volume[row],
                                f"{stem}: row {row}, centre {result.center_px:.2f} px", "attenuation / px")
        outputs["sinogram"] = _png(out_dir / f"{stem}_sinogram.png", pipeline.sinogram(row),
                                   f"{stem}: sinogram of row {row}", "absorbance")
        bar.update(1)
    pipeline.release()
    return outputs


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``txm-live analyze`` arguments to ``parser``."""
    parser.add_argument("file", type=Path, help="FXI 2D XANES HDF5 file (maps) or fly-scan file (volume); "
                                                "3D XANES folders are recognised, not yet reconstructed")
    parser.add_argument("--layout", choices=_LAYOUT_CHOICES, default="auto",
                        help="how to read the file (default: auto, recognised from its datasets and content; "
                             "xanes2d: img_xanes is FXI's transmission; xanes2d_raw: img_xanes holds raw counts)")
    parser.add_argument("-o", "--output-dir", type=Path, default=None,
                        help="output folder (default: FILE's folder / FILE-stem_maps)")
    parser.add_argument("--align", choices=_ALIGN_MODES, default="running_mean",
                        help="drift correction before fitting (default: running_mean)")
    for name in ("e0", "pre1", "pre2", "norm1", "norm2"):
        parser.add_argument(f"--{name}", type=float, default=None,
                            help=f"Larch {name} in eV (default: derived from the data)")
    parser.add_argument("--edge-jump-min", type=float, default=0.0,
                        help="mask pixels whose edge jump (absorbance) is not above this")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _refuse_xanes3d_folder(folder: Path) -> int:
    """``txm-live analyze FOLDER``: say what the folder holds and that 3D XANES is not there yet."""
    from .io import FxiLayoutError, open_fxi_xanes3d

    try:
        series = open_fxi_xanes3d(folder)
    except (FileNotFoundError, FxiLayoutError) as exc:
        print(f"txm-live analyze: {folder} is a folder, not an FXI 3D XANES scan: {exc}", file=sys.stderr)
        return 2
    print(f"txm-live analyze: {folder} holds a 3D XANES scan of {len(series)} fly scans "
          f"({series.energies_ev.min():.1f}–{series.energies_ev.max():.1f} eV); `analyze` fits 2D XANES "
          f"files: run `txm-live analyze3d {folder}` (reconstruction, registration, per-voxel fit)",
          file=sys.stderr)
    return 3


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``txm-live analyze`` from parsed arguments; returns the exit code."""
    path = Path(args.file)
    if path.is_dir():
        return _refuse_xanes3d_folder(path)
    if not path.is_file():
        print(f"txm-live analyze: no such file: {path}", file=sys.stderr)
        return 2
    out = args.output_dir or path.parent / f"{path.stem}_maps"
    fit = {k: getattr(args, k) for k in ("e0", "pre1", "pre2", "norm1", "norm2")
           if getattr(args, k) is not None}
    fit["edge_jump_min"] = args.edge_jump_min
    try:
        outputs = analyze_fxi_file(path, out, progress=not args.no_progress, layout=args.layout,
                                   align=args.align, **fit)
    except ReconstructionUnavailableError as exc:
        print(f"txm-live analyze: {exc}", file=sys.stderr)
        return 3
    except (KeyError, ValueError, OSError) as exc:
        print(f"txm-live analyze: {exc}", file=sys.stderr)
        return 1
    for name, p in outputs.items():
        print(f"{name}: {p}")
    return 0
