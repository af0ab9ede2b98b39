"""Benchmark: cost of publishing documents over 0MQ, and the out-of-process analysis's latency.

Prints, from one run:

- **publishing overhead**: the same simulated 2D XANES scan run with and without a
  :class:`txm_live.remote.DocumentPublisher` subscribed (alternating, ``--repeat`` times,
  median wall time of ``RE(plan)``), a ``txm-live zmq-proxy`` process and a subscriber
  process receiving every document; and the time the RunEngine thread spent inside the
  publisher (serialising + handing to 0MQ) as a fraction of the scan (target ≤ 2 %);
- **latency**: seconds from the raw run's stop document (as the RunEngine emits it) until
  the final maps are readable from Tiled, for the live analysis in the acquisition
  process and for ``txm-live serve-analysis`` in its own process fed over 0MQ (target:
  within 1 s of each other). Both write to the same ``txm-live serve`` process; Tiled is
  polled every 20 ms from the benchmark process.

The simulated beamline runs without sleeps (``fast``) by default: the scan is as short as
the CPU allows, so the publishing overhead is an upper bound (a beamline scan of minutes
sends the same documents). Timings move 30-50 % under load; the figures are medians.

Usage::

    python benchmarks/bench_remote.py                        # 128², 20 energies, ~3 min
    python benchmarks/bench_remote.py --size 256 --repeat 7
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

ENERGIES = np.r_[8273.0, 8293.0, 8313.0, 8323.0, np.arange(8328.0, 8353.0, 2.0), 8363.0, 8383.0, 8413.0]

SUBSCRIBER = textwrap.dedent("""
    import sys, zmq
    from txm_live.remote import unpack_document
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(sys.argv[1])
    print("subscribed", flush=True)
    n = 0
    while True:
        prefix, name, payload = sock.recv().split(b" ", 2)
        unpack_document(payload)
        n += 1
""")


def _beamline(root, size, seed=1):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    return make_sim_beamline(root, config=SimConfig(shape=(size, size), seed=seed))


def _plan(bl):
    from txm_live.plans import xanes_2d

    return xanes_2d(bl.detector, bl.energy, ENERGIES, shutter=bl.shutter, sample_stage=bl.sample_stage, n_darks=2)


class _Timed:
    """Wrap a callback; sum the wall and CPU time the RunEngine thread spends in it."""

    def __init__(self, callback):
        self.callback, self.seconds, self.cpu_seconds, self.calls = callback, 0.0, 0.0, 0

    def __call__(self, name, doc):
        t0, c0 = time.perf_counter(), time.thread_time()
        self.callback(name, doc)
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.thread_time() - c0
        self.calls += 1


def publishing_overhead(root: Path, *, size: int, repeat: int) -> dict:
    from bluesky import RunEngine

    from txm_live.remote import DocumentPublisher
    from txm_live.store_process import ProxyProcess

    proxy = ProxyProcess(log_path=root / "proxy.log").start()
    subscriber = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, f"tcp://{proxy.out_address}"],
                                  stdout=subprocess.PIPE, text=True)
    subscriber.stdout.readline()
    publisher = DocumentPublisher(proxy.in_address)
    assert publisher.wait_for_subscriber(30), "the subscriber process never subscribed"
    timed = _Timed(publisher)
    walls = {"without": [], "with": []}
    fractions, cpu_fractions = [], []
    try:
        for i in range(repeat):
            for mode in ("without", "with") if i % 2 == 0 else ("with", "without"):
                RE = RunEngine({}, call_returns_result=False)
                if mode == "with":
                    RE.subscribe(timed)
                bl = _beamline(root / f"pub-{mode}-{i}", size)
                before, cpu_before = timed.seconds, timed.cpu_seconds
                t0, c0 = time.perf_counter(), time.process_time()
                RE(_plan(bl))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                walls[mode].append(wall)
                if mode == "with":
                    fractions.append((timed.seconds - before) / wall)
                    cpu_fractions.append((timed.cpu_seconds - cpu_before) / cpu)
    finally:
        publisher.close()
        subscriber.kill()
        proxy.stop()
    return {"without_s": statistics.median(walls["without"]), "with_s": statistics.median(walls["with"]),
            "publish_fraction": statistics.median(fractions), "per_doc_us": 1e6 * timed.seconds / timed.calls,
            "publish_cpu_fraction": statistics.median(cpu_fractions),
            "per_doc_cpu_us": 1e6 * timed.cpu_seconds / timed.calls,
            "docs_per_scan": timed.calls // repeat}


def _wait_for_final_maps(client, uid, t_stop: dict, out: dict, timeout_s=300.0):
    """Poll Tiled until the analysis run of ``uid`` holds its final maps; record the delay."""
    from txm_live.replay import find_analysis_runs

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for run in find_analysis_runs(client, uid).values():
                if "maps" in run and bool(np.asarray(run["maps"]["final"].read())[-1]):
                    out["latency_s"] = time.time() - t_stop["t"]
                    return
        except Exception:  # the run or its maps are still being written: poll again
            pass
        time.sleep(0.02)
    out["latency_s"] = float("nan")


def _latency_once(server, proxy, root: Path, *, size: int, remote: bool, seed: int) -> float:
    from bluesky import RunEngine

    from txm_live.callbacks import subscribe_live_analysis
    from txm_live.remote import DocumentPublisher
    from txm_live.store import subscribe_tiled_writer

    client = server.client()
    RE = RunEngine({}, call_returns_result=False)
    writer = subscribe_tiled_writer(RE, client)
    live = publisher = None
    if remote:
        publisher = DocumentPublisher(proxy.in_address)
        assert publisher.wait_for_subscriber(60), "serve-analysis never subscribed"
        RE.subscribe(publisher)
    else:
        live = subscribe_live_analysis(RE, None, writer=writer)
    uid_box, t_stop, result = [], {}, {}
    RE.subscribe(lambda name, doc: uid_box.append(doc["uid"]), "start")
    RE.subscribe(lambda name, doc: t_stop.setdefault("t", time.time()), "stop")
    reader = server.client()

    def poll():
        while not t_stop:
            time.sleep(0.01)
        _wait_for_final_maps(reader, uid_box[0], t_stop, result)

    poller = threading.Thread(target=poll)
    poller.start()
    RE(_plan(_beamline(root / f"lat-{'remote' if remote else 'local'}-{seed}", size, seed=seed)))
    poller.join()
    if live is not None:
        live.wait(300)
    writer.wait_delivered(300)
    if publisher is not None:
        publisher.close()
    return result.get("latency_s", float("nan"))


def latency(root: Path, *, size: int, repeat: int) -> dict:
    from txm_live.store_process import AnalysisServiceProcess, ProxyProcess, TiledServerProcess

    server = TiledServerProcess(root / "data", create=True).start()
    proxy = ProxyProcess(log_path=root / "proxy-latency.log").start()
    service = AnalysisServiceProcess(proxy.out_address, server.catalog, log_path=root / "service.log",
                                     options=["--spool", root / "service-spool"]).start()
    found = {"local": [], "remote": []}
    try:
        for i in range(repeat):
            for mode in ("local", "remote") if i % 2 == 0 else ("remote", "local"):
                found[mode].append(_latency_once(server, proxy, server.frames, size=size,
                                                 remote=mode == "remote", seed=10 + i))
    finally:
        service.stop()
        proxy.stop()
        server.stop()
    return {mode: statistics.median(values) for mode, values in found.items()} | {"all": found}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--repeat", type=int, default=5, help="scans per mode (default 5)")
    parser.add_argument("--latency-repeat", type=int, default=3, help="scans per mode for latency (default 3)")
    parser.add_argument("--skip-latency", action="store_true", help="measure the publishing overhead only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pub = publishing_overhead(root, size=args.size, repeat=args.repeat)
        print(f"publishing over 0MQ, {len(ENERGIES)} energies {args.size}², {pub['docs_per_scan']} documents/scan, "
              f"median of {args.repeat}:")
        print(f"  scan without {pub['without_s']:.3f} s, with {pub['with_s']:.3f} s, ratio "
              f"{pub['with_s'] / pub['without_s']:.3f} (wall times, noisy)")
        print(f"  RunEngine thread in the publisher: {pub['per_doc_us']:.0f} µs/document, "
              f"{100 * pub['publish_fraction']:.2f} % of the scan's wall time (target ≤ 2 %)")
        print(f"  CPU time in the publisher: {pub['per_doc_cpu_us']:.0f} µs/document, "
              f"{100 * pub['publish_cpu_fraction']:.2f} % of the acquisition process's CPU time during the scan "
              "(less sensitive to other load on the machine)")
        if args.skip_latency:
            return 0
        lat = latency(root, size=args.size, repeat=args.latency_repeat)
        print(f"latency, stop document -> final maps readable from Tiled, median of {args.latency_repeat}:")
        print(f"  in-process live analysis {lat['local']:.2f} s; serve-analysis over 0MQ {lat['remote']:.2f} s; "
              f"difference {lat['remote'] - lat['local']:+.2f} s (target ≤ 1 s)")
        print(f"  all: local {[round(v, 2) for v in lat['all']['local']]}, "
              f"remote {[round(v, 2) for v in lat['all']['remote']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
