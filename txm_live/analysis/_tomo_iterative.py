"""CGLS reconstruction on NUFFT projectors: the ``'cgls'`` backend (private module).

For scans with few projections (a quick 3D XANES energy point, a sparse preview) the
filtered backprojection streaks; a least-squares solution of ``A f = p`` with the
projector ``A`` stops those streaks from piling up. ``A`` and its adjoint are exact
band-limited parallel-beam projectors built from the Fourier slice theorem:

- ``A``: the slice's 2-D Fourier transform at the polar points ``k (cos θ, −sin θ)/nx``
  (type-2 NUFFT), the sub-pixel centre as a phase, an inverse FFT along ``k`` → each
  projection on ``nx`` columns centred on the axis, cropped to the detector;
- ``Aᵀ``: the same steps reversed (type-1 NUFFT) — an unfiltered backprojection.

Conjugate gradients on the normal equations (CGLS, Hestenes–Stiefel) run ``n_iter``
iterations from zero; stopping early is the regularization (noise grows with the
iterations). Two rows are solved together as the real and imaginary parts of one
complex slice (the operators are real).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = ["cgls_backend", "NufftProjector"]

#: Rows per batch (two per complex slice).
CHUNK_ROWS = 4


class NufftProjector:
    """Parallel-beam projector and its exact adjoint for one geometry and centre.

    Parameters
    ----------
    theta : ndarray (n_angles,)
        Angles, radians.
    nx : int
        Detector width = slice width.
    center : float
        Detector column of the axis.
    ncore : int
    eps : float
        NUFFT accuracy.
    """

    def __init__(self, theta, nx, center, *, ncore, eps=1e-4):
        import ducc0  # noqa: PLC0415

        self.nx, self.ncore, self.n_angles = int(nx), int(ncore), len(theta)
        nx = self.nx
        self.offset = int(round(center)) - nx // 2  # window column m = detector column − offset
        k = np.fft.fftfreq(nx, 1.0 / nx)
        delta = center - self.offset  # the axis inside the window
        phase = np.exp(2j * np.pi * k * delta / nx)
        if nx % 2 == 0:
            phase[nx // 2] = 0.0  # unpaired Nyquist term: keeps the operator real
        self._phase = phase.astype(np.complex64)
        omega = 2.0 * np.pi * k / nx
        coord = np.empty((len(theta), nx, 2), np.float32)
        coord[..., 0] = -omega[None, :] * np.sin(theta)[:, None]
        coord[..., 1] = omega[None, :] * np.cos(theta)[:, None]
        self._plan = ducc0.nufft.plan(nu2u=False, coord=coord.reshape(-1, 2),
                                      grid_shape=(nx, nx), epsilon=eps, nthreads=self.ncore)
        lo, hi = max(0, self.offset), min(nx, self.offset + nx)
        self._det = slice(lo, hi)  # detector columns the window covers
        self._win = slice(lo - self.offset, hi - self.offset)

    def forward(self, slices):
        """(n, nx, nx) complex64 slices → (n, n_angles, nx) complex64 projections."""
        n, nx = slices.shape[0], self.nx
        vals = np.empty((n, self.n_angles * nx), np.complex64)
        self._plan.u2nu(grid=slices, forward=True, out=vals)
        spec = vals.reshape(n, self.n_angles, nx) * np.conj(self._phase)
        window = sfft.ifft(spec, axis=-1, workers=self.ncore, overwrite_x=True)
        out = np.zeros((n, self.n_angles, nx), np.complex64)
        out[..., self._det] = window[..., self._win]
        return out

    def adjoint(self, projections):
        """(n, n_angles, nx) complex64 projections → (n, nx, nx) complex64 slices."""
        n, nx = projections.shape[0], self.nx
        window = np.zeros((n, self.n_angles, nx), np.complex64)
        window[..., self._win] = projections[..., self._det]
        spec = sfft.fft(window, axis=-1, workers=self.ncore, overwrite_x=True) / nx
        spec *= self._phase
        out = np.empty((n, nx, nx), np.complex64)
        self._plan.nu2u(forward=False, points=spec.reshape(n, -1), out=out)
        return out


def _cgls(proj, b, n_iter):
    """``n_iter`` CGLS iterations for ``proj.forward(x) ≈ b`` from x = 0 (real inner
    products: each packed row is its own least-squares problem)."""

    def dot(a, c):
        return float(np.vdot(a, c).real)

    x = np.zeros((b.shape[0], proj.nx, proj.nx), np.complex64)
    r = b.copy()
    s = proj.adjoint(r)
    p = s.copy()
    gamma = dot(s, s)
    for _ in range(n_iter):
        if gamma == 0.0:
            break
        q = proj.forward(p)
        alpha = gamma / dot(q, q)
        x += alpha * p
        r -= alpha * q
        s = proj.adjoint(r)
        gamma_new = dot(s, s)
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x


def cgls_backend(tomo, theta, weights, center, out, *, ncore, row_chunks, n_iter=10,
                 eps=1e-4):
    """Least-squares reconstruction by CGLS (see module docstring).

    ``n_iter``: iterations (early stopping regularizes; on simulated few-angle scans
    ~10 is best, see ``tests/test_analysis_tomo.py``). ``weights`` are not used (least
    squares needs no angular quadrature).
    """
    proj = NufftProjector(theta, tomo.shape[2], center, ncore=ncore, eps=eps)
    for r0, r1, block in row_chunks(CHUNK_ROWS):
        n_rows = r1 - r0
        b = np.zeros(((n_rows + 1) // 2, block.shape[0], block.shape[2]), np.complex64)
        b.real[...] = np.moveaxis(block[:, 0::2, :], 1, 0)
        b.imag[: n_rows // 2] = np.moveaxis(block[:, 1::2, :], 1, 0)
        x = _cgls(proj, b, int(n_iter))
        out[r0:r1:2] = x.real[: (n_rows + 1) // 2]
        out[r0 + 1 : r1 : 2] = x.imag[: n_rows // 2]
