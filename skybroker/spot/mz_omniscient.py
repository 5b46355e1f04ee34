"""The exact multi-zone omniscient schedule: the minimum cost over every choice of market and zone
per tick, knowing every zone's whole future (the yardstick of the multi-zone policies).

Same model and DP as `omniscient` (read its docstring), with held h in {NONE, ON_DEMAND, SPOT in
zone z}: on-demand is one market (available everywhere, one price), spot in zone z has its own
availability and price, and any change of market or zone costs the restart overhead d. Per tick,
with M = min over zones of "switch to spot z" (m ticks, z up for all of them):
  V[NONE] = min(idle, switch to on-demand, M)
  V[OD]   = min(idle, continue on-demand, M)
  V[z]    = min(V[NONE], continue spot z)   (restarting in the same zone is dominated by continuing)
Packed values (cost quanta * 2^B - spot work) as in `omniscient`, so one float64 per state.
"""
from __future__ import annotations

import numpy as np

from .omniscient import Grid, OmniscientResult, Units, chunk_size, unpack
from .policies import Job

_INF = np.inf


def solve(avail: np.ndarray, job: Job, od_price: float, spot_prices, nodes: int = 1,
          chunk: int | None = None) -> OmniscientResult:
    """`avail`: (samples, zones, >= job.ticks) bool; `spot_prices`: $/h per zone (per node)."""
    avail = np.asarray(avail, bool)
    if avail.ndim == 2:
        avail = avail[None]
    Z = avail.shape[1]
    if len(spot_prices) != Z:
        raise ValueError(f"{len(spot_prices)} spot prices for {Z} zones")
    chunk = chunk or chunk_size(job, Z + 2)
    parts = [_chunk(avail[s:s + chunk], job, od_price, tuple(float(p) for p in spot_prices), nodes)
             for s in range(0, avail.shape[0], chunk)]
    if not parts:
        z = np.zeros(0)
        return OmniscientResult(z, z, z)
    return OmniscientResult(*(np.concatenate([p[j] for p in parts]) for j in range(3)))


def _chunk(avail, job, od_price, spot_prices, nodes, history: list | None = None):
    gr = Grid.of(job)
    n, Z, T = avail.shape[0], avail.shape[1], gr.T
    avail = avail[:, :, :T]
    if not gr.feasible:
        return np.full(n, _INF), np.full(n, np.nan), np.full(n, np.nan)
    un = Units.make(od_price, spot_prices, nodes, gr.g, T, gr.c // gr.wu)
    od_p = un.od_q * un.shift
    sp_p = [q * un.shift for q in un.spot_q]
    m, gs, ds = gr.m, gr.gs, gr.ds
    unav = [~avail[:, z] for z in range(Z)]
    unav_m = [~gr.spot_m(avail[:, z]) for z in range(Z)]
    H = Z + 2
    nbuf = m + 2
    buf = np.zeros((nbuf, H, n, gr.width + gr.pad))
    buf[:, :, :, gr.width:] = _INF
    inf_slot = np.full((H, n, gr.width + gr.pad), _INF)
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
        best_sw = None
        for z in range(Z):
            ss = far[2 + z, :, sl_d] + (m * sp_p[z] - w_sw)
            ss[unav_m[z][:, i]] = _INF
            best_sw = ss if best_sw is None else np.minimum(best_sw, ss, out=best_sw)
        a = np.minimum(idle, best_sw)
        np.minimum(a, nx[1, :, sl] + od_p, out=cur[1, :, sl])
        np.minimum(a, far[1, :, sl_d] + m * od_p, out=cur[0, :, sl])
        none = cur[0, :, sl]
        for z in range(Z):
            cs = nx[2 + z, :, sl] + (sp_p[z] - w_tick)
            cs[unav[z][:, i]] = _INF
            np.minimum(none, cs, out=cur[2 + z, :, sl])
        if history is not None:
            history.append(cur.copy())
    if history is not None:
        history.reverse()
        history.append(np.zeros_like(buf[0]))  # tick T: done
        history[-1][:, :, gr.width:] = _INF
    cost, spot_h = unpack(buf[0][0, :, 0], un, gr)
    od_h = np.where(np.isfinite(cost), gr.c / 3600.0 - spot_h, np.nan)
    return cost, spot_h, od_h


def plan(avail: np.ndarray, job: Job, od_price: float, spot_prices, nodes: int = 1) -> list:
    """One optimal multi-zone schedule for one window ((zones, >= job.ticks) bool): (Decision, zone) per
    tick until the work is done (zone -1 unless on spot; empty if no schedule meets the deadline).
    Replayed by `zones.simulate_zones` it costs exactly `solve(...).cost` (tests/unit/test_spot_multizone.py)."""
    from .policies import NONE, ON_DEMAND, SPOT

    avail = np.asarray(avail, bool)[None, :, :job.ticks]
    Z = avail.shape[1]
    prices = tuple(float(p) for p in spot_prices)
    hist: list = []
    if not np.isfinite(_chunk(avail, job, od_price, prices, nodes, hist)[0][0]):
        return []
    gr = Grid.of(job)
    un = Units.make(od_price, prices, nodes, gr.g, gr.T, gr.c // gr.wu)
    od_p, sp_p = un.od_q * un.shift, [q * un.shift for q in un.spot_q]
    a = avail[0]
    a_m = [gr.spot_m(a[z][None])[0] for z in range(Z)]
    out, i, k, h = [], 0, 0, 0  # h: 0 nothing held, 1 on-demand, 2 + z spot in zone z
    while i < gr.T and i * gr.g - k * gr.u < gr.c:
        v = hist[i][h, 0, k]
        w_tick, w_sw = gr.work_rows(i, k, k)
        far = hist[i + gr.m] if i + gr.m <= gr.T else None
        if h == 1 and v == hist[i + 1][1, 0, k] + od_p:
            out.append((ON_DEMAND, -1))
            i += 1
        elif h >= 2 and a[h - 2][i] and v == hist[i + 1][h, 0, k] + sp_p[h - 2] - w_tick[0]:
            out.append((SPOT, h - 2))
            i += 1
        elif v == hist[i + 1][0, 0, k + gr.gs]:
            out.append((NONE, -1))
            i, k, h = i + 1, k + gr.gs, 0
        else:
            moves = [(1, far[1, 0, k + gr.ds] + gr.m * od_p)] if far is not None and h != 1 else []
            moves += [(2 + z, far[2 + z, 0, k + gr.ds] + gr.m * sp_p[z] - w_sw[0])
                      for z in range(Z) if far is not None and a_m[z][i]]
            x = next(x for x, val in moves if v == val)
            out.extend([(ON_DEMAND, -1) if x == 1 else (SPOT, x - 2)] * gr.m)
            i, k, h = i + gr.m, k + gr.ds, x
    return out
