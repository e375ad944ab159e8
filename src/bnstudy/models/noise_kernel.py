"""The compiled per-element loop behind noisy BatchNorm on the CPU (see `norms.CpuNoise`).

Why compiled: Algorithm 1 draws two random numbers per activation per step (~10 million a step
for VGG-11 x0.25 at batch 128). Drawing them with torch's single-threaded CPU generator and
applying them in separate passes made a noisy-BatchNorm step ~1.9x a BatchNorm step on the
project's 2-core Xeon; this loop draws, looks up, adds the per-unit terms and applies the noise in
one pass.

Randomness is counter-based: element k (in memory order) gets z = splitmix64(key + k * golden),
whose two low 16-bit halves index the quantile tables of N(0, r_sigma) and U(-r_mu, r_mu). So
the numbers are a pure function of (key, layout), whatever the thread count or block split.

Not vectorised (LLVM emits no gathers for the table lookups on this CPU): ~1.1 ns an element in
cache, ~1.6 ns streaming. A bf16 variant (reading and rounding bf16 bit patterns in the loop)
measured 2.3x slower than converting with torch around this loop, so bf16 goes through float32.
Imported lazily: only jobs that draw CPU noise pay numba's import and its (cached) compile.
"""

from __future__ import annotations

import numba
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S16, S27, S30, S31, LOW16 = (np.uint64(v) for v in (16, 27, 30, 31, 0xFFFF))


@numba.njit(inline="always")
def _splitmix64(z):
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return z ^ (z >> S31)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def noise_f32(x, y, s, row_mu, row_sigma, col_mu, col_sigma, normal, uniform, key, lo, hi):
    """Rows lo..hi of the (rows, width) float32 views: s = sigma + N, y = s * x + mu + U."""
    width = x.shape[1]
    for i in range(lo, hi):
        rm, rs = row_mu[i], row_sigma[i]
        base = key + np.uint64(i) * np.uint64(width) * GOLDEN
        for j in range(width):
            z = _splitmix64(base + np.uint64(j) * GOLDEN)
            sv = normal[z & LOW16] + (rs + col_sigma[j])
            s[i, j] = sv
            y[i, j] = sv * x[i, j] + (uniform[(z >> S16) & LOW16] + (rm + col_mu[j]))

