"""Batch analysis of FXI-style 2D XANES files (``txm-live analyze FILE.h5``).

Reads the file, corrects flats/darks, aligns the frames, fits every pixel and
writes the maps as HDF5 and PNG. The CLI only dispatches to
:func:`add_analyze_arguments` and :func:`run_analyze`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ReconstructionUnavailableError", "absorbance_from_fxi", "analyze_fxi_file",
           "add_analyze_arguments", "run_analyze"]

_PNG_MAPS = ("whiteline", "edge", "edge_jump")
_ALIGN_MODES = ("running_mean", "reference", "neighbour", "none")
_LAYOUT_CHOICES = ("auto", "xanes2d", "xanes2d_raw", "fly_scan")


class ReconstructionUnavailableError(NotImplementedError):
    """The file is a fly scan; tomographic reconstruction is not part of this version yet."""


def _per_energy(stack, n: int):
    """``i -> stack[i]`` for a per-energy stack, ``i -> stack[0]`` for a single image, else None."""
    if stack is None or stack.shape[0] not in (1, n):
        return None
    return (lambda i: stack[i]) if stack.shape[0] == n else (lambda i: stack[0])


def absorbance_from_fxi(data, *, on_energy=None) -> tuple[np.ndarray, int]:
    """The absorbance stack the XANES fit takes, from a 2D XANES file as read.

    Raw frames, when the file has them (a raw file, or txm-live's export with
    ``/txm_live/raw``), are corrected as the live analysis does
    (:func:`txm_live.analysis.flat_dark_correct`: zingers removed, darks combined by
    their median); several frames per energy are averaged first, flats come from the
    nearest energy that has them.

    FXI's transmission ``T`` is turned back into mean sample counts with FXI's own
    averaged flat ``F`` and dark ``D`` (``S = T (F - D) + D``), so that the same zinger
    removal applies before ``-ln``: FXI's export removes none, and on the simulated
    128² Ni scan the zingers left in ``T`` raise the drift error from 0.04 to 0.19 px.
    Without ``img_bkg``/``img_dark`` it is ``-ln T``. Pixels FXI marked invalid (its
    zeros, NaN in ``data.transmission``) stay NaN.

    Parameters
    ----------
    data : txm_live.io.FxiXanes2D
    on_energy : callable, optional
        Called with each energy row once it is done (progress).

    Returns
    -------
    absorbance : ndarray, float32, shape (n_energies, ny, nx)
        NaN where no value could be computed.
    n_invalid : int
        Number of NaN values.
    """
    from .analysis import FlatDarkWarning, flat_dark_correct
    from .io import nearest_flat_rows

    n = data.energies_ev.size
    absorb = np.empty((n, *data.image_shape), np.float32)
    if data.frames is not None:
        f_idx = np.asarray(data.frame_energy_index)
        if data.flat_energy_index is None:  # repeated flats, median-combined
            flat_of = {i: data.flats for i in range(n)}
        else:
            b_idx = np.asarray(data.flat_energy_index)
            flat_of = {i: data.flats[b_idx == r] for i, r in enumerate(nearest_flat_rows(b_idx, n))}
    flat_avg, dark_avg = _per_energy(data.flat_avg, n), _per_energy(data.dark_avg, n)
    for i in range(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlatDarkWarning)  # counted below, reported once
            if data.frames is not None:
                frames, flats = data.frames[f_idx == i], flat_of[i]
                frame = frames[0] if frames.shape[0] == 1 else frames.mean(axis=0, dtype=np.float32)
                flat = flats[0] if flats.shape[0] == 1 else np.median(flats, axis=0)
                absorb[i] = flat_dark_correct(frame, flat, data.darks, dtype=np.float32)
            elif flat_avg is not None and dark_avg is not None:
                flat, dark = flat_avg(i), dark_avg(i)
                counts = data.transmission[i] * (flat - dark) + dark
                absorb[i] = flat_dark_correct(counts, flat, dark, dtype=np.float32)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    absorb[i] = -np.log(data.transmission[i])
        if on_energy is not None:
            on_energy(i)
    return absorb, int(np.count_nonzero(np.isnan(absorb)))


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


def analyze_fxi_file(
    path,
    output_dir,
    *,
    progress: bool = True,
    layout: str = "auto",
    align: str = "running_mean",
    roi=None,
    **fit_params,
) -> dict[str, Path]:
    """Analyse one FXI-style 2D XANES file and write its maps.

    Parameters
    ----------
    path : str or Path
        FXI 2D XANES HDF5 file (``X_eng``, ``img_xanes``, ``img_bkg``, ``img_dark``),
        read with :func:`txm_live.io.read_fxi`.
    output_dir : str or Path
        Folder for the outputs (created if missing).
    progress : bool, optional
        Show a tqdm progress bar on stderr. Default True.
    layout : {'auto', 'xanes2d', 'xanes2d_raw', 'fly_scan'}, optional
        How to read the file (see :func:`txm_live.io.read_fxi`); ``'auto'`` recognises
        it and refuses a file whose content contradicts its layout.
    align : {'running_mean', 'reference', 'neighbour', 'none'}, optional
        Drift correction before fitting (see
        :class:`txm_live.analysis.StackAligner`); frames are registered in
        order of energy. Default ``'running_mean'``.
    roi : tuple of two slices, optional
        Region used for registration.
    **fit_params
        Passed to :func:`txm_live.analysis.fit_xanes` (``e0``, ``pre1``, ...).

    Returns
    -------
    dict of str to Path
        ``'maps'`` (HDF5 with ``whiteline``, ``edge``, ``edge_jump``,
        ``pre_edge``, ``whiteline_height``, ``noise``, ``status``, ``mask``,
        ``shifts``, ``energies_ev``; the fit parameters as attributes) and one
        PNG per map in ``whiteline``, ``edge``, ``edge_jump``.

    Raises
    ------
    txm_live.io.FxiLayoutError
        The file's layout is ambiguous, inconsistent or contradicts its content.
    ReconstructionUnavailableError
        The file is a fly scan (reconstruction arrives with the tomography work).
    """
    from tqdm.auto import tqdm

    from .analysis import StackAligner, apply_shifts, fit_xanes
    from .io import FxiFlyScan, read_fxi, write_maps_h5

    if align not in _ALIGN_MODES:
        raise ValueError(f"align must be one of {_ALIGN_MODES}; got {align!r}")
    path = Path(path)
    out_dir = Path(output_dir)
    data = read_fxi(path, layout=layout)
    if isinstance(data, FxiFlyScan):
        raise ReconstructionUnavailableError(
            f"{path.name} is an FXI fly scan ({data.projections.shape[0]} projections over "
            f"{np.rad2deg(np.ptp(data.theta_rad)):.1f}°, {data.energy_ev:.1f} eV): tomographic reconstruction "
            f"is not available in this version of txm-live yet. The file reads with "
            f"txm_live.io.read_fxi_fly_scan")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = data.energies_ev.size
    total = n + (n if align != "none" else 0) + 2
    bar = tqdm(total=total, desc=path.name, disable=not progress, unit="step", file=sys.stderr)
    try:
        # 1. absorbance, energy by energy (progress)
        bar.set_postfix_str("flat/dark" if data.transmission is None or data.frames is not None else "-ln T")
        absorb, n_bad = absorbance_from_fxi(data, on_energy=lambda i: bar.update(1))
        if n_bad:
            warnings.warn(f"{n_bad} pixel values are invalid (NaN): FXI's zeros, or not above the dark",
                          UserWarning, stacklevel=2)
        # 2. alignment in energy order
        shifts = np.zeros((n, 2))
        if align != "none":
            bar.set_postfix_str("align")
            aligner = StackAligner(mode=align, roi=roi)
            for k in np.argsort(data.energies_ev, kind="stable"):
                shifts[k] = aligner.add(absorb[k])
                bar.update(1)
            absorb = apply_shifts(absorb, shifts, order=1)
        # 3. fit
        bar.set_postfix_str("fit")
        res = fit_xanes(absorb, data.energies_ev, **fit_params)
        bar.update(1)
        # 4. write
        bar.set_postfix_str("write")
        stem = path.stem
        params = {k: v for k, v in res.params.items()}
        outputs: dict[str, Path] = {}
        outputs["maps"] = write_maps_h5(
            out_dir / f"{stem}_maps.h5",
            {
                "whiteline": res.whiteline, "edge": res.edge, "edge_jump": res.edge_jump,
                "pre_edge": res.pre_edge, "whiteline_height": res.whiteline_height,
                "noise": res.noise, "status": res.status, "mask": res.mask,
                "shifts": shifts, "energies_ev": res.energies,
            },
            attrs={"source": str(path), "layout": data.layout, "layout_reason": data.layout_reason,
                   "align": align, "fit_params": params,
                   "pixel_size_nm": data.pixel_size_nm, "magnification": data.magnification},
        )
        labels = {"whiteline": "eV", "edge": "eV", "edge_jump": "absorbance"}
        for name in _PNG_MAPS:
            img = np.asarray(getattr(res, name), dtype=np.float64)
            if name != "edge_jump":
                img = np.where(res.mask, img, np.nan)
            outputs[name] = _png(out_dir / f"{stem}_{name}.png", img,
                                 f"{stem}: {name.replace('_', ' ')}", labels[name])
        bar.update(1)
    finally:
        bar.close()
    return outputs


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``txm-live analyze`` arguments to ``parser``."""
    parser.add_argument("file", type=Path, help="FXI 2D XANES HDF5 file (fly scans and 3D XANES folders are "
                                                "recognised; their reconstruction is not available yet)")
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
