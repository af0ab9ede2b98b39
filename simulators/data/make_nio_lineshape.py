"""Derive the Ni2+ (NiO) normalized XANES line shape used by ``simulators.spectra``.

Run once, offline (needs xraylarch, which the package itself never imports)::

    .venv/bin/python simulators/data/make_nio_lineshape.py

Input: the merged ``NiO`` group of ``../shared/data/xas/NiO.prj`` (Athena project of
measured NiO transmission spectra, distributed with xraylarch's examples).

Processing:

1. ``larch.xafs.pre_edge`` with Larch defaults (pre-edge line, post-edge polynomial);
   we keep ``flat`` (normalized with the post-edge curvature removed), because the
   simulator supplies the smooth post-edge fall-off itself from xraydb's tabulated mu.
2. Energies are made relative to the normalized half-step (``flat = 0.5``, first upward
   crossing), so the simulator can place the Ni2+ half-step at any ``edge_ev``.
3. Tapers: the pre-edge residual is brought to 0 over the first 40 eV of the range and
   the EXAFS oscillation to 1 over the last 150 eV, so the table joins its constant
   extrapolations (0 below, 1 above) without a jump.
4. Written on the measured energy points (rounded to 1 meV / 1e-5), as CSV.
"""

from pathlib import Path

import numpy as np
from larch.io import read_athena
from larch.xafs import pre_edge

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "shared" / "data" / "xas" / "NiO.prj"
TARGET = HERE / "nio_normalized.csv"


def main(source=SOURCE, target=TARGET):
    project = read_athena(str(source))
    group = project.NiO  # the merge of the individual NiO scans
    pre_edge(group)
    energy = np.asarray(group.energy, dtype=float)
    flat = np.asarray(group.flat, dtype=float)

    near = (energy > group.e0 - 20) & (energy < group.e0 + 10)
    e_near, f_near = energy[near], flat[near]
    i = np.nonzero(f_near >= 0.5)[0][0]
    e_half = np.interp(0.5, f_near[i - 1 : i + 1], e_near[i - 1 : i + 1])
    de = energy - e_half

    lo_w = np.clip((de - de[0]) / 40.0, 0.0, 1.0)
    hi_w = np.clip((de[-1] - de) / 150.0, 0.0, 1.0)
    shape = flat * lo_w
    above = de > 0
    shape[above] = 1.0 + (flat[above] - 1.0) * hi_w[above]

    header = (
        "Ni2+ (NiO) normalized XANES line shape, derived by make_nio_lineshape.py\n"
        f"source: NiO.prj group 'NiO' (merge); larch pre_edge e0={group.e0:.3f} eV, "
        f"edge_step={group.edge_step:.5f}; half-step at {e_half:.3f} eV "
        "in the file's own energy calibration\n"
        "columns: de_ev = energy - half-step energy (eV), norm = flattened normalized mu"
    )
    np.savetxt(target, np.c_[de, shape], fmt=["%.3f", "%.5f"], delimiter=",",
               header=header + "\nde_ev,norm", comments="# ")
    return e_half


if __name__ == "__main__":
    print(f"half-step at {main():.3f} eV; wrote {TARGET}")
