"""The best-first search against brute force on randomised tasks, and the plan semantics a SkyPilot user
expects (memory default, burstable and suspicious offers, generation ties, TPUs)."""
from __future__ import annotations

import random

import pytest

from skybroker import catalog
from skybroker.errors import NoFeasibleError
from skybroker.offer_fit import _zone_ok, spec_admits
from skybroker.optimizer import Block, Candidate, _clouds_for, optimize
from skybroker.resources import Amount, Resources
from skybroker.spec import replace_groups, task_from_dict

ALL = ("aws", "gcp", "azure")


def plan_for(resources: dict, clouds=ALL, **kw):
    return optimize(task_from_dict({"resources": resources, "run": "x"}, source="t.yaml"), clouds, **kw)


# --- brute force -----------------------------------------------------------------------------------------
def brute_best(res: Resources, blocks=(), allow_suspicious=False):
    """The best candidate by the documented ranking, over every offer of every admissible spec."""
    best = None
    for cloud in _clouds_for(res, ALL):
        for s in catalog.specs(cloud):
            if not spec_admits(res, s):
                continue
            for o in catalog.offers(s):
                price = o.spot_price if res.use_spot else o.price
                if price is None or not _zone_ok(res, o) or (o.suspicious and not allow_suspicious):
                    continue
                if res.max_hourly_cost is not None and price > res.max_hourly_cost + 1e-12:
                    continue
                if any(b.matches(cloud, o.region, o.zone, s.instance_type) for b in blocks):
                    continue
                c = Candidate(res, 0, cloud, o.region, o.zone, s.instance_type, s.vcpus, s.memory_gib,
                              s.accelerator_name, s.accelerator_count, res.use_spot, price, 1, o)
                if best is None or c.sort_key() < best.sort_key():
                    best = c
    return best


def _random_resources(rnd: random.Random) -> Resources:
    cloud = rnd.choice([None, None, "aws", "gcp", "azure"])
    pool = [s for c in ((cloud,) if cloud else ALL) for s in catalog.specs(c)]
    kw: dict = {"cloud": cloud, "use_spot": rnd.random() < 0.5}
    kind = rnd.random()
    if kind < 0.35:  # accelerator task
        s = rnd.choice([s for s in pool if s.accelerator_name])
        kw.update(accelerator=s.accelerator_name, accelerator_count=s.accelerator_count)
        if rnd.random() < 0.3:
            kw["cpus"] = Amount(rnd.choice([4, 8, 16, 32]), at_least=True)
    elif kind < 0.45:  # named instance type (burstable and Arm allowed)
        kw["instance_type"] = rnd.choice(pool).instance_type
    else:  # CPU task
        if rnd.random() < 0.7:
            kw["cpus"] = Amount(rnd.choice([1, 2, 4, 8, 16, 32, 64, 96]), at_least=rnd.random() < 0.6)
        m = rnd.random()
        if m < 0.3:
            kw["memory"] = Amount(rnd.choice([2, 8, 16, 64, 256]), at_least=True)
        elif m < 0.45:
            kw["memory"] = Amount(rnd.choice([1, 2, 8]), per_cpu=True)
        elif m < 0.55:
            kw["memory"] = Amount(rnd.choice([4, 16, 32]))
    if cloud and rnd.random() < 0.3:
        kw["region"] = rnd.choice(catalog.regions(cloud))
    if rnd.random() < 0.15:
        kw["max_hourly_cost"] = rnd.choice([0.05, 0.5, 5.0, 50.0])
    return Resources(**kw)


@pytest.mark.parametrize("seed", [0, 1] + [pytest.param(s, marks=pytest.mark.slow) for s in range(2, 4)])
def test_search_equals_brute_force_on_random_tasks(seed):
    rnd = random.Random(seed)
    base = task_from_dict({"run": "x"})
    for _ in range(25):
        res = _random_resources(rnd)
        blocks = ()
        if rnd.random() < 0.2:
            first = brute_best(res)
            if first is not None:
                blocks = (Block(first.cloud, first.region, first.zone),)
        allow = rnd.random() < 0.2
        expected = brute_best(res, blocks, allow)
        task = replace_groups(base, [[res]])
        try:
            got = optimize(task, ALL, blocks, allow_suspicious=allow).chosen
        except NoFeasibleError:
            got = None
        if expected is None:
            assert got is None, res
            continue
        assert got is not None, res
        assert (got.cloud, got.region, got.zone, got.instance_type, got.accelerator_name) == \
            (expected.cloud, expected.region, expected.zone, expected.instance_type, expected.accelerator_name), res
        assert got.price == pytest.approx(expected.price)
        # the same answer from specs passed in as a plain function (the in-memory index)
        other = optimize(task, ALL, blocks, allow_suspicious=allow, specs=lambda c: catalog.specs(c)).chosen
        assert other.sort_key() == got.sort_key()


# --- what a SkyPilot user expects ------------------------------------------------------------------------
def test_cpus_without_memory_gets_4_gib_per_vcpu():
    for r in ({"cpus": 2}, {"cpus": "2+"}):
        c = plan_for({**r, "cloud": "aws"}).chosen
        assert c.instance_type != "t3.nano" and c.vcpus >= 2 and c.memory_gib >= 4 * c.vcpus
    c = plan_for({"cpus": 2, "cloud": "aws"}).chosen
    assert (c.instance_type, c.price) == ("m6i.large", pytest.approx(0.096))  # m5.large ties; m6i is newer
    assert plan_for({"cpus": 8, "memory": 16, "cloud": "aws"}).chosen.memory_gib == 16  # given memory wins


def test_burstable_only_when_named_and_noted():
    p = plan_for({"cpus": "4+", "memory": "16+", "cloud": "aws"})
    assert not p.chosen.offer.spec.burstable
    assert [s.reason for s in p.skipped] == ["burstable"] and "t3.xlarge" in p.notes[0]
    named = plan_for({"instance_type": "t3.nano"}).chosen
    assert named.instance_type == "t3.nano"
    for cloud, itype in (("azure", "Standard_B"), ("gcp", "e2-medium")):
        assert not plan_for({"cpus": "2+", "cloud": cloud}).chosen.instance_type.startswith(itype)
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"cpus": 2, "memory": 0.5, "cloud": "aws"})  # only t3.nano has that shape
    assert "burstable" in ei.value.hint and "instance_type: t3.nano" in ei.value.hint


def test_confidential_sizes_only_when_named():
    for r in ({"cpus": 1, "memory": "8+", "cloud": "azure"}, {"cpus": "4+", "use_spot": True, "cloud": "azure"},
              {"accelerators": "H100:1", "cloud": "azure"}):
        c = plan_for(r).chosen
        assert not c.offer.spec.confidential and not c.instance_type.startswith(("Standard_DC", "Standard_EC",
                                                                                 "Standard_NCC"))
    assert plan_for({"instance_type": "Standard_DC1s_v3"}).chosen.instance_type == "Standard_DC1s_v3"


def test_suspicious_prices_shown_not_chosen():
    p = plan_for({"cpus": "4+", "memory": "16+", "cloud": "azure"})
    assert not p.chosen.suspicious
    assert any(c.suspicious for c in p.candidates)
    assert "suspicious" in [s.reason for s in p.skipped]
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"instance_type": "Standard_F4ams_v6", "infra": "azure/newzealandnorth"})
    assert "--allow-suspicious-prices" in ei.value.hint
    ok = plan_for({"instance_type": "Standard_F4ams_v6", "infra": "azure/newzealandnorth"}, allow_suspicious=True)
    assert ok.chosen.suspicious and ok.chosen.price == pytest.approx(0.0449)


def test_equal_price_prefers_newer_generation():
    c = plan_for({"memory": "64+", "cloud": "aws"}).chosen
    assert c.instance_type == "r6i.2xlarge"  # r5.2xlarge costs the same
    r5 = catalog.named("aws", "r5.2xlarge")[0]
    assert min(o.price for o in catalog.offers(r5) if o.region == c.region) == c.price
    h = plan_for({"accelerators": "H100:8", "cloud": "gcp"}).chosen
    assert h.instance_type == "a3-highgpu-8g"
    (edge,) = [s for s in catalog.named("gcp", "a3-edgegpu-8g") if s.accelerator_name == "H100"]
    assert min(o.price for o in catalog.offers(edge) if o.zone == h.zone) == h.price  # a true tie


def test_tpu_is_planned_on_gcp():
    p = plan_for({"accelerators": "tpu-v4-8"})
    c = p.chosen
    assert (c.cloud, c.instance_type, c.accelerator_name, c.zone) == ("gcp", "TPU-VM", "tpu-v4-8", "us-central2-b")
    assert c.is_tpu and c.price == pytest.approx(12.88)
    spot = plan_for({"accelerators": "tpu-v5litepod-8", "use_spot": True}).chosen
    assert spot.is_tpu and spot.use_spot
    assert not plan_for({"accelerators": "V100"}).chosen.is_tpu


def test_unsupported_cloud_option_is_skipped_and_the_rest_planned():
    t = task_from_dict({"resources": {"accelerators": "A100:8", "any_of": [{"infra": "runpod"}, {"infra": "gcp"}]},
                        "run": "x"})
    assert optimize(t, ALL).chosen.cloud == "gcp" and t.warnings


def test_index_parses_only_what_the_search_needs():
    catalog.clear_cache()
    plan_for({"accelerators": "V100:1", "cloud": "azure"})
    idx = catalog.load_index("azure")
    assert 0 < len(idx.blocks) < 30  # of 1432 specs
