"""Run every benchmark script in this folder at a quick size, one after the other."""
import subprocess
import sys
from pathlib import Path

QUICK_ARGS = {
    "bench_xanes.py": ["--size", "512"],
    "bench_simulator.py": ["--sizes", "128", "512", "2048"],
    "bench_tomo.py": ["--width", "1024", "--angles", "900", "--rows", "4"],
}

if __name__ == "__main__":
    here = Path(__file__).parent
    status = 0
    for script in sorted(here.glob("bench_*.py")):
        print(f"=== {script.name}", flush=True)
        status |= subprocess.call([sys.executable, str(script), *QUICK_ARGS.get(script.name, [])])
    sys.exit(status)
