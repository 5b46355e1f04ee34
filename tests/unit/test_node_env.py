"""The SKYPILOT_* environment a node's job gets (backend_submit.GangSubmit.node_env), pure: no node needed."""
from __future__ import annotations

import json
from types import SimpleNamespace

from skybroker.backend_submit import GangSubmit


def _env(cloud="aws", accelerators="A100:8", nodes=2, rank=1):
    gs = GangSubmit()
    gs.rec = SimpleNamespace(name="c1", cloud=cloud, region="us-east-1", zone="us-east-1a", num_nodes=nodes,
                             instance_type="p4d.24xlarge", accelerators=accelerators)
    gs.nodes = [SimpleNamespace(rank=i, private_ip=f"10.0.0.{i + 1}", ip=f"54.0.0.{i + 1}") for i in range(nodes)]
    task = SimpleNamespace(env_dict={"MINE": "x"})
    return gs.node_env(task, rank, 7, "tid")


def test_cluster_info_names_things_as_skypilot():
    # SkyPilot: {"cluster_name": ..., "cloud": "GCP", "region": ..., "zone": ...} (a SkyPilot-generated
    # setup script exports exactly that; its smoke test greps `jq .cluster_name`)
    info = json.loads(_env()["SKYPILOT_CLUSTER_INFO"])
    assert (info["cluster_name"], info["cloud"], info["region"], info["zone"]) == ("c1", "AWS", "us-east-1",
                                                                                   "us-east-1a")
    assert json.loads(_env(cloud="gcp")["SKYPILOT_CLUSTER_INFO"])["cloud"] == "GCP"
    assert json.loads(_env(cloud="local")["SKYPILOT_CLUSTER_INFO"])["cloud"] == "local"
    assert json.loads(_env()["BROKER_CLUSTER_INFO"]) == info


def test_node_env_basics():
    e = _env()
    assert e["SKYPILOT_NODE_RANK"] == "1" and e["SKYPILOT_NODE_IPS"] == "10.0.0.1\n10.0.0.2"
    assert e["SKYPILOT_NUM_NODES"] == "2" and e["SKYPILOT_NUM_GPUS_PER_NODE"] == "8" and e["MINE"] == "x"


def test_setup_gets_skypilots_setup_names():
    # SkyPilot exports SKYPILOT_SETUP_NODE_RANK / _NODE_IPS / _NUM_GPUS_PER_NODE to setup (its smoke test
    # test_launch_with_failing_setup branches on $SKYPILOT_SETUP_NODE_RANK)
    e = _env(rank=1)
    assert (e["SKYPILOT_SETUP_NODE_RANK"], e["SKYPILOT_SETUP_NODE_IPS"], e["SKYPILOT_SETUP_NUM_GPUS_PER_NODE"]) == (
        "1", "10.0.0.1\n10.0.0.2", "8")


def test_task_ids_have_skypilots_shape():
    # SkyPilot's common_utils.get_global_job_id: f'{sky-[managed-]<%Y-%m-%d-%H-%M-%S-%f>}_{cluster}_{job_id}'
    import datetime
    import re

    from skybroker.backend_submit import global_task_id

    at = datetime.datetime(2026, 12, 4, 5, 6, 7, 890123).timestamp()
    assert global_task_id("c1", 3, at=at) == "sky-2026-12-04-05-06-07-890123_c1_3"
    assert global_task_id("train", 12, managed=True, at=at) == "sky-managed-2026-12-04-05-06-07-890123_train_12"
    assert re.fullmatch(r"sky-\d{4}(-\d\d){5}-\d{6}_c1_\{job_id\}", global_task_id("c1", "{job_id}"))


def test_a_managed_jobs_task_id_has_skypilots_shape():
    import re

    from skybroker.jobs import store

    j = store.get(store.insert("train", "{}", {}, "r").id)
    assert re.fullmatch(r"sky-managed-\d{4}(-\d\d){5}-\d{6}_train_%d" % j.id, j.task_id), j.task_id
