"""The optimizer answers the catalog's sanity facts (../shared/catalogs-upstream/README.md) and
implements SkyPilot's resource semantics exactly."""
from __future__ import annotations

import pytest

from skybroker import catalog
from skybroker.errors import NoFeasibleError
from skybroker.optimizer import Block, optimize
from skybroker.spec import task_from_dict

ALL = ("aws", "gcp", "azure")


def plan_for(resources: dict, clouds=ALL, blocks=(), **task):
    t = task_from_dict({"resources": resources, "run": "true", **task}, source="t.yaml")
    return optimize(t, clouds, blocks)


def best(resources: dict, cloud: str):
    return plan_for({**resources, "cloud": cloud}).chosen


# --- Sanity facts, answered through the optimizer -------------------------------------------------

@pytest.mark.parametrize("cloud, itype, price, regions", [
    ("aws", "p3.2xlarge", 3.06, {"us-east-1", "us-east-2", "us-west-2"}),
    ("azure", "Standard_NC6s_v3", 3.06, {"eastus", "eastus2", "westus2", "westus3"}),
    ("gcp", "n1-highmem-8", 2.95321, {"us-central1", "us-east1", "us-west1"}),
])
def test_cheapest_v100_on_demand_per_cloud(cloud, itype, price, regions):
    c = best({"accelerators": "V100:1"}, cloud)
    assert (c.instance_type, c.accelerator_name, c.accelerator_count) == (itype, "V100", 1)
    assert c.price == pytest.approx(price, abs=1e-9)
    assert c.region in regions
    # deterministic tie-break: the lexicographically first tying region
    assert c.region == min(regions)


def test_cheapest_v100_overall_is_gcp_host_plus_gpu():
    c = plan_for({"accelerators": "V100:1"}).chosen
    assert (c.cloud, c.zone, c.instance_type) == ("gcp", "us-central1-a", "n1-highmem-8")
    assert c.price == pytest.approx(2.95321)


def test_v100_spot_aws_zone():
    c = best({"accelerators": "V100", "use_spot": True}, "aws")
    assert (c.instance_type, c.zone, c.use_spot) == ("p3.2xlarge", "usw2-az3", True)
    assert c.price == pytest.approx(0.3548)


@pytest.mark.parametrize("acc, cloud, itype, price, region", [
    ("A100:8", "aws", "p4d.24xlarge", 21.95764, "us-east-2"),
    ("A100:8", "azure", "Standard_ND96asr_v4", 27.197, "eastus"),
    ("A100:8", "gcp", "a2-highgpu-8g", 19.4217, "europe-west4"),
    ("A100-80GB:8", "aws", "p4de.24xlarge", 27.44705, "us-east-1"),
    ("A100-80GB:8", "azure", "Standard_ND96amsr_A100_v4", 32.77, "eastus"),
    ("A100-80GB:8", "gcp", "a2-ultragpu-8g", 23.56656, "us-central1"),
    ("H100:8", "aws", "p5.48xlarge", 55.04, "us-east-1"),
])
def test_cheapest_8_gpu_machines(acc, cloud, itype, price, region):
    c = best({"accelerators": acc}, cloud)
    assert c.instance_type == itype
    assert c.price == pytest.approx(price, abs=1e-6)
    assert c.region == region


def test_a100x8_overall_and_gcp_zone():
    c = plan_for({"accelerators": "A100:8"}).chosen
    assert (c.cloud, c.zone) == ("gcp", "europe-west4-a")
    c2 = plan_for({"accelerators": "A100:8", "region": "us-central1", "cloud": "gcp"}).chosen
    assert c2.price == pytest.approx(29.38708)


def test_h100x8_spot_aws():
    c = best({"accelerators": "H100:8", "use_spot": True}, "aws")
    assert (c.zone, c.price) == ("usw2-az4", pytest.approx(9.3722))


def test_cpu_spot_4_16():
    r = {"cpus": "4+", "memory": "16+", "use_spot": True}
    g = best(r, "gcp")
    assert (g.instance_type, g.region, g.price) == ("e2-standard-4", "us-west4", pytest.approx(0.01574))
    a = best(r, "azure")  # the newzealandnorth anomaly (0.008298) is shown, never chosen
    assert not a.suspicious and a.price > 0.008298
    w = best(r, "aws")  # Local Zones excluded unless asked for
    assert (w.instance_type, w.region, w.price) == ("m8i-flex.xlarge", "eu-south-2", pytest.approx(0.0224))
    lz = best({**r, "zone": "usw2-lax1-az2", "instance_type": "t3.xlarge"}, "aws")
    assert (lz.instance_type, lz.price) == ("t3.xlarge", pytest.approx(0.0211))
    p = plan_for(r)
    assert (p.chosen.cloud, p.chosen.instance_type) == ("gcp", "e2-standard-4")
    (skip,) = p.skipped
    assert skip.reason == "suspicious" and skip.candidate.instance_type == "Standard_F4ams_v6"
    assert "--allow-suspicious-prices" in p.notes[0]
    flagged = [c for c in p.candidates if c.suspicious]
    assert flagged and flagged[0].price == pytest.approx(0.008298)  # kept for the table
    allowed = optimize(task_from_dict({"resources": r, "run": "x"}), ALL, allow_suspicious=True)
    assert allowed.chosen.suspicious and allowed.chosen.price == pytest.approx(0.008298) and not allowed.skipped


def test_cpu_on_demand_4_16():
    r = {"cpus": "4+", "memory": "16+"}
    g = best(r, "gcp")
    assert g.instance_type in ("n2d-standard-4", "t2d-standard-4") and g.region == "asia-south1"
    assert g.price == pytest.approx(0.11153)
    w = best(r, "aws")  # t3.xlarge (0.1664, burstable) is skipped: m6i.xlarge, the newer of the 0.192 pair
    assert (w.instance_type, w.price) == ("m6i.xlarge", pytest.approx(0.192))
    assert w.region in ("us-east-1", "us-east-2", "us-west-2")
    skip = plan_for({**r, "cloud": "aws"}).skipped
    assert [(s.reason, s.candidate.instance_type) for s in skip] == [("burstable", "t3.xlarge")]


@pytest.mark.parametrize("gpu, itype, price, spot_type, spot_price, spot_zone", [
    ("T4", "g4dn.xlarge", 0.526, "g4dn.xlarge", 0.0898, "eus1-az3"),
    ("A10G", "g5.xlarge", 1.006, "g5.xlarge", 0.2114, "ape1-az2"),
    ("L4", "g6.xlarge", 0.8048, "g6.2xlarge", 0.1144, "eus2-az2"),
    ("L40S", "g6e.xlarge", 1.861, "g6e.xlarge", 0.3623, "mec1-az2"),
    ("H100", "p5.4xlarge", 6.88, "p5.4xlarge", 2.1102, "euw2-az3"),
    ("V100", "p3.2xlarge", 3.06, "p3.2xlarge", 0.3548, "usw2-az3"),
])
def test_aws_single_gpu_table(gpu, itype, price, spot_type, spot_price, spot_zone):
    od = best({"accelerators": gpu}, "aws")
    assert (od.instance_type, od.price) == (itype, pytest.approx(price))
    sp = best({"accelerators": gpu, "use_spot": True}, "aws")
    assert (sp.instance_type, sp.zone, sp.price) == (spot_type, spot_zone, pytest.approx(spot_price))


def test_gcp_t4_default_host():
    c = best({"accelerators": "T4:1"}, "gcp")
    assert c.instance_type == "n1-highmem-4"


# --- Semantics ------------------------------------------------------------------------------------

def test_accelerator_list_is_ordered_even_if_pricier():
    p = plan_for({"accelerators": ["A100:8", "V100:1"]})
    assert p.chosen.accelerator_name == "A100"
    assert {c.accelerator_name for c in p.candidates} == {"A100", "V100"}
    assert all(c.group == 0 for c in p.candidates if c.accelerator_name == "A100")


def test_accelerator_set_takes_cheapest():
    p = plan_for({"accelerators": {"A100:8": None, "V100:1": None}})
    assert p.chosen.accelerator_name == "V100"
    p2 = plan_for({"accelerators": {"A100": 8, "V100": 1}})
    assert p2.chosen.accelerator_name == "V100"


def test_any_of_cheapest_and_ordered_first():
    any_of = plan_for({"any_of": [{"cloud": "aws", "accelerators": "V100"}, {"cloud": "azure", "accelerators": "T4"}]})
    assert (any_of.chosen.cloud, any_of.chosen.accelerator_name) == ("azure", "T4")
    ordered = plan_for({"ordered": [{"cloud": "aws", "accelerators": "V100"}, {"cloud": "azure", "accelerators": "T4"}]})
    assert (ordered.chosen.cloud, ordered.chosen.accelerator_name) == ("aws", "V100")
    # block every aws place: the next group takes over
    after = plan_for({"ordered": [{"cloud": "aws", "accelerators": "V100"}, {"cloud": "azure", "accelerators": "T4"}]},
                     blocks=[Block("aws")])
    assert after.chosen.cloud == "azure"


def test_spot_vs_on_demand_prices_differ_and_match_offer():
    od = best({"accelerators": "V100"}, "aws")
    sp = best({"accelerators": "V100", "use_spot": True}, "aws")
    assert sp.price < od.price
    assert sp.price == sp.offer.spot_price and od.price == od.offer.price


def test_num_nodes_total():
    p = plan_for({"accelerators": "V100"}, num_nodes=4)
    assert p.chosen.total == pytest.approx(4 * 2.95321)
    assert p.num_nodes == 4


def test_blocklist_zone_then_region_then_cloud():
    base = {"accelerators": "V100", "cloud": "gcp"}
    first = plan_for(base).chosen
    nxt = plan_for(base, blocks=[Block("gcp", first.region, first.zone)]).chosen
    assert nxt.zone != first.zone and nxt.price == pytest.approx(first.price)
    blocked_region = plan_for(base, blocks=[Block("gcp", "us-central1")]).chosen
    assert blocked_region.region != "us-central1"
    other = plan_for({"accelerators": "V100"}, blocks=[Block("gcp")]).chosen
    assert other.cloud in ("aws", "azure")


def test_region_and_zone_constraints_and_infra():
    c = plan_for({"accelerators": "V100", "infra": "aws/us-west-2"}).chosen
    assert (c.cloud, c.region) == ("aws", "us-west-2")
    z = plan_for({"accelerators": "V100", "infra": "gcp/us-east1/us-east1-c"}).chosen
    assert z.zone == "us-east1-c"


def test_cpus_exact_and_memory_ratio():
    c = plan_for({"cpus": 16, "memory": "8x", "cloud": "aws"}).chosen
    assert c.vcpus == 16 and c.memory_gib >= 128


def test_default_cpu_task_gets_8_vcpus_4gib_each():
    c = plan_for({}).chosen
    assert c.vcpus >= 8 and c.memory_gib >= 4 * c.vcpus
    assert c.accelerator_name is None


def test_instance_type_and_max_hourly_cost():
    c = plan_for({"instance_type": "p3.2xlarge"}).chosen
    assert c.instance_type == "p3.2xlarge" and c.accelerator_name == "V100"
    cheap = plan_for({"cpus": "4+", "memory": "16+", "max_hourly_cost": 0.2, "cloud": "aws"}).chosen
    assert cheap.price <= 0.2
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"accelerators": "A100:8", "max_hourly_cost": 5})
    assert "max_hourly_cost" in ei.value.hint


def test_exact_never_misses_a_cheaper_offer():
    """Brute force over every offer in the catalogs agrees with the best-first search (randomised tasks
    in test_optimizer_search.py)."""
    from skybroker.offer_fit import spec_admits
    t = task_from_dict({"resources": {"cpus": "4+", "memory": "16+", "use_spot": True}, "run": "x"})
    res = t.candidates[0]
    brute = min(o.spot_price for cl in ALL for s in catalog.specs(cl) if spec_admits(res, s)
                for o in catalog.offers(s) if o.spot_price is not None and not o.local_zone and not o.suspicious)
    assert optimize(t, ALL).chosen.price == pytest.approx(brute)


# --- When nothing fits ----------------------------------------------------------------------------

def test_too_many_gpus_suggests_largest_offer():
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"accelerators": "A100:32"})
    assert "largest A100 offer is 16 per node" in ei.value.hint
    assert ei.value.exit_code == 3
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"accelerators": "H100:16", "cloud": "aws"})
    assert "largest H100 offer is 8 per node" in ei.value.hint


def test_unknown_accelerator_did_you_mean():
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"accelerators": "A10O:1"})
    assert "A100" in ei.value.hint


def test_region_without_offer_suggests_elsewhere():
    with pytest.raises(NoFeasibleError) as ei:
        plan_for({"accelerators": "V100", "infra": "aws/eu-south-2"})
    assert "anywhere in that cloud" in ei.value.hint


def test_local_cloud_only_when_asked():
    p = plan_for({"cpus": "1+"})
    assert all(c.cloud != "local" for c in p.candidates)
    loc = plan_for({"infra": "local"}).chosen
    assert (loc.cloud, loc.price) == ("local", 0.0)
