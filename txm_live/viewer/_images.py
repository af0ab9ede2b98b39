"""Image geometry for the viewer: which part of an image to fetch, at which stride.

Pure numpy, no Tiled, no Bokeh. A view shows a *region* of a full-resolution image
(rows ``y0:y1``, columns ``x0:x1``, detector or map pixels); it asks Tiled for that region
strided so that at most :data:`MAX_DISPLAY_PX` samples cross the screen on either axis.
Zooming in shrinks the region until the stride is 1: full resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_DISPLAY_PX", "Region", "ImageTile", "stride_for", "robust_limits"]

#: Most samples sent to the browser along one image axis (a 2048² map goes as 512²).
MAX_DISPLAY_PX = 512
#: Percentiles of the finite values that set the automatic colour range.
AUTO_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Region:
    """Rows ``y0:y1`` and columns ``x0:x1`` (half-open, full-resolution pixels)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def full(cls, shape) -> "Region":
        ny, nx = (int(n) for n in shape[-2:])
        return cls(0, ny, 0, nx)

    @classmethod
    def from_view(cls, x_start, x_end, y_start, y_end, shape) -> "Region":
        """The pixels a plot shows for data ranges (floats, either order), clipped to ``shape``."""
        ny, nx = (int(n) for n in shape[-2:])
        xa, xb = sorted((float(x_start), float(x_end)))
        ya, yb = sorted((float(y_start), float(y_end)))
        x0, x1 = max(0, math.floor(xa)), min(nx, math.ceil(xb))
        y0, y1 = max(0, math.floor(ya)), min(ny, math.ceil(yb))
        if x1 <= x0 or y1 <= y0:  # panned off the image: show all of it
            return cls.full(shape)
        return cls(y0, y1, x0, x1)

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def slices(self, stride: int) -> tuple[slice, slice]:
        return slice(self.y0, self.y1, stride), slice(self.x0, self.x1, stride)


def stride_for(region: Region, *, max_px: int = MAX_DISPLAY_PX) -> int:
    """Smallest integer stride that brings the region within ``max_px`` samples per axis."""
    if max_px < 1:
        raise ValueError(f"max_px must be >= 1; got {max_px}")
    return max(1, math.ceil(max(region.height, region.width) / max_px))


@dataclass(frozen=True)
class ImageTile:
    """A strided region of an image, as displayed.

    Attributes
    ----------
    data : ndarray (h, w) float32
        ``image[y0:y1:stride, x0:x1:stride]``; NaN where there is no value.
    region : Region
        What was asked for, full-resolution pixels.
    stride : int
        Sampling step; 1 is full resolution.
    full_shape : tuple of int
        ``(ny, nx)`` of the whole image.
    """

    data: np.ndarray
    region: Region
    stride: int
    full_shape: tuple

    @property
    def dw(self) -> int:
        """Width it covers on the plot, full-resolution pixels."""
        return self.data.shape[1] * self.stride

    @property
    def dh(self) -> int:
        return self.data.shape[0] * self.stride


def robust_limits(image, percentiles=AUTO_PERCENTILES) -> tuple[float, float]:
    """Colour limits from percentiles of the finite values; ``(0, 1)`` when there are none."""
    arr = np.asarray(image, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1.0)
    return lo, hi
