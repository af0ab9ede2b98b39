"""The fault and bad-input suite: every case, its expected outcome, what happened, pass or fail.

    .venv/bin/python benchmarks/fault_suite.py [--only SUBSTRING ...] [--no-ioc]

Runs every case of ``tests/fault_cases.py`` against real parts (RunEngine, simulated TXM
writing HDF5, live analysis, an embedded Tiled server on 127.0.0.1, the simulated TXM's
Channel Access IOC in a subprocess) and prints a table (case, expected outcome, observed,
verdict), then the cases tried, the cases passed and the documents lost (raw documents and
frames written minus those found again in Tiled or on disk). Cases marked as known failures
are run all the same and counted as not passed. Exit status 0 when every case passed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the case definitions, shared with tests/test_fault_suite.py


def _print_table(results) -> None:
    width = 34
    for r in results:
        print(f"\n[{r.verdict}] {r.case.group} / {r.case.name}   ({r.seconds:.1f} s, lost {r.lost})")
        print(textwrap.fill(f"expected: {r.case.expected}", 110, initial_indent="    ", subsequent_indent=" " * 14))
        print(textwrap.fill(f"observed: {r.observed}", 110, initial_indent="    ", subsequent_indent=" " * 14))
        if r.case.fixed:
            print(textwrap.fill(f"fixed here: {r.case.fixed}", 110, initial_indent="    ",
                                subsequent_indent=" " * 16))
        if r.case.known_failure:
            print(textwrap.fill(f"known failure: {r.case.known_failure}", 110, initial_indent="    ",
                                subsequent_indent=" " * 19))
    print("\n" + "-" * 100)
    print(f"{'case':<{width}} {'group':<11} {'verdict':<14} {'written':>8} {'found':>6} {'lost':>5} {'s':>6}  fixed")
    for r in results:
        print(f"{r.case.name[:width]:<{width}} {r.case.group:<11} {r.verdict:<14} {r.written:>8} {r.found:>6} "
              f"{r.lost:>5} {r.seconds:>6.1f}  {'yes' if r.case.fixed else ''}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="run the cases whose name contains one of these")
    parser.add_argument("--no-ioc", action="store_true", help="leave out the cases that need the IOC")
    args = parser.parse_args(argv)

    from simulators.ioc import IOCProcess, ca_environment, free_port_pair

    ports = free_port_pair()
    os.environ.update(ca_environment(*ports))  # before ophyd starts Channel Access in this process
    os.environ.setdefault("MPLBACKEND", "Agg")

    import fault_cases
    from txm_live.store import EmbeddedTiled

    cases = fault_cases.all_cases()
    if args.only:
        cases = [c for c in cases if any(s.lower() in c.name.lower() for s in args.only)]
    if args.no_ioc:
        cases = [c for c in cases if "ioc" not in c.needs]
    work = Path(tempfile.mkdtemp(prefix="txm-faults-"))
    server = EmbeddedTiled(work / "catalog", readable_storage=[work / "frames"])
    server.frames_dir = work / "frames"
    ioc = None
    if any("ioc" in c.needs for c in cases):
        ioc = IOCProcess(size=fault_cases.SHAPE[0], seed=1, time_scale=0.005, ports=ports,
                         log_path=work / "ioc.log").start()
    ctx = fault_cases.FaultContext(server, work / "scratch", ioc=ioc, timed=True)
    t0 = time.monotonic()
    results = []
    try:
        for case in cases:
            print(f"... {case.group} / {case.name}", flush=True)
            results.append(fault_cases.run_case(case, ctx))
            print(f"    {results[-1].verdict}: {results[-1].observed}", flush=True)
    finally:
        ctx.shutdown()
        if ioc is not None:
            ioc.stop()
        server.close()
    _print_table(results)
    passed = sum(r.passed for r in results)
    known = sum(bool(r.case.known_failure) and not r.passed for r in results)
    lost = sum(r.lost for r in results)
    print(f"\ncases whose defect was fixed on this branch: {sum(bool(r.case.fixed) for r in results)}")
    print(f"cases tried: {len(results)}   cases passed: {passed}   known failures: {known}   "
          f"other failures: {len(results) - passed - known}   documents lost: {lost}   "
          f"({time.monotonic() - t0:.0f} s)")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
