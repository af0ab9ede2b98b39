"""Analysis maps out: named arrays and their parameters in one HDF5 file (private module)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

__all__ = ["write_maps_h5"]


def write_maps_h5(path, maps: dict, *, attrs: dict | None = None) -> Path:
    """Write named 2-D/3-D arrays (maps) and scalar attributes to HDF5.

    Parameters
    ----------
    path : str or Path
    maps : dict of str to array_like
        Each becomes a dataset, gzip-compressed when it has two or more dimensions.
    attrs : dict, optional
        Root attributes; dicts, lists and tuples are stored as JSON strings, None as
        ``'None'``.

    Returns
    -------
    Path
    """
    path = Path(path)
    with h5py.File(path, "w") as f:
        for name, arr in maps.items():
            a = np.asarray(arr)
            f.create_dataset(name, data=a, compression="gzip" if a.ndim >= 2 else None)
        for k, v in (attrs or {}).items():
            if isinstance(v, (dict, list, tuple)):
                v = json.dumps(v, default=float)
            elif v is None:
                v = "None"
            f.attrs[k] = v
    return path
