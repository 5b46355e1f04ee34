"""Policies and the simulator: hand-checked semantics, decision rules, and on real traces the two
invariants (every policy meets the deadline whenever the omniscient can; the omniscient is never
more expensive)."""
import math

import numpy as np
import pytest

from skybroker.errors import UsageError
from skybroker.spot import omniscient
from skybroker.spot.policies import (
    NONE,
    ON_DEMAND,
    SPOT,
    Greedy,
    Job,
    Observation,
    SlackAware,
    UniformProgress,
    make_policy,
)
from skybroker.spot.simulator import (
    PolicyError,
    Prices,
    run_plan,
    sample_starts,
    simulate,
    windows,
)
from skybroker.spot.traces import (
    default_traces_root,
    find_traces,
    infer_nodes,
    load_trace,
)

G = 600
ONLINE = ["on_demand", "greedy", "uniform_progress", "slack_aware"]


def test_simulator_overhead_preemption_and_billing():
    job = Job(task_s=3 * G, deadline_s=10 * G, overhead_s=720, tick_s=G)
    od, sp = Prices().per_tick(G)
    av = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    plan = [SPOT, SPOT, SPOT, ON_DEMAND, ON_DEMAND, ON_DEMAND, ON_DEMAND]
    out = run_plan(plan, av, job, Prices())
    # ticks 0-2 on spot: 0 + 480 + 600 s of work; preempted at 3; on-demand: 0 + 480 + 600 - 300 left
    assert out.spot_hours == pytest.approx(1080 / 3600)
    assert out.od_hours == pytest.approx(720 / 3600)
    assert out.met and out.preemptions == 1 and out.switches == 2
    # 3 spot ticks, then on-demand ticks 3, 4 and 5 (the job completes during tick 5)
    assert out.cost == pytest.approx(3 * sp + 3 * od)
    assert out.finish_hours == pytest.approx(6 * G / 3600)


def test_simulator_rejects_spot_when_unavailable_and_counts_misses():
    job = Job(task_s=2 * G, deadline_s=3 * G, overhead_s=0, tick_s=G)
    with pytest.raises(PolicyError):
        run_plan([SPOT], np.zeros(3, bool), job, Prices())
    idle = run_plan([NONE, NONE, NONE], np.ones(3, bool), job, Prices())
    assert not idle.met and idle.cost == 0


def test_unknown_policy_and_bad_job():
    job = Job.from_hours(48, 60, 0.2, G)
    assert job.ticks == 360 and job.overhead_s == 720
    with pytest.raises(UsageError, match="unknown policy"):
        make_policy("yolo", job)
    with pytest.raises(UsageError, match="shorter than the task"):
        Job.from_hours(48, 40, 0.2, G)
    with pytest.raises(UsageError):
        Job.from_hours(-1, 40, 0.2, G)


def _obs(t_ticks, progress_ticks, avail, held, left=0.0):
    return Observation(t_ticks * G, progress_ticks * G, avail, held, left)


def test_greedy_rules():
    job = Job(task_s=48 * G, deadline_s=60 * G, overhead_s=120, tick_s=G)
    p = Greedy(job)
    assert p.decide(_obs(0, 0, True, NONE)) is SPOT
    assert p.decide(_obs(1, 1, False, NONE)) is NONE
    # slack 1 tick < 2d rounded up to a tick: on-demand, and stay
    assert p.decide(_obs(10, 0, False, NONE)) is NONE  # slack 2 ticks: still waits
    assert p.decide(_obs(11, 0, False, NONE)) is ON_DEMAND
    assert p.decide(_obs(12, 1, True, ON_DEMAND)) is ON_DEMAND
    # riding spot when the net is reached: keep it until preempted
    q = Greedy(job)
    assert q.decide(_obs(11, 0, True, SPOT)) is SPOT


def test_uniform_progress_rules():
    job = Job(task_s=48 * G, deadline_s=60 * G, overhead_s=120, tick_s=G)
    p = UniformProgress(job)
    assert p.decide(_obs(10, 8, False, NONE)) is NONE  # cp = ep(t): not behind
    assert p.decide(_obs(10, 7.9, False, NONE)) is ON_DEMAND  # behind: on-demand
    # on-demand, spot back, but cp < ep(t + 2d): hysteresis keeps on-demand
    assert p.decide(_obs(11, 8.8, True, ON_DEMAND)) is ON_DEMAND
    # ahead of ep(t + 2d) and spot available: take spot; without spot stay on-demand
    assert p.decide(_obs(11, 9.2, True, ON_DEMAND)) is SPOT
    assert UniformProgress(job).decide(_obs(11, 9.2, False, ON_DEMAND)) is ON_DEMAND
    # behind but spot available: take the risk
    assert UniformProgress(job).decide(_obs(20, 10, True, NONE)) is SPOT


def test_slack_aware_rules():
    job = Job(task_s=48 * G, deadline_s=60 * G, overhead_s=120, tick_s=G)
    p = SlackAware(job, beta=1.0, gamma=1.0, confirm_ticks=1, outage_wait_ticks=0)
    assert p.reserve(0) == pytest.approx(12 * G)
    # at t = 30 ticks the reserve is 6 ticks; slack = 30 - (48 - progress)
    assert p.decide(_obs(30, 25, False, NONE)) is NONE  # slack 7 > reserve 6: wait for spot
    assert p.decide(_obs(30, 23, False, NONE)) is ON_DEMAND  # slack 5 < 6
    assert p.decide(_obs(30, 23, True, ON_DEMAND)) is ON_DEMAND  # still under the reserve
    assert p.decide(_obs(30, 25, True, ON_DEMAND)) is SPOT  # no hysteresis above it
    assert p.decide(_obs(30, 25, False, ON_DEMAND)) is ON_DEMAND  # on-demand kept until spot
    # gamma > 1 releases slack earlier than Uniform Progress
    assert SlackAware(job, gamma=1.5).reserve(30 * G) < p.reserve(30 * G)

    # confirmation: leave on-demand only after spot has been up for 2 ticks
    q = SlackAware(job, beta=1.0, gamma=1.0, confirm_ticks=2, outage_wait_ticks=0)
    assert q.decide(_obs(30, 25, False, ON_DEMAND)) is ON_DEMAND
    assert q.decide(_obs(31, 26, True, ON_DEMAND)) is ON_DEMAND  # first tick of spot: a blip?
    assert q.decide(_obs(32, 27, True, ON_DEMAND)) is SPOT  # it lasted: take it
    # from idle, spot is taken at once
    assert SlackAware(job, confirm_ticks=2).decide(_obs(5, 5, True, NONE)) is SPOT

    # a fresh outage below the reserve: wait one tick idle, then on-demand
    w = SlackAware(job, beta=1.0, gamma=1.0, confirm_ticks=1, outage_wait_ticks=1)
    assert w.decide(_obs(29, 23, True, NONE)) is SPOT
    assert w.decide(_obs(30, 23, False, NONE)) is NONE
    assert w.decide(_obs(31, 23, False, NONE)) is ON_DEMAND



def test_slack_aware_defaults_depend_only_on_the_job_slack():
    """gamma and confirm_ticks come from rho = S0/R0 at construction (no trace knowledge)."""
    loose = SlackAware(Job.from_hours(48, 48 / 0.6, 0.2, G))  # rho = 0.4
    mid = SlackAware(Job.from_hours(48, 48 / 0.8, 0.2, G))  # rho = 0.2: tight
    tight = SlackAware(Job.from_hours(48, 48 / 0.9, 0.2, G))  # rho = 0.1
    assert loose.gamma == pytest.approx(1.5) and loose.confirm_ticks == 2
    assert mid.gamma == pytest.approx(1.4) and mid.confirm_ticks == 3
    assert tight.gamma == pytest.approx(1.3) and tight.confirm_ticks == 3
    assert SlackAware(Job.from_hours(48, 64, 0.2, G)).confirm_ticks == 2  # fraction 0.75: not tight
    # explicit values still win
    assert SlackAware(tight.job, gamma=2.0, confirm_ticks=1).gamma == 2.0
    # tight: on-demand is left for spot only on the third tick of a stretch
    job = Job(task_s=48 * G, deadline_s=60 * G, overhead_s=120, tick_s=G)
    q = SlackAware(job, beta=1.0, gamma=1.0)
    assert q.confirm_ticks == 3
    assert q.decide(_obs(30, 25, False, ON_DEMAND)) is ON_DEMAND
    assert q.decide(_obs(31, 26, True, ON_DEMAND)) is ON_DEMAND
    assert q.decide(_obs(32, 27, True, ON_DEMAND)) is ON_DEMAND
    assert q.decide(_obs(33, 28, True, ON_DEMAND)) is SPOT

def _random_windows(rng, n, T, kind):
    if kind == "iid":
        return rng.random((n, T)) < rng.uniform(0.1, 0.95, (n, 1))
    # long outages, as in the real traces: a two-state Markov chain
    out = np.zeros((n, T), bool)
    state = rng.random(n) < 0.5
    stay = rng.uniform(0.8, 0.99, n)
    for t in range(T):
        flip = rng.random(n) > stay
        state = np.where(flip, ~state, state)
        out[:, t] = state
    return out


def _check_invariants(W, job, prices, names=ONLINE):
    om = omniscient.solve(W, job, prices)
    for name in names:
        for i, w in enumerate(W):
            out = simulate(make_policy(name, job), w, job, prices)
            if np.isfinite(om.cost[i]):
                assert out.met, (name, i)
                assert om.cost[i] <= out.cost + 1e-9, (name, i, om.cost[i], out.cost)
    return om


@pytest.mark.parametrize("kind", ["iid", "markov"])
@pytest.mark.parametrize("slack_ticks, d", [(0, 0), (1, 720), (3, 720), (6, 300), (12, 1500), (20, 0)])
def test_invariants_on_synthetic_traces(kind, slack_ticks, d):
    rng = np.random.default_rng(slack_ticks * 31 + d)
    job = Job(task_s=30 * G, deadline_s=(30 + slack_ticks) * G + 17, overhead_s=d, tick_s=G)
    W = _random_windows(rng, 25, job.ticks, kind)
    om = _check_invariants(W, job, Prices())
    feasible = slack_ticks * G >= d
    assert bool(np.isfinite(om.cost).all()) == feasible


def _real_traces():
    root = default_traces_root()
    if not root.exists():
        pytest.skip(f"no spot traces at {root}")
    return root


@pytest.mark.parametrize("pattern, days, frac", [
    ("availability/1-node/aws-10-26-2022/*.json", 13, 0.6),
    ("availability/1-node/aws-10-26-2022/*.json", 13, 0.9),
    ("availability/16-node/aws-08-27-2023/*.json", None, 0.8),
    ("preemption/4-node/aws-08-03-2023/*.json", None, 0.75),
])
def test_invariants_on_real_traces(pattern, days, frac):
    root = _real_traces()
    for ti, path in enumerate(find_traces(root, pattern)):
        tr = load_trace(path).head(days)
        job = Job.from_hours(48, 48 / frac, 0.2, tr.gap_seconds)
        starts = sample_starts(len(tr), job.ticks, 6, seed=11, salt=ti)
        W = windows(tr.availability(infer_nodes(path)), starts, job.ticks)
        om = _check_invariants(W, job, Prices(nodes=infer_nodes(path)))
        assert np.isfinite(om.cost).all()


def test_table3_direction_on_a_subset():
    """Fraction 0.8 on the 2-week traces, 30 starts each: the ordering of Table 3 holds."""
    root = _real_traces()
    spot = {n: [] for n in ("greedy", "uniform_progress", "slack_aware")}
    om_spot = []
    for ti, path in enumerate(find_traces(root, "availability/1-node/aws-10-26-2022/*.json")):
        tr = load_trace(path).head(13)
        job = Job.from_hours(48, 60, 0.2, tr.gap_seconds)
        W = windows(tr.availability(), sample_starts(len(tr), job.ticks, 30, 0, ti), job.ticks)
        om_spot.extend(omniscient.solve(W, job, Prices()).spot_hours)
        for n, hours in spot.items():
            hours.extend(simulate(make_policy(n, job), w, job, Prices()).spot_hours for w in W)
    g, up, om = np.mean(spot["greedy"]), np.mean(spot["uniform_progress"]), np.mean(om_spot)
    assert g < up < om
    assert math.isclose(g, 17.2, abs_tol=3) and math.isclose(up, 22.9, abs_tol=3)
    assert math.isclose(om, 27.4, abs_tol=3)
