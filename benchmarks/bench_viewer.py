"""Viewer speed in a real browser: first paint of a 2048² map and update latency.

A raw run and its analysis run with one 2048² maps event are written to an embedded Tiled
server by ``bluesky_tiled_plugins.TiledWriter`` (as the live analysis writes them);
``txm-live view`` runs as its own process; Debian's headless Chromium opens the page.

Printed:

* map visible: from the start of navigation to the static preview of the whiteline map
  (a PNG in the page's HTML, :mod:`txm_live.viewer._preview`) painted by the browser
  (Element Timing's render time) and seen loaded and displayed on an animation frame;
* interactive map drawn: from the start of navigation to the whiteline map drawn by Bokeh
  (its downsampled pixels in the page and the figure rendered, timed on animation frames)
  — cold (a fresh browser profile: Panel's and Bokeh's JavaScript fetched and compiled)
  and warm (the browser's cache filled by an earlier visit), median of ``--visits``; for
  the warm visits also when the page's HTML had arrived (the server built the page: one
  Panel session) and when its Bokeh document existed in the browser;
* the peer: Tiled's own PNG of the same map (``format=image/png``) loaded in the same
  browser, full resolution and strided like the viewer's (``slice=-1,::4,::4``), from the
  start of navigation to the load event;
* the floor: a bare Panel page holding one figure with the same 512² image (no Tiled, no
  other widget), served in this process and timed the same way, warm — what Panel and
  Bokeh's JavaScript cost any page in this browser on this machine;
* update latency: a new maps event written to Tiled (the writer returned: arrays and
  table row stored) until the page shows it without reloading (new title and pixels
  drawn), median and max of ``--updates``.

Usage: ``.venv/bin/python benchmarks/bench_viewer.py [--size 2048] [--updates 5] [--visits 3]``.
Needs Chromium (``make browser``). Targets (issue #12): map visible ≤ 1 s, update ≤ 2 s.
Timings move 30–50 % with the load of the machine; the peer is measured in the same run.
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
from test_viewer import CHROMIUM, CHROMIUM_ARGS, PAINT_PROBE_JS, Viewer  # noqa: E402

MAP_KEYS = ("whiteline", "edge", "edge_jump")


def _maps(size: int, n_energies: int, rng) -> dict:
    yy, xx = np.mgrid[0:size, 0:size] / size
    whiteline = 8340 + 4 * np.sin(6 * xx) * np.cos(4 * yy) + 0.2 * rng.standard_normal((size, size))
    mask = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16).astype(np.uint8)
    return {"whiteline": whiteline.astype(np.float32), "edge": (whiteline - 4).astype(np.float32),
            "edge_jump": (0.3 * mask + 0.01).astype(np.float32), "mask": mask, "n_energies": n_energies,
            "final": False, "e0_ev": 8336.0}


def _write_runs(client, size: int):
    """A raw xanes2d run and an analysis run with a maps stream; returns uids and ``add_maps(n)``."""
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
    keys = {k: dict(array) for k in MAP_KEYS}
    keys["mask"] = dict(array, dtype_numpy="|u1")
    keys.update(n_energies={"source": "bench", "dtype": "integer", "shape": []},
                final={"source": "bench", "dtype": "boolean", "shape": []},
                e0_ev={"source": "bench", "dtype": "number", "shape": []})
    desc = analysis.compose_descriptor(name="maps", data_keys=keys)
    writer("descriptor", desc.descriptor_doc)

    def add_maps(n_energies: int) -> None:
        data = _maps(size, n_energies, np.random.default_rng(n_energies))
        writer("event", desc.compose_event(data=data, timestamps={k: time.time() for k in data}))
    add_maps(10)
    return raw.start_doc["uid"], analysis.start_doc["uid"], add_maps


def _first_paint_s(context, url: str, steps: list | None = None, previews: list | None = None) -> float:
    """Navigation start to the interactive map drawn; appends to ``steps`` when the page's
    HTML had arrived (the server built the page) and when its Bokeh document existed (s),
    to ``previews`` when the static preview in the HTML was painted (Element Timing) and
    first seen loaded and displayed on an animation frame (s; None without a preview)."""
    page = context.new_page()
    page.goto(url, wait_until="commit")
    page.wait_for_function("() => window.__paintMs !== null", timeout=180_000, polling=100)
    html_ms, doc_ms, paint_ms, preview_paint_ms, preview_ms = page.evaluate(
        "() => [performance.getEntriesByType('navigation')[0].responseEnd, window.__docMs, window.__paintMs, "
        "window.__previewPaintMs, window.__previewMs]")
    if steps is not None:
        steps.append((html_ms / 1000, doc_ms / 1000))
    if previews is not None:
        previews.append(tuple(None if v is None else v / 1000 for v in (preview_paint_ms, preview_ms)))
    page.close()
    return paint_ms / 1000


def _peer_png_s(context, url: str) -> float:
    """Navigation start to load event of Tiled's PNG of the map."""
    page = context.new_page()
    page.goto(url, wait_until="load", timeout=180_000)
    seconds = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000
    page.close()
    return seconds


def _serve_floor_page(size: int):
    """A bare Panel page with one image figure (the map's display size), named like the
    viewer's whiteline map so that the paint probe times it; returns (url, server)."""
    import panel as pn
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    side = min(size, 512)
    image = _maps(side, 10, np.random.default_rng(0))["whiteline"]

    def page():
        source = ColumnDataSource({"image": [image], "x": [0], "y": [0], "dw": [side], "dh": [side]},
                                  name="follow-map-whiteline-source")
        fig = figure(name="follow-map-whiteline-figure", frame_width=300, frame_height=300, title="floor")
        fig.image("image", x="x", y="y", dw="dw", dh="dh", source=source, palette="Viridis256")
        return pn.pane.Bokeh(fig)

    from txm_live.viewer._serve import _free_port, _wait_listening

    port = _free_port("127.0.0.1")
    server = pn.serve({"/": page}, port=port, address="127.0.0.1", show=False, threaded=True, print_url=False)
    _wait_listening("127.0.0.1", port, server)
    return f"http://127.0.0.1:{port}/", server


def _update_latencies(page, add_maps, n_updates: int) -> list[float]:
    latencies = []
    for k in range(n_updates):
        n = 11 + k
        add_maps(n)
        written = time.time()
        page.wait_for_function(
            "n => window.__titles.some(([t]) => t.includes(`partial, ${n} energies`))", arg=n,
            timeout=120_000, polling=100)
        shown_ms = page.evaluate(
            "n => window.__titles.find(([t]) => t.includes(`partial, ${n} energies`))[1]", n)
        latencies.append(shown_ms / 1000 - written)
    return latencies


def _preview_text(previews: list) -> str:
    """Median painted / displayed seconds of the static preview (or why there is none)."""
    shown = [p for p in previews if None not in p]
    if not shown:
        return "no preview in the page"
    painted, displayed = (statistics.median(v) for v in zip(*shown))
    missing = f", {len(previews) - len(shown)} pages without it" if len(shown) < len(previews) else ""
    return f"median {painted:.2f} s painted / {displayed:.2f} s displayed over {len(shown)} visits{missing}"


def _load() -> str:
    import os

    return "load average {:.1f}, {:.1f}, {:.1f} (1, 5, 15 min) on {} cores".format(*os.getloadavg(), os.cpu_count())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="map side (px)")
    parser.add_argument("--updates", type=int, default=5, help="maps events written while the page is open")
    parser.add_argument("--visits", type=int, default=3, help="cold and warm page loads (median)")
    args = parser.parse_args(argv)
    for name in ("size", "updates", "visits"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    from playwright.sync_api import sync_playwright

    from txm_live.store import EmbeddedTiled

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedTiled(Path(tmp) / "catalog")
        raw_uid, analysis_uid, add_maps = _write_runs(server.client(), args.size)
        viewer = Viewer(server.uri)
        base, key = server.uri.split("?")
        png = f"{base}/array/full/{analysis_uid}/maps/whiteline?format=image/png&{key}&slice="
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                cold, warm, steps, cold_previews, warm_previews = [], [], [], [], []
                for _ in range(args.visits):
                    context = browser.new_context()  # a fresh profile: empty cache
                    context.add_init_script(PAINT_PROBE_JS)
                    cold.append(_first_paint_s(context, viewer.url, previews=cold_previews))
                    warm.append(_first_paint_s(context, viewer.url, steps, warm_previews))
                    context.close()
                floor_url, floor_server = _serve_floor_page(args.size)
                context = browser.new_context()
                context.add_init_script(PAINT_PROBE_JS)
                _first_paint_s(context, floor_url)  # fills the cache
                floor = statistics.median(_first_paint_s(context, floor_url) for _ in range(args.visits))
                context.close()
                floor_server.stop()
                context = browser.new_context()
                context.add_init_script(PAINT_PROBE_JS)
                peer_full = statistics.median(_peer_png_s(context, png + "-1") for _ in range(args.visits))
                stride = max(1, args.size // 512)
                peer_strided = statistics.median(_peer_png_s(context, png + f"-1,::{stride},::{stride}")
                                                 for _ in range(args.visits))
                page = context.new_page()
                page.goto(viewer.url, wait_until="commit")
                page.wait_for_function("() => window.__paintMs !== null", timeout=180_000, polling=100)
                shape = page.evaluate("() => Bokeh.documents[0].get_model_by_name('follow-map-whiteline-source')"
                                      ".data.image[0].length")
                n_models = page.evaluate("() => window.__docModels")
                latencies = _update_latencies(page, add_maps, args.updates)
                browser.close()
        finally:
            viewer.stop()
            server.close()
    side = int(round(np.sqrt(shape)))
    print(_load())
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"map {args.size}² sent to the browser as {side}² (server-side stride {args.size // side})")
    print("map visible (static preview in the HTML; painted per Element Timing / seen loaded and displayed on an "
          "animation frame):")
    print(f"  first visit after the viewer started: {_preview_text(cold_previews[:1])}")
    print(f"  cold browser cache: {_preview_text(cold_previews)}")
    print(f"  warm browser cache: {_preview_text(warm_previews)}   (target <= 1 s)")
    print("interactive map drawn (Bokeh figure rendered with the map's pixels):")
    print(f"  first visit after the viewer started (cold server, cold browser cache): {cold[0]:.2f} s")
    print(f"  cold browser cache: median {c:.2f} s (min {min(cold):.2f}) over {len(cold)} visits")
    print(f"  warm browser cache: median {w:.2f} s (min {min(warm):.2f})")
    html_s, doc_s = (statistics.median(v) for v in zip(*steps))
    print(f"  warm, where the time goes (median): page HTML in {html_s:.2f} s (the server builds the page), "
          f"Bokeh document in the browser {doc_s:.2f} s, map drawn {w:.2f} s")
    print(f"floor, a bare Panel page with one 512² image figure, warm: {floor:.2f} s "
          f"(viewer warm / floor: {w / floor:.2f})")
    print(f"peer, Tiled's PNG of the map in the same browser: full {args.size}² {peer_full:.2f} s, "
          f"strided 1:{stride} {peer_strided:.2f} s")
    print(f"ratios, viewer warm interactive map drawn / peer: {w / peer_full:.2f} (full PNG), "
          f"{w / peer_strided:.2f} (strided PNG)")
    painted = [p[0] for p in warm_previews if p[0] is not None]
    if painted:
        print(f"ratio, viewer warm map visible (preview painted) / peer strided PNG: "
              f"{statistics.median(painted) / peer_strided:.2f}")
    print(f"Bokeh models in the page's first document: {n_models}")
    print(f"update latency, data in Tiled -> drawn on the page: median {statistics.median(latencies):.2f} s, "
          f"max {max(latencies):.2f} s over {len(latencies)} updates   (target <= 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
