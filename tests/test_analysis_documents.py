"""The analysis run's documents as Tiled stores them: descriptors name the map axes."""
from __future__ import annotations

import numpy as np
from event_model import DocumentNames, schema_validators

from txm_live.callbacks._emit import AnalysisRun, maps_data_keys, scalar_key
from txm_live.store import SafeTiledWriter


def test_maps_keep_their_axis_names_and_rows_arrive_as_pages(tiled_server):
    docs = []
    writer = SafeTiledWriter(tiled_server.client(), batch_size=1)

    def emit(name, doc):
        docs.append((name, doc))
        writer(name, doc)

    run = AnalysisRun(emit, {"analysis": "documents-test", "empty": None}, page_interval_s=3600)
    run.describe("spectrum", {"energy_ev": scalar_key(), "mean_absorbance": scalar_key()})
    for e in (8333.0, 8334.0, 8335.0):
        run.event("spectrum", {"energy_ev": e, "mean_absorbance": e - 8333.0}, buffered=True)
    run.describe("maps", maps_data_keys((6, 6)))
    square = np.arange(36, dtype=np.float32).reshape(6, 6)
    run.event("maps", {"whiteline": square, "edge": square, "edge_jump": square, "mask": (square > 3).astype(np.uint8),
                       "n_energies": 3, "final": True, "e0_ev": 8333.5, "method": "fit_xanes"})
    run.stop("success", "test")
    assert writer.flush(60) and writer.failures == []
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    # the buffered rows went out as one page, before the maps' event
    assert [n for n, _ in docs] == ["start", "descriptor", "descriptor", "event_page", "event", "stop"]
    assert "empty" not in docs[0][1]
    stored = tiled_server.client()[run.uid]
    assert stored["maps"].metadata["data_keys"]["whiteline"]["dims"] == ["y", "x"]
    np.testing.assert_array_equal(stored["maps"]["whiteline"].read()[-1], square)
    np.testing.assert_array_equal(stored["spectrum"]["mean_absorbance"].read(), [0.0, 1.0, 2.0])
