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

Speed (issue 17), all exact:
- packed values: a cost is an integer number of price quanta (`Units`: prices in whole 10^-dec $/h,
  dec = 6 for every catalog and paper price), so one float64 holds cost * 2^B - spot work (work in
  units of gcd(u, C), < 2^B). A single `np.minimum` then picks the cheapest schedule and, among equal
  costs, the one with the most spot work, and the spot hours come out of the same number: no second
  array, no `where`. Exact while the packed value stays below 2^53 (`Units` checks it).
- feasible window: at tick i only k in [first not-done k, min(K, i*g/u)] is computed (more slack than
  the time elapsed cannot have been consumed; states past the work are done, value 0). Entries outside
  the window are never read (the indices read at tick i stay inside the windows of ticks i+1, i+m).
- a ring buffer of m + 2 ticks, and chunks of samples sized to stay in the cache.
`bench/bench_spot_dp.py` times this against a straightforward reference in the same run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .policies import Job
from .simulator import Prices

_INF = np.inf
_MAX_EXACT = 2.0 ** 53


@dataclass
class OmniscientResult:
    cost: np.ndarray  # $ per sample, inf when no schedule meets the deadline
    spot_hours: np.ndarray  # work done on spot in an optimal schedule
    od_hours: np.ndarray

    def as_dict(self) -> dict:
        return {"cost": self.cost, "spot_hours": self.spot_hours, "od_hours": self.od_hours}


@dataclass(frozen=True)
class Units:
    """Integer prices per tick (quanta) and the packing shift; dollars = quanta * dollars_per_q."""

    od_q: int
    spot_q: tuple[int, ...]
    dollars_per_q: float
    shift: float  # 2^B: packed = cost_q * shift - work

    @classmethod
    def make(cls, od: float, spots: tuple[float, ...], nodes: int, tick_s: int, ticks: int,
             work_units: int) -> Units:
        """Prices are rounded to whole 10^-dec $/h (dec from 6 down until the packed value is exact;
        6 decimals cover the catalogs' and the paper's prices, so those costs are exact)."""
        bits = max(1, int(work_units).bit_length())
        for dec in range(6, -1, -1):
            scale = 10 ** dec
            qs = [round(p * scale * nodes) for p in (od, *spots)]
            gq = math.gcd(*qs) or 1
            qs = [q // gq for q in qs]
            if (ticks + 1) * max(qs) * 2.0 ** bits < _MAX_EXACT:
                return cls(qs[0], tuple(qs[1:]), gq * tick_s / 3600.0 / scale, 2.0 ** bits)
        raise ValueError("the job has too many ticks for an exact DP")  # pragma: no cover


def solve(avail: np.ndarray, job: Job, prices: Prices, chunk: int | None = None) -> OmniscientResult:
    """Minimum cost for each row of `avail` ((samples, >= job.ticks) bool)."""
    avail = np.asarray(avail, dtype=bool)
    if avail.ndim == 1:
        avail = avail[None, :]
    if chunk is None:
        chunk = chunk_size(job, 3)
    parts = [_solve_chunk(avail[s:s + chunk], job, prices) for s in range(0, avail.shape[0], chunk)]
    if not parts:
        z = np.zeros(0)
        return OmniscientResult(z, z, z)
    return OmniscientResult(*(np.concatenate([p[j] for p in parts]) for j in range(3)))


def chunk_size(job: Job, states: int) -> int:
    """Samples per chunk: the ring buffer and temporaries of a chunk fit in about 6 MB (L3-resident)."""
    g, d = job.tick_s, job.overhead_s
    u = math.gcd(g, d)
    width = max(0, job.ticks * g - job.task_s) // u + max(g, d) // u + 2
    per_sample = (max(1, -(-d // g)) + 2 + 2) * states * width * 8
    return int(max(4, min(256, (6 << 20) // per_sample)))


@dataclass
class Grid:
    """The DP's discretisation of one job (shared with the multi-zone DP)."""

    g: int
    d: int
    c: int
    T: int
    u: int
    gs: int
    ds: int
    m: int
    K: int
    wu: int  # unit of spot work
    feasible: bool

    @classmethod
    def of(cls, job: Job) -> Grid:
        g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
        u = math.gcd(g, d)
        s0 = T * g - c
        return cls(g, d, c, T, u, g // u, d // u, max(1, -(-d // g)), max(0, s0) // u,
                   math.gcd(u, c), s0 >= d)

    @property
    def width(self) -> int:
        return self.K + 1

    @property
    def pad(self) -> int:
        return max(self.gs, self.ds) + 1

    def window(self, i: int) -> tuple[int, int]:
        """[lo, hi]: states of tick i that are neither done nor unreachable."""
        lo = (i * self.g - self.c) // self.u + 1 if i * self.g >= self.c else 0
        return lo, min(self.K, i * self.gs)

    def work_rows(self, i: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Work (in units wu) of one tick / of a switch's m ticks, from each k of the window."""
        left = self.c - (i * self.g - np.arange(lo, hi + 1) * self.u)
        tick = np.clip(left, 0, self.g) // self.wu
        sw = np.clip(left, 0, self.m * self.g - self.d) // self.wu
        return tick.astype(float), sw.astype(float)

    def spot_m(self, avail: np.ndarray) -> np.ndarray:
        """Spot available in every tick of [i, i+m): a switch to spot survives its overhead."""
        if self.m == 1:
            return avail
        n, T = avail.shape[0], self.T
        cs = np.concatenate([np.zeros((n, 1), np.int32), np.cumsum(avail, axis=1, dtype=np.int32)],
                            axis=1)
        ends = np.minimum(np.arange(T) + self.m, T)
        return (cs[:, ends] - cs[:, :T]) == self.m


def unpack(v: np.ndarray, units: Units, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(cost $, spot work hours) from packed values (inf -> inf, nan)."""
    ok = np.isfinite(v)
    vq = np.where(ok, v, 0.0)
    cost_q = np.ceil(vq / units.shift)
    work = cost_q * units.shift - vq
    return (np.where(ok, cost_q * units.dollars_per_q, _INF),
            np.where(ok, work * grid.wu / 3600.0, np.nan))


def plan(avail: np.ndarray, job: Job, prices: Prices) -> list:
    """One optimal schedule for one window: the decision (policies.Decision) of every tick until the
    work is done (empty if no schedule meets the deadline). Replaying it with `simulator.run_plan`
    costs exactly `solve(...).cost`."""
    from .policies import NONE, ON_DEMAND, SPOT

    avail = np.asarray(avail, bool)[None, :job.ticks]
    hist: list = []
    cost = _solve_chunk(avail, job, prices, hist)[0][0]
    if not np.isfinite(cost):
        return []
    gr = Grid.of(job)
    un = Units.make(prices.on_demand, (prices.spot,), prices.nodes, gr.g, gr.T, gr.c // gr.wu)
    price = (0.0, un.spot_q[0] * un.shift, un.od_q * un.shift)
    a, a_m = avail[0], gr.spot_m(avail)[0]
    out, i, k, h = [], 0, 0, 0
    while i < gr.T and i * gr.g - k * gr.u < gr.c:
        v = hist[i][h, 0, k]
        w_tick, w_sw = gr.work_rows(i, k, k)
        far = hist[i + gr.m] if i + gr.m <= gr.T else None
        if h and (h != 1 or a[i]) and v == hist[i + 1][h, 0, k] + price[h] - (w_tick[0] if h == 1 else 0):
            out.append((NONE, SPOT, ON_DEMAND)[h])
            i += 1
        elif v == hist[i + 1][0, 0, k + gr.gs]:
            out.append(NONE)
            i, k, h = i + 1, k + gr.gs, 0
        else:
            x = next(x for x in (1, 2) if x != h and far is not None and (x == 2 or a_m[i]) and
                     v == far[x, 0, k + gr.ds] + gr.m * price[x] - (w_sw[0] if x == 1 else 0))
            out.extend([(NONE, SPOT, ON_DEMAND)[x]] * gr.m)
            i, k, h = i + gr.m, k + gr.ds, x
    return out


def _solve_chunk(avail: np.ndarray, job: Job, prices: Prices, history: list | None = None,
                 final: list | None = None):
    """`final`: receives (ring buffer, its length, units) after tick 0 (ticks 0..m+1 still in it)."""
    gr = Grid.of(job)
    n = avail.shape[0]
    T = gr.T
    avail = avail[:, :T]
    if not gr.feasible:  # even an immediate switch to on-demand cannot finish in time
        return np.full(n, _INF), np.full(n, np.nan), np.full(n, np.nan)
    un = Units.make(prices.on_demand, (prices.spot,), prices.nodes, gr.g, T, gr.c // gr.wu)
    od_p, sp_p = un.od_q * un.shift, un.spot_q[0] * un.shift
    m, gs, ds = gr.m, gr.gs, gr.ds
    unav, unav_m = ~avail, ~gr.spot_m(avail)
    nbuf = m + 2
    # zero everywhere (done states read as 0, unreachable ones are never read), inf in the pad
    buf = np.zeros((nbuf, 3, n, gr.width + gr.pad))
    buf[:, :, :, gr.width:] = _INF
    inf_slot = np.full((3, n, gr.width + gr.pad), _INF)
    for i in range(T - 1, -1, -1):
        lo, hi = gr.window(i)
        if lo > hi:
            if history is not None:
                history.append(buf[i % nbuf].copy())
            continue
        nx, cur = buf[(i + 1) % nbuf], buf[i % nbuf]
        far = buf[(i + m) % nbuf] if i + m <= T else inf_slot
        w_tick, w_sw = gr.work_rows(i, lo, hi)
        sl, sl_g, sl_d = slice(lo, hi + 1), slice(lo + gs, hi + 1 + gs), slice(lo + ds, hi + 1 + ds)
        idle = nx[0, :, sl_g]
        cs = nx[1, :, sl] + (sp_p - w_tick)
        cs[unav[:, i]] = _INF
        co = nx[2, :, sl] + od_p
        ss = far[1, :, sl_d] + (m * sp_p - w_sw)
        ss[unav_m[:, i]] = _INF
        so = far[2, :, sl_d] + m * od_p
        a = np.minimum(idle, so)
        np.minimum(a, ss, out=cur[0, :, sl])
        np.minimum(a, cs, out=cur[1, :, sl])
        np.minimum(np.minimum(idle, ss, out=ss), co, out=cur[2, :, sl])
        if history is not None:
            history.append(cur.copy())
    if history is not None:
        history.reverse()
        history.append(np.zeros_like(buf[0]))  # tick T: done
        history[-1][:, :, gr.width:] = _INF
    if final is not None:
        final.extend((buf, nbuf, un))
    cost, spot_h = unpack(buf[0][0, :, 0], un, gr)
    od_h = np.where(np.isfinite(cost), gr.c / 3600.0 - spot_h, np.nan)
    return cost, spot_h, od_h
