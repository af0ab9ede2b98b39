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

__all__ = ["analyze_fxi_file", "add_analyze_arguments", "run_analyze"]

_PNG_MAPS = ("whiteline", "edge", "edge_jump")
_ALIGN_MODES = ("running_mean", "reference", "neighbour", "none")


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
    align: str = "running_mean",
    roi=None,
    **fit_params,
) -> dict[str, Path]:
    """Analyse one FXI-style 2D XANES file and write its maps.

    Parameters
    ----------
    path : str or Path
        FXI-style HDF5 file (``X_eng``, ``img_xanes``, ``img_bkg``, ``img_dark``).
    output_dir : str or Path
        Folder for the outputs (created if missing).
    progress : bool, optional
        Show a tqdm progress bar on stderr. Default True.
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
    """
    from tqdm.auto import tqdm

    from .analysis import StackAligner, apply_shifts, fit_xanes, flat_dark_correct
    from .io.fxi import read_fxi_xanes, write_maps_h5

    if align not in _ALIGN_MODES:
        raise ValueError(f"align must be one of {_ALIGN_MODES}; got {align!r}")
    path = Path(path)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = read_fxi_xanes(path)
    n = data.frames.shape[0]
    total = n + (n if align != "none" else 0) + 2
    bar = tqdm(total=total, desc=path.name, disable=not progress, unit="step", file=sys.stderr)
    try:
        # 1. absorbance, frame by frame (progress), darks combined once
        bar.set_postfix_str("flat/dark")
        if data.flats is None:
            if not np.issubdtype(data.frames.dtype, np.floating):
                raise ValueError(
                    f"{path} has raw integer frames ({data.frames.dtype}) but no img_bkg flats"
                )
            warnings.warn(
                f"{path.name} has no img_bkg: img_xanes is taken as transmission I/I0",
                UserWarning, stacklevel=2,
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                absorb = -np.log(np.where(data.frames > 0, data.frames, np.nan)).astype(np.float32)
            bar.update(n)
        else:
            darks = data.darks if data.darks is not None else np.zeros((1,) + data.frames.shape[1:])
            dark = np.median(darks, axis=0) if darks.ndim == 3 and darks.shape[0] > 1 else darks
            flats = data.flats if data.flats.ndim == 3 else data.flats[None]
            per_frame = flats.shape[0] == n
            flat_all = None if per_frame else np.median(flats, axis=0)
            absorb = np.empty(data.frames.shape, np.float32)
            n_bad = 0
            for i in range(n):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    absorb[i], valid = flat_dark_correct(
                        data.frames[i], flats[i] if per_frame else flat_all, dark,
                        return_mask=True, dtype=np.float32)
                n_bad += int(valid.size - valid.sum())
                bar.update(1)
            if n_bad:
                warnings.warn(f"{n_bad} pixel values could not be flat/dark corrected (NaN)",
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
            attrs={"source": str(path), "align": align, "fit_params": params,
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
    parser.add_argument("file", type=Path, help="FXI-style 2D XANES HDF5 file")
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


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``txm-live analyze`` from parsed arguments; returns the exit code."""
    path = Path(args.file)
    if not path.is_file():
        print(f"txm-live analyze: no such file: {path}", file=sys.stderr)
        return 2
    out = args.output_dir or path.parent / f"{path.stem}_maps"
    fit = {k: getattr(args, k) for k in ("e0", "pre1", "pre2", "norm1", "norm2")
           if getattr(args, k) is not None}
    fit["edge_jump_min"] = args.edge_jump_min
    try:
        outputs = analyze_fxi_file(path, out, progress=not args.no_progress, align=args.align,
                                   **fit)
    except (KeyError, ValueError, OSError) as exc:
        print(f"txm-live analyze: {exc}", file=sys.stderr)
        return 1
    for name, p in outputs.items():
        print(f"{name}: {p}")
    return 0
