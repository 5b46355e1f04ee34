"""`broker gc` as a real CLI against a moto server: --json lists only; without --yes and no terminal it
refuses (exit 2, hint) and terminates nothing; --yes --json terminates and says what."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO, broker_cmd

pytest.importorskip("moto")
pytestmark = pytest.mark.slow  # a moto server warms up for ~10 s


def test_gc_json_and_refusal(tmp_path):
    from tests.infra.moto_server import MotoServer

    with MotoServer() as srv:
        env = {**os.environ, **srv.env(), "PYTHONPATH": str(REPO), "AWS_EC2_METADATA_DISABLED": "true"}
        from skybroker import state

        ec2 = srv.ec2()
        iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="m5.large",
                                TagSpecifications=[{"ResourceType": "instance", "Tags": [  # as this home tags them
                                    {"Key": "skybroker-cluster", "Value": state.cloud_name_for("lost")},
                                    {"Key": "skybroker-home", "Value": state.home_id()},
                                    {"Key": "skybroker-user", "Value": os.environ.get("USER", "root")}]}]
                                )["Instances"][0]["InstanceId"]

        def gc(*extra):
            return subprocess.run(broker_cmd() + ["gc", "--cloud", "aws", "--region", "us-east-1", *extra], env=env,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

        def alive():
            return [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                    if i["State"]["Name"] not in ("terminated", "shutting-down")]

        r = gc("--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert [(o["cluster"], o["name_on_cloud"], o["cloud"], o["region"], o["instance_ids"])
                for o in out["orphans"]] == [("lost", state.cloud_name_for("lost"), "aws", "us-east-1", [iid])]
        assert out["other_homes"] == {} and out["untagged"] == {}
        assert out["terminated"] == [] and out["scanned"] == {"aws": 1}
        r = gc()
        assert r.returncode == 2 and "--yes" in r.stderr and iid in r.stderr and "Traceback" not in r.stderr
        assert alive() == [iid]
        r = gc("--yes", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["terminated"] == [iid]
        assert alive() == []
