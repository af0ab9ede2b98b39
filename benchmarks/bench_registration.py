"""Benchmark: estimate_shift vs skimage phase_cross_correlation(upsample_factor=100).

Both on the same 2048 x 2048 float32 pairs (a smooth natural image shifted by a
known sub-pixel amount with ``scipy.ndimage.fourier_shift``, with and without
noise), in the same run; prints times (best of N), errors and the speed ratio.
Also times the live per-frame path (``StackAligner.add``, reference spectrum cached).

Usage::

    python benchmarks/bench_registration.py             # 2048^2
    python benchmarks/bench_registration.py --size 1024
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from skimage import data, transform
from skimage.registration import phase_cross_correlation

from txm_live.analysis import StackAligner, estimate_shift

SHIFTS = [(3.37, -7.81), (-20.42, 15.55), (0.21, -0.49), (-1.73, 0.66)]


def best_of(fn, n):
    ts = []
    out = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.02, help="Gaussian noise (image range 0-1)")
    args = ap.parse_args()

    img = transform.resize(data.camera().astype(np.float64) / 255.0, (args.size, args.size),
                           order=3).astype(np.float32)
    rng = np.random.default_rng(0)
    estimate_shift(img[:64, :64], img[:64, :64])  # compile / load the numba cache
    print(f"{args.size}^2 float32 pairs; times are the best of {args.repeat}")
    print(f"{'true shift':>18} {'noise':>6} | {'txm-live s':>10} {'err px':>7} | "
          f"{'skimage s':>9} {'err px':>7} | ratio")
    ratios, errs, sk_errs, t_ours_all = [], [], [], []
    for true in SHIFTS:
        moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), true)).real.astype(np.float32)
        for noise in (0.0, args.noise):
            a = img + noise * rng.standard_normal(img.shape).astype(np.float32)
            b = moved + noise * rng.standard_normal(img.shape).astype(np.float32)
            t_ours, s = best_of(lambda: estimate_shift(a, b), args.repeat)
            t_sk, s_sk = best_of(lambda: phase_cross_correlation(a, b, upsample_factor=100)[0],
                                 max(2, args.repeat // 2))
            e = float(np.hypot(s[0] + true[0], s[1] + true[1]))
            e_sk = float(np.hypot(s_sk[0] + true[0], s_sk[1] + true[1]))
            ratios.append(t_sk / t_ours)
            errs.append(e)
            sk_errs.append(e_sk)
            t_ours_all.append(t_ours)
            print(f"{str(true):>18} {noise:>6.2f} | {t_ours:>10.3f} {e:>7.4f} | {t_sk:>9.3f} "
                  f"{e_sk:>7.4f} | {t_sk / t_ours:.1f}x")
    print(f"\nestimate_shift: median {np.median(t_ours_all):.3f} s, max error {max(errs):.4f} px; "
          f"skimage max error {max(sk_errs):.4f} px; median speed ratio {np.median(ratios):.1f}x")

    aligner = StackAligner(mode="reference")
    aligner.add(img)
    frame = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), (1.3, -0.7))).real.astype(np.float32)
    t_live, _ = best_of(lambda: aligner.add(frame), args.repeat)
    print(f"live StackAligner.add (reference spectrum cached): {t_live:.3f} s per frame")


if __name__ == "__main__":
    main()
