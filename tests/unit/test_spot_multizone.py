"""Multi-zone: the exact DP against exhaustive search of the simulator's state machine, and the zone
policies' properties (deadline always met when the omniscient can, omniscient never costlier)."""
import itertools
import json
import math
import random
from functools import lru_cache

import numpy as np
import pytest
from click.testing import CliRunner

from skybroker.spot import mz_omniscient, omniscient
from skybroker.spot.cli import simulate
from skybroker.spot.mz_policies import MZ_POLICIES
from skybroker.spot.policies import Job
from skybroker.spot.simulator import Prices
from skybroker.spot.zones import align, simulate_zones, zone_of
from skybroker.spot.traces import Trace

G = 600


def brute_force(av, job, od_price, spot_prices):
    """Minimum cost over every per-tick choice (idle / on-demand / spot in an available zone),
    with the simulator's rules (overhead carried across ticks, whole ticks billed)."""
    g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
    f = g / 3600.0
    Z = len(spot_prices)

    @lru_cache(None)
    def best(i, done, held, left):  # held: 0 none, 1 on-demand, 2 + z spot z
        if done >= c:
            return 0.0
        if i >= T:
            return math.inf
        if held >= 2 and not av[held - 2][i]:
            held, left = 0, 0
        res = best(i + 1, done, 0, 0)
        for x in [1] + [2 + z for z in range(Z) if av[z][i]]:
            lft = left if x == held else d
            w = max(g - lft, 0)
            lft -= g - w
            w = min(w, c - done)
            price = od_price if x == 1 else spot_prices[x - 2]
            res = min(res, price * f + best(i + 1, done + w, x, lft))
        return res

    return best(0, 0, 0, 0)


def test_matches_exhaustive_search():
    rng = random.Random(3)
    for _ in range(120):
        g = rng.choice([2, 3, 5])
        d = rng.choice([0, 1, 2, 4, 7])
        T = rng.randint(2, 8)
        c = rng.randint(1, T * g)
        job = Job(c, T * g + rng.randint(0, g - 1), d, g)
        Z = rng.choice([1, 2, 3])
        av = tuple(tuple(rng.random() < rng.choice([0.3, 0.7]) for _ in range(T)) for _ in range(Z))
        od = rng.choice([3.06, 2.0])
        sp = [rng.choice([0.35, 0.9731, 1.5]) for _ in range(Z)]
        want = brute_force(av, job, od, sp)
        got = mz_omniscient.solve(np.array([av]), job, od, sp).cost[0]
        if math.isinf(want):
            assert math.isinf(got)
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (g, d, T, c, av, sp)


class _Replay:
    """A multi-zone plan as a policy: the planned (market, zone) of every tick."""
    name = "replay"

    def __init__(self, steps):
        self.steps = steps

    def decide(self, obs):
        return self.steps[obs.elapsed_s // G]


def test_plan_replayed_costs_exactly_the_dp():
    """The omniscient's schedule (the one printed beside the policies') is a real schedule: replayed in the
    simulator it meets the deadline at exactly the DP's cost, and only uses a zone while it is up."""
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        T = rng.randint(3, 30)
        d = rng.choice([0, 300, 600, 900, 1500])
        c = rng.randint(1, T) * G - rng.choice([0, 0, 200])
        job = Job(max(1, c), T * G, d, G)
        Z = rng.choice([1, 2, 3])
        av = np.array([[rng.random() < p for _ in range(T)] for p in rng.sample([0.2, 0.5, 0.8, 0.95], Z)])
        sp = [rng.choice([0.35, 0.9731, 1.5]) for _ in range(Z)]
        cost = mz_omniscient.solve(av[None], job, 3.06, sp).cost[0]
        steps = mz_omniscient.plan(av, job, 3.06, sp)
        if not np.isfinite(cost):
            assert steps == []
            continue
        out = simulate_zones(_Replay(steps + [steps[-1]] * T), av, job, 3.06, sp)
        assert out.met and out.cost == pytest.approx(cost, rel=1e-9), (T, d, c, av.tolist(), sp, steps)
        assert all(av[z][i] for i, (x, z) in enumerate(steps) if z >= 0)
        checked += 1
    assert checked > 100


def test_one_zone_is_the_single_zone_dp_and_more_zones_never_cost_more():
    rng = np.random.default_rng(0)
    job = Job(task_s=20 * G, deadline_s=26 * G, overhead_s=720, tick_s=G)
    W = rng.random((20, 3, job.ticks)) < 0.6
    one = mz_omniscient.solve(W[:, :1], job, 3.06, [0.9731])
    ref = omniscient.solve(W[:, 0], job, Prices())
    assert np.allclose(one.cost, ref.cost) and np.allclose(one.spot_hours, ref.spot_hours)
    three = mz_omniscient.solve(W, job, 3.06, [0.9731] * 3)
    assert (three.cost <= one.cost + 1e-9).all()
    assert np.allclose(three.spot_hours + three.od_hours, job.task_s / 3600)


@pytest.mark.parametrize("name", sorted(MZ_POLICIES))
@pytest.mark.parametrize("slack, d", [(1, 720), (3, 720), (6, 180), (12, 1500)])
def test_policies_meet_the_deadline_and_never_beat_the_omniscient(name, slack, d):
    rng = np.random.default_rng(slack * 7 + d)
    job = Job(task_s=24 * G, deadline_s=24 * G + slack * G + 5, overhead_s=d, tick_s=G)
    n, Z = 25, 3
    W = np.zeros((n, Z, job.ticks), bool)
    state = rng.random((n, Z)) < 0.5
    for t in range(job.ticks):  # long runs, as in the real traces
        state ^= rng.random((n, Z)) < 0.12
        W[:, :, t] = state
    sp = [0.9, 0.4, 0.36]
    om = mz_omniscient.solve(W, job, 3.06, sp)
    for i in range(n):
        out = simulate_zones(MZ_POLICIES[name](job, 3.06, sp), W[i], job, 3.06, sp)
        if np.isfinite(om.cost[i]):
            assert out.met, (name, i)
            assert om.cost[i] <= out.cost + 1e-9


def test_every_pattern_two_zones_small_job():
    job = Job(task_s=3 * G, deadline_s=5 * G, overhead_s=720, tick_s=G)
    pats = list(itertools.product([False, True], repeat=2 * job.ticks))
    W = np.array(pats, bool).reshape(len(pats), 2, job.ticks)
    sp = [0.5, 0.4]
    om = mz_omniscient.solve(W, job, 3.06, sp)
    assert np.isfinite(om.cost).all()
    for name in MZ_POLICIES:
        for i in range(0, len(W), 7):
            out = simulate_zones(MZ_POLICIES[name](job, 3.06, sp), W[i], job, 3.06, sp)
            assert out.met and om.cost[i] <= out.cost + 1e-9


def test_probing_a_zone_that_is_down_keeps_what_is_held():
    job = Job(task_s=4 * G, deadline_s=8 * G, overhead_s=0, tick_s=G)

    from skybroker.spot.policies import ON_DEMAND, SPOT

    class P:
        name, observes_all = "prober", False

        def __init__(self):
            self.seen = []

        def decide(self, obs):
            self.seen.append(obs.failed)
            return (ON_DEMAND, -1) if obs.elapsed_s == 0 else (SPOT, 1)

    av = np.array([[1] * 8, [0] * 8], bool)
    p = P()
    out = simulate_zones(p, av, job, 3.06, [1.0, 0.5])
    assert out.met and out.spot_hours == 0 and out.switches == 1  # stayed on on-demand
    assert p.seen[1] == -1 and p.seen[2] == 1  # told about the failed launch


def test_zone_names_and_alignment():
    assert zone_of("us-west-2a_v100_1.json") == ("us-west-2a", "p3.2xlarge")
    assert zone_of("us-east1-b_c3-88.json") == ("us-east1-b", "c3-highcpu-88")
    a = Trace("a", "x/us-west-2a_v100_1.json", 600, np.array([1, 0, 1, 1]))
    b = Trace("b", "x/us-west-2b_v100_1.json", 600, np.array([0, 1, 1]))
    zs = align([a, b], 1)
    assert zs.names == ("us-west-2a", "us-west-2b") and zs.avail.shape == (2, 3)
    assert zs.instance == "p3.2xlarge"


def test_cli_multi_zone_plot(tmp_path):
    """--plot with --multi-zone draws the first sample (it was silently ignored before); the schedules it draws
    are the ones the simulator ran: each policy's cost over them is its simulated cost, the omniscient's the DP's."""
    pytest.importorskip("matplotlib")
    from skybroker.spot.plot_zones import zone_schedules

    rng = np.random.default_rng(2)
    files = []
    for z in ("us-west-2a", "us-west-2b"):
        p = tmp_path / f"{z}_v100_1.json"
        p.write_text(json.dumps({"metadata": {"gap_seconds": 600},
                                 "data": (rng.random(400) < 0.6).astype(int).tolist()}))
        files.append(str(p))
    png = tmp_path / "zones.png"
    r = CliRunner().invoke(simulate, ["--trace", *files, "--multi-zone", "--task-hours", "10", "--deadline-hours",
                                      "14", "--starts", "3", "--zone-prices", "0.5,0.4", "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    av = (rng.random((2, 200)) < 0.6)
    job = Job.from_hours(10, 14, 0.2, G)
    sched = zone_schedules(av, job, 3.06, [0.5, 0.4], 1, ["mz_union", "mz_failover"])
    f = G / 3600.0
    for name, steps in sched.items():
        cost = sum(0.0 if x.value == "none" else 3.06 * f if x.value == "on_demand" else [0.5, 0.4][z] * f
                   for x, z in steps)
        want = (mz_omniscient.solve(av[None], job, 3.06, [0.5, 0.4]).cost[0] if name == "omniscient" else
                simulate_zones(MZ_POLICIES[name](job, 3.06, [0.5, 0.4], 1), av, job, 3.06, [0.5, 0.4]).cost)
        assert cost == pytest.approx(want), name
        assert all(av[z][i] for i, (x, z) in enumerate(steps) if x.value == "spot"), name


def test_cli_multi_zone(tmp_path):
    files = []
    rng = np.random.default_rng(1)
    for z in ("us-west-2a", "us-west-2b"):
        p = tmp_path / f"{z}_v100_1.json"
        p.write_text(json.dumps({"metadata": {"gap_seconds": 600},
                                 "data": (rng.random(400) < 0.7).astype(int).tolist()}))
        files.append(str(p))
    r = CliRunner().invoke(simulate, ["--trace", *files, "--multi-zone", "--task-hours", "10",
                                      "--deadline-hours", "14", "--starts", "5", "--zone-prices",
                                      "0.5,0.4", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    by = {s["policy"]: s for s in out["summary"]}
    assert set(by) == {"mz_union", "mz_mdp", "mz_failover", "mz_single", "omniscient"}
    assert all(s["deadline_met"] == 1.0 and s["mean_gap"] >= -1e-12 for s in by.values())
    assert out["settings"]["spot_prices"] == [0.5, 0.4]
    from skybroker.errors import UsageError

    for args, needle in ((["--trace", files[0]], "at least two traces"),
                         (["--trace", *files, "--zone-prices", "1"], "needs 2 prices")):
        bad = CliRunner().invoke(simulate, [*args, "--multi-zone", "--task-hours", "10",
                                            "--deadline-hours", "14", "--starts", "2"])
        assert isinstance(bad.exception, UsageError) and needle in bad.exception.message
