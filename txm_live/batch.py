"""Batch analysis of FXI-style 2D XANES files (``txm-live analyze FILE.h5``).

Reads the file, puts its frames through the same staged pipeline as the live analysis
(:class:`txm_live.analysis.Xanes2DPipeline`: flat/dark, alignment, fit) and writes the
maps as HDF5 and PNG. The CLI only dispatches to :func:`add_analyze_arguments` and
:func:`run_analyze`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .analysis import NO_ENERGY_INDEX, FrameLabel, Xanes2DPipeline, XanesScanLayout
from .io.fxi import read_fxi_xanes, write_maps_h5

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


def _layout(data) -> XanesScanLayout:
    """The scan layout of an FXI file: one energy per frame, flats per energy or one set."""
    n = data.frames.shape[0]
    n_darks = 0 if data.darks is None else (data.darks.shape[0] if data.darks.ndim == 3 else 1)
    if data.flats is None:
        return XanesScanLayout(data.energies_ev, n_darks=n_darks)
    m = data.flats.shape[0] if data.flats.ndim == 3 else 1
    if m == n:
        return XanesScanLayout(data.energies_ev, n_darks=n_darks)
    return XanesScanLayout(data.energies_ev, n_darks=n_darks, flats_per_energy=m, flat_energy_indices=(0,))


def _is_transmission(data) -> bool:
    """True when ``img_xanes`` holds normalized transmission rather than raw counts."""
    if data.flats is not None:
        return False
    if not np.issubdtype(data.frames.dtype, np.floating):
        raise ValueError(f"{data.path} has raw integer frames ({data.frames.dtype}) but no img_bkg flats")
    return True


def _feed(pipeline: Xanes2DPipeline, data, bar) -> None:
    """Every frame of the file into the pipeline, labelled by its place in the file."""
    if _is_transmission(data):
        warnings.warn(f"{data.path.name} has no img_bkg: img_xanes is taken as transmission I/I0",
                      UserWarning, stacklevel=3)
        for i, frame in enumerate(data.frames):
            pipeline.add_transmission(FrameLabel("sample", i, 0), frame, source=("img_xanes", i))
            bar.update(1)
        return
    darks = [] if data.darks is None else (data.darks if data.darks.ndim == 3 else data.darks[None])
    for r, dark in enumerate(darks):
        pipeline.add_frame(FrameLabel("dark", NO_ENERGY_INDEX, r), dark, source=("img_dark", r))
    flats = data.flats if data.flats.ndim == 3 else data.flats[None]
    layout = pipeline.layout
    for i, frame in enumerate(data.frames):
        pipeline.add_frame(FrameLabel("sample", i, 0), frame, source=("img_xanes", i))
        if i in layout.flat_energy_indices:
            for r in range(layout.flats_per_energy):
                k = i if layout.flats_per_energy == 1 else r
                pipeline.add_frame(FrameLabel("flat", i, r), flats[k], source=("img_bkg", k))
        bar.update(1)


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
        attrs={"source": str(path), "align": align, "fit_params": dict(res.params),
               "pixel_size_nm": data.pixel_size_nm, "magnification": data.magnification},
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
        FXI-style HDF5 file (``X_eng``, ``img_xanes``, ``img_bkg``, ``img_dark``); without
        ``img_bkg``, ``img_xanes`` is taken as normalized transmission.
    output_dir : str or Path
        Folder for the outputs (created if missing).
    progress : bool, optional
        Show a tqdm progress bar on stderr. Default True.
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
    out_dir.mkdir(parents=True, exist_ok=True)
    data = read_fxi_xanes(path)
    pipeline = Xanes2DPipeline(_layout(data), registration_mode=align, roi=roi, zinger_sigma=zinger_sigma,
                               fit_params=fit_params, partial_every=0)
    n = data.frames.shape[0]
    with tqdm(total=n + 2, desc=path.name, disable=not progress, unit="frame", file=sys.stderr) as bar:
        bar.set_postfix_str("correct + align")
        _feed(pipeline, data, bar)
        pipeline.finish()
        bar.set_postfix_str("fit")
        pipeline.fit_final()
        bar.update(1)
        bar.set_postfix_str("write")
        outputs = _write_outputs(path, out_dir, data, pipeline, align)
        bar.update(1)
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
