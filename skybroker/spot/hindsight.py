"""`hindsight`: sample-average approximation over bootstrapped real futures (issue 17; opt-in).

At a decision point the policy draws N future availability scenarios from a library of real traces
(the fitting set: the first 13 days of the 2-week files, `hindsight_library.json`): each scenario is
the real continuation of a library position in the same state as the job now (spot up / down, a
similar age of the current run) and, with `regime` > 0, a similar recent history (share of time
spot was up over the last 12 h and 48 h, from the zone's past and the job's own window), which is
how long-range dependence (regime persistence) enters. Each scenario's remaining problem is solved
exactly from the current state by the omniscient DP (omniscient.py, on a ~600-s grid), once per
candidate action (idle, keep the held instance, switch); the action with the lowest mean cost is
taken. Hindsight is optimistic (it assumes the future is known after this step); `od_bias` adds a
cost to waiting instead of on-demand to counter it (0: none).

Decision points: a change of availability or of the held instance, or `every_s` since the last
one; in between the last choice is kept. mdp's table decides when there is no scenario (too little
time left on the grid). The deadline rule is mdp's `_guard`, applied to every decision, so it is
safe by construction exactly as `mdp` (tests/unit/test_spot_hindsight.py checks every availability
pattern of small jobs). Scalar only (no batch version): about 0.01-0.1 s per decision point.
On the fitting traces themselves the library holds the job's own future: leave its trace out
(`exclude`, as bench/spot_hindsight.py does) or the figures are in-sample.

Measured (issue 17, README "Spot policies"): worse than `mdp` on the fitting set and held out;
opt-in only.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import omniscient
from .mdp import R_N0, R_N1, R_O0, R_O1, R_S, MDPPolicy, _guard
from .policies import NONE, ON_DEMAND, SPOT, Job, Observation, register

LIBRARY_FILE = Path(__file__).with_name("hindsight_library.json")
FEATURE_S = (12 * 3600, 48 * 3600)  # windows of the regime features (share of time up)


class Library:
    """Real availability series at one step, with per-position run age and regime features."""

    def __init__(self, series: list[np.ndarray], step_s: int, names: list[str]):
        self.step_s, self.names = step_s, list(names)
        self.series = [np.asarray(s, bool) for s in series]
        pos, val, age, feat, src = [], [], [], [], []
        for j, s in enumerate(self.series):
            n = len(s)
            a = np.ones(n, np.int64)
            for t in range(1, n):
                a[t] = a[t - 1] + 1 if s[t] == s[t - 1] else 1
            cs = np.concatenate([[0], np.cumsum(s)])
            f = []
            for w in FEATURE_S:
                L = max(1, w // step_s)
                lo = np.maximum(0, np.arange(n) - L)
                cnt = np.arange(n) - lo
                f.append(np.where(cnt > 0, (cs[np.arange(n)] - cs[lo]) / np.maximum(cnt, 1), 0.5))
            pos.append(np.arange(n - 1))
            val.append(s[:-1])
            age.append(a[:-1])
            feat.append(np.stack(f, 1)[:-1])
            src.append(np.full(n - 1, j))
        self.pos, self.val = np.concatenate(pos), np.concatenate(val)
        self.age, self.feat, self.src = np.concatenate(age), np.concatenate(feat), np.concatenate(src)
        self.known = np.array([len(s) for s in self.series])[self.src] > 0
        self.hist_len = self.pos  # steps of past behind each position (features are partial early)

    def to_json(self) -> str:
        return json.dumps({"step_s": self.step_s, "source": "2-week files, first 13 days",
                           "traces": {n: "".join("1" if x else "0" for x in s)
                                      for n, s in zip(self.names, self.series)}}, indent=0)

    @classmethod
    def from_json(cls, text: str) -> Library:
        raw = json.loads(text)
        names = list(raw["traces"])
        return cls([np.array([c == "1" for c in raw["traces"][n]]) for n in names], int(raw["step_s"]),
                   names)


@lru_cache(maxsize=1)
def default_library() -> Library:
    return Library.from_json(LIBRARY_FILE.read_text())


def build_library(root=None) -> Library:
    from .availmodel import FIT_DAYS, FIT_GLOB
    from .traces import default_traces_root, find_traces, load_trace

    trs = [load_trace(p).head(FIT_DAYS) for p in find_traces(root or default_traces_root(), FIT_GLOB)]
    return Library([t.availability() for t in trs], trs[0].gap_seconds, [t.name for t in trs])


def features(past: np.ndarray, tick_s: int) -> np.ndarray:
    """Share of time up over the last FEATURE_S of a bool series at `tick_s` (0.5 if empty)."""
    out = []
    for w in FEATURE_S:
        x = past[-max(1, w // tick_s):]
        out.append(float(x.mean()) if len(x) else 0.5)
    return np.array(out)


def draw(lib: Library, avail: bool, age_steps: int, feat: np.ndarray, n: int, length: int,
         rng: np.random.Generator, regime: float, exclude: frozenset = frozenset(), pool: int = 4
         ) -> np.ndarray:
    """(n, length) scenarios: real continuations of library positions in the same state (same
    availability, run age within a factor 1.5 or +-1 step; the nearest ages if too few), the
    `pool * n` nearest in regime features (weight `regime`) of those, n drawn at random.
    Continuations shorter than `length` go on from a random position with the same value."""
    ok = lib.val == avail
    if exclude:
        ok &= ~np.isin(lib.src, [i for i, nm in enumerate(lib.names) if nm in exclude])
    idx = np.flatnonzero(ok)
    a = lib.age[idx]
    band = (a >= min(age_steps - 1, age_steps / 1.5)) & (a <= max(age_steps + 1, age_steps * 1.5))
    if band.sum() < pool * n:
        order = np.argsort(np.abs(np.log(a) - np.log(max(1, age_steps))), kind="stable")
        band = np.zeros(len(idx), bool)
        band[order[:pool * n]] = True
    cand = idx[band]
    if regime > 0 and len(cand) > pool * n:
        dist = np.abs(lib.feat[cand] - feat[None, :]).sum(1) + rng.random(len(cand)) * 1e-6
        cand = cand[np.argsort(dist, kind="stable")[:pool * n]]
    pick = rng.choice(cand, size=n, replace=len(cand) < n)
    out = np.empty((n, length), bool)
    for r, c in enumerate(pick):
        s, t = lib.series[lib.src[c]], lib.pos[c]
        seg = s[t:t + length]
        while len(seg) < length:  # go on from another position with the same value
            w = np.flatnonzero(lib.val == seg[-1])
            c2 = rng.choice(w)
            s2, t2 = lib.series[lib.src[c2]], lib.pos[c2]
            seg = np.concatenate([seg, s2[t2 + 1:t2 + 1 + length - len(seg)]])
        out[r] = seg
    return out


def action_costs(W: np.ndarray, job: Job, prices, held) -> dict:
    """Mean cost ($) of each first action over scenarios W ((n, job.ticks) bool, W[:, 0] = now)
    when each scenario's rest is then played optimally (the omniscient DP); no overhead pending."""
    fin: list = []
    omniscient._solve_chunk(W, job, prices, final=fin)
    if not fin:
        return {}
    buf, nbuf, un = fin
    gr = omniscient.Grid.of(job)
    m, gs, ds = gr.m, gr.gs, gr.ds
    if gr.K < ds:  # no switch fits
        return {}
    inf_slot = np.full_like(buf[0], np.inf)
    nx = buf[1 % nbuf]
    far = buf[m % nbuf] if m <= gr.T else inf_slot
    w_tick, w_sw = gr.work_rows(0, 0, 0)
    od_p, sp_p = un.od_q * un.shift, un.spot_q[0] * un.shift
    hi = {NONE: 0, SPOT: 1, ON_DEMAND: 2}[held]
    idle = nx[0, :, gs] if gs <= gr.K else np.full(len(W), np.inf)
    vals = {}
    if held is not NONE:  # keep it (ties go to keeping, then spot, then on-demand, then idle)
        vals[held] = nx[hi, :, 0] + ((sp_p - w_tick[0]) if held is SPOT else od_p)
    if held is not SPOT:
        ss = far[1, :, ds] + (m * sp_p - w_sw[0])
        lost = idle + sp_p  # preempted during the overhead: about a lost tick at the spot price
        vals[SPOT] = np.where(gr.spot_m(W)[:, 0], ss, lost)
    if held is not ON_DEMAND:
        vals[ON_DEMAND] = far[2, :, ds] + m * od_p
    vals[NONE] = idle
    out = {}
    for k, v in vals.items():
        q = np.where(np.isfinite(v), np.ceil(v / un.shift), np.inf)
        out[k] = float(np.mean(q)) * un.dollars_per_q
    return out


def rollout_costs(pol: MDPPolicy, obs: Observation, W: np.ndarray, cands: list, prices) -> dict:
    """Cost ($) per scenario of each first action in `cands` over scenarios W ((n, ticks left) bool at the
    job's tick, W[:, 0] = now), when mdp (`pol`'s own table, member and run state) decides every
    later tick: a rollout of the base policy, which a one-step improvement cannot make worse in
    expectation under the scenarios (unlike hindsight, no future is assumed known)."""
    from .batch import N_, O_, S_, BatchObs
    from .mdp_batch import MDPBatch, guard_batch

    job = pol.job
    g, d, c = job.tick_s, job.overhead_s, job.task_s
    n0, steps = W.shape
    code = {NONE: N_, SPOT: S_, ON_DEMAND: O_}
    k = len(cands)
    n = n0 * k
    av = np.tile(W, (k, 1))
    bp = MDPBatch(pol, n)
    bp._dense = pol._dense_cache
    bp.run_avail[:] = int(pol.run_avail)
    bp.run_start[:] = int(pol.run_start)
    bp.loglik[:] = pol.loglik
    bp.runs_seen[:] = pol.runs_seen
    od_tick, spot_tick = prices.per_tick(g)
    price = np.array([0.0, spot_tick, od_tick])
    held = np.full(n, code[obs.held], np.int8)
    left = np.full(n, int(obs.overhead_left_s), np.int64)
    done = np.full(n, int(obs.progress_s), np.int64)
    cost = np.zeros(n)
    active = done < c
    i0 = int(round(obs.elapsed_s / g))
    first = np.repeat(np.array([code[x] for x in cands], np.int8), n0)
    for t in range(min(steps, job.ticks - i0)):
        if not active.any():
            break
        i = i0 + t
        a = av[:, t]
        lost = (held == S_) & ~a & active
        held[lost] = N_
        left[lost] = 0
        ob = BatchObs(i, i * g, done, a, held, left)
        if t == 0:
            bp.decide(ob)  # updates the run state
            slack = pol.s0 - (i * g - done + left)
            x = guard_batch(first, held, a, slack, left, job)
        else:
            x = np.asarray(bp.decide(ob), np.int8)
        x = np.where(active, x, N_).astype(np.int8)
        idle = x == N_
        new = ~idle & (x != held)
        left = np.where(new, d, np.where(idle, 0, left))
        held = x
        w = np.maximum(g - left, 0)
        left = np.where(idle, 0, left - (g - w))
        w = np.where(idle, 0, np.minimum(w, c - done))
        done = done + w
        cost += price[x]
        active = done < c
    cost = cost.reshape(k, n0)
    return {x: v for x, v in zip(cands, cost)}


@register
class HindsightPolicy(MDPPolicy):
    """Hindsight optimisation over bootstrapped real futures, with mdp's deadline rule."""

    name = "hindsight"
    shared_cache = False
    scenarios: int = 16
    regime: float = 1.0  # > 0: prefer library positions with a similar recent history
    pool: int = 4  # scenarios drawn from the pool * scenarios nearest positions
    every_s: int = 3600  # re-decide at least this often while nothing changes
    od_bias: float = 0.0  # $ per hour added to idling / spot (against hindsight's optimism), x od price
    step_s: int = 600
    exclude: frozenset = frozenset()  # library traces not to draw from (bench: the job's own trace)
    seed: int = 0
    mode: str = "rollout"  # "rollout": mdp after the first action; "hindsight": the omniscient DP
    own_past: int = 0  # 1: half the scenarios from the zone's own past (before the job), if long enough
    z: float = 1.0  # rollout: leave mdp's action only if another is better by z standard errors

    def __init__(self, job: Job, prices=None, history=None, **kw):
        super().__init__(job, prices, history=history, **kw)
        from .simulator import Prices

        self.real_prices = prices or Prices()
        self.lib = default_library()
        self.own = None
        if self.own_past and history is not None:
            r = max(1, round(self.lib.step_s / job.tick_s))
            h = np.asarray(history, bool)[::-1][::r][::-1]  # ends at the job's start
            if len(h) * self.lib.step_s >= 3 * 86400:
                self.own = Library([h], self.lib.step_s, ["own past"])
        self.past = list(np.asarray(history, bool)[-max(1, FEATURE_S[-1] // job.tick_s):]) \
            if history is not None else []
        self.last = None  # (avail, held, elapsed) of the last decision point
        self.choice = None
        self.rng = np.random.default_rng(self.seed)
        self.G = job.tick_s * max(1, round(self.step_s / job.tick_s))
        self.points = 0
        self._dense_cache: dict = {}

    def scenario_decision(self, obs: Observation, age_s: float):
        j, G = self.job, self.G
        rest = j.ticks * j.tick_s - obs.elapsed_s
        T = int(rest // G)
        left = j.task_s - obs.progress_s
        if T < 2 or left <= 0:
            return None
        # the deadline rule keeps a reserve of d unless on on-demand: the scenarios' DP must too,
        # or it plans on slack the rule will not give (here as d more work: exact slack, a small
        # cost bias common to all first actions)
        sub = Job(int(left + j.overhead_s), int(T * G), j.overhead_s, G)
        if T * G - left - j.overhead_s < j.overhead_s:
            return None
        age = max(1, int(np.ceil(age_s / self.lib.step_s)))
        feat = features(np.asarray(self.past, bool), j.tick_s)
        W = draw(self.lib, bool(obs.spot_available), age, feat, self.scenarios, T + 1, self.rng,
                 self.regime, self.exclude, self.pool)
        if self.own is not None:
            h = self.scenarios // 2
            W[:h] = draw(self.own, bool(obs.spot_available), age, feat, h, T + 1, self.rng,
                         self.regime, pool=2)
        W[:, 0] = bool(obs.spot_available)
        if self.mode == "rollout":
            r = G // j.tick_s  # library steps -> job ticks
            Wf = np.repeat(W, r, axis=1)[:, :int(rest // j.tick_s)]
            Wf[:, :r] = bool(obs.spot_available)
            cands = [x for x in (obs.held, SPOT, ON_DEMAND, NONE)
                     if x is not SPOT or obs.spot_available]
            base = self.mdp_action(obs, age_s)
            cands = list(dict.fromkeys([base, *cands]))
            per = rollout_costs(self, obs, Wf, cands, self.real_prices)
            self.points += 1
            best, gain = base, 0.0
            for x in cands[1:]:
                dlt = per[base] - per[x]
                se = dlt.std(ddof=1) / np.sqrt(len(dlt)) if len(dlt) > 1 else 0.0
                if dlt.mean() > self.z * se and dlt.mean() > gain:
                    best, gain = x, dlt.mean()
            return None if best is base else best  # None: mdp decides, tick by tick
        else:
            costs = action_costs(W[:, :T], sub, self.real_prices, obs.held)
        if not costs:
            return None
        if self.od_bias:
            pen = self.od_bias * self.real_prices.on_demand * self.real_prices.nodes * G / 3600.0
            for k in costs:
                if k is not ON_DEMAND:
                    costs[k] += pen
        self.points += 1
        return min(costs, key=costs.get)

    def decide(self, obs: Observation):
        a = bool(obs.spot_available)
        self.past.append(a)
        if self.run_avail is None and self.hist_tail is not None and self.hist_tail[0] == a:
            self.run_avail, self.run_start = a, obs.elapsed_s - self.hist_tail[1]
            self.runs_seen = 1
        if self.run_avail is None or a != self.run_avail:
            if self.run_avail is not None:
                self._observe_run_end(self.run_avail, obs.elapsed_s - self.run_start)
            self.run_avail, self.run_start = a, obs.elapsed_s
        held = obs.held
        age_s = obs.elapsed_s - self.run_start + self.job.tick_s
        slack = self.slack(obs.elapsed_s, obs.progress_s, obs.overhead_left_s)
        if self.table is not None and obs.overhead_left_s > 0 and held is not NONE:
            return _guard(held, held, a, slack, obs.overhead_left_s, self.job)
        if self.table is None:
            return ON_DEMAND
        key = (a, held)
        if self.last is None or self.last[:2] != key or obs.elapsed_s - self.last[2] >= self.every_s:
            self.choice = self.scenario_decision(obs, age_s)
            self.last = (a, held, obs.elapsed_s)
        want = self.choice
        if want is None or (want is SPOT and not a):
            want = self.mdp_action(obs, age_s)
        return _guard(want, held, a, slack, obs.overhead_left_s, self.job)

    def mdp_action(self, obs: Observation, age_s: float):
        """mdp's decision now (its table, its guard)."""
        a, held = bool(obs.spot_available), obs.held
        r = (R_N1 if a else R_N0) if held is NONE else R_S if held is SPOT else (R_O1 if a else R_O0)
        want = self.table_action(obs.elapsed_s, obs.progress_s, obs.overhead_left_s, r, age_s,
                                 self.member())
        return _guard(want, held, a, self.slack(obs.elapsed_s, obs.progress_s, obs.overhead_left_s),
                      obs.overhead_left_s, self.job)

    @classmethod
    def batch(cls, job: Job, n: int, prices=None, histories=None, clocks=None):
        return None


if __name__ == "__main__":  # regenerate the shipped library
    lib = build_library()
    LIBRARY_FILE.write_text(lib.to_json() + "\n")
    print(f"wrote {LIBRARY_FILE}: {len(lib.series)} traces x {len(lib.series[0])} steps of {lib.step_s} s")
