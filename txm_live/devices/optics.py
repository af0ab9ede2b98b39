"""Zone-plate TXM optics: the pure geometric relations real and simulated devices share.

Only numpy; no ophyd. Every distance carries its unit in its name.

Geometry (see ``docs/CONVENTIONS.md``)
--------------------------------------
The beam travels along +z: sample at z = 0, zone plate (ZP) at ``zp_z_mm`` = p,
detector at ``det_z_mm`` = p + q. A zone plate is a diffractive lens whose focal
length is proportional to photon energy, ``f = D * dr / lambda``. The thin-lens equation
``1/p + 1/q = 1/f`` sets the focus; the magnification is ``M = q / p``.

What happens when the energy changes:

* ZP and detector both fixed: ``f`` changes, so the plane conjugate to the detector
  moves away from the sample: the image **blurs** (geometric blur ~ NA * |defocus|).
  The magnification stays ``q / p`` because the chief ray from a sample point still
  passes undeviated through the ZP centre and lands at ``-x * q / p`` on the detector;
  defocus only spreads the light around that point.
* ZP alone refocused (detector fixed, :meth:`TXMOptics.zone_plate_refocus`): the image is
  sharp again but ``p`` and ``q`` changed, so the **magnification changes**.
* Both tracked (:meth:`TXMOptics.focus_positions`): sharp, and the magnification is held
  at its nominal value — what the FXI XANES plans do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HC_KEV_NM",
    "wavelength_nm",
    "ZonePlate",
    "ImagingState",
    "TXMOptics",
    "AIRY_SIGMA_PER_RAYLEIGH",
]

#: hc in keV·nm: ``lambda[nm] = HC_KEV_NM / E[keV]``.
HC_KEV_NM = 1.23984

#: Gaussian sigma of an Airy spot as a fraction of its Rayleigh radius 0.61 lambda/NA
#: (best Gaussian fit: sigma ~ 0.21 lambda/NA = 0.344 * 0.61 lambda/NA).
AIRY_SIGMA_PER_RAYLEIGH = 0.344


def wavelength_nm(energy_ev):
    """X-ray wavelength.

    Parameters
    ----------
    energy_ev : float or array_like
        Photon energy in eV (> 0).

    Returns
    -------
    float or ndarray
        Wavelength in nm, ``1.23984 / (energy_ev / 1000)``.
    """
    energy_ev = np.asarray(energy_ev, dtype=float)
    if np.any(energy_ev <= 0):
        raise ValueError(f"energy_ev must be > 0, got {energy_ev!r}")
    out = HC_KEV_NM / (energy_ev / 1000.0)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ZonePlate:
    """A Fresnel zone plate objective.

    Parameters
    ----------
    diameter_um : float
        Outer diameter D in µm (FXI: 244).
    outer_zone_width_nm : float
        Outermost zone width dr in nm (FXI: 30).
    """

    diameter_um: float = 244.0
    outer_zone_width_nm: float = 30.0

    def focal_length_mm(self, energy_ev) -> float:
        """First-order focal length ``f = D * dr / lambda`` in mm (~49 mm at 8333 eV)."""
        lam_nm = wavelength_nm(energy_ev)
        return self.diameter_um * 1e3 * self.outer_zone_width_nm / lam_nm * 1e-6

    def numerical_aperture(self, energy_ev) -> float:
        """Numerical aperture ``NA = lambda / (2 dr)`` (dimensionless)."""
        return wavelength_nm(energy_ev) / (2.0 * self.outer_zone_width_nm)

    def depth_of_focus_um(self, energy_ev) -> float:
        """Depth of focus ``DOF = lambda / NA**2`` in µm (~23 µm at 8 keV for dr = 30 nm)."""
        return wavelength_nm(energy_ev) / self.numerical_aperture(energy_ev) ** 2 * 1e-3

    def resolution_nm(self) -> float:
        """Rayleigh resolution ``1.22 dr`` in nm (energy independent for a ZP)."""
        return 1.22 * self.outer_zone_width_nm


@dataclass(frozen=True)
class ImagingState:
    """How well the TXM images at one energy and one ZP/detector position.

    Attributes
    ----------
    magnification : float
        ZP magnification actually delivered, ``q / p``.
    relative_magnification : float
        ``magnification / TXMOptics.magnification`` (1 when focus tracking holds it).
    defocus_um : float
        Sample-side distance (µm) from the sample to the plane conjugate to the
        detector; positive when that plane lies downstream of the sample, ``inf`` when no
        real conjugate plane exists (detector inside the focal length).
    blur_sigma_um : float
        Gaussian sigma (µm, referred to the sample plane) of the image blur: the ZP
        resolution (Airy spot as a Gaussian) added in quadrature to the geometric
        defocus blur ``NA * |defocus| / 2`` (rms per axis of a uniform disc of radius
        ``NA * |defocus|``). Not capped here; the simulator caps it for speed.
    depth_of_focus_um : float
        ``lambda / NA**2`` at this energy.
    """

    magnification: float
    relative_magnification: float
    defocus_um: float
    blur_sigma_um: float
    depth_of_focus_um: float


@dataclass(frozen=True)
class TXMOptics:
    """The TXM imaging chain: zone plate, scintillator objective and camera.

    Parameters
    ----------
    zone_plate : ZonePlate
        The objective zone plate.
    magnification : float
        ZP magnification ``q / p`` that focus tracking holds (FXI: 32.5).
    objective_magnification : float
        Visible-light objective after the scintillator (FXI: 10).
    camera_pixel_um : float
        Camera pixel pitch in µm (6.5 µm → 6.5 / (32.5 * 10) = 20 nm at the sample).
    energy_range_ev : tuple of float
        ``(low, high)`` energies the mono and optics support, eV.
    """

    zone_plate: ZonePlate = field(default_factory=ZonePlate)
    magnification: float = 32.5
    objective_magnification: float = 10.0
    camera_pixel_um: float = 6.5
    energy_range_ev: tuple = (5000.0, 15000.0)

    def _check_energy(self, energy_ev) -> float:
        energy_ev = float(energy_ev)
        lo, hi = self.energy_range_ev
        if not lo <= energy_ev <= hi:
            raise ValueError(
                f"energy_ev={energy_ev} outside the supported range {self.energy_range_ev} eV"
            )
        return energy_ev

    def focus_positions(self, energy_ev) -> tuple[float, float]:
        """ZP and detector positions that focus at the nominal magnification.

        Parameters
        ----------
        energy_ev : float
            Photon energy, eV.

        Returns
        -------
        zp_z_mm, det_z_mm : float
            ``p = f (M + 1) / M`` and ``p + q = p + M p`` in mm, so that
            ``1/p + 1/q = 1/f`` and ``q / p = M``.
        """
        f = self.zone_plate.focal_length_mm(self._check_energy(energy_ev))
        m = self.magnification
        p = f * (m + 1.0) / m
        return p, p + m * p

    def zone_plate_refocus(self, energy_ev, det_z_mm) -> float:
        """ZP position that focuses on the sample with the detector held fixed.

        Solves ``1/p + 1/(L - p) = 1/f`` for the root with the ZP near the sample
        (``p < L/2``, magnification > 1). The magnification ``(L - p) / p`` then differs
        from nominal.

        Parameters
        ----------
        energy_ev : float
            Photon energy, eV.
        det_z_mm : float
            Sample→detector distance L in mm.

        Returns
        -------
        float
            ``zp_z_mm`` in mm.
        """
        f = self.zone_plate.focal_length_mm(self._check_energy(energy_ev))
        big_l = float(det_z_mm)
        disc = big_l * big_l - 4.0 * f * big_l
        if disc < 0:
            raise ValueError(
                f"det_z_mm={big_l} is shorter than 4 f = {4 * f:.2f} mm: no real focus"
            )
        return 0.5 * (big_l - np.sqrt(disc))

    def imaging_state(self, energy_ev, zp_z_mm, det_z_mm) -> ImagingState:
        """Magnification, defocus and blur for a ZP/detector position at an energy.

        Parameters
        ----------
        energy_ev : float
            Photon energy, eV.
        zp_z_mm : float
            Sample→ZP distance p, mm (> 0).
        det_z_mm : float
            Sample→detector distance p + q, mm (> ``zp_z_mm``).

        Returns
        -------
        ImagingState
        """
        energy_ev = self._check_energy(energy_ev)
        p = float(zp_z_mm)
        q = float(det_z_mm) - p
        if p <= 0 or q <= 0:
            raise ValueError(
                f"need 0 < zp_z_mm < det_z_mm, got zp_z_mm={zp_z_mm}, det_z_mm={det_z_mm}"
            )
        zp = self.zone_plate
        f = zp.focal_length_mm(energy_ev)
        na = zp.numerical_aperture(energy_ev)
        m = q / p
        if q > f:
            p_conj = 1.0 / (1.0 / f - 1.0 / q)
            defocus_um = (p - p_conj) * 1e3
        else:
            defocus_um = float("inf")
        lam_nm = wavelength_nm(energy_ev)
        sigma_zp_um = AIRY_SIGMA_PER_RAYLEIGH * 0.61 * lam_nm / na * 1e-3
        sigma_geo_um = 0.5 * na * abs(defocus_um)
        return ImagingState(
            magnification=m,
            relative_magnification=m / self.magnification,
            defocus_um=defocus_um,
            blur_sigma_um=float(np.hypot(sigma_zp_um, sigma_geo_um)),
            depth_of_focus_um=zp.depth_of_focus_um(energy_ev),
        )

    def pixel_size_nm(self, binning=1) -> float:
        """Nominal pixel size at the sample, nm: ``camera_pixel * binning / (M * M_obj)``."""
        if binning < 1:
            raise ValueError(f"binning must be >= 1, got {binning}")
        total = self.magnification * self.objective_magnification
        return self.camera_pixel_um * 1e3 * binning / total
