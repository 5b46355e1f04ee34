"""The vectorised simulator and the batch policies against the scalar loop, sample by sample."""
import numpy as np
import pytest

from skybroker.spot.batch import batch_for, on_demand_cost, simulate_batch
from skybroker.spot.policies import Job, make_policy, policy_names
from skybroker.spot.simulator import Prices, simulate

G = 600


def _windows(rng, n, T):
    out = np.zeros((n, T), bool)
    state = rng.random(n) < 0.5
    stay = rng.uniform(0.5, 0.99, n)
    for t in range(T):
        state = np.where(rng.random(n) > stay, ~state, state)
        out[:, t] = state
    return out


@pytest.mark.parametrize("name", policy_names())
@pytest.mark.parametrize("slack_ticks, d, g", [(0, 0, G), (2, 720, G), (9, 720, G), (15, 180, G),
                                               (30, 720, 300)])
def test_batch_matches_scalar(name, slack_ticks, d, g):
    rng = np.random.default_rng(slack_ticks + d + g)
    job = Job(task_s=30 * G, deadline_s=30 * G + slack_ticks * g + 17, overhead_s=d, tick_s=g)
    W = _windows(rng, 40, job.ticks)
    bp = batch_for(name, job, len(W))
    if bp is None:
        pytest.skip(f"{name} has no batch version")
    got = simulate_batch(bp, W, job, Prices())
    for i, w in enumerate(W):
        want = simulate(make_policy(name, job), w, job, Prices())
        assert got.cost[i] == pytest.approx(want.cost, rel=1e-12, abs=1e-12), (name, i)
        assert got.met[i] == want.met
        assert got.spot_hours[i] == pytest.approx(want.spot_hours)
        assert got.od_hours[i] == pytest.approx(want.od_hours)
        assert got.finish_hours[i] == pytest.approx(want.finish_hours)
        assert got.preemptions[i] == want.preemptions and got.switches[i] == want.switches


def test_on_demand_cost_is_the_simulated_one():
    for d in (0, 180, 720, 1500):
        job = Job(task_s=7 * G + 5, deadline_s=20 * G, overhead_s=d, tick_s=G)
        out = simulate(make_policy("on_demand", job), np.zeros(job.ticks, bool), job, Prices())
        assert on_demand_cost(job, Prices()) == pytest.approx(out.cost)


def test_mdp_batch_with_histories_matches_scalar():
    rng = np.random.default_rng(11)
    job = Job(task_s=30 * G, deadline_s=40 * G, overhead_s=720, tick_s=G)
    W = _windows(rng, 30, job.ticks)
    hist = [_windows(rng, 1, int(rng.integers(0, 300)))[0] for _ in range(len(W))]
    got = simulate_batch(batch_for("mdp", job, len(W), Prices(), hist), W, job, Prices())
    for i, w in enumerate(W):
        want = simulate(make_policy("mdp", job, Prices(), hist[i]), w, job, Prices())
        assert got.cost[i] == pytest.approx(want.cost, rel=1e-12), i
        assert got.met[i] and want.met
