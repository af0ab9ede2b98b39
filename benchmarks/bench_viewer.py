"""Viewer speed in a real browser: first paint of a 2048² map and update latency.

A raw run and an analysis run with one 2048² maps event are written to an embedded Tiled
server (TiledWriter, as the live analysis writes them); ``txm-live view`` runs as its own
process; headless Chromium opens the page. Printed:

* first paint: from ``page.goto`` to the whiteline map's (downsampled) pixels being in the
  page's document — cold (first visit) and warm (browser cache filled);
* peer: Tiled's own PNG rendering of the same 2048² map (``format=image/png``) loaded in
  the same browser, and the ratio;
* update latency: a new maps event written to Tiled (the write call returned) until the
  page shows it, without reloading (median of ``--updates``).

Usage: ``.venv/bin/python benchmarks/bench_viewer.py [--size 2048] [--updates 5]``.
Needs Chromium (``make browser``). Targets (issue #12): first paint ≤ 1 s, update ≤ 2 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import event_model
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_viewer import CHROMIUM, CHROMIUM_ARGS, SOURCE_JS, Viewer  # noqa: E402


def _maps(size: int, n_energies: int, rng) -> dict:
    yy, xx = np.mgrid[0:size, 0:size] / size
    whiteline = (8340 + 4 * np.sin(6 * xx) * np.cos(4 * yy) + 0.2 * rng.standard_normal((size, size)))
    mask = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(np.uint8)
    return {"whiteline": whiteline.astype(np.float32), "edge": (whiteline - 4).astype(np.float32),
            "edge_jump": (0.3 * mask + 0.01).astype(np.float32), "mask": mask, "n_energies": n_energies,
            "final": False, "e0_ev": 8336.0}


def _write_runs(client, size: int):
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(client, batch_size=1)
    energies = [8330.0, 8340.0, 8350.0]
    raw = event_model.compose_run(metadata={"scan_type": "xanes2d", "plan_name": "xanes_2d", "sample": "bench",
                                            "energies_ev": energies, "frames_per_energy": 1})
    writer("start", raw.start_doc)
    analysis = event_model.compose_run(metadata={"parent_uid": raw.start_doc["uid"], "analysis": "bench",
                                                 "scan_type": "xanes2d", "energies_ev": energies})
    writer("start", analysis.start_doc)
    array = {"source": "bench", "dtype": "array", "shape": [size, size], "dtype_numpy": "<f4", "dims": ["y", "x"]}
    keys = {k: dict(array) for k in ("whiteline", "edge", "edge_jump")}
    keys["mask"] = dict(array, dtype_numpy="|u1")
    keys.update(n_energies={"source": "bench", "dtype": "integer", "shape": []},
                final={"source": "bench", "dtype": "boolean", "shape": []},
                e0_ev={"source": "bench", "dtype": "number", "shape": []})
    desc = analysis.compose_descriptor(name="maps", data_keys=keys)
    writer("descriptor", desc.descriptor_doc)

    def add_maps(n_energies: int):
        data = _maps(size, n_energies, np.random.default_rng(n_energies))
        writer("event", desc.compose_event(data=data, timestamps={k: time.time() for k in data}))
    add_maps(10)
    return raw.start_doc["uid"], analysis.start_doc["uid"], add_maps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from txm_live.store import EmbeddedTiled

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedTiled(Path(tmp) / "catalog")
        raw_uid, analysis_uid, add_maps = _write_runs(server.client(), args.size)
        viewer = Viewer(server.uri)
        ready = f"() => ({SOURCE_JS})('follow-map-whiteline-source')?.image[0] > 1"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context()
                paints = []
                for visit in ("cold", "warm", "warm"):
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(viewer.url, wait_until="commit")
                    page.wait_for_function(ready, timeout=120_000, polling="raf")
                    paints.append(time.perf_counter() - t0)
                    if visit != "warm" or len(paints) < 3:
                        page.close()
                shape = page.evaluate("() => Bokeh.documents[0].get_model_by_name('follow-map-whiteline-source')"
                                      ".data.image[0].length")
                base, key = server.uri.split("?")
                png = f"{base}/array/full/{analysis_uid}/maps/whiteline?format=image/png&slice=-1&{key}"
                peer_page = context.new_page()
                t0 = time.perf_counter()
                peer_page.goto(png)
                peer = time.perf_counter() - t0
                latencies = []
                for k in range(args.updates):
                    n = 11 + k
                    add_maps(n)
                    t0 = time.perf_counter()
                    try:
                        page.wait_for_function(
                            "n => Bokeh.documents[0].get_model_by_name('follow-map-whiteline-figure').title.text"
                            ".includes(`partial, ${n} energies`)", arg=n, timeout=60_000, polling="raf")
                    except Exception:
                        print(page.evaluate("() => Bokeh.documents[0].get_model_by_name("
                                            "'follow-map-whiteline-figure').title.text"), viewer.output[-5:])
                        raise
                    latencies.append(time.perf_counter() - t0)
                browser.close()
        finally:
            viewer.stop()
            server.close()
    side = int(round(np.sqrt(shape)))
    print(f"map {args.size}² sent to the browser as {side}² (server-side stride {args.size // side})")
    print(f"first paint, cold page (JS bundle loaded): {paints[0]:.2f} s")
    print(f"first paint, warm page (browser cache):    {min(paints[1:]):.2f} s   (target ≤ 1 s)")
    print(f"peer: Tiled's PNG of the same {args.size}² map in the browser: {peer:.2f} s "
          f"(viewer warm / peer = {min(paints[1:]) / peer:.2f})")
    print(f"update latency, data in Tiled → on the page: median {statistics.median(latencies):.2f} s, "
          f"max {max(latencies):.2f} s over {len(latencies)} updates   (target ≤ 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
