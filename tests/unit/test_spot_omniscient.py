"""The omniscient DP against exhaustive search of the simulator's own state machine."""
import math
import random
from functools import lru_cache

import numpy as np
import pytest

from skybroker.spot import omniscient
from skybroker.spot.policies import Job
from skybroker.spot.simulator import Prices


def brute_force(av, job: Job, prices: Prices):
    """Minimum cost over every per-tick choice (NONE / SPOT if available / ON_DEMAND), following the
    simulator's rules (overhead carried across ticks, whole ticks billed, preemption -> NONE).
    Returns (cost, spot work seconds) of one optimal schedule."""
    g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
    od, sp = prices.per_tick(g)

    @lru_cache(None)
    def best(i, done, held, left):
        if done >= c:
            return 0.0
        if i >= T:
            return math.inf
        if held == 1 and not av[i]:
            held, left = 0, 0
        res = best(i + 1, done, 0, 0)
        for x in (1, 2):
            if x == 1 and not av[i]:
                continue
            lft = left if x == held else d
            w = max(g - lft, 0)
            lft -= g - w
            w = min(w, c - done)
            res = min(res, (sp if x == 1 else od) + best(i + 1, done + w, x, lft))
        return res

    return best(0, 0, 0, 0)


def test_matches_exhaustive_search_on_random_small_cases():
    rng = random.Random(7)
    checked = infeasible = 0
    for _ in range(300):
        g = rng.choice([1, 2, 3, 5, 6])
        d = rng.choice([0, 1, 2, 3, 4, 7, 12])
        T = rng.randint(2, 11)
        c = rng.randint(1, T * g)
        job = Job(c, T * g + rng.randint(0, g - 1), d, g)
        av = tuple(rng.random() < rng.choice([0.2, 0.6, 0.95]) for _ in range(T))
        prices = Prices(rng.choice([3.06, 2.0, 1.2]), rng.choice([0.9731, 1.0]))
        want = brute_force(av, job, prices)
        got = omniscient.solve(np.array([av]), job, prices).cost[0]
        if math.isinf(want):
            assert math.isinf(got)
            infeasible += 1
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (g, d, T, c, av)
        checked += 1
    assert checked == 300 and 0 < infeasible < 300


def test_batch_equals_one_by_one_and_hours_add_up():
    rng = np.random.default_rng(3)
    job = Job(task_s=20 * 600, deadline_s=30 * 600, overhead_s=720, tick_s=600)
    av = rng.random((12, 30)) < 0.6
    batch = omniscient.solve(av, job, Prices(), chunk=5)
    for i in range(12):
        one = omniscient.solve(av[i], job, Prices())
        assert one.cost[0] == batch.cost[i]
    ok = np.isfinite(batch.cost)
    assert ok.all()
    assert np.allclose(batch.spot_hours + batch.od_hours, 20 * 600 / 3600)
    # cost is at least the work priced at spot, and at most always-on-demand
    od_tick, spot_tick = Prices().per_tick(600)
    assert (batch.cost >= 20 * spot_tick - 1e-9).all()
    assert (batch.cost <= math.ceil((20 * 600 + 720) / 600) * od_tick + 1e-9).all()


def test_known_schedules():
    g = 600
    job = Job(task_s=4 * g, deadline_s=8 * g, overhead_s=0, tick_s=g)
    od, sp = Prices().per_tick(g)
    all_spot = np.ones((1, 8), bool)
    no_spot = np.zeros((1, 8), bool)
    assert omniscient.solve(all_spot, job, Prices()).cost[0] == pytest.approx(4 * sp)
    assert omniscient.solve(no_spot, job, Prices()).cost[0] == pytest.approx(4 * od)
    r = omniscient.solve(np.array([[0, 0, 0, 0, 0, 1, 1, 1]], bool), job, Prices())
    assert r.cost[0] == pytest.approx(3 * sp + 1 * od)
    assert r.spot_hours[0] == pytest.approx(3 * g / 3600)
    # overhead 1.2 ticks: the switch takes 2 ticks (0.8 tick of work), then 3.2 ticks -> 4 more
    job_d = Job(task_s=4 * g, deadline_s=8 * g, overhead_s=720, tick_s=g)
    assert omniscient.solve(all_spot, job_d, Prices()).cost[0] == pytest.approx(6 * sp)
    # the deadline is too close for any schedule
    tight = Job(task_s=4 * g, deadline_s=4 * g + 100, overhead_s=720, tick_s=g)
    assert math.isinf(omniscient.solve(all_spot, tight, Prices()).cost[0])


def test_plan_replays_to_the_optimal_cost():
    from skybroker.spot.simulator import run_plan

    rng = np.random.default_rng(5)
    for g, d, slack in [(600, 720, 5), (600, 180, 3), (300, 720, 9), (600, 0, 4), (600, 1500, 6)]:
        job = Job(task_s=20 * 600, deadline_s=20 * 600 + slack * g + 11, overhead_s=d, tick_s=g)
        for _ in range(15):
            av = rng.random(job.ticks) < rng.uniform(0.2, 0.9)
            want = omniscient.solve(av[None], job, Prices())
            p = omniscient.plan(av, job, Prices())
            if not np.isfinite(want.cost[0]):
                assert p == []
                continue
            out = run_plan(p, av, job, Prices())
            assert out.met and out.cost == pytest.approx(want.cost[0], rel=1e-12)
            assert out.spot_hours == pytest.approx(want.spot_hours[0])
