"""A straightforward reference implementation of the omniscient DP, for `bench_spot_dp.py` only.

The textbook backward recursion over ticks, with state (k, h) (k = slack consumed in units of
u = gcd(tick, overhead), h = held instance), vectorised over samples and over every k in [0, K]
at every tick, in float64, one array per held instance. It returns the minimum cost only (no spot
hours), so it does less work than `skybroker.spot.omniscient.solve`; it is the baseline the bench
measures the packed, windowed DP against, in the same run, on the same windows.
"""
from __future__ import annotations

import math

import numpy as np


def solve_reference(avail: np.ndarray, job, prices, chunk: int = 256) -> np.ndarray:
    avail = np.asarray(avail, dtype=bool)
    return np.concatenate([_chunk(avail[s:s + chunk], job, prices)
                           for s in range(0, avail.shape[0], chunk)])


def _chunk(avail, job, prices):
    g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
    n = avail.shape[0]
    avail = avail[:, :T]
    od, sp = prices.per_tick(g)
    u = math.gcd(g, d)
    gs, ds = g // u, d // u
    m = max(1, -(-d // g))
    s0 = T * g - c
    if s0 < d:
        return np.full(n, np.inf)
    K = s0 // u
    W = K + 1 + max(gs, ds)
    avail_m = np.ones_like(avail)
    for j in range(m):  # spot up in each of the m ticks of a switch
        avail_m[:, :T - j] &= avail[:, j:]
        avail_m[:, T - j:] = False
    V = {i: None for i in range(T + 1)}
    end = np.full((3, n, W), np.inf)
    end[:, :, :K + 1] = 0.0
    V[T] = end
    inf = np.full((3, n, W), np.inf)
    for i in range(T - 1, -1, -1):
        nxt = V[i + 1]
        far = V[i + m] if i + m <= T else inf
        cur = np.full((3, n, W), np.inf)
        pen = np.where(avail[:, i], 0.0, np.inf)[:, None]
        pen_m = np.where(avail_m[:, i], 0.0, np.inf)[:, None]
        idle = nxt[0, :, gs:gs + K + 1]
        cs = nxt[1, :, :K + 1] + sp + pen
        co = nxt[2, :, :K + 1] + od
        ss = far[1, :, ds:ds + K + 1] + m * sp + pen_m
        so = far[2, :, ds:ds + K + 1] + m * od
        cur[0, :, :K + 1] = np.minimum(np.minimum(idle, ss), so)
        cur[1, :, :K + 1] = np.minimum(np.minimum(idle, cs), so)
        cur[2, :, :K + 1] = np.minimum(np.minimum(idle, ss), co)
        if i * g >= c:
            cur[:, :, :min(K, (i * g - c) // u) + 1] = 0.0
        V[i] = cur
        if i + m + 1 <= T:
            V[i + m + 1] = None
    return V[0][0, :, 0].copy()
