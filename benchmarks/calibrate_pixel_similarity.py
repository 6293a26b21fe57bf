"""Calibrate the pixel similarity's copy threshold on the 8x8 digits (all 1,797 of them).

A threshold must let an image plus small noise count as a copy of itself, while its nearest *other*
digit almost never does (< 1%). Prints both distributions and the pass rates at the chosen threshold.

    python benchmarks/calibrate_pixel_similarity.py
"""

from __future__ import annotations

import numpy as np
import torch

from invmm.config import PIXEL_THRESHOLD
from invmm.functional import concordance_correlation
from invmm.zoo.digits import digits_uint8, to_model_space


def main():
    x = to_model_space(digits_uint8()).flatten(1).double()
    n = len(x)
    # All pairs at once: CCC = 2 cov / (var a + var b + (mean a - mean b)^2).
    m, v = x.mean(1), x.var(1, unbiased=False)
    xc = x - m[:, None]
    cov = xc @ xc.T / x.shape[1]
    ccc = 2 * cov / (v[:, None] + v[None, :] + (m[:, None] - m[None, :]) ** 2)
    # Cross-check the matrix against the library function on a few rows.
    rows = torch.arange(0, n, 97)
    ref = concordance_correlation(x[rows].repeat_interleave(n, 0), x.repeat(len(rows), 1)).view(len(rows), n)
    assert torch.allclose(ref.double(), ccc[rows], atol=1e-5)
    ccc.fill_diagonal_(-2)
    nearest = ccc.max(1).values.numpy()
    print(f"digits: {n}; threshold {PIXEL_THRESHOLD}\n")
    print("| nearest distinct digit | value |\n|---|---|")
    for q in (50, 90, 99, 99.9, 100):
        print(f"| {q}th percentile | {np.percentile(nearest, q):.4f} |")
    print(f"| fraction >= threshold | {np.mean(nearest >= PIXEL_THRESHOLD):.4f} |")
    print("\n| image + N(0, s^2) noise, s in [-1,1] units | min | median | fraction >= threshold |")
    print("|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for s in (0.02, 0.05, 0.1, 0.2):
        noisy = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * s
        c = concordance_correlation(noisy, x).numpy()
        print(f"| s = {s} | {c.min():.4f} | {np.median(c):.4f} | {np.mean(c >= PIXEL_THRESHOLD):.3f} |")


if __name__ == "__main__":
    main()
