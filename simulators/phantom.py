"""Analytic 3D phantom of an NMC cathode: secondary particles with oxidation-state profiles.

Geometry
--------
Sample coordinates in µm with the origin at the field-of-view (FOV) centre: ``x`` along
detector columns, ``y`` along detector rows (+y = larger row index), ``z`` along the beam.
Rotating the sample by ``theta_rad`` turns it about the vertical (``y``) axis through the
origin: a point (x, z) moves to (x cosθ + z sinθ, −x sinθ + z cosθ). Projections
integrate along ``z`` and are computed from analytic chord lengths, so they are exact at
the pixel centres whatever the pixel size (no voxel grid, no interpolation).

Each secondary particle is a sphere whose Ni oxidation state depends on depth below its
surface, ``v(r) = core + (surface − core) · exp(−(R − r) / penetration)`` (surface
oxidised first, as delithiation proceeds from the surface inward). Voids and cracks are
ellipsoids inside a particle that remove its material.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Particle", "Void", "NMCPhantom", "make_nmc_phantom"]


#: Below this radius/penetration ratio the profile's mean weight uses its series.
_SERIES_BELOW_X = 0.05
#: Oxidation states the phantom (and the spectra model) covers: Ni2+ … Ni4+.
_VALENCE_MIN, _VALENCE_MAX = 2.0, 4.0


@dataclass(frozen=True)
class Void:
    """An ellipsoidal hole (pore or crack) inside one particle.

    Attributes
    ----------
    center_um : tuple of float
        (x, y, z) centre, µm, sample coordinates at theta = 0.
    semi_axes_um : tuple of float
        Semi-axes (a, b, c), µm, along the columns of ``rotation``.
    rotation : tuple
        3×3 rotation matrix (rows of a nested tuple) from the ellipsoid's own frame to
        the sample frame.
    """

    center_um: tuple
    semi_axes_um: tuple
    rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def quadric(self, theta_rad=0.0) -> tuple[np.ndarray, np.ndarray]:
        """Centre (3,) and matrix A (3, 3) with ``(p−c)ᵀA(p−c) ≤ 1`` inside, after rotation."""
        rot = _rot_y(theta_rad)
        r = rot @ np.asarray(self.rotation, dtype=float)
        a = r @ np.diag(1.0 / np.asarray(self.semi_axes_um, dtype=float) ** 2) @ r.T
        return rot @ np.asarray(self.center_um, dtype=float), a


@dataclass(frozen=True)
class Particle:
    """A spherical secondary particle with a radial oxidation-state profile.

    Attributes
    ----------
    center_um : tuple of float
        (x, y, z) centre, µm, sample coordinates at theta = 0.
    radius_um : float
        Radius R, µm.
    core_valence, surface_valence : float
        Ni oxidation state deep inside and at the surface (2 … 4).
    penetration_um : float
        Depth (µm) over which the surface state decays toward the core state.
    voids : tuple of Void
        Holes and cracks removing material of this particle.
    """

    center_um: tuple
    radius_um: float
    core_valence: float = 2.0
    surface_valence: float = 2.0
    penetration_um: float = 1.0
    voids: tuple = field(default_factory=tuple)

    def valence_at(self, r_um) -> np.ndarray:
        """Oxidation state at distance ``r_um`` from the centre (any shape)."""
        depth = self.radius_um - np.asarray(r_um, dtype=float)
        return self.core_valence + (self.surface_valence - self.core_valence) * np.exp(
            -np.maximum(depth, 0.0) / self.penetration_um
        )

    def profile_mean_weight(self) -> float:
        """Volume mean of ``exp(−(R − r)/penetration)`` over the sphere (voids ignored).

        The particle's volume-mean valence is ``core + (surface − core) · f`` with this
        ``f`` (closed form ``3/x · (1 − 2/x + 2/x² · (1 − e^{−x}))``, ``x = R/penetration``;
        a series below x = 0.05): ``f → 3·penetration/R`` for a thin shell, ``→ 1`` for a
        penetration much longer than the radius.
        """
        x = self.radius_um / self.penetration_um
        if x < _SERIES_BELOW_X:
            return 1.0 - x / 4.0 + x * x / 20.0 - x**3 / 120.0
        return 3.0 / x * (1.0 - 2.0 / x - 2.0 / (x * x) * np.expm1(-x))

    def mean_valence(self) -> float:
        """Volume-mean Ni oxidation state of the profile over the whole sphere (voids ignored)."""
        f = self.profile_mean_weight()
        return self.core_valence + (self.surface_valence - self.core_valence) * f

    def with_state(self, mean_valence, surface_valence) -> Particle:
        """The same particle (centre, radius, penetration, voids) in another oxidation state.

        Parameters
        ----------
        mean_valence : float
            Volume-mean Ni oxidation state wanted (2 … 4), e.g. ``2 + 2·SOC``.
        surface_valence : float
            Oxidation state wanted at the surface (2 … 4).

        Returns
        -------
        Particle
            ``core_valence`` solved so that :meth:`mean_valence` equals ``mean_valence``
            exactly. Where that core would leave [2, 4] (a surface far ahead of a thin
            particle), the surface–core difference is reduced until core and surface both
            lie in [2, 4]; the mean is always kept.
        """
        mean, surf = float(mean_valence), float(surface_valence)
        for name, v in (("mean_valence", mean), ("surface_valence", surf)):
            if not _VALENCE_MIN <= v <= _VALENCE_MAX:
                raise ValueError(f"{name} must lie in [{_VALENCE_MIN}, {_VALENCE_MAX}], got {v}")
        f = self.profile_mean_weight()
        diff = surf - mean  # wanted surface - mean; surface - core = diff / (1 - f)
        span = diff / (1.0 - f) if f < 1.0 else 0.0
        # core = mean - span·f and surface = core + span must stay inside [2, 4]
        lo, hi = _VALENCE_MIN, _VALENCE_MAX
        if span > 0:
            span = min(span, (mean - lo) / f if f > 0 else span, (hi - mean) / (1.0 - f))
        elif span < 0:
            span = max(span, (mean - hi) / f if f > 0 else span, (lo - mean) / (1.0 - f))
        core = min(max(mean - span * f, lo), hi)
        surface = min(max(core + span, lo), hi)
        return replace(self, core_valence=core, surface_valence=surface)

    def shells(self, valence_grid) -> list[tuple[float, float, int]]:
        """Concentric shells that each fall in one valence bin.

        Returns
        -------
        list of (r_inner_um, r_outer_um, k)
            ``k`` indexes the nearest level of ``valence_grid``; bin boundaries are the
            midpoints between levels.
        """
        grid = np.asarray(valence_grid, dtype=float)
        bounds = 0.5 * (grid[1:] + grid[:-1])
        radius = self.radius_um
        dv = self.surface_valence - self.core_valence
        radii = [0.0, radius]
        if dv != 0:
            ratio = (bounds - self.core_valence) / dv
            ok = ratio > 0
            r_b = radius + self.penetration_um * np.log(np.where(ok, ratio, 1.0))
            radii += [float(r) for r in r_b[ok] if 0.0 < r < radius]
        radii = sorted(set(radii))
        out = []
        for r_in, r_out in zip(radii[:-1], radii[1:]):
            v_mid = float(self.valence_at(0.5 * (r_in + r_out)))
            out.append((r_in, r_out, int(np.argmin(np.abs(grid - v_mid)))))
        return out


def _rot_y(theta_rad) -> np.ndarray:
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _pixel_axes(shape, pixel_size_um, origin_um):
    ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2.0) * pixel_size_um + origin_um[0]
    x = (np.arange(nx) - (nx - 1) / 2.0) * pixel_size_um + origin_um[1]
    return y, x


def _span(axis, lo, hi):
    """Slice of the (uniform, increasing) ``axis`` with lo < axis < hi."""
    i0 = int(np.searchsorted(axis, lo, side="right"))
    i1 = int(np.searchsorted(axis, hi, side="left"))
    return slice(i0, max(i0, i1))


def _overlap(a0, a1, b0, b1):
    return np.maximum(0.0, np.minimum(a1, b1) - np.maximum(a0, b0))


class NMCPhantom:
    """Analytic 3D NMC cathode phantom (see module docstring for geometry).

    Parameters
    ----------
    particles : sequence of Particle
        Non-overlapping secondary particles.
    fov_um : tuple of float
        (height, width) of the nominal field of view, µm (informational: the phantom
        itself has no boundary, projections cover whatever window is asked for).
    """

    def __init__(self, particles, *, fov_um=(41.0, 41.0)):
        self.particles = tuple(particles)
        self.fov_um = tuple(float(f) for f in fov_um)

    def __repr__(self):
        return f"NMCPhantom({len(self.particles)} particles, fov_um={self.fov_um})"

    # ---------------------------------------------------------------- projection
    def project(
        self, valence_grid, shape, pixel_size_um, *, theta_rad=0.0, origin_um=(0.0, 0.0)
    ) -> np.ndarray:
        """Path length through material of each valence bin, beam along z.

        Parameters
        ----------
        valence_grid : array_like, shape (K,)
            Valence levels; each material point goes to the nearest level.
        shape : tuple of int
            (ny, nx) of the image.
        pixel_size_um : float
            Pixel pitch at the sample, µm.
        theta_rad : float, optional
            Sample rotation about the vertical axis through the origin, radians.
        origin_um : tuple of float, optional
            (y, x) sample position (µm) imaged at the image centre; (0, 0) is the
            FOV centre.

        Returns
        -------
        ndarray, shape (K, ny, nx), float32
            Path length in µm per valence bin, sampled at pixel centres.
        """
        grid = np.asarray(valence_grid, dtype=float)
        ny, nx = (int(s) for s in shape)
        out = np.zeros((grid.size, ny, nx), dtype=np.float32)
        for sy, sx, ks, block in self._particle_blocks(grid, (ny, nx), pixel_size_um,
                                                       theta_rad, origin_um):
            for kk, k in enumerate(ks):
                out[k, sy, sx] += block[kk]
        return out

    def project_sparse(
        self, valence_grid, shape, pixel_size_um, *, theta_rad=0.0, origin_um=(0.0, 0.0)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`project` keeping only the pixels and valence levels with material.

        Same arguments as :meth:`project`. Memory scales with the sample's footprint, not
        with ``K × ny × nx`` (at 2048² and 21 levels the dense form is ~350 MB).

        Returns
        -------
        levels : ndarray (L,) int
            Indices into ``valence_grid`` of the levels present (at least one).
        index : ndarray (N,) int64
            Flat (row-major) indices of the pixels covered by any particle's disc.
        values : ndarray (L, N) float32
            Path length (µm) per level and pixel: ``project(...)[levels][:, index]``.
        """
        grid = np.asarray(valence_grid, dtype=float)
        ny, nx = (int(s) for s in shape)
        blocks = list(self._particle_blocks(grid, (ny, nx), pixel_size_um, theta_rad, origin_um))
        covered = np.zeros((ny, nx), bool)
        used = set()
        for sy, sx, ks, block in blocks:
            covered[sy, sx] |= block.max(axis=0) > 0
            used.update(int(k) for k in ks)
        levels = np.array(sorted(used) or [0], dtype=int)
        index = np.flatnonzero(covered)
        column = np.full(ny * nx, -1, dtype=np.int64)
        column[index] = np.arange(index.size)
        column = column.reshape(ny, nx)
        row_of = {int(k): i for i, k in enumerate(levels)}
        values = np.zeros((levels.size, index.size), np.float32)
        for sy, sx, ks, block in blocks:
            cols = column[sy, sx]
            hit = cols >= 0
            for kk, k in enumerate(ks):
                # particles may overlap in projection: accumulate, never overwrite
                np.add.at(values[row_of[int(k)]], cols[hit], block[kk][hit])
        return levels, index, values

    def _particle_blocks(self, grid, shape, pixel_size_um, theta_rad, origin_um):
        """Yield ``(row_slice, col_slice, levels, block)`` per particle in view.

        ``block`` (len(levels), rows, cols) float32 holds the path length per valence level
        on the particle's bounding box, voids already removed (and clipped at 0, in case
        voids of one particle overlap).
        """
        if pixel_size_um <= 0:
            raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
        y_ax, x_ax = _pixel_axes(shape, pixel_size_um, origin_um)
        rot = _rot_y(theta_rad)
        for particle in self.particles:
            cx, cy, cz = rot @ np.asarray(particle.center_um, dtype=float)
            rad = particle.radius_um
            sy, sx = _span(y_ax, cy - rad, cy + rad), _span(x_ax, cx - rad, cx + rad)
            if sy.start >= sy.stop or sx.start >= sx.stop:
                continue
            yy = (y_ax[sy] - cy)[:, None]
            xx = (x_ax[sx] - cx)[None, :]
            rho2 = yy * yy + xx * xx
            shells = particle.shells(grid)
            ks = sorted({k for _, _, k in shells})
            local = {k: i for i, k in enumerate(ks)}
            block = np.zeros((len(ks), sy.stop - sy.start, sx.stop - sx.start), np.float32)
            h = {r: np.sqrt(np.maximum(r * r - rho2, 0.0)) for sh in shells for r in sh[:2]}
            for r_in, r_out, k in shells:
                block[local[k]] += (2.0 * (h[r_out] - h[r_in])).astype(np.float32)
            for void in particle.voids:
                self._subtract_void(block, local, void, shells, h, cz, sy, sx, y_ax, x_ax,
                                    theta_rad)
            np.maximum(block, 0.0, out=block)
            yield sy, sx, ks, block

    @staticmethod
    def _subtract_void(block, local, void, shells, h, cz, sy, sx, y_ax, x_ax, theta_rad):
        """Remove the part of each shell's chord that lies inside the ellipsoid."""
        c, a = void.quadric(theta_rad)
        # Projected half-extents of the ellipsoid: sqrt of the diagonal of A^-1.
        ext = np.sqrt(np.diag(np.linalg.inv(a)))
        vy = _span(y_ax, c[1] - ext[1], c[1] + ext[1])
        vx = _span(x_ax, c[0] - ext[0], c[0] + ext[0])
        # Restrict to the particle's bounding box.
        y0, y1 = max(vy.start, sy.start), min(vy.stop, sy.stop)
        x0, x1 = max(vx.start, sx.start), min(vx.stop, sx.stop)
        if y0 >= y1 or x0 >= x1:
            return
        dy = (y_ax[y0:y1] - c[1])[:, None]
        dx = (x_ax[x0:x1] - c[0])[None, :]
        # Ray p = (x, y, z): quadratic a_zz t² + 2 b t + g = 0 with t = z − c_z.
        b = a[2, 0] * dx + a[2, 1] * dy
        g = a[0, 0] * dx * dx + 2 * a[0, 1] * dx * dy + a[1, 1] * dy * dy - 1.0
        disc = b * b - a[2, 2] * g
        hit = disc > 0
        if not np.any(hit):
            return
        root = np.sqrt(np.where(hit, disc, 0.0))
        z0 = c[2] + (-b - root) / a[2, 2]
        z1 = c[2] + (-b + root) / a[2, 2]
        z1 = np.where(hit, z1, z0)
        ry = slice(y0 - sy.start, y1 - sy.start)
        rx = slice(x0 - sx.start, x1 - sx.start)
        for r_in, r_out, k in shells:
            hi, lo = h[r_out][ry, rx], h[r_in][ry, rx]
            inside = _overlap(z0, z1, cz + lo, cz + hi) + _overlap(z0, z1, cz - hi, cz - lo)
            block[local[k], ry, rx] -= inside.astype(np.float32)

    # ---------------------------------------------------------------- volumes
    def voxelize(self, shape_zyx, voxel_size_um, *, supersample=2) -> tuple[np.ndarray, np.ndarray]:
        """Occupancy and valence volumes (ground truth for tomography).

        Parameters
        ----------
        shape_zyx : tuple of int
            (nz, ny, nx) of the volume, centred on the origin, at theta = 0.
        voxel_size_um : float
            Voxel pitch, µm.
        supersample : int, optional
            Sub-samples per voxel edge used to estimate partial occupancy.

        Returns
        -------
        occupancy : ndarray, shape (nz, ny, nx), float32
            Fraction 0…1 of each voxel filled with material.
        valence : ndarray, shape (nz, ny, nx), float32
            Mean Ni oxidation state of the material in the voxel; NaN where empty.
        """
        nz, ny, nx = (int(s) for s in shape_zyx)
        ss = int(supersample)
        if ss < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        occ = np.zeros((nz, ny, nx), dtype=np.float32)
        vsum = np.zeros((nz, ny, nx), dtype=np.float32)
        axes = []
        for n in (nz, ny, nx):
            fine = (np.arange(n * ss) - (n * ss - 1) / 2.0) * voxel_size_um / ss
            axes.append(fine)
        z_ax, y_ax, x_ax = axes
        for particle in self.particles:
            cx, cy, cz = particle.center_um
            rad = particle.radius_um
            sz, sy, sx = (_span(ax, c - rad, c + rad) for ax, c in zip(axes, (cz, cy, cx)))
            # Round the spans out to whole voxels so sub-samples group cleanly.
            sz, sy, sx = (slice(s.start // ss * ss, -(-s.stop // ss) * ss) for s in (sz, sy, sx))
            if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
                continue
            zz = (z_ax[sz] - cz)[:, None, None]
            yy = (y_ax[sy] - cy)[None, :, None]
            xx = (x_ax[sx] - cx)[None, None, :]
            r = np.sqrt(zz * zz + yy * yy + xx * xx)
            inside = r <= rad
            for void in particle.voids:
                c, a = void.quadric(0.0)
                d = (x_ax[sx][None, None, :] - c[0], y_ax[sy][None, :, None] - c[1],
                     z_ax[sz][:, None, None] - c[2])
                q = sum(a[i, j] * d[i] * d[j] for i in range(3) for j in range(3))
                inside &= q > 1.0
            val = np.where(inside, particle.valence_at(r), 0.0)
            shp = (inside.shape[0] // ss, ss, inside.shape[1] // ss, ss, inside.shape[2] // ss, ss)
            o = inside.reshape(shp).mean(axis=(1, 3, 5))
            vs = val.reshape(shp).mean(axis=(1, 3, 5))
            dst = (slice(sz.start // ss, sz.stop // ss), slice(sy.start // ss, sy.stop // ss),
                   slice(sx.start // ss, sx.stop // ss))
            occ[dst] += o.astype(np.float32)
            vsum[dst] += vs.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            valence = np.where(occ > 0, vsum / occ, np.nan).astype(np.float32)
        return np.minimum(occ, 1.0), valence


    # ---------------------------------------------------------------- changing state
    def with_particle_states(self, mean_valence, surface_valence) -> NMCPhantom:
        """The same particles in new oxidation states (e.g. a cell charged further).

        Parameters
        ----------
        mean_valence, surface_valence : array_like, shape (n_particles,)
            Volume-mean and surface Ni oxidation state of each particle, in the order of
            :attr:`particles` (see :meth:`Particle.with_state`).

        Returns
        -------
        NMCPhantom
            A new phantom; this one is unchanged.
        """
        mean = np.asarray(mean_valence, dtype=float)
        surface = np.asarray(surface_valence, dtype=float)
        n = len(self.particles)
        if mean.shape != (n,) or surface.shape != (n,):
            raise ValueError(
                f"need one mean and one surface valence per particle ({n}); got shapes "
                f"{mean.shape} and {surface.shape}"
            )
        parts = [p.with_state(m, s) for p, m, s in zip(self.particles, mean, surface)]
        return NMCPhantom(parts, fov_um=self.fov_um)

    def label_map(self, shape, pixel_size_um, *, theta_rad=0.0, origin_um=(0.0, 0.0)) -> np.ndarray:
        """Which particle each pixel images (ground truth for segmentation and tracking).

        Same geometry arguments as :meth:`project`.

        Returns
        -------
        ndarray, shape (ny, nx), int32
            ``i + 1`` where particle ``i`` (index into :attr:`particles`) has the longest
            path through material at the pixel centre (voids removed), 0 where no
            particle has material.
        """
        ny, nx = (int(s) for s in shape)
        best = np.zeros((ny, nx), np.float32)
        labels = np.zeros((ny, nx), np.int32)
        one_level = np.array([_VALENCE_MIN])
        for i, particle in enumerate(self.particles):
            single = NMCPhantom((particle,), fov_um=self.fov_um)
            for sy, sx, _ks, block in single._particle_blocks(one_level, (ny, nx), pixel_size_um,
                                                             theta_rad, origin_um):
                path = block.sum(axis=0)
                take = path > best[sy, sx]
                best[sy, sx] = np.where(take, path, best[sy, sx])
                labels[sy, sx] = np.where(take, i + 1, labels[sy, sx])
        return labels


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_nmc_phantom(
    *,
    fov_um=(41.0, 41.0),
    n_particles=12,
    state_of_charge=0.5,
    seed=0,
    radius_range_um=(2.0, 4.5),
    z_spread_um=2.0,
    heterogeneity=0.4,
    surface_lead=0.5,
    penetration_range_um=(0.4, 1.5),
    voids_per_particle=2,
    cracks_per_particle=1,
    edge_margin_um=0.5,
) -> NMCPhantom:
    """A seeded random NMC electrode phantom.

    Parameters
    ----------
    fov_um : tuple of float
        (height, width) of the field of view, µm; particles lie wholly inside it,
        ``edge_margin_um`` from its edge.
    n_particles : int
        Number of secondary particles (fewer if they cannot be packed without overlap
        in projection; a ``RuntimeError`` if not even one fits).
    state_of_charge : float
        Global state of charge 0…1. 0 → every particle is pure Ni2+ (uniform sample).
    seed : int
        Seed of ``numpy.random.default_rng``.
    radius_range_um : tuple of float
        Particle radii are drawn uniformly in this range, µm. Particles do not overlap in
        projection, so the sample is at most ``2 * max radius`` thick (9 µm: about one
        absorption length of NMC811 above the Ni K edge, inside the ~23 µm depth of focus).
    z_spread_um : float
        Particle centres are spread uniformly in ±z_spread_um along the beam.
    heterogeneity : float
        Log-normal spread of each particle's own state of charge around the global one.
    surface_lead : float
        How far the surface leads the core: surface SOC = min(1, s·(1+lead)),
        core SOC = s·(1−lead) for a particle at state of charge s; valence = 2 + 2·SOC.
    penetration_range_um : tuple of float
        Range of the surface-to-core decay length, µm.
    voids_per_particle, cracks_per_particle : int
        Mean number (Poisson) of round pores and of thin radial cracks per particle.
    edge_margin_um : float
        Gap kept between particles, and between particles and the FOV edge, µm.

    Returns
    -------
    NMCPhantom
    """
    if not 0.0 <= state_of_charge <= 1.0:
        raise ValueError(f"state_of_charge must be in [0, 1], got {state_of_charge}")
    rng = np.random.default_rng(seed)
    half_h, half_w = 0.5 * fov_um[0], 0.5 * fov_um[1]
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(n_particles)):
        for _attempt in range(400):
            rad = rng.uniform(*radius_range_um)
            lim_x, lim_y = half_w - rad - edge_margin_um, half_h - rad - edge_margin_um
            if lim_x <= 0 or lim_y <= 0:
                continue
            x, y = rng.uniform(-lim_x, lim_x), rng.uniform(-lim_y, lim_y)
            if all(np.hypot(x - px, y - py) > rad + pr + edge_margin_um for px, py, _, pr in placed):
                placed.append((x, y, rng.uniform(-z_spread_um, z_spread_um), rad))
                break
    if not placed:
        raise RuntimeError(f"no particle of radius {radius_range_um} µm fits in fov_um={fov_um}")

    particles = []
    for x, y, z, rad in placed:
        s = float(np.clip(state_of_charge * np.exp(heterogeneity * rng.normal()), 0.0, 1.0))
        surface = 2.0 + 2.0 * min(1.0, s * (1.0 + surface_lead))
        core = 2.0 + 2.0 * s * (1.0 - surface_lead)
        voids = []
        for _ in range(rng.poisson(voids_per_particle)):
            a = rng.uniform(0.15, 0.35) * rad
            d = rng.uniform(0.0, rad - a) * _unit(rng)
            voids.append(Void((x + d[0], y + d[1], z + d[2]),
                              (a, a * rng.uniform(0.6, 1.0), a * rng.uniform(0.6, 1.0)),
                              _as_tuple(_random_rotation(rng))))
        for _ in range(rng.poisson(cracks_per_particle)):
            # Thin flat ellipsoid running from near the centre outward (intergranular).
            rot = _random_rotation(rng)
            length = rng.uniform(0.4, 0.7) * rad
            d = rot[:, 0] * rng.uniform(0.0, 0.3) * rad
            voids.append(Void((x + d[0], y + d[1], z + d[2]),
                              (length, rng.uniform(0.3, 0.6) * rad, rng.uniform(0.04, 0.1)),
                              _as_tuple(rot)))
        particles.append(Particle((x, y, z), rad, core, surface,
                                  rng.uniform(*penetration_range_um), tuple(voids)))
    return NMCPhantom(particles, fov_um=fov_um)


def _unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _as_tuple(m) -> tuple:
    return tuple(tuple(float(v) for v in row) for row in m)
