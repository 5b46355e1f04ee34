"""Risk-aware placement (jobs/risk.py): the math, and the optimizer ranking spot offers by expected cost
exactly (checked against brute force over the catalog)."""
from __future__ import annotations

import random

import pytest

from skybroker import catalog
from skybroker.jobs import risk
from skybroker.optimizer import optimize
from skybroker.spec import task_from_dict

ALL = ("aws", "gcp", "azure")


def test_rate_is_the_prior_without_observations_and_moves_with_them():
    assert risk.rate(None) == pytest.approx(0.5)
    assert risk.rate(risk.Exposure(hours=98, preemptions=0)) == pytest.approx(1 / 100)
    assert risk.rate(risk.Exposure(hours=2, preemptions=3)) == pytest.approx(1.0)


def test_factor_is_paid_hours_per_useful_hour_and_capped():
    assert risk.factor(0.0, 0.3) == 1.0
    assert risk.factor(1.0, 0.2) == pytest.approx(1 / 0.8)
    assert risk.factor(100.0, 1.0) == pytest.approx(10.0)  # at most 90% of the time lost
    assert risk.lost_hours_per_preemption(0.2, 720) == pytest.approx(0.3)


def test_on_demand_has_no_risk():
    f = risk.risk_for({("aws", "us-east-1", "use1-az1", "p3.2xlarge"): risk.Exposure(1, 50)}, 0.5)
    assert f("aws", "us-east-1", "use1-az1", "p3.2xlarge", False) == 1.0
    assert f("aws", "us-east-1", "use1-az1", "p3.2xlarge", True) > 5


def _task(res):
    return task_from_dict({"resources": res, "run": "x"})


def _brute(res, factor):
    """The cheapest choosable spot offer by price × factor, over every spec of every cloud."""
    t = _task(res)
    r = t.candidates[0]
    best = None
    for cloud in ALL:
        for spec in catalog.specs(cloud):
            if spec.accelerator_name != r.accelerator or spec.accelerator_count != r.accelerator_count:
                continue
            for o in catalog.offers(spec):
                if o.spot_price is None or o.suspicious or o.local_zone:
                    continue
                v = o.spot_price * factor(cloud, o.region, o.zone, spec.instance_type, True)
                if best is None or v < best[0] - 1e-12:
                    best = (v, cloud, o.region, o.zone, spec.instance_type)
    return best


def test_a_risky_cheap_zone_loses_to_a_safer_one():
    res = {"accelerators": "V100:1", "use_spot": True}
    plain = optimize(_task(res), ALL).chosen
    place = (plain.cloud, plain.region, plain.zone, plain.instance_type)
    f = risk.risk_for({place: risk.Exposure(hours=3, preemptions=12)}, 0.3)
    p = optimize(_task(res), ALL, risk=f)
    c = p.chosen
    assert (c.cloud, c.region, c.zone, c.instance_type) != place
    assert c.expected == pytest.approx(c.price * f(c.cloud, c.region, c.zone, c.instance_type, True))
    assert c.expected < plain.price * f(*place, True)
    assert [x.rank_price for x in p.candidates if x.group == c.group] == sorted(
        x.rank_price for x in p.candidates if x.group == c.group)


@pytest.mark.parametrize("seed", range(6))
def test_risk_ranking_is_exact_against_brute_force(seed):
    rng = random.Random(seed)
    res = {"accelerators": rng.choice(["V100:1", "T4:1", "A100:8", "L4:1", "H100:8"]), "use_spot": True}
    table: dict = {}

    def factor(cloud, region, zone, itype, spot):
        key = (cloud, region, zone, itype)
        if key not in table:
            table[key] = 1.0 + (rng.random() * 3 if rng.random() < 0.5 else 0.0)
        return table[key]

    want = _brute(res, factor)
    got = optimize(_task(res), ALL, risk=factor).chosen
    assert want is not None
    assert got.expected == pytest.approx(want[0]), (got, want)
