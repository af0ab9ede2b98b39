"""The long storage / 0MQ fault cases: what ``make test`` leaves out for time.

Runs the tests marked ``outage_long`` (``pytest -m outage_long``) and prints, for each,
its outcome and wall time. Each is a real process or server killed and restarted with
its expected outcome asserted (see the test modules' docstrings):

- ``test_store_outage.py``: Tiled killed for 30 s in the middle of a scan in beamline
  time (the acceptance case: afterwards the run in Tiled holds every event once, and its
  analysis run exists); a scan made while Tiled is down, delivered when it returns; the
  acquisition process killed mid-scan, its orphaned runs closed and delivered by
  ``txm-live spool flush``;
- ``test_remote.py``: ``txm-live serve-analysis`` killed mid-run and restarted (half run
  closed 'abort', next run analysed, the missed run replayed by one command); the IPython
  profile publishing over 0MQ with the analysis in another process.

``make test`` keeps one representative outage (Tiled killed mid-scan for a few seconds,
``test_tiled_killed_mid_scan_and_restarted_loses_and_doubles_nothing``).

Usage::

    python benchmarks/bench_outage.py          # ~6 min on a quiet machine
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/test_store_outage.py", "tests/test_remote.py"]


def main() -> int:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", *FILES, "-m", "outage_long", "-q", "-rA",
                           "--durations=0", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, env=None)
    wall = time.monotonic() - t0
    out = proc.stdout
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", out, flags=re.M)
    calls = dict((name, float(sec)) for sec, name in re.findall(r"^([\d.]+)s call\s+(\S+)", out, flags=re.M))
    print(f"{'case':<100} {'outcome':>8} {'call s':>8}")
    for outcome, name in outcomes:
        print(f"{name:<100} {outcome:>8} {calls.get(name, float('nan')):>8.1f}")
    passed = sum(o == "PASSED" for o, _ in outcomes)
    print(f"long fault cases: {len(outcomes)} tried, {passed} passed; total wall {wall:.0f} s")
    if proc.returncode != 0:
        print(out[-6000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
