"""EC2 instances that are created but never get to `running` (stuck `pending`, or a spot instance reclaimed
while it starts) are the zone's failure: the provisioner tears them down and fails over to the next zone.
It was an InvalidRequestError ("not running after 600s"), which stops the launch as if the request were wrong.

moto starts every instance `running` at once, so the product's own boto3 session gets an `after-call` hook
that rewrites DescribeInstances answers for one AZ name (as EC2 reports an instance still starting: State
`pending`, no public IP yet; or `terminated` with Server.SpotInstanceTermination).
"""
from __future__ import annotations

import pytest

from skybroker import provision
from skybroker.clouds.aws import client as aws_client
from tests.integration.test_aws import (USE1, Planner, _moto, aws, ec2, hooks, instances, public_key,  # noqa: F401
                                        task)

pytest.importorskip("moto")


def rewrite_describe(zone_name: str, state: str, reason: str | None = None):
    """DescribeInstances answers show the instances in `zone_name` in `state` (botocore after-call: the
    parsed answer is the one the driver gets)."""

    def hook(parsed, **_):
        for res in parsed.get("Reservations", ()):
            for inst in res["Instances"]:
                if inst.get("Placement", {}).get("AvailabilityZone") == zone_name:
                    inst["State"] = {"Code": {"pending": 0, "terminated": 48}[state], "Name": state}
                    inst.pop("PublicIpAddress", None)
                    if reason:
                        inst["StateReason"] = {"Code": reason, "Message": reason}

    aws_client._session().events.register("after-call.ec2.DescribeInstances", hook)


def test_instances_stuck_pending_fail_over_to_the_next_zone(hooks, public_key, monkeypatch):
    monkeypatch.setenv("BROKER_AWS_WAIT", "0.3")
    rewrite_describe("us-east-1b", "pending")  # use1-az1, the plan's first choice
    planner = Planner(task())
    cand, infos, attempts = provision.provision("stuck", planner, public_key=public_key)
    assert [(a.zone, a.error, a.code, a.scope) for a in attempts] == [
        ("use1-az1", "CapacityError", "BOOT_TIMEOUT", "zone")]
    assert "not running after 0s" in attempts[0].message and "1 of 1 found" in attempts[0].message
    assert cand.zone != "use1-az1" and [i.state for i in infos] == ["running"]
    # the stuck instance was terminated before the next zone was tried: one live instance, in the new zone
    assert instances(cluster="stuck", zone="us-east-1b") == []
    assert len(instances(cluster="stuck")) == 1


def test_a_spot_instance_reclaimed_while_starting_fails_over(hooks, public_key, monkeypatch):
    monkeypatch.setenv("BROKER_AWS_WAIT", "30")  # not the timeout: the loss is seen at the next describe
    planner = Planner(task({"use_spot": True, "region": "us-east-1"}))
    first = planner([]).chosen.zone
    planner.seen.clear()
    seen: set[str] = set()

    def hook(parsed, **_):  # first shown pending; at the next look EC2 has reclaimed it (really terminated)
        for res in parsed.get("Reservations", ()):
            for inst in res["Instances"]:
                if inst.get("Placement", {}).get("AvailabilityZone") != USE1[first]:
                    continue
                if inst["InstanceId"] in seen:
                    ec2().terminate_instances(InstanceIds=[inst["InstanceId"]])
                    inst["State"] = {"Code": 32, "Name": "shutting-down"}
                else:
                    seen.add(inst["InstanceId"])
                    inst["State"] = {"Code": 0, "Name": "pending"}
                inst.pop("PublicIpAddress", None)

    aws_client._session().events.register("after-call.ec2.DescribeInstances", hook)
    cand, _, attempts = provision.provision("reclaimed", planner, public_key=public_key)
    assert [(a.zone, a.code, a.scope) for a in attempts] == [(first, "PREEMPTED_DURING_PROVISIONING", "zone")]
    assert "ended while starting" in attempts[0].message
    assert cand.zone != first and instances(cluster="reclaimed", zone=USE1[first]) == []
