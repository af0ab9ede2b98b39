"""A fitted 3D XANES store as its own Bluesky analysis run in Tiled.

The run (``event_model.compose_run``) names the raw run (``parent_uid``), the analysis
and its parameters (registration, reconstruction, the fit's ``params``) in its start
document, and holds

- stream ``volumes``: one event whose ``whiteline``, ``edge``, ``edge_jump`` (float32,
  eV / absorbance) and ``mask`` (uint8) volumes, ``(nz, ny, nx)`` with dims
  ``z, y, x``, are external HDF5 datasets (``stream_resource``/``stream_datum``, as the
  detector's frames are): ``<store>.results.h5``, written from the store slab by slab,
  so a 1024³ result never passes through a document or through memory whole;
- stream ``registration``: per energy, its energy, the projection shift ``(dy, dx)``
  applied, the pairs' spread and the centre it was reconstructed about.

Tiled must be allowed to read the folder of the HDF5 file (``readable_storage``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .xanes3d_store import Xanes3DStore

__all__ = ["xanes3d_documents", "volume_documents", "write_xanes3d_run", "ANALYSIS_NAME", "VOLUME_FIELDS"]

ANALYSIS_NAME = "xanes3d"
ANALYSIS_VERSION = 1
#: Result volumes published in the run, and their HDF5 dtypes.
VOLUME_FIELDS = {"whiteline": "<f4", "edge": "<f4", "edge_jump": "<f4", "mask": "|u1"}
HDF5_MIMETYPE = "application/x-hdf5"


def _write_results_h5(store: Xanes3DStore, h5_path: Path) -> None:
    """The result volumes as ``/<name>`` datasets of shape (1, nz, ny, nx), by slabs."""
    import h5py

    results = store.results()
    missing = [n for n in VOLUME_FIELDS if n not in results]
    if missing:
        raise ValueError(f"{store.path}: no fitted {missing} yet (run fit_store first)")
    nz, ny, nx = store.volume_shape
    slab = store.slab
    with h5py.File(h5_path, "w") as f:
        for name, dtype in VOLUME_FIELDS.items():
            ds = f.create_dataset(name, shape=(1, nz, ny, nx), dtype=dtype, chunks=(1, slab, ny, nx))
            for z0 in range(0, nz, slab):
                ds[0, z0:z0 + slab] = np.asarray(results[name][z0:z0 + slab]).astype(dtype)


def _volume_key(shape, dtype_numpy):
    return {"source": "txm-live", "dtype": "array", "dtype_numpy": dtype_numpy,
            "shape": list(shape), "dims": ["z", "y", "x"], "external": "STREAM:"}


def _scalar_key(dtype="number"):
    return {"source": "txm-live", "dtype": dtype, "shape": []}


def _start_metadata(store: Xanes3DStore, parent_uid, parent_start, extra):
    attrs = store.group.attrs
    res_attrs = dict(store.group["results"].attrs)
    parent = parent_start or {}
    md = {
        "parent_uid": parent_uid or parent.get("uid"),
        "parent_plan_name": parent.get("plan_name"),
        "analysis": ANALYSIS_NAME,
        "analysis_parameters": {
            "version": ANALYSIS_VERSION,
            "registration": attrs.get("registration"),
            "reference_index": attrs.get("reference_index"),
            "reference_center_px": attrs.get("reference_center_px"),
            "reconstruction": attrs.get("reconstruction"),
            "fit_xanes": res_attrs.get("params"),
        },
        "scan_type": parent.get("scan_type", "xanes3d"),
        "element": parent.get("element"),
        "edge": parent.get("edge"),
        "energies_ev": list(attrs["energies_ev"]),
        "pixel_size_nm": parent.get("pixel_size_nm"),
        "status_counts": res_attrs.get("status_counts"),
        "store": str(store.path) if store.path else None,
    }
    md.update(extra or {})
    return {k: v for k, v in md.items() if v is not None}


def xanes3d_documents(store_path, *, parent_uid: str | None = None, parent_start: dict | None = None,
                      h5_path=None, metadata: dict | None = None) -> list:
    """The ``(name, doc)`` documents of the analysis run of a fitted store.

    Parameters
    ----------
    store_path : path
        A store :func:`~txm_live.pipelines.fit_store` has fitted.
    parent_uid : str, optional
        The raw run's uid (or give ``parent_start``, its start document).
    h5_path : path, optional
        Where the result volumes go; default ``<store_path>.results.h5``.
    metadata : dict, optional
        Extra start-document keys (they win).
    """
    import event_model

    store = Xanes3DStore.open(store_path, mode="r")
    bundle = event_model.compose_run(metadata=_start_metadata(store, parent_uid, parent_start, metadata))
    docs = [("start", bundle.start_doc)]
    docs += volume_documents(bundle, store, h5_path)
    docs += _registration_docs(bundle, store)
    docs.append(("stop", bundle.compose_stop(exit_status="success", reason="")))
    return docs


def volume_documents(bundle, store: Xanes3DStore, h5_path=None) -> list:
    """The ``volumes`` stream of a fitted store in the run ``bundle`` (``event_model.compose_run``):
    writes the result volumes to ``h5_path`` (default ``<store>.results.h5``) slab by slab
    and returns the descriptor, ``stream_resource`` and ``stream_datum`` documents that
    reference them. Used by :func:`xanes3d_documents` and the live 3D XANES callback."""
    from event_model import StreamRange

    h5_path = Path(h5_path) if h5_path else Path(str(store.path).rstrip("/") + ".results.h5")
    _write_results_h5(store, h5_path)
    keys = {name: _volume_key(store.volume_shape, dt) for name, dt in VOLUME_FIELDS.items()}
    desc = bundle.compose_descriptor(name="volumes", data_keys=keys)
    docs = [("descriptor", desc.descriptor_doc)]
    nz, ny, nx = store.volume_shape
    for name in VOLUME_FIELDS:
        res = bundle.compose_stream_resource(
            mimetype=HDF5_MIMETYPE, uri=h5_path.resolve().as_uri(), data_key=name,
            parameters={"dataset": f"/{name}", "chunk_shape": [1, store.slab, ny, nx]})
        docs.append(("stream_resource", res.stream_resource_doc))
        docs.append(("stream_datum", res.compose_stream_datum(
            indices=StreamRange(start=0, stop=1), seq_nums=StreamRange(start=1, stop=2),
            descriptor=desc.descriptor_doc)))
    return docs


def _registration_docs(bundle, store: Xanes3DStore) -> list:
    reg = store.registration()
    keys = {"energy_index": _scalar_key("integer"), "energy_ev": _scalar_key(),
            "shift_y_px": _scalar_key(), "shift_x_px": _scalar_key(),
            "spread_y_px": _scalar_key(), "spread_x_px": _scalar_key(), "center_px": _scalar_key()}
    desc = bundle.compose_descriptor(name="registration", data_keys=keys)
    docs = [("descriptor", desc.descriptor_doc)]
    now = time.time()
    for i, energy in enumerate(store.energies_ev):
        data = {"energy_index": i, "energy_ev": float(energy),
                "shift_y_px": float(reg["shift_px"][i, 0]), "shift_x_px": float(reg["shift_px"][i, 1]),
                "spread_y_px": float(reg["spread_px"][i, 0]), "spread_x_px": float(reg["spread_px"][i, 1]),
                "center_px": float(reg["center_px"][i])}
        docs.append(("event", desc.compose_event(data=data, timestamps={k: now for k in data})))
    return docs


def write_xanes3d_run(tiled_client, store_path, **kwargs) -> str:
    """Write :func:`xanes3d_documents` through a ``bluesky_tiled_plugins.TiledWriter``;
    returns the analysis run's uid (``kwargs`` as for :func:`xanes3d_documents`)."""
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(tiled_client, batch_size=1)
    docs = xanes3d_documents(store_path, **kwargs)
    for name, doc in docs:
        writer(name, doc)
    return docs[0][1]["uid"]
