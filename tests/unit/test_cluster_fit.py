"""Reusing a cluster (`broker launch -c` on a cluster that exists, `broker exec`): offer_fit.cluster_misfit,
the pure check of a task's candidate resources and node count against the cluster's launched resources."""
from __future__ import annotations

from skybroker.catalog.model import InstanceSpec
from skybroker.offer_fit import cluster_desc, cluster_misfit
from skybroker.spec import task_from_dict
from skybroker.state import UP, ClusterRecord


def rec(**kw) -> ClusterRecord:
    base = dict(name="dev", cloud="aws", region="us-east-1", zone="us-east-1a", instance_type="p4d.24xlarge",
                accelerators="A100:8", use_spot=False, num_nodes=2, hourly_price=0.0, status=UP, launched_at=0.0)
    base.update(kw)
    return ClusterRecord(**base)


P4D = InstanceSpec("aws", "p4d.24xlarge", 96, 1152, "A100", 8, "x86_64", 32.77, 12.0)
M5 = InstanceSpec("aws", "m5.large", 2, 8, None, 0, "x86_64", 0.096, 0.03)


def task(resources=None, **kw):
    data = {"name": "t", "run": "true", **kw}
    if resources is not None:
        data["resources"] = resources
    return task_from_dict(data)


def test_the_same_task_and_a_task_without_resources_fit():
    same = task({"infra": "aws/us-east-1", "accelerators": "A100:8"}, num_nodes=2)
    assert cluster_misfit(same, rec(), P4D) is None
    assert cluster_misfit(task(), rec(), P4D) is None  # no resources, no num_nodes: runs on the whole cluster
    assert cluster_misfit(task(), rec(cloud="local", region=None, zone=None, instance_type="local",
                                      accelerators=None), None) is None


def test_fewer_accelerators_of_the_same_kind_fit_more_or_another_kind_do_not():
    assert cluster_misfit(task({"accelerators": "a100:4"}), rec(num_nodes=1), P4D) is None
    why = cluster_misfit(task({"accelerators": "A100:16"}), rec(num_nodes=1), P4D)
    assert why == "accelerators A100:16 (the cluster has A100:8)"
    why = cluster_misfit(task({"accelerators": "V100:1"}), rec(num_nodes=1), P4D)
    assert "accelerators V100:1 (the cluster has A100:8)" == why


def test_place_instance_type_and_market_are_checked_where_given():
    r = rec(num_nodes=1)
    assert "infra gcp (the cluster is on aws/us-east-1/us-east-1a)" == cluster_misfit(task({"infra": "gcp"}), r, P4D)
    assert "infra aws/us-west-2" in cluster_misfit(task({"infra": "aws/us-west-2"}), r, P4D)
    assert cluster_misfit(task({"infra": "aws/us-east-1/us-east-1a"}), r, P4D) is None
    assert cluster_misfit(task({"instance_type": "p4d.24xlarge"}), r, P4D) is None
    why = cluster_misfit(task({"instance_type": "p5.48xlarge"}), r, P4D)
    assert why == "instance_type p5.48xlarge (the cluster's is p4d.24xlarge)"
    assert cluster_misfit(task({"use_spot": True}), r, P4D) == "spot (the cluster is on-demand)"
    assert cluster_misfit(task({"use_spot": False}), r, P4D) is None
    assert cluster_misfit(task({"use_spot": False}), rec(num_nodes=1, use_spot=True), P4D) == \
        "on-demand (the cluster is spot)"


def test_cpus_and_memory_are_checked_against_the_clusters_machine_without_the_optimizers_defaults():
    r = rec(num_nodes=1, instance_type="m5.large", accelerators=None)
    assert cluster_misfit(task({"cpus": "2+"}), r, M5) is None
    assert cluster_misfit(task({"memory": "8"}), r, M5) is None
    assert cluster_misfit(task({"cpus": "4+"}), r, M5) == "cpus 4+ (the cluster's m5.large has 2 vCPUs, 8 GiB)"
    assert "memory 16+" in cluster_misfit(task({"memory": "16+"}), r, M5)
    assert cluster_misfit(task({"cpus": "64+"}), r, None) is None  # shape unknown (local, kubernetes): not checked
    # a CPU task on a GPU cluster is fine (SkyPilot: the cluster has more than asked)
    assert cluster_misfit(task({"cpus": "8+"}), rec(num_nodes=1), P4D) is None


def test_node_count():
    assert cluster_misfit(task(num_nodes=3), rec(), P4D) == "the task needs 3 node(s), the cluster has 2"
    fewer = cluster_misfit(task(num_nodes=1), rec(), P4D)
    assert fewer.startswith("the task asks for 1 node(s), the cluster has 2"), fewer
    # a managed job's or pool worker's cluster: only more nodes than it has is refused (their controller matched it)
    assert cluster_misfit(task({"infra": "gcp"}, num_nodes=1), rec(), P4D, managed=True) is None
    assert cluster_misfit(task(num_nodes=3), rec(), P4D, managed=True) == "the task needs 3 node(s), the cluster has 2"
    assert cluster_misfit(task_from_dict({"run": "x"}, overrides={"num_nodes": 2}), rec(), P4D) is None


def test_every_reason_is_named_and_any_candidate_that_fits_is_enough():
    t = task({"infra": "aws", "accelerators": "H100:8"}, num_nodes=5)
    why = cluster_misfit(t, rec(), P4D)
    assert why == "the task needs 5 node(s), the cluster has 2; accelerators H100:8 (the cluster has A100:8)"
    anyof = task({"any_of": [{"accelerators": "H100:8"}, {"accelerators": "A100:8"}]})
    assert cluster_misfit(anyof, rec(), P4D) is None
    neither = task({"any_of": [{"accelerators": "H100:8"}, {"infra": "gcp"}]})
    why = cluster_misfit(neither, rec(), P4D)
    assert why.startswith("none of the task's resource options fits: [H100:8"), why
    assert "accelerators H100:8 (the cluster has A100:8)" in why and "infra gcp" in why


def test_overrides_are_checked_like_the_file():
    t = task_from_dict({"name": "cmd", "run": "x"}, overrides={"gpus": "V100", "num_nodes": 3})
    why = cluster_misfit(t, rec(cloud="local", region=None, zone=None, instance_type="local", accelerators=None),
                         None)
    assert why == "the task needs 3 node(s), the cluster has 2; accelerators V100:1 (the cluster has none)"


def test_cluster_desc():
    assert cluster_desc(rec()) == "2× p4d.24xlarge, A100:8 (on-demand) on aws/us-east-1/us-east-1a"
