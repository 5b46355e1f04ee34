"""The `mdp` policy: safe by construction (every deadline the omniscient can meet is met, checked on
every availability pattern of small jobs), never cheaper than the omniscient, consistent with its own
model, and selectable through make_policy."""
import itertools

import numpy as np
import pytest

from skybroker.spot import omniscient
from skybroker.spot.availmodel import AvailModel, default_model, runs
from skybroker.spot.batch import batch_for, simulate_batch
from skybroker.spot.mdp import Grid, MDPPolicy, _guard, solve
from skybroker.spot.policies import NONE, ON_DEMAND, SPOT, Job, make_policy
from skybroker.spot.simulator import Prices, simulate

G = 600


@pytest.mark.parametrize("task, slack, d, g", [(4, 1, 720, G), (4, 2, 720, G), (5, 3, 180, G),
                                               (3, 4, 1500, G), (4, 2, 0, G), (6, 3, 720, 300)])
def test_every_pattern_meets_the_deadline(task, slack, d, g):
    job = Job(task_s=task * G, deadline_s=task * G + slack * g + 7, overhead_s=d, tick_s=g)
    T = job.ticks
    pats = np.array(list(itertools.product([False, True], repeat=T)), bool)
    om = omniscient.solve(pats, job, Prices())
    out = simulate_batch(batch_for("mdp", job, len(pats), Prices()), pats, job, Prices())
    feasible = np.isfinite(om.cost)
    assert feasible.all() == (job.ticks * g - job.task_s >= d)
    assert out.met[feasible].all()
    assert (om.cost[feasible] <= out.cost[feasible] + 1e-9).all()
    for i in range(0, len(pats), max(1, len(pats) // 40)):  # the scalar policy agrees
        s = simulate(make_policy("mdp", job, Prices()), pats[i], job, Prices())
        assert s.cost == pytest.approx(out.cost[i]) and s.met == out.met[i]


def test_guard_is_the_exact_deadline_rule():
    job = Job(task_s=10 * G, deadline_s=14 * G, overhead_s=720, tick_s=G)
    d = job.overhead_s
    # idle only if the slack after the tick still covers a switch to on-demand
    assert _guard(NONE, NONE, False, G + d, 0, job) is NONE
    assert _guard(NONE, NONE, False, G + d - 1, 0, job) is ON_DEMAND
    # a new spot instance costs d and must leave d for the fallback
    assert _guard(SPOT, NONE, True, 2 * d, 0, job) is SPOT
    assert _guard(SPOT, NONE, True, 2 * d - 1, 0, job) is ON_DEMAND
    # riding spot needs S >= d; spot that is not there is never returned
    assert _guard(SPOT, SPOT, True, d, 0, job) is SPOT
    assert _guard(SPOT, NONE, False, 10 * d, 0, job) is NONE
    assert _guard(SPOT, ON_DEMAND, False, 10 * d, 0, job) is ON_DEMAND


def test_solver_matches_its_model_on_traces_drawn_from_it():
    """Mean cost of the policy on traces sampled from its own model ~ the DP's expected cost."""
    model = default_model()
    job = Job.from_hours(12, 15, 0.2, G)
    pol = MDPPolicy(job, Prices())
    hu, hd = model.hazards(G, pol.grid.ages)
    rng = np.random.default_rng(3)
    n = 600
    W = np.zeros((n, job.ticks), bool)
    a, age = np.ones(n, bool), np.zeros(n, int)
    for t in range(job.ticks):
        W[:, t] = a
        flip = rng.random(n) < np.where(a, hu[np.minimum(age, 23)], hd[np.minimum(age, 23)])
        a, age = np.where(flip, ~a, a), np.where(flip, 0, age + 1)
    out = simulate_batch(batch_for("mdp", job, n, Prices()), W, job, Prices())
    assert out.met.all()
    assert out.cost.mean() == pytest.approx(pol.table.value0, rel=0.03)
    for name in ("uniform_progress", "slack_aware"):  # optimal for the model: beats the heuristics
        other = simulate_batch(batch_for(name, job, n, Prices()), W, job, Prices())
        assert out.cost.mean() < other.cost.mean()


def test_table_compression_is_lossless():
    grid = Grid.for_job(Job.from_hours(6, 8, 0.2, G))
    t = solve(grid, default_model(), 3.06, 0.9731)
    for i in (0, grid.T // 2, grid.T - 1):
        dense = t.dense(i)
        for r in range(5):
            for age in (0, 5, grid.ages - 1):
                for k in range(0, grid.K + 1, 3):
                    assert t.action(i, r, age, k) == dense[r, age, k]


def test_model_fit_and_conversion():
    s = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1], bool)
    lengths, vals, cens = runs(s)
    assert lengths.tolist() == [2, 1, 3, 2, 2, 1, 1] and cens[0] and cens[-1] and not cens[1:-1].any()
    m = AvailModel.fit([s], 600, max_age=4)
    assert len(m.up) == 4 and all(0 < h < 1 for h in m.up + m.down)
    # the same step gives back the fitted hazards; a half step spreads them
    m = AvailModel.fit([np.random.default_rng(0).random(3000) < 0.6], 600, max_age=4)
    hu, _ = m.hazards(600, 3)
    assert hu[:2] == pytest.approx(np.clip(m.up[:2], 0.002, 0.998), abs=1e-9)
    h2, _ = m.hazards(300, 4)
    assert (1 - h2[0]) * (1 - h2[1]) == pytest.approx(1 - hu[0], abs=1e-9)
    assert AvailModel.from_json(m.to_json()).up == pytest.approx(m.up, abs=1e-5)


def test_selectable_and_prices_matter():
    job = Job.from_hours(48, 60, 0.2, G)
    assert isinstance(make_policy("mdp", job), MDPPolicy)
    cheap_od = MDPPolicy(job, Prices(on_demand=1.0, spot=0.9))
    assert cheap_od.table.value0 < MDPPolicy(job, Prices()).table.value0


class _Weighted(MDPPolicy):
    name = "mdp_test_weighted"  # not registered: used only through its class
    ages = 48
    od_weight = 1.3


def test_ages_and_on_demand_weight_change_the_table_never_the_deadline():
    job = Job(task_s=4 * G, deadline_s=6 * G + 7, overhead_s=720, tick_s=G)
    p = _Weighted(job, Prices())
    assert p.grid.ages == 48 and p.prices[0] == pytest.approx(1.3 * Prices().on_demand)
    base = MDPPolicy(job, Prices())
    assert p.table.value0 > base.table.value0  # on-demand dearer in the decision problem
    pats = np.array(list(itertools.product([False, True], repeat=job.ticks)), bool)
    om = omniscient.solve(pats, job, Prices())
    b = _Weighted.batch(job, len(pats), Prices())
    out = simulate_batch(b, pats, job, Prices())
    assert out.met.all() and (om.cost <= out.cost + 1e-9).all()


class _Weekly(MDPPolicy):
    name = "mdp_test_weekly"  # not registered: used only through its class
    weekly = 2.0  # the fitted weekday / weekend factors, squared: a stronger effect to test
    weekly_phase_s = G  # so that a job of a few ticks can start just before a weekend boundary


@pytest.mark.parametrize("clock", [5 * 86400 - 3 * G, 7 * 86400 - 2 * G, 2 * 86400])
def test_weekly_factors_change_the_table_never_the_deadline(clock):
    """Starts just before the weekend, just before Monday, mid-week: every pattern meets the
    deadline, the batch and the scalar policy agree, and the start clock reaches the table."""
    job = Job(task_s=4 * G, deadline_s=6 * G + 7, overhead_s=720, tick_s=G)
    pats = np.array(list(itertools.product([False, True], repeat=job.ticks)), bool)
    om = omniscient.solve(pats, job, Prices())
    b = _Weekly.batch(job, len(pats), Prices(), clocks=[clock] * len(pats))
    out = simulate_batch(b, pats, job, Prices())
    assert out.met.all() and (om.cost <= out.cost + 1e-9).all()
    for i in range(0, len(pats), 7):
        s = simulate(_Weekly(job, Prices(), clock_s=clock), pats[i], job, Prices())
        assert s.cost == pytest.approx(out.cost[i]) and s.met == out.met[i]
    p = _Weekly(job, Prices(), clock_s=clock)
    assert p.phase == clock and p.table is not MDPPolicy(job, Prices()).table
    assert _Weekly(job, Prices()).phase is None  # no clock: the age-only table


def test_weekend_hazards_make_a_weekend_job_cheaper_in_the_model():
    """Spot runs end less and outages end sooner on weekends (the fitted factors), so the
    expected cost of a job that runs over a weekend is lower than that of a mid-week one."""
    from skybroker.spot.availmodel import weekly_factors

    (wd_down, wd_up), (we_down, we_up) = weekly_factors()
    assert we_up < wd_up and we_down > wd_down
    job = Job.from_hours(12, 20, 0.2, G)
    sat = _Weekly(job, Prices(), clock_s=5 * 86400)
    tue = _Weekly(job, Prices(), clock_s=1 * 86400)
    assert sat.table.value0 < MDPPolicy(job, Prices()).table.value0 < tue.table.value0
    half = type("_Half", (_Weekly,), {"weekly": 1.0})(job, Prices(), clock_s=5 * 86400)
    assert sat.table.value0 < half.table.value0  # the strength (a power of the factors) counts
    rel = type("_Rel", (_Weekly,), {"weekly_relative": True})
    # weekends only: a mid-week job is the age model's, a weekend one cheaper
    assert rel(job, Prices(), clock_s=86400).table.value0 == MDPPolicy(job, Prices()).table.value0
    assert rel(job, Prices(), clock_s=5 * 86400).table.value0 < MDPPolicy(job, Prices()).table.value0
