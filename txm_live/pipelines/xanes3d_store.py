"""The on-disk 3D XANES stack: one zarr group per scan, chunked by slices.

Layout (zarr format 3, uncompressed float32: reconstructions barely compress, and the
fit reads at disk speed)::

    <path>/                      group; attrs: energies_ev, volume_shape, slab_slices,
                                 reference_index, reference_center_px, reconstruction
    volumes      (n_energies, nz, ny, nx) float32, chunks (1, slab, ny, nx), NaN = not yet
    registration/shift_px  (n_energies, 2)  (dy, dx) applied to each energy's projections
    registration/spread_px (n_energies, 2)  robust spread of the pair shifts
    registration/center_px (n_energies,)    centre each energy was reconstructed about
    reference/projections  (n_pairs, ny_det, nx) the reference energy's absorbance
    reference/theta_rad    (n_pairs,)
    sample/line_sums, sample/line_counts, sample/spectra, sample/done
                                 what the XANES fit's prepare step needs, one row per
                                 energy (txm_live.analysis.XanesSampler)
    results/<map>  (nz, ny, nx), chunks (slab, ny, nx): whiteline, edge, edge_jump,
                   pre_edge, whiteline_height, noise (float32), status (uint8), mask (bool)

Every array a per-energy task writes is chunked one energy per chunk, so workers in
other processes (a Dask cluster on a shared file system) write their own chunks with no
lock. Tiled serves the group as it is (``tiled serve directory``, or a zarr adapter).
Volume ``volumes[e, j]`` is slice ``j`` (detector row ``j``) of ``reconstruct``'s output:
``(nz, ny, nx) = (ny_det, nx_det, nx_det)``, dimension names ``energy, z, y, x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Xanes3DStore", "RESULT_MAPS", "ReferenceProjections"]

#: Result volumes written by the fit, and their dtypes.
RESULT_MAPS = {"whiteline": "float32", "edge": "float32", "edge_jump": "float32",
               "pre_edge": "float32", "whiteline_height": "float32", "noise": "float32",
               "status": "uint8", "mask": "bool"}
#: Target size of one on-disk chunk of ``volumes`` (one energy, ``slab`` slices), bytes.
CHUNK_TARGET_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ReferenceProjections:
    """The reference energy's projections every other energy is registered to."""

    projections: np.ndarray  #: (n_pairs, ny, nx) absorbance
    theta_rad: np.ndarray  #: (n_pairs,)
    center_px: float  #: rotation centre of the reference, detector px
    index: int  #: the reference energy's position in the energy list


def default_slab(volume_shape) -> int:
    """Slices per on-disk chunk: about CHUNK_TARGET_BYTES of float32, and at most a
    quarter of the volume (slabs are also the units reconstructed in parallel)."""
    nz, ny, nx = volume_shape
    return int(max(1, min(-(-nz // 4), CHUNK_TARGET_BYTES // (4 * ny * nx))))


class Xanes3DStore:
    """A 3D XANES stack on disk (module docstring has the layout)."""

    def __init__(self, group):
        self.group = group
        attrs = group.attrs
        self.path = Path(str(group.store.root)) if hasattr(group.store, "root") else None
        self.energies_ev = np.asarray(attrs["energies_ev"], float)
        self.volume_shape = tuple(int(v) for v in attrs["volume_shape"])
        self.slab = int(attrs["slab_slices"])

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path, energies_ev, detector_shape, *, slab: int | None = None,
               overwrite: bool = False, attrs: dict | None = None) -> "Xanes3DStore":
        """A new, empty store for ``len(energies_ev)`` energies of ``(ny, nx)`` detectors.

        Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.
        """
        import zarr

        from ..analysis import XanesSampler

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        energies = np.asarray(energies_ev, float)
        if energies.ndim != 1 or energies.size < 1 or not np.all(np.isfinite(energies)):
            raise ValueError(f"energies_ev must be a non-empty 1-D list of finite eV; got {energies_ev!r}")
        ny_det, nx_det = (int(v) for v in detector_shape)
        shape = (ny_det, nx_det, nx_det)
        slab = default_slab(shape) if slab is None else int(slab)
        if not 1 <= slab <= ny_det:
            raise ValueError(f"slab must be 1..{ny_det} slices; got {slab}")
        n = energies.size
        root = zarr.open_group(str(path), mode="w" if overwrite else "w-", zarr_format=3)
        root.attrs.update({"energies_ev": energies.tolist(), "volume_shape": list(shape),
                           "detector_shape": [ny_det, nx_det], "slab_slices": slab,
                           "reference_index": None, "reference_center_px": None,
                           "format": "txm-live xanes3d stack 1", **(attrs or {})})
        root.create_array("volumes", shape=(n, *shape), chunks=(1, slab, nx_det, nx_det),
                           dtype="float32", fill_value=np.nan, compressors=None,
                           dimension_names=("energy", "z", "y", "x"))
        reg = root.create_group("registration")
        for name, cols in (("shift_px", (2,)), ("spread_px", (2,)), ("center_px", ())):
            reg.create_array(name, shape=(n, *cols), chunks=(1, *cols), dtype="float64",
                             fill_value=np.nan)
        n_lines, cand = XanesSampler.layout(shape)
        smp = root.create_group("sample")
        smp.create_array("line_sums", shape=(n, n_lines), chunks=(1, n_lines), dtype="float64", fill_value=0.0)
        smp.create_array("line_counts", shape=(n, n_lines), chunks=(1, n_lines), dtype="float64", fill_value=0.0)
        smp.create_array("spectra", shape=(n, cand.size), chunks=(1, max(1, cand.size)), dtype="float32",
                         fill_value=0.0)
        smp.create_array("done", shape=(n, ny_det), chunks=(1, ny_det), dtype="bool", fill_value=False)
        return cls(root)

    @classmethod
    def open(cls, path, *, mode: str = "r+") -> "Xanes3DStore":
        """An existing store (``mode='r'`` to read only)."""
        import zarr

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no 3D XANES store at {path}")
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        if "volumes" not in root or "energies_ev" not in root.attrs:
            raise ValueError(f"{path} is a zarr group but not a txm-live 3D XANES store")
        return cls(root)

    # ------------------------------------------------------------------ parts
    @property
    def volumes(self):
        """The ``(n_energies, nz, ny, nx)`` zarr array."""
        return self.group["volumes"]

    @property
    def n_energies(self) -> int:
        return int(self.energies_ev.size)

    def sampler(self):
        """A :class:`~txm_live.analysis.XanesSampler` over the ``sample/`` arrays."""
        from ..analysis import XanesSampler

        s = self.group["sample"]
        return XanesSampler.from_arrays(self.volume_shape, line_sums=s["line_sums"],
                                        line_counts=s["line_counts"], spectra=s["spectra"],
                                        done=s["done"], dtype=np.float32)

    def done(self) -> np.ndarray:
        """Which energies have their whole volume written, (n_energies,) bool."""
        return np.asarray(self.group["sample/done"][:]).all(axis=1)

    def set_reference(self, index: int, projections, theta_rad, center_px: float) -> None:
        """Record the reference energy and the projections others register to."""
        proj = np.ascontiguousarray(projections, dtype=np.float32)
        ref = self.group.require_group("reference")
        ref.create_array("projections", data=proj, chunks=proj.shape, compressors=None, overwrite=True)
        ref.create_array("theta_rad", data=np.asarray(theta_rad, float), overwrite=True)
        self.group.attrs.update({"reference_index": int(index), "reference_center_px": float(center_px)})

    def reference(self) -> ReferenceProjections | None:
        """The reference energy's projections, or None before the first energy."""
        attrs = self.group.attrs
        if attrs.get("reference_index") is None or "reference" not in self.group:
            return None
        return ReferenceProjections(projections=self.group["reference/projections"][:],
                                    theta_rad=self.group["reference/theta_rad"][:],
                                    center_px=float(attrs["reference_center_px"]),
                                    index=int(attrs["reference_index"]))

    def record_registration(self, index: int, shift_px, spread_px, center_px) -> None:
        reg = self.group["registration"]
        reg["shift_px"][index] = np.asarray(shift_px, float)
        reg["spread_px"][index] = np.asarray(spread_px, float)
        reg["center_px"][index] = float(center_px)

    def registration(self) -> dict:
        """``{'shift_px': (n, 2), 'spread_px': (n, 2), 'center_px': (n,)}`` (NaN: not yet)."""
        reg = self.group["registration"]
        return {k: np.asarray(reg[k][:]) for k in ("shift_px", "spread_px", "center_px")}

    def create_results(self, *, slab: int | None = None) -> dict:
        """Fresh ``results/<map>`` arrays (replacing earlier ones), chunked by slabs."""
        res = self.group.require_group("results")
        nz, ny, nx = self.volume_shape
        slab = self.slab if slab is None else int(slab)
        out = {}
        for name, dtype in RESULT_MAPS.items():
            fill = np.nan if dtype == "float32" else 0
            out[name] = res.create_array(name, shape=self.volume_shape, chunks=(slab, ny, nx),
                                         dtype=dtype, fill_value=fill, compressors=None,
                                         dimension_names=("z", "y", "x"), overwrite=True)
        return out

    def results(self) -> dict:
        """The result zarr arrays (``RESULT_MAPS`` names); empty before a fit."""
        if "results" not in self.group:
            return {}
        res = self.group["results"]
        return {name: res[name] for name in RESULT_MAPS if name in res}
