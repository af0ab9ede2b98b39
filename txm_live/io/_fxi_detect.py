"""Which FXI layout a file follows, decided from its datasets and their content (private).

FXI's export writes three kinds of file that share dataset names but not meanings:

``xanes2d``
    2D XANES (``export_xanes_scan``): ``img_xanes`` holds **transmission**
    ``(mean sample - mean dark) / (mean flat - mean dark)`` as float32, with 0 where
    that was NaN or inf (invalid pixels); ``img_bkg``/``img_dark`` are averaged float32.
``xanes2d_raw``
    Not an FXI export: ``img_xanes`` holds raw detector **counts** beside raw flats
    ``img_bkg`` and darks ``img_dark`` (files written by txm-live 0.1 and similar tools).
    PyXAS and TXM_Sandbox would take those counts for transmission, so such a file is
    only read as raw when it says so (``img_xanes.attrs['signal'] == 'counts'``) or the
    caller asks for it (``layout='xanes2d_raw'``).
``fly_scan``
    Fly-scan tomography (``export_fly_scan``): ``img_tomo`` holds raw uint16 counts,
    ``angle`` the rotation in degrees, ``X_eng`` one energy in keV.

A 3D XANES scan is a series of ``fly_scan`` files, one per energy.

Content is judged on a few frames (first, middle, last), never the whole stack, so a
decision on a 10 GB file is quick.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._fxi_fields import decode_scalar

__all__ = [
    "AUTO",
    "FLY_SCAN",
    "FxiLayoutError",
    "FxiLayoutWarning",
    "LAYOUTS",
    "LayoutDecision",
    "SignalSummary",
    "XANES2D",
    "XANES2D_RAW",
    "decide_layout",
    "summarize_signal",
]

AUTO = "auto"
XANES2D = "xanes2d"
XANES2D_RAW = "xanes2d_raw"
FLY_SCAN = "fly_scan"
LAYOUTS = (XANES2D, XANES2D_RAW, FLY_SCAN)

TRANSMISSION = "transmission"
COUNTS = "counts"
UNCLEAR = "unclear"

#: Datasets each layout cannot do without.
REQUIRED = {
    XANES2D: ("X_eng", "img_xanes"),
    XANES2D_RAW: ("X_eng", "img_xanes", "img_bkg", "img_dark"),
    FLY_SCAN: ("X_eng", "img_tomo", "angle", "img_bkg", "img_dark"),
}
#: The image dataset of each layout and what it must hold.
IMAGE = {XANES2D: "img_xanes", XANES2D_RAW: "img_xanes", FLY_SCAN: "img_tomo"}
EXPECTED_SIGNAL = {XANES2D: TRANSMISSION, XANES2D_RAW: COUNTS, FLY_SCAN: COUNTS}

#: Attribute of the image dataset that declares its content ('transmission' | 'counts');
#: txm-live writes it, FXI does not.
SIGNAL_ATTRIBUTE = "signal"

#: Transmission images have their median (over nonzero finite pixels) near 1 (open
#: beam) or below (sample); noise and illumination drift take it barely above 1.
TRANSMISSION_MEDIAN_MAX = 2.0
#: ... and all but outliers (hot pixels, zingers) below this.
TRANSMISSION_P99_MAX = 10.0
#: Raw counts sit far above: a camera's dark offset alone is ~100 counts.
COUNTS_MEDIAN_MIN = 20.0
#: Frames inspected per stack: first, middle and last.
N_SAMPLE_FRAMES = 3


class FxiLayoutError(ValueError):
    """The file is not in a layout this reader knows, or contradicts the one it claims."""


class FxiLayoutWarning(UserWarning):
    """A layout forced by the caller disagrees with what the file holds."""


@dataclass(frozen=True)
class SignalSummary:
    """What an image dataset holds, judged on a few frames.

    Attributes
    ----------
    kind : {'transmission', 'counts', 'unclear'}
    text : str
        The evidence, e.g. ``"float32, 2.1 % zeros, nonzero values 0.03–1.2 (median 0.88)"``.
    """

    kind: str
    text: str


@dataclass(frozen=True)
class LayoutDecision:
    """Which layout a file was read as, and why.

    Attributes
    ----------
    layout : {'xanes2d', 'xanes2d_raw', 'fly_scan'}
    reason : str
        One sentence a user can check: datasets and content that decided it.
    datasets : tuple of str
        The file's root datasets, sorted.
    signal : {'transmission', 'counts'}
        What the image dataset is taken to hold.
    forced : bool
        True when the caller named the layout (``layout=...``) instead of ``'auto'``.
    """

    layout: str
    reason: str
    datasets: tuple
    signal: str
    forced: bool


def _sample_frames(dataset) -> np.ndarray:
    """First, middle and last frame of a stack (the whole dataset when it is 2-D)."""
    if dataset.ndim < 3 or dataset.shape[0] == 0:
        return np.asarray(dataset[()])
    n = dataset.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(N_SAMPLE_FRAMES, n)).astype(int))
    return np.stack([dataset[int(i)] for i in picks])


def summarize_signal(dataset) -> SignalSummary:
    """Judge whether an image dataset holds transmission or raw counts.

    Parameters
    ----------
    dataset : h5py.Dataset or ndarray
        An image or image stack ``(n, ny, nx)``; only a few frames are read.

    Returns
    -------
    SignalSummary
        ``'counts'`` for integer dtypes or a median of at least
        ``COUNTS_MEDIAN_MIN``; ``'transmission'`` for floats with a median of at most
        ``TRANSMISSION_MEDIAN_MAX`` and a 99th percentile of at most
        ``TRANSMISSION_P99_MAX`` (zeros, FXI's invalid pixels, and non-finite values
        left out); ``'unclear'`` otherwise.
    """
    dtype = np.dtype(dataset.dtype)
    values = _sample_frames(dataset)
    finite = values[np.isfinite(values)] if dtype.kind == "f" else values.ravel()
    nonzero = finite[finite != 0]
    zero_pct = 100.0 * (values.size - nonzero.size) / max(values.size, 1)
    if nonzero.size == 0:
        return SignalSummary(UNCLEAR if dtype.kind == "f" else COUNTS,
                             f"{dtype}, every inspected pixel zero or non-finite")
    magnitude = np.abs(nonzero.astype(np.float64))
    median, p99 = np.median(magnitude), np.percentile(magnitude, 99)
    text = (f"{dtype}, {zero_pct:.1f} % zeros or non-finite, nonzero values "
            f"{nonzero.min():.4g}–{nonzero.max():.4g} (median {median:.4g})")
    if dtype.kind in "iu":
        return SignalSummary(COUNTS, text)
    if median <= TRANSMISSION_MEDIAN_MAX and p99 <= TRANSMISSION_P99_MAX:
        return SignalSummary(TRANSMISSION, text)
    if median >= COUNTS_MEDIAN_MIN:
        return SignalSummary(COUNTS, text)
    return SignalSummary(UNCLEAR, text)


def _label(dataset) -> str | None:
    label = decode_scalar(dataset.attrs.get(SIGNAL_ATTRIBUTE))
    return None if label is None else str(label).strip().lower()


def _check_required(h5file, layout: str, found: tuple, where: str) -> None:
    missing = [name for name in REQUIRED[layout] if name not in h5file]
    if missing:
        raise FxiLayoutError(
            f"{where}: layout {layout!r} needs datasets {list(REQUIRED[layout])}; "
            f"{missing} missing (the file has {list(found)})"
        )


def _forced(h5file, layout: str, found: tuple, where: str, stacklevel: int) -> LayoutDecision:
    """The caller named the layout: honour it, warn when the content disagrees."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}; got {layout!r}")
    _check_required(h5file, layout, found, where)
    image = IMAGE[layout]
    summary = summarize_signal(h5file[image])
    expected = EXPECTED_SIGNAL[layout]
    if summary.kind != expected:
        warnings.warn(
            f"{where}: reading {image} as {expected} because layout={layout!r} was given, "
            f"but it looks like {summary.kind} ({summary.text})",
            FxiLayoutWarning, stacklevel=stacklevel + 1,
        )
    return LayoutDecision(layout, f"layout={layout!r} given by the caller; {image}: {summary.text}",
                          found, expected, True)


def _auto_fly(h5file, found: tuple, where: str) -> LayoutDecision:
    _check_required(h5file, FLY_SCAN, found, where)
    summary = summarize_signal(h5file["img_tomo"])
    label = _label(h5file["img_tomo"])
    if summary.kind == COUNTS and label in (None, COUNTS):
        return LayoutDecision(FLY_SCAN, f"img_tomo + angle + X_eng: FXI fly scan; img_tomo holds raw "
                                        f"counts ({summary.text})", found, COUNTS, False)
    labelled = f" and is labelled signal={label!r}" if label is not None else ""
    raise FxiLayoutError(
        f"{where}: img_tomo should hold raw detector counts (FXI's fly-scan export){labelled}, but "
        f"it looks like {summary.kind} ({summary.text}). txm-live reads only raw fly scans; if "
        f"these are counts after all, pass layout='fly_scan'"
    )


def _auto_xanes(h5file, found: tuple, where: str) -> LayoutDecision:
    _check_required(h5file, XANES2D, found, where)
    summary = summarize_signal(h5file["img_xanes"])
    label = _label(h5file["img_xanes"])
    if summary.kind == TRANSMISSION and label in (None, TRANSMISSION):
        return LayoutDecision(XANES2D, f"X_eng + img_xanes: FXI 2D XANES; img_xanes holds transmission "
                                       f"({summary.text}); zeros are invalid pixels", found,
                              TRANSMISSION, False)
    if summary.kind == COUNTS and label == COUNTS:
        _check_required(h5file, XANES2D_RAW, found, where)
        return LayoutDecision(XANES2D_RAW, f"img_xanes labelled signal='counts' and holds raw counts "
                                           f"({summary.text}), with raw img_bkg and img_dark", found,
                              COUNTS, False)
    if summary.kind == COUNTS:
        raise FxiLayoutError(
            f"{where}: img_xanes holds raw detector counts ({summary.text}), but FXI's 2D XANES layout "
            f"stores transmission there (PyXAS and TXM_Sandbox would read these counts as transmission). "
            f"If it holds raw sample frames with raw flats (img_bkg) and darks (img_dark), read it "
            f"with layout='xanes2d_raw' (txm-live analyze --layout xanes2d_raw)"
        )
    if summary.kind == TRANSMISSION:
        raise FxiLayoutError(
            f"{where}: img_xanes is labelled signal={label!r} but holds transmission ({summary.text}). "
            f"If it is FXI's normalized export, read it with layout='xanes2d' "
            f"(txm-live analyze --layout xanes2d)"
        )
    raise FxiLayoutError(
        f"{where}: cannot tell whether img_xanes holds transmission or raw counts ({summary.text}); "
        f"pass layout='xanes2d' (transmission, FXI's export) or layout='xanes2d_raw' (raw counts)"
    )


def decide_layout(h5file, *, layout: str = AUTO, where: str = "file", stacklevel: int = 2) -> LayoutDecision:
    """Decide how to read an open FXI HDF5 file.

    Parameters
    ----------
    h5file : h5py.File
        Open for reading.
    layout : {'auto', 'xanes2d', 'xanes2d_raw', 'fly_scan'}, optional
        ``'auto'`` (default) recognises the layout by its datasets and content and
        refuses a file whose content contradicts its layout (raw counts in a 2D XANES
        ``img_xanes``, transmission in a fly scan's ``img_tomo``). A named layout is
        used as given, with a :class:`FxiLayoutWarning` if the content disagrees.
    where : str, optional
        How to name the file in messages (its path).
    stacklevel : int, optional
        Stack level of the warning, counted from this function's caller as 2.

    Returns
    -------
    LayoutDecision

    Raises
    ------
    FxiLayoutError
        Datasets of both or neither layout, required datasets missing, or content that
        contradicts the layout; the message names the datasets found and how to override.
    ValueError
        An unknown ``layout``.
    """
    found = tuple(sorted(k for k, v in h5file.items() if not hasattr(v, "keys")))
    if layout != AUTO:
        return _forced(h5file, layout, found, where, stacklevel)
    is_xanes = "img_xanes" in h5file
    is_fly = "img_tomo" in h5file
    if is_xanes and is_fly:
        raise FxiLayoutError(
            f"{where}: has both img_xanes (2D XANES) and img_tomo (fly scan); datasets {list(found)}. "
            f"Pass layout='xanes2d', 'xanes2d_raw' or 'fly_scan'"
        )
    if not (is_xanes or is_fly):
        raise FxiLayoutError(
            f"{where}: not an FXI 2D XANES file (X_eng + img_xanes) or fly scan (img_tomo + angle + "
            f"X_eng); it has datasets {list(found)}"
        )
    return _auto_fly(h5file, found, where) if is_fly else _auto_xanes(h5file, found, where)
