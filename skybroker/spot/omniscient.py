"""The omniscient policy: the exact minimum-cost schedule given the whole future trace.

Dynamic programming backwards over ticks, vectorised over samples and over the job's slack.

State at the start of tick i: (k, h), h in {NONE, SPOT, ON_DEMAND} held with no overhead pending,
k = slack consumed so far in units of u = gcd(tick, overhead). Progress is p = i*g - k*u, so the
deadline (T whole ticks) is met iff k*u <= S0 = T*g - C, and the job is done at tick i iff p >= C.

Actions from (i, k, h):
- idle:              -> (i+1, k + g/u, NONE), free;
- continue h:        -> (i+1, k, h), one tick at h's price (SPOT only if available at i);
- switch to X != h:  -> (i+m, k + d/u, X), m = ceil(d/g) ticks at X's price (SPOT: available for all m).
A switch is never left before its first tick with progress: any schedule that does so (voluntarily or
by a preemption) is dominated by idling over those ticks instead (same progress, no cost, same state
afterwards), so restricting switches to these "macro" steps keeps the optimum exact while the state
needs no "overhead left" component. The simulator's model (see simulator.py) is the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .policies import Job
from .simulator import Prices

_INF = np.inf


@dataclass
class OmniscientResult:
    cost: np.ndarray  # $ per sample, inf when no schedule meets the deadline
    spot_hours: np.ndarray  # work done on spot in an optimal schedule
    od_hours: np.ndarray

    def as_dict(self) -> dict:
        return {"cost": self.cost, "spot_hours": self.spot_hours, "od_hours": self.od_hours}


def solve(avail: np.ndarray, job: Job, prices: Prices, chunk: int | None = None,
          memory_bytes: int = 300 << 20) -> OmniscientResult:
    """Minimum cost for each row of `avail` ((samples, >= job.ticks) bool).

    Samples are solved together in chunks sized to stay within about `memory_bytes`."""
    avail = np.asarray(avail, dtype=bool)
    if avail.ndim == 1:
        avail = avail[None, :]
    if chunk is None:
        g, d = job.tick_s, job.overhead_s
        u = math.gcd(g, d)
        width = max(0, job.ticks * g - job.task_s) // u + 1 + max(g, d) // u + 1
        per_sample = (max(1, -(-d // g)) + 2) * 3 * width * 16 + job.ticks * 16
        chunk = int(max(1, min(512, memory_bytes // per_sample)))
    parts = [_solve_chunk(avail[s:s + chunk], job, prices) for s in range(0, avail.shape[0], chunk)]
    if not parts:
        z = np.zeros(0)
        return OmniscientResult(z, z, z)
    return OmniscientResult(*(np.concatenate([p[j] for p in parts]) for j in range(3)))


def _solve_chunk(avail: np.ndarray, job: Job, prices: Prices):
    g, d, c = job.tick_s, job.overhead_s, job.task_s
    T = job.ticks
    n = avail.shape[0]
    avail = avail[:, :T]
    od_tick, spot_tick = prices.per_tick(g)
    u = math.gcd(g, d)
    gs, ds = g // u, d // u
    m = max(1, -(-d // g))  # ticks taken by a switch (the last one may make some progress)
    s0 = T * g - c
    if s0 < d:  # even an immediate switch to on-demand cannot finish in time
        inf = np.full(n, _INF)
        return inf, np.full(n, np.nan), np.full(n, np.nan)
    K = s0 // u  # consumed slack k in [0, K]
    width = K + 1
    pad = max(gs, ds) + 1
    kk = np.arange(width)

    # spot available in every tick of [i, i+m): a switch to spot survives its overhead
    if m == 1:
        avail_m = avail
    else:
        cs = np.concatenate([np.zeros((n, 1), np.int32), np.cumsum(avail, axis=1, dtype=np.int32)],
                            axis=1)
        ends = np.minimum(np.arange(T) + m, T)
        avail_m = (cs[:, ends] - cs[:, :T]) == m

    # additive penalties: +inf where spot cannot be taken
    pen_now = np.where(avail, 0.0, _INF)
    pen_m = np.where(avail_m, 0.0, _INF)
    nbuf = m + 2
    vbuf = np.full((nbuf, 3, n, width + pad), _INF)  # ring of V_i, i mod nbuf
    wbuf = np.zeros((nbuf, 3, n, width + pad))  # spot work along the chosen path
    vbuf[T % nbuf, :, :, :width] = 0.0  # at tick T every k <= K is done
    inf_v = np.full((3, n, width + pad), _INF)
    zero_w = np.zeros((3, n, width + pad))

    def pick(a, b):
        """Element-wise min of (value, spot work) pairs."""
        better = b[0] < a[0]
        return np.where(better, b[0], a[0]), np.where(better, b[1], a[1])

    for i in range(T - 1, -1, -1):
        vn, wn = vbuf[(i + 1) % nbuf], wbuf[(i + 1) % nbuf]
        if i + m <= T:
            vm, wm = vbuf[(i + m) % nbuf], wbuf[(i + m) % nbuf]
        else:
            vm, wm = inf_v, zero_w
        v, w = vbuf[i % nbuf], wbuf[i % nbuf]
        p = i * g - kk * u  # progress at (i, k)
        # work done by one full tick / by a switch's m ticks (capped at the work left)
        w_tick = np.clip(c - p, 0, g).astype(float)
        w_sw = np.clip(c - p, 0, m * g - d).astype(float)

        idle = (vn[0, :, gs:gs + width], wn[0, :, gs:gs + width])
        cont_s = (vn[1, :, :width] + (spot_tick + pen_now[:, i:i + 1]), wn[1, :, :width] + w_tick)
        cont_o = (vn[2, :, :width] + od_tick, wn[2, :, :width])
        sw_s = (vm[1, :, ds:ds + width] + (m * spot_tick + pen_m[:, i:i + 1]),
                wm[1, :, ds:ds + width] + w_sw)
        sw_o = (vm[2, :, ds:ds + width] + m * od_tick, wm[2, :, ds:ds + width])
        a = pick(idle, sw_o)
        b = pick(idle, sw_s)
        for h, best in ((0, pick(a, sw_s)), (1, pick(a, cont_s)), (2, pick(b, cont_o))):
            v[h, :, :width], w[h, :, :width] = best
        if i * g >= c:  # states already done
            kd = min(K, (i * g - c) // u)
            v[:, :, :kd + 1] = 0.0
            w[:, :, :kd + 1] = 0.0
    v0, w0 = vbuf[0], wbuf[0]
    cost = v0[0, :, 0].copy()
    ok = np.isfinite(cost)
    spot_h = np.where(ok, w0[0, :, 0] / 3600.0, np.nan)
    od_h = np.where(ok, c / 3600.0 - spot_h, np.nan)
    return cost, spot_h, od_h
