"""Trace-driven simulation of spot policies, and the experiment loop (random starts over traces).

Semantics (the same in `omniscient.py`):
- tick i covers [i*g, (i+1)*g); spot is usable in tick i iff the trace says so at start + i;
- a held spot instance that is unavailable at the start of a tick is preempted (held -> NONE),
  work done so far is kept (checkpointing);
- choosing an instance other than the one held costs `overhead` seconds of no progress (carried over
  tick boundaries), billed at the new instance's price; going idle is free;
- an instance held during a tick is billed for the whole tick; the run stops when the work is done;
- the deadline is rounded down to whole ticks (`Job.ticks`).
Pure: returns data, prints nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .policies import (
    NONE,
    ON_DEMAND,
    SPOT,
    Decision,
    Job,
    Observation,
    Policy,
    make_policy,
)

PAPER_ON_DEMAND_PRICE = 3.06  # $/h, p3.2xlarge us-west-2, as in the paper's simulator
PAPER_SPOT_PRICE = 0.9731


@dataclass(frozen=True)
class Prices:
    on_demand: float = PAPER_ON_DEMAND_PRICE  # $/h per node
    spot: float = PAPER_SPOT_PRICE
    nodes: int = 1  # a gang of N nodes pays N times

    def per_tick(self, tick_s: int) -> tuple[float, float]:
        f = tick_s / 3600.0 * self.nodes
        return self.on_demand * f, self.spot * f


@dataclass
class Outcome:
    cost: float  # $
    spot_hours: float  # work done on spot (compute hours)
    od_hours: float  # work done on on-demand
    met: bool  # finished by the deadline
    finish_hours: float  # wall-clock time used
    preemptions: int = 0
    switches: int = 0


class PolicyError(RuntimeError):
    """A policy returned something illegal (e.g. SPOT while spot is unavailable)."""


def simulate(policy: Policy, avail: np.ndarray, job: Job, prices: Prices) -> Outcome:
    """Run one policy over one availability window (bool per tick, at least `job.ticks` long)."""
    g, d, c = job.tick_s, job.overhead_s, job.task_s
    od_tick, spot_tick = prices.per_tick(g)
    price = {SPOT: spot_tick, ON_DEMAND: od_tick}
    held, left, done = NONE, 0, 0
    cost = 0.0
    work_spot = work_od = 0
    preempt = switches = 0
    i = 0
    avail = avail.tolist() if isinstance(avail, np.ndarray) else list(avail)
    n = job.ticks
    if len(avail) < n:
        raise ValueError(f"availability window has {len(avail)} ticks, the job needs {n}")
    decide = policy.decide
    while i < n and done < c:
        a = bool(avail[i])
        if held is SPOT and not a:
            held, left = NONE, 0
            preempt += 1
        x = decide(Observation(i * g, done, a, held, left))
        if x is NONE:
            held, left = NONE, 0
            i += 1
            continue
        if x is SPOT and not a:
            raise PolicyError(f"{policy.name} chose SPOT at tick {i} while spot is unavailable")
        if x is not SPOT and x is not ON_DEMAND:
            raise PolicyError(f"{policy.name} returned {x!r}")
        if x is not held:
            held, left = x, d
            switches += 1
        w = g - left
        w = max(w, 0)
        left -= g - w
        w = min(w, c - done)
        done += w
        if x is SPOT:
            work_spot += w
        else:
            work_od += w
        cost += price[x]
        i += 1
    return Outcome(cost, work_spot / 3600.0, work_od / 3600.0, done >= c, i * g / 3600.0,
                   preempt, switches)


def run_plan(plan: list[Decision], avail: np.ndarray, job: Job, prices: Prices) -> Outcome:
    """Replay a fixed per-tick plan (used by tests to check the omniscient schedule)."""

    class _Plan(Policy):
        name = "plan"

        def decide(self, obs: Observation) -> Decision:
            k = int(obs.elapsed_s // job.tick_s)
            return plan[k] if k < len(plan) else NONE

    return simulate(_Plan(job), avail, job, prices)


def sample_starts(n_ticks: int, window: int, count: int, seed: int, salt: int = 0) -> np.ndarray:
    """`count` random start ticks such that [start, start + window) fits in the trace."""
    hi = n_ticks - window
    if hi < 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.integers(0, hi + 1, size=count))


def windows(avail: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(len(starts), length) bool matrix of availability windows."""
    idx = starts[:, None] + np.arange(length)[None, :]
    return avail[idx]


@dataclass
class Row:
    """One (trace, start, policy) sample."""

    trace: str
    start: int
    policy: str
    cost: float
    norm_cost: float  # cost / always-on-demand cost on the same sample
    gap: float  # (cost - omniscient) / always-on-demand cost
    spot_hours: float
    od_hours: float
    met: bool
    omniscient_met: bool

    def as_dict(self) -> dict:
        return asdict(self)


def run_samples(trace_name: str, avail: np.ndarray, starts: np.ndarray, job: Job, prices: Prices,
                policies: list[str], omniscient: dict | None, use_history: bool = True,
                clocks=None) -> list[Row]:
    """Simulate `policies` on every start; `omniscient` holds the DP results for the same starts
    (arrays `cost`, `spot_hours`, `od_hours`), used for the gap and as a row of its own.
    With `use_history`, policies that learn from a zone's past (`uses_history`) see the trace
    before each start (only the past: the same data a broker watching the zone would have).
    Policies with a batch version run vectorised over the starts (same outcomes as `simulate`);
    `clocks` (each start on the week clock) reach the weekly variants of `mdp`."""
    from .batch import on_demand_cost, simulate_batch, batch_for

    n = job.ticks
    W = windows(avail, starts, n) if len(starts) else np.zeros((0, n), bool)
    od_cost = on_demand_cost(job, prices)
    ns = len(starts)
    if omniscient is not None:
        o_cost = np.asarray(omniscient["cost"], float)
        o_met = np.isfinite(o_cost)
    else:
        o_cost, o_met = np.full(ns, np.nan), np.ones(ns, bool)
    res = []
    for name in policies:
        if name == "omniscient":
            if omniscient is None:
                continue
            res.append((name, o_cost, np.asarray(omniscient["spot_hours"]),
                        np.asarray(omniscient["od_hours"]), o_met))
            continue
        hist = [avail[:s] for s in starts.tolist()] if use_history else None
        bp = batch_for(name, job, ns, prices, hist, clocks)
        if bp is not None:
            out = simulate_batch(bp, W, job, prices)
            res.append((name, out.cost, out.spot_hours, out.od_hours, out.met))
        else:
            outs = [simulate(make_policy(name, job, prices, None if hist is None else hist[k]), w, job,
                             prices) for k, w in enumerate(W)]
            res.append((name, *(np.array([getattr(o, f) for o in outs])
                                for f in ("cost", "spot_hours", "od_hours", "met"))))
    rows: list[Row] = []
    for s_idx, start in enumerate(starts.tolist()):
        for name, cost, sh, oh, met in res:
            c = float(cost[s_idx])
            rows.append(Row(trace_name, int(start), name, c, c / od_cost, (c - o_cost[s_idx]) / od_cost,
                            float(sh[s_idx]), float(oh[s_idx]), bool(met[s_idx]), bool(o_met[s_idx])))
    return rows


def summarise(rows: list[Row]) -> list[dict]:
    """Per policy: mean and p25/p75 of normalised cost and of the gap, hours, deadline-met rate."""
    out = []
    names = list(dict.fromkeys(r.policy for r in rows))
    for name in names:
        rs = [r for r in rows if r.policy == name]
        nc = np.array([r.norm_cost for r in rs])
        gap = np.array([r.gap for r in rs])
        fin = np.isfinite(nc)
        gfin = np.isfinite(gap)
        out.append({
            "policy": name,
            "samples": len(rs),
            "mean_norm_cost": float(nc[fin].mean()) if fin.any() else float("nan"),
            "p25_norm_cost": float(np.percentile(nc[fin], 25)) if fin.any() else float("nan"),
            "p75_norm_cost": float(np.percentile(nc[fin], 75)) if fin.any() else float("nan"),
            "spot_hours": float(np.mean([r.spot_hours for r in rs])),
            "od_hours": float(np.mean([r.od_hours for r in rs])),
            "spot_hours_std": float(np.std([r.spot_hours for r in rs])),
            "deadline_met": float(np.mean([r.met for r in rs])),
            "mean_gap": float(gap[gfin].mean()) if gfin.any() else float("nan"),
            "p25_gap": float(np.percentile(gap[gfin], 25)) if gfin.any() else float("nan"),
            "p75_gap": float(np.percentile(gap[gfin], 75)) if gfin.any() else float("nan"),
        })
    return out
