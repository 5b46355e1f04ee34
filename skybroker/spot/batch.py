"""The simulator vectorised over samples, and batch versions of the built-in policies.

`simulate_batch` runs one policy over many availability windows at once with exactly the rules of
`simulator.simulate` (same outcome per sample; `tests/unit/test_spot_batch.py` checks it against the
scalar loop). A policy class opts in with a classmethod `batch(job, n) -> BatchPolicy`; a BatchPolicy
maps a `BatchObs` (arrays over samples) to an int8 array of decisions (0 idle, 1 spot, 2 on-demand),
a pure function of the observation and its own per-sample arrays, like the scalar `decide`.
Policies without `batch` run through the scalar loop. Markets are coded NONE=0, SPOT=1, ON_DEMAND=2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .policies import Greedy, Job, OnDemand, SlackAware, UniformProgress

N_, S_, O_ = 0, 1, 2


@dataclass
class BatchObs:
    tick: int
    elapsed_s: int
    progress_s: np.ndarray  # int64 per sample
    spot_available: np.ndarray  # bool
    held: np.ndarray  # int8
    overhead_left_s: np.ndarray  # int64


class BatchPolicy:
    def __init__(self, job: Job, n: int):
        self.job, self.n = job, n

    def decide(self, obs: BatchObs) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def safety_net(self, obs: BatchObs, margin_s: int) -> np.ndarray:
        """Policy._safety_net over samples: R(t) < C(t) + margin, rounded to whole ticks."""
        j = self.job
        left = (j.deadline_s - obs.elapsed_s) // j.tick_s * j.tick_s
        need = -((obs.progress_s - j.task_s - margin_s) // j.tick_s) * j.tick_s
        return need >= left

    def slack(self, obs: BatchObs) -> np.ndarray:
        j = self.job
        left = (j.deadline_s - obs.elapsed_s) // j.tick_s * j.tick_s
        return left - (j.task_s - obs.progress_s)


class _OnDemandB(BatchPolicy):
    def decide(self, obs):
        return np.full(self.n, O_, np.int8)


class _GreedyB(BatchPolicy):
    def __init__(self, job, n):
        super().__init__(job, n)
        self.committed = np.zeros(n, bool)

    def decide(self, obs):
        a, held = obs.spot_available, obs.held
        stay = (held == S_) & a & ~self.committed
        net = ~self.committed & ~stay & self.safety_net(obs, 2 * self.job.overhead_s)
        self.committed |= net
        out = np.where(a, S_, N_).astype(np.int8)
        out[self.committed] = O_
        return out


class _UniformB(BatchPolicy):
    def __init__(self, job, n, tie_stays=False):
        super().__init__(job, n)
        self.tie = tie_stays
        self.committed = np.zeros(n, bool)
        self.rate = job.task_s / job.deadline_s

    def decide(self, obs):
        a, held, cp, t, d = (obs.spot_available, obs.held, obs.progress_s, obs.elapsed_s,
                             self.job.overhead_s)
        stay = (held == S_) & a & ~self.committed
        net = ~self.committed & ~stay & self.safety_net(obs, 2 * d)
        self.committed |= net
        out = np.where(a, S_, np.where(cp < t * self.rate, O_, N_)).astype(np.int8)
        ep = (t + 2 * d) * self.rate
        out[(held == O_) & (~a | ((cp <= ep) if self.tie else (cp < ep)))] = O_
        out[stay] = S_
        out[self.committed] = O_
        return out


class _SlackAwareB(BatchPolicy):
    def __init__(self, job, n, scalar: SlackAware):
        super().__init__(job, n)
        self.p = scalar  # parameters and reserve() from the scalar policy
        self.committed = np.zeros(n, bool)
        self.up = np.zeros(n, np.int64)
        self.down = np.zeros(n, np.int64)

    def decide(self, obs):
        a, held = obs.spot_available, obs.held
        self.up = np.where(a, self.up + 1, 0)
        self.down = np.where(a, 0, self.down + 1)
        j = self.job
        stay = (held == S_) & a & ~self.committed
        net = ~self.committed & ~stay & self.safety_net(obs, 2 * j.overhead_s)
        self.committed |= net
        s = self.slack(obs)
        reserve = self.p.reserve(obs.elapsed_s)
        on_od = held == O_
        keep_od = on_od & ((s < reserve) | (self.up < self.p.confirm_ticks))
        spot = np.where(keep_od, O_, S_)
        fresh = (self.down <= self.p.outage_wait) & (s >= 2 * j.overhead_s + 3 * j.tick_s)
        nospot = np.where(on_od, O_, np.where(s >= reserve, N_, np.where(fresh, N_, O_)))
        out = np.where(a, spot, nospot).astype(np.int8)
        out[stay] = S_
        out[self.committed] = O_
        return out


def batch_for(policy_name: str, job: Job, n: int, prices=None, histories=None, clocks=None
              ) -> BatchPolicy | None:
    """The batch version of a policy for n samples; `histories` (one bool array per sample, the
    availability before its start) reach policies that use them, and `clocks` (each start on the
    week clock, s since Monday 00:00) those with `weekly` set."""
    from .policies import policy_class

    cls = policy_class(policy_name)
    if cls is OnDemand:
        return _OnDemandB(job, n)
    if cls is Greedy:
        return _GreedyB(job, n)
    if issubclass(cls, UniformProgress):
        return _UniformB(job, n, cls.tie_stays)
    if cls is SlackAware:
        return _SlackAwareB(job, n, SlackAware(job))
    maker = getattr(cls, "batch", None)
    if maker is None:
        return None
    if getattr(cls, "weekly", False):
        return maker(job, n, prices, histories, clocks)
    if getattr(cls, "uses_history", False):
        return maker(job, n, prices, histories)
    return maker(job, n, prices) if getattr(cls, "uses_prices", False) else maker(job, n)


@dataclass
class BatchOutcome:
    cost: np.ndarray
    spot_hours: np.ndarray
    od_hours: np.ndarray
    met: np.ndarray
    finish_hours: np.ndarray
    preemptions: np.ndarray
    switches: np.ndarray
    markets: np.ndarray | None = None  # (n, ticks) int8 decisions, when asked for


def simulate_batch(bp: BatchPolicy, avail: np.ndarray, job: Job, prices, record: bool = False
                   ) -> BatchOutcome:
    """`simulator.simulate` for every row of `avail` ((n, >= job.ticks) bool) at once."""
    from .simulator import PolicyError

    g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
    avail = np.asarray(avail, bool)
    n = avail.shape[0]
    if avail.shape[1] < T:
        raise ValueError(f"availability window has {avail.shape[1]} ticks, the job needs {T}")
    od_tick, spot_tick = prices.per_tick(g)
    price = np.array([0.0, spot_tick, od_tick])
    held = np.zeros(n, np.int8)
    left = np.zeros(n, np.int64)
    done = np.zeros(n, np.int64)
    cost = np.zeros(n)
    wspot = np.zeros(n, np.int64)
    wod = np.zeros(n, np.int64)
    pre = np.zeros(n, np.int64)
    sw = np.zeros(n, np.int64)
    fin = np.full(n, T, np.int64)
    active = np.ones(n, bool)
    markets = np.zeros((n, T), np.int8) if record else None
    for i in range(T):
        if not active.any():
            break
        a = avail[:, i]
        lost = (held == S_) & ~a & active
        held[lost] = N_
        left[lost] = 0
        pre += lost
        x = np.asarray(bp.decide(BatchObs(i, i * g, done, a, held, left)), np.int8)
        x = np.where(active, x, N_).astype(np.int8)
        if ((x == S_) & ~a).any():
            k = int(np.argmax((x == S_) & ~a))
            raise PolicyError(f"{type(bp).__name__} chose SPOT at tick {i} for sample {k} while spot "
                              "is unavailable")
        if record:
            markets[:, i] = x
        idle = x == N_
        new = ~idle & (x != held)
        sw += new
        left = np.where(new, d, np.where(idle, 0, left))
        held = x
        w = np.maximum(g - left, 0)
        left = np.where(idle, 0, left - (g - w))
        w = np.where(idle, 0, np.minimum(w, c - done))
        done = done + w
        wspot += np.where(x == S_, w, 0)
        wod += np.where(x == O_, w, 0)
        cost += price[x]
        ended = active & (done >= c)
        fin[ended] = i + 1
        active &= ~ended
    return BatchOutcome(cost, wspot / 3600.0, wod / 3600.0, done >= c, fin * g / 3600.0, pre, sw,
                        markets)


def on_demand_cost(job: Job, prices) -> float:
    """Always-on-demand cost (the normalisation): one switch, then whole ticks until done."""
    od_tick, _ = prices.per_tick(job.tick_s)
    return min(job.ticks, math.ceil((job.task_s + job.overhead_s) / job.tick_s)) * od_tick
