"""`hindsight` (opt-in, issue 17): safe by construction like `mdp` (every deadline the omniscient can
meet is met, on every availability pattern of small jobs and on random traces), and its two estimators
are what they claim: the hindsight values are the omniscient DP's, the rollout replays mdp exactly."""
import itertools

import numpy as np
import pytest

from skybroker.spot import omniscient
from skybroker.spot.hindsight import (HindsightPolicy, Library, action_costs, default_library, draw,
                                      rollout_costs)
from skybroker.spot.mdp import MDPPolicy
from skybroker.spot.policies import NONE, ON_DEMAND, SPOT, Job, Observation, make_policy
from skybroker.spot.simulator import Prices, simulate

G = 600


def variant(**kw):
    return type("HS", (HindsightPolicy,), dict(scenarios=4, **kw))


@pytest.mark.parametrize("mode", ["rollout", "hindsight"])
@pytest.mark.parametrize("task, slack, d, g", [(4, 1, 720, G), (4, 3, 720, G), (5, 3, 180, G),
                                               (3, 4, 1500, G), (4, 2, 0, G), (6, 3, 720, 300)])
def test_every_pattern_meets_the_deadline(mode, task, slack, d, g):
    job = Job(task_s=task * G, deadline_s=task * G + slack * g + 7, overhead_s=d, tick_s=g)
    pats = np.array(list(itertools.product([False, True], repeat=job.ticks)), bool)
    om = omniscient.solve(pats, job, Prices())
    feasible = np.isfinite(om.cost)
    assert feasible.all() == (job.ticks * g - job.task_s >= d)
    cls = variant(mode=mode, every_s=0, z=0.0)
    points = 0
    for k in np.flatnonzero(feasible):
        pol = cls(job, Prices())
        out = simulate(pol, pats[k], job, Prices())
        points += pol.points
        assert out.met, pats[k]
        assert out.cost >= om.cost[k] - 1e-9
    if slack * g >= 2 * d + G:  # the scenarios decided somewhere (not only mdp's table)
        assert points > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rollout", "hindsight"])
def test_random_traces_meet_the_deadline(mode):
    rng = np.random.default_rng(7)
    cls = variant(mode=mode, every_s=1800, z=0.0)
    for r in range(12):
        g = int(rng.choice([300, 600]))
        task_h = float(rng.integers(4, 10))
        job = Job.from_hours(task_h, task_h / rng.uniform(0.6, 0.95), float(rng.choice([0.05, 0.2, 0.5])), g)
        # bursty availability: long up / down runs
        p_stay = rng.uniform(0.6, 0.98)
        w = np.empty(job.ticks, bool)
        w[0] = True
        for t in range(1, job.ticks):
            w[t] = w[t - 1] if rng.random() < p_stay else not w[t - 1]
        hist = rng.random(200) < 0.7
        om = omniscient.solve(w[None], job, Prices()).cost[0]
        out = simulate(cls(job, Prices(), history=hist), w, job, Prices())
        assert np.isfinite(om) and out.met and out.cost >= om - 1e-9, (r, job)


def test_hindsight_values_are_the_omniscient_dp():
    """With the true window as the only scenario, the best first action costs the omniscient's."""
    rng = np.random.default_rng(1)
    job = Job.from_hours(6, 8, 0.2, G)
    for _ in range(10):
        w = rng.random(job.ticks) < 0.6
        om = omniscient.solve(w[None], job, Prices()).cost[0]
        for held in (NONE,):
            c = action_costs(w[None], job, Prices(), held)
            assert min(c.values()) == pytest.approx(om)
            if not w[0]:
                assert c[SPOT] >= om  # a switch onto spot that is not there is not free


def test_rollout_replays_mdp():
    """The rollout of mdp's own first action on the true window costs what mdp costs there."""
    rng = np.random.default_rng(2)
    job = Job.from_hours(8, 11, 0.2, G)
    for _ in range(6):
        w = np.repeat(rng.random(job.ticks // 4 + 1) < 0.7, 4)[:job.ticks]
        m = MDPPolicy(job, Prices())
        cost = simulate(m, w, job, Prices()).cost
        p = HindsightPolicy(job, Prices())
        obs = Observation(0, 0, bool(w[0]), NONE, 0)
        p.run_avail, p.run_start = bool(w[0]), 0.0
        first = MDPPolicy(job, Prices()).decide(obs)
        per = rollout_costs(p, obs, w[None], [first, ON_DEMAND], Prices())
        assert per[first][0] == pytest.approx(cost)


def test_library_and_draws():
    lib = default_library()
    assert len(lib.series) == 8 and lib.step_s == 600
    again = Library.from_json(lib.to_json())
    assert all((a == b).all() for a, b in zip(lib.series, again.series))
    rng = np.random.default_rng(0)
    for avail in (False, True):
        W = draw(lib, avail, 3, np.array([0.5, 0.5]), 8, 500, rng, 1.0)
        assert W.shape == (8, 500) and (W[:, 0] == avail).all()
    # leaving every trace but one out draws only from that one
    keep = lib.names[3]
    W = draw(lib, True, 1, np.array([0.9, 0.9]), 4, 50, rng, 0.0, frozenset(lib.names) - {keep})
    s = lib.series[3]
    for row in W:
        assert any((s[t:t + 50] == row).all() for t in range(len(s) - 50))


def test_selectable():
    job = Job.from_hours(6, 8, 0.2, G)
    pol = make_policy("hindsight", job, Prices())
    assert isinstance(pol, HindsightPolicy)
