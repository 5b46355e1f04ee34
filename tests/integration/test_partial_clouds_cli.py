"""One cloud that cannot be asked (AWS with its keys unset: the real driver, which fails before any call)
does not stop `broker down` or `broker status --refresh` for a cluster on another cloud (a real local-cloud
cluster): it is torn down or refreshed, and the failure is reported naming the cluster, its cloud's error
and hint — through the real CLI."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from skybroker import state
from skybroker.state import ClusterRecord, NodeRecord
from tests.integration.local_helpers import broker, broker_home, kill_leftovers, node_dir, write_task

pytest.importorskip("boto3")
pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")

NO_AWS = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
          "AWS_EC2_METADATA_DISABLED": "true"}  # conftest.py unset the AWS_* keys: no credentials at all


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _aws_cluster(name: str) -> None:
    """An AWS cluster recorded UP (its keys are gone since: every AWS call fails)."""
    state.save_cluster(ClusterRecord(name, "aws", "us-east-1", "use1-az1", "t3.micro", None, False, 1, 0.0104,
                                     state.UP, 1.0, nodes=[NodeRecord("i-0abc", 0, "198.51.100.7", "10.0.0.7",
                                                                      "ubuntu", 22, None, None)]))


def _local_cluster(tmp_path, name: str) -> None:
    r = broker("launch", "-y", "-c", name, write_task(tmp_path / f"{name}.yaml", name=name, run="true"),
               env=NO_AWS, timeout=120)
    assert r.returncode == 0, r.stderr


def test_down_all_tears_down_the_local_cluster_although_aws_fails(tmp_path):
    _aws_cluster("a1")
    _local_cluster(tmp_path, "l1")
    r = broker("down", "-a", "-y", env=NO_AWS)
    assert r.returncode == 4, r.stderr  # the AWS failure's code, at the end
    assert "Traceback" not in r.stderr
    assert [c.name for c in state.list_clusters()] == ["a1"]  # l1 is gone, a1 is kept to retry
    assert not node_dir("l1", 0).exists()
    assert "Error: could not tear down 1 cluster: a1 (aws/us-east-1/use1-az1): no usable AWS credentials" in r.stderr
    assert "torn down: l1" in r.stderr
    assert "Hint: run `aws configure` or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; then `broker down a1` again" \
        in r.stderr


def test_down_of_named_clusters_goes_on_past_the_failing_one(tmp_path):
    _aws_cluster("a1")
    _local_cluster(tmp_path, "l1")
    r = broker("down", "a1", "l1", "-y", env=NO_AWS)
    assert r.returncode == 4 and "could not tear down 1 cluster: a1" in r.stderr, r.stderr
    assert [c.name for c in state.list_clusters()] == ["a1"]


def test_status_refresh_removes_the_vanished_local_cluster_and_names_the_aws_one(tmp_path):
    from skybroker.clouds import registry

    _aws_cluster("a1")
    _local_cluster(tmp_path, "l1")
    _local_cluster(tmp_path, "l2")
    registry.get("local").terminate(state.get_cluster("l1").cloud_name)  # out of band: the instances are gone, the record still says UP
    r = broker("status", "--refresh", "--json", env=NO_AWS)
    assert r.returncode == 0, r.stderr
    out = {c["name"]: c for c in json.loads(r.stdout)}  # stdout stays one valid JSON document
    assert sorted(out) == ["a1", "l2"] and state.get_cluster("l1") is None
    assert out["l2"]["refresh_error"] is None and out["l2"]["status"] == "UP"
    assert out["a1"]["status"] == "UP" and out["a1"]["refresh_error"]["exit_code"] == 4
    assert out["a1"]["refresh_error"]["message"].startswith("no usable AWS credentials")
    assert "AWS_ACCESS_KEY_ID" in out["a1"]["refresh_error"]["hint"]
    assert "Warning: could not refresh a1 (aws/us-east-1/use1-az1): no usable AWS credentials" in r.stderr
    r = broker("status", "--refresh", env=NO_AWS)  # the table, and the same warning under it
    assert r.returncode == 0 and "l2" in r.stdout and "a1" in r.stdout, r.stderr
    assert "Warning: could not refresh a1" in r.stderr and "shown as last recorded" in r.stderr
    r = broker("status", "--refresh", "--ip", "a1", env=NO_AWS)  # one address for a script: not a stale one
    assert r.returncode == 4 and "Error: no usable AWS credentials" in r.stderr, r.stderr
