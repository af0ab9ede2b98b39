"""Reconstruction backends from other libraries, imported only when used (private).

Each has the shared backend signature ``(tomo, theta, weights, center, out, *, ncore,
row_chunks, **options)`` (see :mod:`._tomo_fourier`): it reads the rows through
``row_chunks`` and writes ``(ny, nx, nx)`` float32 slices into ``out`` in
:func:`txm_live.analysis.reconstruct`'s orientation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["algotom_dfi_backend", "algotom_fbp_backend", "tomopy_gridrec_backend"]

#: Rows handed to a library per call: its working memory stays a few slices.
CHUNK_ROWS = 8


def _algotom_rows(rec):
    """algotom returns (ncol, nslices, ncol) for a 3-D chunk; make it (nslices, ncol, ncol)."""
    return np.moveaxis(rec, 1, 0)


def algotom_dfi_backend(tomo, theta, weights, center, out, *, ncore, row_chunks,
                        filter_name="hann", pad_rate=0.25, pad_mode="edge"):
    """algotom's direct Fourier inversion (``algotom.rec.reconstruction.dfi_reconstruction``).

    algotom resamples the sinogram onto uniform angles over [0, π] itself. Options are
    algotom's (``filter_name`` its smoothing window, ``pad_rate``, ``pad_mode``); no
    circular mask (``ratio=None``), no logarithm (the input is already absorbance).
    """
    from algotom.rec.reconstruction import dfi_reconstruction  # noqa: PLC0415

    for r0, r1, block in row_chunks(CHUNK_ROWS):
        rec = dfi_reconstruction(block, center, angles=theta, ratio=None,
                                 filter_name=filter_name, pad_rate=pad_rate,
                                 pad_mode=pad_mode, apply_log=False, ncore=ncore)
        out[r0:r1] = _algotom_rows(rec)


def algotom_fbp_backend(tomo, theta, weights, center, out, *, ncore, row_chunks,
                        filter_name="hann", pad_mode="edge"):
    """algotom's filtered backprojection on the CPU (numba), ``fbp_reconstruction``."""
    from algotom.rec.reconstruction import fbp_reconstruction  # noqa: PLC0415

    for r0, r1, block in row_chunks(CHUNK_ROWS):
        rec = fbp_reconstruction(block, center, angles=theta, ratio=None,
                                 filter_name=filter_name, pad_mode=pad_mode,
                                 apply_log=False, gpu=False, ncore=ncore)
        out[r0:r1] = _algotom_rows(rec)


def tomopy_gridrec_backend(tomo, theta, weights, center, out, *, ncore, row_chunks,
                           filter_name="shepp", filter_par=None):
    """tomopy's ``gridrec`` (conda-only; used when ``import tomopy`` works)."""
    import tomopy  # noqa: PLC0415

    extra = {} if filter_par is None else {"filter_par": filter_par}
    for r0, r1, block in row_chunks(CHUNK_ROWS):
        out[r0:r1] = tomopy.recon(block, theta, center=center, algorithm="gridrec",
                                  filter_name=filter_name, ncore=ncore, **extra)
