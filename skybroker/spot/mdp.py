"""`mdp`: the spot policy that solves a Markov decision process over (time, slack, held instance,
unpaid overhead, spot availability, age of the current spot-up / spot-down run).

Model (`availmodel`): spot alternates between up and down runs whose chance to end in the next step
depends on their age (fitted on past traces only). Costs: the tick prices of spot and on-demand.
The MDP is the simulator's own state machine (see simulator.py) with that availability model in
place of the trace, solved exactly by backward induction on a grid when the policy is built (cached
per job; about 0.1-2 s):
- grid step G = the job's tick (ticks under 600 s are grouped to about 600 s), slack unit
  U = gcd(G, d), ages 1..A (A = 24 steps, the last one absorbing);
- state at a step: k = slack consumed (units U, overhead counted when a switch starts, refunded if a
  preemption cuts it short), held h in {none, spot, on-demand}, phase of an unpaid overhead, spot
  up or down now, age of that run;
- actions: idle, spot (only if up), on-demand; a switch costs d of no progress at the new price.
The deadline is in the model as a hard constraint, so the policy is safe by construction: an action
is allowed only if, whatever spot does next, on-demand can still finish in time. With S the
remaining slack (time left in whole ticks - work left - unpaid overhead), the next state must keep
S >= d unless it is on on-demand (then S >= 0): a preempted spot job can then always switch to
on-demand (cost d) and finish. `decide` applies that same rule, exactly, at the job's own tick, to
whatever the table says (so rounding the state onto the grid can cost money but never a deadline).
Hence every deadline that the omniscient schedule can meet (S0 >= d) is met, on any trace
(tests/unit/test_spot_mdp.py checks it exhaustively on small cases).

Weekly variant (class attribute `weekly` > 0; off by default): the hazards are multiplied by weekday /
weekend factors (`avail_model_weekly.json`, fitted on the fitting set by bench/spot_diurnal.py), given
the job's start on the week clock (`clock_s`; the simulator takes it from the trace's folder date).
One table per start phase (rounded to `weekly_phase_s`); the deadline rule is unchanged.

The decision table (actions per tick, held/availability row, age, slack) is stored compressed:
run-length encoded along the slack axis, i.e. a few slack thresholds per (tick, row, run age).
That compression is lossless (about 2 KB per tick instead of 5 A W bytes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .availmodel import _CLAMP, AvailModel, default_model, prototypes, weekly_factors
from .policies import NONE, ON_DEMAND, SPOT, Decision, Job, Observation, Policy, register

AGES = 24
MIN_GRID_S = 600  # finer ticks are grouped to about 600 s (the fitting traces' step): better and faster
_INF = np.inf
_ACT = (NONE, SPOT, ON_DEMAND)
# rows of the decision table: held none (spot down / up), held spot (up), on-demand (down / up)
R_N0, R_N1, R_S, R_O0, R_O1 = range(5)


@dataclass(frozen=True)
class Grid:
    G: int  # step (s)
    U: int  # slack unit (s)
    d: int  # overhead (s), a multiple of U
    C: int
    T: int  # steps before the deadline
    ages: int

    @classmethod
    def for_job(cls, job: Job, ages: int = AGES, step_s: int | None = None) -> Grid:
        """The job's grid: step = the tick (ticks under MIN_GRID_S grouped to about 600 s), or
        `step_s` rounded to whole ticks (a coarser grid: a smaller table, solved faster)."""
        g = job.tick_s
        target = step_s or (g if g >= MIN_GRID_S else 600)
        G = g * max(1, round(target / g))
        d = job.overhead_s
        U = math.gcd(G, d) if d else G
        return cls(G, U, d, job.task_s, job.ticks * g // G, ages)

    @property
    def s0(self) -> int:
        return self.T * self.G - self.C

    @property
    def K(self) -> int:
        return max(0, self.s0) // self.U

    @property
    def m(self) -> int:
        return max(1, -(-self.d // self.G))


@dataclass
class Table:
    grid: Grid
    ptr: list  # per step: (rows + 1,) offsets into starts/acts
    starts: list  # per step: segment start k
    acts: list  # per step: segment action (0 idle, 1 spot, 2 on-demand)
    value0: float  # expected cost from the start (spot up, age 1), $

    def row(self, i: int, r: int, age: int) -> tuple[np.ndarray, np.ndarray]:
        j = r * self.grid.ages + age
        a, b = self.ptr[i][j], self.ptr[i][j + 1]
        return self.starts[i][a:b], self.acts[i][a:b]

    def action(self, i: int, r: int, age: int, k: int) -> int:
        st, ac = self.row(i, r, age)
        return int(ac[int(np.searchsorted(st, k, side="right")) - 1])

    def dense(self, i: int) -> np.ndarray:
        """(5, ages, K + 1) actions of step i."""
        gr = self.grid
        st, ac, ptr = self.starts[i], self.acts[i], self.ptr[i]
        W = gr.K + 1
        ends = np.append(st[1:], W)
        ends[ptr[1:-1] - 1] = W  # each row's last segment runs to the end
        return np.repeat(ac, ends - st).reshape(5, gr.ages, W)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes + s.nbytes + a.nbytes for p, s, a in zip(self.ptr, self.starts, self.acts))


def _compress(dec: np.ndarray):
    """RLE of (rows, W) actions along W: (ptr, starts, acts)."""
    rows, W = dec.shape
    change = np.ones((rows, W), bool)
    change[:, 1:] = dec[:, 1:] != dec[:, :-1]
    r, k = np.nonzero(change)
    ptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))]).astype(np.int32)
    return ptr, k.astype(np.int32), dec[r, k].astype(np.int8)


WEEK_S = 7 * 86400


def weekend_steps(grid: Grid, phase_s: int) -> np.ndarray:
    """Per grid step: does its middle fall on a Saturday or Sunday (week clock 0 = Monday 00:00)?"""
    mid = phase_s + np.arange(grid.T) * grid.G + grid.G // 2
    return (mid // 86400) % 7 >= 5


def solve(grid: Grid, model: AvailModel, od_price: float, spot_price: float,
          phase_s: int | None = None, strength: float = 1.0, relative: bool = False) -> Table:
    """Backward induction over the grid; prices in $/h (only their ratio matters for decisions).
    With `phase_s` (the job's start on the week clock) the hazards are multiplied by the weekday /
    weekend factors of `availmodel.weekly_factors` (raised to `strength`; `relative`: weekdays
    unchanged, weekends by their ratio to weekdays) at each step."""
    G, U, d, T, A = grid.G, grid.U, grid.d, grid.T, grid.ages
    K, m, s0 = grid.K, grid.m, grid.s0
    W, gs, ds = K + 1, G // U, d // U
    pad = gs + ds + 1
    Wp = W + pad
    od, sp = od_price * G / 3600.0, spot_price * G / 3600.0
    hu, hd = model.hazards(G, A)
    F = np.float32  # values in float32: half the memory traffic; decisions, not dollars, come out
    base = np.stack([hd, hu])[:, :, None]  # (a, age, 1): the run ends after this step
    if phase_s is None:
        pfs = [base.astype(F)] * 2
        wkend = np.zeros(T, bool)
    else:
        wd, we = (np.array(f) for f in weekly_factors())
        if relative:
            wd, we = np.ones(2), we / wd
        pfs = [np.clip(base * np.power(f, strength)[:, None, None], *_CLAMP).astype(F)
               for f in (wd, we)]
        wkend = weekend_steps(grid, phase_s)
    pss = [(1.0 - x).astype(F) for x in pfs]
    od, sp = F(od), F(sp)
    nxt = np.minimum(np.arange(A) + 1, A - 1)
    L = [0] + [d - t * G for t in range(1, m)]  # unpaid overhead at the start of phase t
    refund = [x // U for x in L]
    ph1 = 1 if m >= 2 else 0

    def nx(t):
        return t + 1 if t + 1 < m else 0

    kk = np.arange(W)
    rem = s0 - kk * U  # remaining slack at k
    no_idle = np.where(s0 - (kk + gs) * U >= d, 0.0, _INF).astype(F)
    no_spot_c = np.where(rem >= d, 0.0, _INF).astype(F)
    no_spot_sw = np.where(rem - d >= d, 0.0, _INF).astype(F)

    def fresh():
        return (np.zeros((2, A, Wp), F), np.zeros((m, A, Wp), F), np.zeros((m, 2, A, Wp), F))

    VN, VS, VO = fresh()
    for arr in (VN, VS, VO):
        arr[..., W:] = _INF
    ptrs, starts, acts = [None] * T, [None] * T, [None] * T
    for i in range(T - 1, -1, -1):
        pf, ps = pfs[int(wkend[i])], pss[int(wkend[i])]
        EN = ps * VN[:, nxt] + pf * VN[::-1, :1]
        EO = [ps * VO[t][:, nxt] + pf * VO[t][::-1, :1] for t in range(m)]
        ES = []
        for t in range(m):
            lost = np.full(Wp, _INF, F)
            r = refund[t]
            lost[r:] = VN[0, 0, :Wp - r] if r else VN[0, 0]
            ES.append(ps[1] * VS[t][nxt] + pf[1] * lost[None, :])
        idle = EN[:, :, gs:gs + W] + no_idle
        od_sw = od + EO[ph1][:, :, ds:ds + W]
        sp_sw = sp + ES[ph1][:, ds:ds + W] + no_spot_sw
        od_c = od + EO[0][:, :, :W]
        sp_c = sp + ES[0][:, :W] + no_spot_c
        nVN, nVS, nVO = fresh()
        dec = np.empty((5, A, W), np.int8)
        for r, o0, o1, o2, out in (
                (R_N0, idle[0], None, od_sw[0], nVN[0, :, :W]),
                (R_N1, idle[1], sp_sw, od_sw[1], nVN[1, :, :W]),
                (R_S, idle[1], sp_c, od_sw[1], nVS[0, :, :W]),
                (R_O0, idle[0], None, od_c[0], nVO[0, 0, :, :W]),
                (R_O1, idle[1], sp_sw, od_c[1], nVO[0, 1, :, :W])):
            # argmin over (idle, spot, on-demand), ties to the first, as np.argmin
            if o1 is None:
                np.minimum(o0, o2, out=out)
                dec[r] = np.where(o2 < o0, 2, 0)
            else:
                m01 = np.minimum(o0, o1)
                np.minimum(m01, o2, out=out)
                dec[r] = np.where(o2 < m01, 2, np.where(o1 < o0, 1, 0))
        for t in range(1, m):  # in an overhead: carry on (or give up, for spot)
            nVS[t, :, :W] = np.minimum(np.minimum(sp + ES[nx(t)][:, :W] + no_spot_c, idle[1]),
                                       od_sw[1])
            nVO[t, :, :, :W] = od + EO[nx(t)][:, :, :W]
        for t in range(m):  # done: the work is complete at the start of step i
            if i * G + L[t] >= grid.C:
                kd = min(K, (i * G + L[t] - grid.C) // U)
                nVS[t, :, :kd + 1] = 0.0
                nVO[t, :, :, :kd + 1] = 0.0
                if t == 0:
                    nVN[:, :, :kd + 1] = 0.0
                    dec[:, :, :kd + 1] = 0
        for arr in (nVN, nVS, nVO):
            arr[..., W:] = _INF
        VN, VS, VO = nVN, nVS, nVO
        ptrs[i], starts[i], acts[i] = _compress(dec.reshape(5 * A, W))
    return Table(grid, ptrs, starts, acts, float(VN[1, 0, 0]))


# adaptive family: the fitted model, the same with its up / down hazards scaled, and the fits of
# single zones ("prototypes", avail_model_family.json); the policy follows the member with the
# highest posterior given the runs it has seen in this job and in the zone's past (certainty
# equivalence: one decision table per member, solved when first needed)
_SCALES = (1, 0.7, 1.4, 0.5, 2, 0.35, 2.8)
PRIOR_STEP = 0.75  # log prior penalty per factor sqrt(2) of scaling, per hazard
PRIOR_PROTOTYPE = 3.0  # log prior penalty of a prototype
HISTORY_S = 7 * 86400  # at most this much of the zone's past is used


@lru_cache(maxsize=8)
def family_for(model: AvailModel, adaptive: bool) -> tuple:
    """((model, log prior), ...), the given model first."""
    out = [(model, 0.0)]
    if not adaptive:
        return tuple(out)
    for u in _SCALES:
        for d in _SCALES:
            if (u, d) != (1, 1):
                out.append((model.scaled(u, d),
                            -PRIOR_STEP * 2 * (abs(np.log2(u)) + abs(np.log2(d)))))
    if model == default_model():
        out.extend((m, -PRIOR_PROTOTYPE) for m in prototypes())
    return tuple(out)


@lru_cache(maxsize=8)
def _run_loglik(grid: Grid, models: tuple) -> np.ndarray:
    upto = 4 * grid.T + 2
    return np.array([m.log_surv(grid.G, grid.ages, upto)[1] for m in models])


@lru_cache(maxsize=96)
def table_for(grid: Grid, model: AvailModel, od_price: float, spot_price: float,
              phase_s: int | None = None, strength: float = 1.0, relative: bool = False) -> Table:
    return solve(grid, model, od_price, spot_price, phase_s, strength, relative)


@register
class MDPPolicy(Policy):
    """Optimal for the fitted availability model (see the module docstring); must be asked every
    tick (it measures the age of the current spot run from the elapsed time of each call)."""

    name = "mdp"
    uses_prices = True
    uses_history = True  # the simulator passes the zone's availability before the job
    grid_step_s: int | None = None  # None: the job's tick
    ages: int = AGES  # run ages in the state (the last one absorbing)
    od_weight: float = 1.0  # on-demand price in the decision problem, as a multiple of the real one
    shared_cache = True  # tables cached per process: the experiment runs it in one process
    # weekday / weekend hazard factors, raised to this power (0: none; needs the job's start on the
    # week clock)
    weekly: float = 0.0
    weekly_relative: bool = False  # weekdays as the age model, weekends by their ratio to weekdays
    weekly_phase_s: int = 3600  # the job's start on the week clock is rounded to this (a table each)

    def __init__(self, job: Job, prices=None, model: AvailModel | None = None,
                 spot_price: float | None = None, adaptive: bool = True, history=None,
                 grid_step_s: int | None = None, clock_s: float | None = None):
        super().__init__(job)
        from .simulator import Prices

        prices = prices or Prices()
        self.grid = Grid.for_job(job, ages=self.ages, step_s=grid_step_s or self.grid_step_s)
        self.model = model or default_model()
        self.s0 = job.ticks * job.tick_s - job.task_s
        self.prices = (float(prices.on_demand) * self.od_weight,
                       float(prices.spot if spot_price is None else spot_price))
        self.feasible = self.grid.T > 0 and self.grid.s0 >= self.grid.d
        fam = family_for(self.model, adaptive)
        self.family = tuple(m for m, _ in fam)
        self.logprior = np.array([lp for _, lp in fam])
        self.phase = self.phase_of(clock_s)
        self.table = self.table_of(0)
        self.loglik = np.zeros(len(self.family))
        self.run_avail: bool | None = None
        self.run_start = 0.0
        self.runs_seen = 0
        self.hist_tail: tuple[bool, int] | None = None  # (value, length s) of the zone's last run
        if history is not None and len(history):
            self.hist_tail = history_tail(history, job.tick_s)
            if len(self.family) > 1:
                self.loglik += self.history_loglik(history)

    def history_loglik(self, history) -> np.ndarray:
        """Log-likelihood of each family member for the zone's past availability (bool per job
        tick, before the job starts): its complete runs, the last `HISTORY_S` at most."""
        from .availmodel import runs

        h = np.asarray(history, bool)[-max(1, HISTORY_S // self.job.tick_s):]
        out = np.zeros(len(self.family))
        if len(h) < 3:
            return out
        ll = self.run_loglik()
        lengths, vals, cens = runs(h)
        keep = ~cens
        L = np.clip(np.round(lengths[keep] * self.job.tick_s / self.grid.G), 1, ll.shape[2]
                    ).astype(np.int64)
        up = vals[keep]
        return ll[:, 0, L[up] - 1].sum(axis=1) + ll[:, 1, L[~up] - 1].sum(axis=1)

    def phase_of(self, clock_s: float | None) -> int | None:
        """The table phase of a start at `clock_s` on the week clock (None: no weekly factors)."""
        if not self.weekly or clock_s is None:
            return None
        q = self.weekly_phase_s
        return int(round(clock_s / q) * q) % WEEK_S

    def table_of(self, m: int, phase: int | None | bool = False) -> Table | None:
        """The decision table of family member m (solved on first use, cached per job); `phase`
        False: this job's."""
        if not self.feasible:
            return None
        ph = self.phase if phase is False else phase
        return table_for(self.grid, self.family[m], *self.prices, ph, float(self.weekly),
                         bool(self.weekly_relative))

    def run_loglik(self) -> np.ndarray:
        """(members, 2, max run) log P(run of L+1 steps) per family member, up (0) / down (1)."""
        return _run_loglik(self.grid, self.family)

    def _observe_run_end(self, was_up: bool, length_s: float) -> None:
        """A run ended: update each member's likelihood (the first run, cut by the start, is skipped)."""
        self.runs_seen += 1
        if self.runs_seen > 1 and len(self.family) > 1:
            ll = self.run_loglik()
            L = min(ll.shape[2], max(1, round(length_s / self.grid.G)))
            self.loglik += ll[:, 0 if was_up else 1, L - 1]

    def member(self) -> int:
        return int(np.argmax(self.loglik + self.logprior))

    # -- state on the grid ------------------------------------------------------------------
    def _grid_state(self, elapsed, progress, left, age_s):
        gr, j = self.grid, self.job
        rest = j.ticks * j.tick_s - elapsed
        i = min(gr.T - 1, max(0, gr.T - int(np.ceil(rest / gr.G))))
        slack = self.s0 - (elapsed - progress + left)
        k = np.clip(np.ceil((gr.s0 - slack) / gr.U), 0, gr.K).astype(np.int64)
        age = np.minimum(np.ceil(age_s / gr.G).astype(np.int64), gr.ages) - 1
        return i, k, np.maximum(age, 0), slack

    def table_action(self, elapsed, progress, left, row: int, age_s: float, member: int = 0
                     ) -> Decision:
        """The table's action for a state (no guard); ON_DEMAND when the job is infeasible."""
        table = self.table if member == 0 else self.table_of(member)
        if table is None:
            return ON_DEMAND
        i, k, age, _ = self._grid_state(elapsed, progress, left, age_s)
        return _ACT[table.action(i, row, int(age), int(k))]

    def slack(self, elapsed, progress, left) -> float:
        return self.s0 - (elapsed - progress + left)

    def decide(self, obs: Observation) -> Decision:
        a = bool(obs.spot_available)
        if self.run_avail is None and self.hist_tail is not None and self.hist_tail[0] == a:
            # the run under way started before the job: its age is known from the past
            self.run_avail, self.run_start = a, obs.elapsed_s - self.hist_tail[1]
            self.runs_seen = 1
        if self.run_avail is None or a != self.run_avail:
            if self.run_avail is not None:
                self._observe_run_end(self.run_avail, obs.elapsed_s - self.run_start)
            self.run_avail, self.run_start = a, obs.elapsed_s
        held = obs.held
        if self.table is not None and obs.overhead_left_s > 0 and held is not NONE:
            want = held  # an overhead under way: carry on
        else:
            r = (R_N1 if a else R_N0) if held is NONE else R_S if held is SPOT else (
                R_O1 if a else R_O0)
            want = self.table_action(obs.elapsed_s, obs.progress_s, obs.overhead_left_s, r,
                                     obs.elapsed_s - self.run_start + self.job.tick_s,
                                     self.member())
        return _guard(want, held, a, self.slack(obs.elapsed_s, obs.progress_s, obs.overhead_left_s),
                      obs.overhead_left_s, self.job)

    @classmethod
    def batch(cls, job: Job, n: int, prices=None, histories=None, clocks=None):
        from .mdp_batch import MDPBatch

        b = MDPBatch(cls(job, prices), n)
        for s, h in enumerate(histories or ()):
            b.set_history(s, h)
        if clocks is not None:
            b.set_clocks(clocks)
        return b


def history_tail(history, tick_s: int) -> tuple[bool, int]:
    """(value, length in s) of the last run of a past availability series."""
    h = np.asarray(history, bool)
    change = np.flatnonzero(h != h[-1])
    return bool(h[-1]), int((len(h) - (change[-1] + 1 if len(change) else 0)) * tick_s)


def _guard(want: Decision, held: Decision, avail: bool, slack: float, left: float, job: Job
           ) -> Decision:
    """The deadline rule, exact at the job's tick: after this tick S >= d unless on on-demand."""
    d, g = job.overhead_s, job.tick_s
    if want is SPOT and not avail:
        want = ON_DEMAND if held is ON_DEMAND else NONE
    if want is NONE:
        ok = slack - g + left >= d
    elif want is SPOT:
        ok = (slack if held is SPOT else slack + left - d) >= d
    else:
        return ON_DEMAND
    if ok:
        return want
    return ON_DEMAND
