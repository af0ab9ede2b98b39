"""``python -m simulators.ioc``: serve the simulated TXM over Channel Access.

Example (loopback only, ports of your own)::

    export EPICS_CA_SERVER_PORT=5064 EPICS_CA_REPEATER_PORT=5065 \\
           EPICS_CA_ADDR_LIST=127.0.0.1 EPICS_CA_AUTO_ADDR_LIST=NO \\
           EPICS_CAS_INTF_ADDR_LIST=127.0.0.1
    python -m simulators.ioc --size 256 --seed 0

Stop it with Ctrl-C or SIGTERM (capture files are closed).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .server import DEFAULT_TIME_SCALE, TXMIOC, serve

LOOPBACK = "127.0.0.1"


class _DropRefusedBeacons(logging.Filter):
    """Beacons go to the CA repeater port; with no repeater there (tests, a laptop) every
    beacon is refused and caproto logs a traceback for each. Harmless: clients find the
    IOC by searching. Other errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to send beacon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.ioc",
        description="Channel Access IOC of the simulated TXM: motor records, shutter, areaDetector camera "
                    "writing HDF5 (ports from EPICS_CA_SERVER_PORT).",
    )
    parser.add_argument("--size", type=int, default=256, help="image size in pixels, square (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sample, drift and detector noise")
    parser.add_argument("--energy-ev", type=float, default=8333.0, help="starting energy, eV (in focus)")
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                        help=f"wall seconds per beamline second (default {DEFAULT_TIME_SCALE}; 1 = real time)")
    parser.add_argument("--root", default="", help="prefix put in front of every PV name")
    parser.add_argument("--interfaces", nargs="+", default=[LOOPBACK],
                        help="addresses to serve on (default 127.0.0.1 only)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started this one has gone (launchers, tests)")
    parser.add_argument("--list-pvs", action="store_true", help="print the PV names and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from ..model import SimConfig

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("caproto.ctx").addFilter(_DropRefusedBeacons())
    try:
        ioc = TXMIOC(config=SimConfig(shape=(args.size, args.size), seed=args.seed), root=args.root,
                     energy_ev=args.energy_ev, time_scale=args.time_scale)
    except ValueError as exc:
        print(f"python -m simulators.ioc: {exc}", file=sys.stderr)
        return 2
    if args.list_pvs:
        print("\n".join(ioc.pvdb))
        return 0
    if set(args.interfaces) == {LOOPBACK}:
        # A loopback-only IOC announces itself on loopback only (this program's own setting).
        os.environ.setdefault("EPICS_CAS_BEACON_ADDR_LIST", LOOPBACK)
        os.environ.setdefault("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
    print(f"simulated TXM IOC: {len(ioc.pvdb)} PVs on {' '.join(args.interfaces)}:"
          f"{os.environ.get('EPICS_CA_SERVER_PORT', '5064')}; ready when {ioc.ready_pv} = 1", flush=True)
    asyncio.run(serve(ioc, interfaces=args.interfaces, exit_with_parent=args.exit_with_parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
