"""AWS driver, typed failover and `broker gc` against moto (issue: AWS provisioning with typed failover and
zero leaked instances).

Most tests run moto in-process (one mock for the module, reset before every test); faults are botocore
`before-parameter-build` hooks registered on the product's own boto3 session. `broker gc` runs as a real
CLI subprocess against a moto server (tests/infra/moto_server.py).
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")

from botocore.exceptions import ClientError

from skybroker import api, provision, spec, state
from skybroker.clouds import registry
from skybroker.clouds.aws import client as aws_client
from skybroker.clouds.base import RUNNING, STOPPED, ProvisionRequest
from skybroker.errors import InvalidRequestError, ProvisionError, Scope
from skybroker.optimizer import Block
from tests.conftest import REPO, broker_cmd
from tests.infra import moto_server

AMI = "ami-12345678"
LIVE = ("pending", "running", "stopping", "stopped")
# moto's fixed AZ ID → name mapping for us-east-1 (the catalogs speak IDs)
USE1 = {"use1-az6": "us-east-1a", "use1-az1": "us-east-1b", "use1-az2": "us-east-1c", "use1-az4": "us-east-1d",
        "use1-az3": "us-east-1e", "use1-az5": "us-east-1f"}


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _moto():
    """One in-process moto for the module (its first EC2 call loads seconds of JSON)."""
    from moto import mock_aws

    old = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    undo_ips = moto_server.patch_public_ips()
    mock = mock_aws()
    mock.start()
    import boto3

    boto3.client("ec2", region_name="us-east-1").describe_availability_zones()  # warm
    moto_server.prestart()  # the gc test's server warms up in the background meanwhile
    try:
        yield mock
    finally:
        mock.stop()
        undo_ips()
        if old is None:
            os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
        else:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = old


@pytest.fixture(scope="module")
def public_key(tmp_path_factory):
    from skybroker.runtime.keys import ensure_user_key

    return ensure_user_key(tmp_path_factory.mktemp("aws-key"))[1]


@pytest.fixture
def aws(_moto, monkeypatch):
    """Empty moto, fake credentials (set after tests/conftest.py stripped AWS_*), fresh client session
    and driver instances, fast polling."""
    _moto.reset()
    for k, v in moto_server.FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BROKER_AWS_POLL", "0.05")
    monkeypatch.setenv("USER", "tester")
    monkeypatch.setattr(registry, "_instances", {})
    aws_client.reset()
    yield
    aws_client.reset()


def ec2(region="us-east-1"):
    import boto3

    return boto3.client("ec2", region_name=region)


def instances(region="us-east-1", cluster=None, states=LIVE, zone=None) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": list(states)}]
    if cluster:
        filters.append({"Name": "tag:skybroker-cluster", "Values": [cluster]})
    out = []
    for res in ec2(region).describe_instances(Filters=filters)["Reservations"]:
        out.extend(i for i in res["Instances"] if zone is None or i["Placement"]["AvailabilityZone"] == zone)
    return out


def tags(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


class Hooks:
    """Record and fail EC2 calls of the product's boto3 session (`before-parameter-build`)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def watch(self, op: str):
        def hook(params, **_):
            self.calls.append((op, dict(params)))

        aws_client._session().events.register(f"before-parameter-build.ec2.{op}", hook)

    def fail(self, op: str, code: str, message: str | None = None, when=lambda p: True, times: int | None = None):
        left = [times]

        def hook(params, **_):
            if not when(params):
                return
            if left[0] is not None:
                if left[0] <= 0:
                    return
                left[0] -= 1
            raise ClientError({"Error": {"Code": code, "Message": message or f"injected {code}"}}, op)

        aws_client._session().events.register(f"before-parameter-build.ec2.{op}", hook)

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)

    def params(self, op: str) -> list[dict]:
        return [p for o, p in self.calls if o == op]


@pytest.fixture
def hooks(aws):
    h = Hooks()
    for op in ("RunInstances", "ImportKeyPair", "CreateSecurityGroup", "StartInstances"):
        h.watch(op)
    return h


def in_zone(*names):
    return lambda p: (p.get("Placement") or {}).get("AvailabilityZone") in names


def in_region(region):
    return lambda p: (p.get("Placement") or {}).get("AvailabilityZone", "").startswith(region)


def req(cluster="c1", **kw) -> ProvisionRequest:
    base = {"cluster": cluster, "region": "us-east-1", "zone": "use1-az1", "instance_type": "t3.micro",
            "num_nodes": 1, "image_id": AMI}
    base.update(kw)
    return ProvisionRequest(**base)


def task(resources: dict | None = None, **top):
    res = {"cloud": "aws", "instance_type": "t3.micro", "image_id": AMI}
    res.update(resources or {})
    data = {"name": "t", "resources": res, "run": "true"}
    data.update(top)
    return spec.task_from_dict(data, source="test.yaml")


class Planner:
    """plan_fn for provision.provision that records the blocks it was asked with (and can run a check
    before every re-plan)."""

    def __init__(self, t, clouds=("aws",), before_replan=None):
        self.task, self.clouds, self.before_replan = t, clouds, before_replan
        self.seen: list[list[Block]] = []

    def __call__(self, blocks):
        self.seen.append(list(blocks))
        if blocks and self.before_replan:
            self.before_replan(blocks)
        return api.plan(self.task, blocks, clouds=self.clouds)


def all_intents(cluster):
    return [dict(r) for r in state.db().execute("SELECT * FROM intents WHERE cluster = ? ORDER BY id", (cluster,))]


# -- driver ----------------------------------------------------------------------------------------
def test_key_pair_imported_once_per_region_named_from_key_hash(hooks, public_key):
    import hashlib

    d = registry.get("aws")
    d.provision(req("c1", public_key=public_key))
    d.provision(req("c2", public_key=public_key))  # another cluster, same key, same region
    name = "skybroker-" + hashlib.sha256(public_key.strip().encode()).hexdigest()[:12]
    keys = ec2().describe_key_pairs()["KeyPairs"]
    assert [k["KeyName"] for k in keys] == [name]
    assert hooks.count("ImportKeyPair") == 1
    assert {i["KeyName"] for i in instances()} == {name}
    d.provision(req("c3", region="us-east-2", zone="use2-az1", public_key=public_key))
    assert [k["KeyName"] for k in ec2("us-east-2").describe_key_pairs()["KeyPairs"]] == [name]
    assert hooks.count("ImportKeyPair") == 2


def test_security_group_per_cluster_exact_rules(aws, public_key):
    d = registry.get("aws")
    d.provision(req("web", ports=("8080", "9000-9010"), public_key=public_key))
    d.provision(req("other", public_key=public_key))
    groups = {g["GroupName"]: g for g in ec2().describe_security_groups()["SecurityGroups"]}
    assert "skybroker-web" in groups and "skybroker-other" in groups
    sg = groups["skybroker-web"]
    assert tags(sg)["skybroker-cluster"] == "web"
    tcp, self_rules, other = set(), [], []
    for p in sg["IpPermissions"]:
        if p["IpProtocol"] == "tcp" and not p.get("UserIdGroupPairs"):
            assert [r["CidrIp"] for r in p["IpRanges"]] == ["0.0.0.0/0"]
            assert not p.get("Ipv6Ranges") and not p.get("PrefixListIds")
            tcp.add((p["FromPort"], p["ToPort"]))
        elif p["IpProtocol"] == "-1" and p.get("UserIdGroupPairs"):
            assert not p.get("IpRanges")
            self_rules.extend(g["GroupId"] for g in p["UserIdGroupPairs"])
        else:
            other.append(p)
    assert tcp == {(22, 22), (8080, 8080), (9000, 9010)}
    assert self_rules == [sg["GroupId"]]
    assert other == []
    # the other cluster's group: only 22 + its own self rule
    o = groups["skybroker-other"]
    assert {(p.get("FromPort"), p.get("ToPort")) for p in o["IpPermissions"] if p["IpProtocol"] == "tcp"} == {(22, 22)}
    assert [g["GroupId"] for p in o["IpPermissions"] for g in p.get("UserIdGroupPairs", [])] == [o["GroupId"]]
    # instances of each cluster are in their own group only
    for cluster, name in (("web", "skybroker-web"), ("other", "skybroker-other")):
        for inst in instances(cluster=cluster):
            assert [g["GroupName"] for g in inst["SecurityGroups"]] == [name]
    # open_ports adds a rule once (a repeat is a no-op, not a duplicate error)
    d.open_ports("web", "us-east-1", ("7000",))
    d.open_ports("web", "us-east-1", ("7000", "22"))
    sg = ec2().describe_security_groups(GroupIds=[sg["GroupId"]])["SecurityGroups"][0]
    assert sorted((p["FromPort"], p["ToPort"]) for p in sg["IpPermissions"] if p["IpProtocol"] == "tcp") == [
        (22, 22), (7000, 7000), (8080, 8080), (9000, 9010)]


def test_tags_on_instances_and_volumes_ranks_and_order(aws, public_key):
    d = registry.get("aws")
    infos = d.provision(req("tagged", num_nodes=3, public_key=public_key, labels=(("team", "ml"),)))
    assert [i.rank_hint for i in infos] == [0, 1, 2]
    insts = instances(cluster="tagged")
    assert len(insts) == 3
    ranks = sorted(tags(i)["skybroker-rank"] for i in insts)
    assert ranks == ["0", "1", "2"]
    for i in insts:
        t = tags(i)
        assert t["skybroker-cluster"] == "tagged" and t["skybroker-user"] == "tester" and t["team"] == "ml"
    vols = ec2().describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                            "Values": [i["InstanceId"] for i in insts]}])["Volumes"]
    assert len(vols) == 3
    for v in vols:
        assert tags(v)["skybroker-cluster"] == "tagged" and tags(v)["skybroker-user"] == "tester"


@pytest.mark.parametrize("spot", [True, False])
def test_spot_vs_on_demand_and_root_disk_size(hooks, public_key, spot):
    d = registry.get("aws")
    infos = d.provision(req("mkt", use_spot=spot, disk_size=123, public_key=public_key))
    (p,) = hooks.params("RunInstances")
    if spot:
        assert p["InstanceMarketOptions"]["MarketType"] == "spot"
        assert p["InstanceInitiatedShutdownBehavior"] == "terminate"
    else:
        assert "InstanceMarketOptions" not in p
        assert p["InstanceInitiatedShutdownBehavior"] == "stop"
    (inst,) = instances(cluster="mkt")
    assert (inst.get("InstanceLifecycle") == "spot") is spot
    assert infos[0].spot is spot
    root = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == inst["RootDeviceName"]]
    assert len(root) == 1
    (vol,) = ec2().describe_volumes(VolumeIds=[root[0]["Ebs"]["VolumeId"]])["Volumes"]
    assert vol["Size"] == 123


def test_zone_pinning_maps_az_id_to_the_accounts_az_name(aws, public_key):
    d = registry.get("aws")
    for zone_id in ("use1-az1",):
        infos = d.provision(req(f"z-{zone_id}", zone=zone_id, public_key=public_key))
        (inst,) = instances(cluster=f"z-{zone_id}")
        assert inst["Placement"]["AvailabilityZone"] == USE1[zone_id]
        assert infos[0].zone == USE1[zone_id]
        subnet = ec2().describe_subnets(SubnetIds=[inst["SubnetId"]])["Subnets"][0]
        assert subnet["AvailabilityZone"] == USE1[zone_id]
    with pytest.raises(InvalidRequestError, match="use2-az1 is not in region us-east-1"):
        d.provision(req("z-bad", zone="use2-az1", public_key=public_key))


def test_provision_is_idempotent_and_resumes(hooks, public_key):
    d = registry.get("aws")
    first = d.provision(req("idem", num_nodes=2, public_key=public_key))
    again = d.provision(req("idem", num_nodes=2, public_key=public_key))
    assert [i.instance_id for i in again] == [i.instance_id for i in first]
    assert hooks.count("RunInstances") == 2  # head + workers, the second provision launched nothing
    assert len(instances(cluster="idem")) == 2
    # a lost worker is replaced under its own rank; the head is kept
    ec2().terminate_instances(InstanceIds=[first[1].instance_id])
    resumed = d.provision(req("idem", num_nodes=2, public_key=public_key))
    assert resumed[0].instance_id == first[0].instance_id
    assert resumed[1].instance_id != first[1].instance_id and resumed[1].rank_hint == 1
    assert hooks.count("RunInstances") == 3 and hooks.params("RunInstances")[-1]["MinCount"] == 1
    # stopped instances are started, not duplicated
    d.stop("idem", "us-east-1")
    assert {i.state for i in d.query("idem", "us-east-1")} == {STOPPED}
    started = d.provision(req("idem", num_nodes=2, public_key=public_key))
    assert [i.instance_id for i in started] == [i.instance_id for i in resumed]
    assert {i.state for i in started} == {RUNNING}
    assert hooks.count("StartInstances") == 1 and hooks.count("RunInstances") == 3
    assert len(instances(cluster="idem")) == 2


def test_terminate_twice_removes_everything(aws, public_key):
    d = registry.get("aws")
    infos = d.provision(req("gone", num_nodes=2, public_key=public_key, ports=("8888",)))
    d.terminate("gone", "us-east-1")
    d.terminate("gone", "us-east-1")  # idempotent
    assert d.query("gone", "us-east-1") == []
    assert instances(cluster="gone") == []
    names = [g["GroupName"] for g in ec2().describe_security_groups()["SecurityGroups"]]
    assert "skybroker-gone" not in names
    gone = d.query("gone", "us-east-1", include_gone=True)
    assert sorted(i.instance_id for i in gone) == sorted(i.instance_id for i in infos)
    assert {i.state for i in gone} == {"terminated"}
    d.terminate("never-existed", "us-east-1")  # nothing to do is fine too


def test_stop_and_start(aws, public_key):
    d = registry.get("aws")
    infos = d.provision(req("ss", num_nodes=2, public_key=public_key))
    d.stop("ss", "us-east-1")
    assert {i.state for i in d.query("ss", "us-east-1")} == {STOPPED}
    d.stop("ss", "us-east-1")  # stopping a stopped cluster is a no-op
    started = d.start("ss", "us-east-1")
    assert [i.instance_id for i in started] == [i.instance_id for i in infos]
    assert {i.state for i in started} == {RUNNING}
    assert all(i.public_ip for i in started)


def test_preempted_spot_instance_is_reported_with_its_reason(aws, public_key):
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    d = registry.get("aws")
    (info,) = d.provision(req("pre", use_spot=True, public_key=public_key))
    backend = ec2_backends[moto_server.ACCOUNT]["us-east-1"]
    backend.terminate_instances([info.instance_id])
    backend.get_instance(info.instance_id).state_reason = StateReason("reclaimed", "Server.SpotInstanceTermination")
    assert d.query("pre", "us-east-1") == []
    (gone,) = d.query("pre", "us-east-1", include_gone=True)
    assert gone.state == "terminated" and gone.state_reason == "Server.SpotInstanceTermination"


def test_no_image_id_is_a_clear_region_scoped_error(aws, public_key):
    d = registry.get("aws")
    with pytest.raises(ProvisionError) as ei:
        d.provision(req("noimg", image_id=None, public_key=public_key))
    err = ei.value
    assert err.scope == Scope.REGION
    assert "us-east-1" in err.message and "image_id" in err.message
    assert instances(cluster="noimg") == []
    # through the provisioner, pinned to one region: one attempt that names the region, nothing left
    t = task({"image_id": None, "region": "us-east-1"})
    with pytest.raises(provision.ProvisionExhausted) as ei:
        provision.provision("noimg2", Planner(t), public_key=public_key)
    attempts = ei.value.attempts
    assert {a.region for a in attempts} == {"us-east-1"} and len(attempts) == 1
    assert attempts[0].scope == "region" and attempts[0].code == "InvalidAMIID.NotFound"
    assert "image_id" in str(ei.value)
    assert instances(cluster="noimg2") == []
    assert "skybroker-noimg2" not in [g["GroupName"] for g in ec2().describe_security_groups()["SecurityGroups"]]


# -- failover through provision.provision ----------------------------------------------------------
def test_capacity_error_fails_over_to_the_next_zone_in_the_same_region(hooks, public_key):
    hooks.fail("RunInstances", "InsufficientInstanceCapacity", "We currently do not have sufficient t3.micro "
               "capacity in the Availability Zone you requested (us-east-1b).", when=in_zone("us-east-1b"))
    planner = Planner(task())
    cand, infos, attempts = provision.provision("ice", planner, public_key=public_key)
    assert (cand.region, cand.zone) == ("us-east-1", "use1-az2")
    assert len(attempts) == 1
    a = attempts[0]
    assert (a.cloud, a.region, a.zone, a.instance_type) == ("aws", "us-east-1", "use1-az1", "t3.micro")
    assert (a.error, a.code, a.scope) == ("CapacityError", "InsufficientInstanceCapacity", "zone")
    assert "sufficient t3.micro capacity" in a.message
    assert planner.seen == [[], [Block("aws", "us-east-1", "use1-az1")]]
    assert [i["Placement"]["AvailabilityZone"] for i in instances(cluster="ice")] == ["us-east-1c"]
    assert [i.zone for i in infos] == ["us-east-1c"]


def test_a_zone_without_a_default_subnet_fails_over_to_the_next_zone(hooks, public_key):
    """It stopped the whole launch with EC2's InvalidInput ("No default subnet for availability zone")."""
    region = "us-west-2"
    client = ec2(region)
    names = {z["ZoneId"]: z["ZoneName"] for z in client.describe_availability_zones()["AvailabilityZones"]}
    planner = Planner(task({"region": region}))
    first = planner([]).chosen.zone
    for sn in client.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [names[first]]},
                                               {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]:
        client.delete_subnet(SubnetId=sn["SubnetId"])
    planner.seen.clear()
    cand, infos, attempts = provision.provision("nosub", planner, public_key=public_key)
    assert cand.region == region and cand.zone != first
    assert [(a.zone, a.code, a.scope) for a in attempts] == [(first, "NoDefaultSubnet", "zone")]
    assert instances(region, cluster="nosub") and registry.get("aws").terminate("nosub", region) is not None


def test_throttling_is_retried_in_place_not_failed_over(hooks, public_key, monkeypatch):
    """RequestLimitExceeded is the API's rate limit, not a verdict on the region: the same place is retried
    after a backoff, never a pricier region."""
    monkeypatch.setenv("BROKER_THROTTLE_BACKOFF", "0.05")
    hooks.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.", times=2)
    planner = Planner(task())
    events = []
    cand, infos, attempts = provision.provision("thr", planner, public_key=public_key,
                                                on_event=lambda k, m: events.append((k, m)))
    assert (cand.region, cand.zone) == ("us-east-1", "use1-az1")  # the first choice, not a failover
    assert attempts == [] and planner.seen == [[]]
    assert hooks.count("RunInstances") == 3
    assert sum(k == "throttled" for k, _ in events) == 2 and "RequestLimitExceeded" in events[[k for k, _ in events].index("throttled")][1]
    assert len(instances(cluster="thr")) == 1


def test_throttling_that_does_not_clear_moves_on(hooks, public_key, monkeypatch):
    monkeypatch.setenv("BROKER_THROTTLE_BACKOFF", "0.01")
    monkeypatch.setenv("BROKER_THROTTLE_RETRIES", "1")
    hooks.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.", when=in_region("us-east-1"))
    cand, _, attempts = provision.provision("thr2", Planner(task()), public_key=public_key)
    assert cand.region != "us-east-1"
    assert [(a.error, a.code, a.scope) for a in attempts] == [("ThrottledError", "RequestLimitExceeded", "retry")]


def test_quota_error_blocks_the_whole_region(hooks, public_key):
    hooks.fail("RunInstances", "VcpuLimitExceeded", "You have requested more vCPU capacity than your current "
               "vCPU limit of 0 allows", when=in_region("us-east-1"))
    planner = Planner(task())
    cand, _, attempts = provision.provision("quota", planner, public_key=public_key)
    assert cand.region == "us-east-2"  # not another us-east-1 zone
    assert [(a.region, a.zone, a.error, a.code, a.scope) for a in attempts] == [
        ("us-east-1", "use1-az1", "QuotaError", "VcpuLimitExceeded", "region")]
    assert planner.seen[1] == [Block("aws", "us-east-1")]
    assert planner.seen[1][0].zone is None
    assert hooks.count("RunInstances") == 2
    assert instances(cluster="quota") == []  # nothing in us-east-1
    assert len(instances("us-east-2", cluster="quota")) == 1
    # the us-east-1 security group of the failed attempt was rolled back
    assert "skybroker-quota" not in [g["GroupName"] for g in ec2().describe_security_groups()["SecurityGroups"]]


@pytest.mark.parametrize("kind", ["AuthFailure", "NoCredentials"])
def test_credentials_error_fails_over_to_the_next_cloud(hooks, public_key, monkeypatch, kind):
    if kind == "AuthFailure":
        hooks.fail("RunInstances", "AuthFailure", "AWS was not able to validate the provided access credentials")
    else:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        aws_client.reset()
    t = spec.task_from_dict({"name": "t", "run": "true", "resources": {"ordered": [
        {"cloud": "aws", "instance_type": "t3.micro", "image_id": AMI}, {"infra": "local"}]}}, source="test.yaml")
    planner = Planner(t, clouds=("aws", "local"))
    cand, _, attempts = provision.provision("cred", planner, public_key=public_key)
    try:
        assert cand.cloud == "local"
        assert len(attempts) == 1
        a = attempts[0]
        assert (a.cloud, a.error, a.scope) == ("aws", "CredentialsError", "cloud")
        assert a.code == ("AuthFailure" if kind == "AuthFailure" else "NoCredentials")
        assert planner.seen[1] == [Block("aws")]
    finally:
        registry.get("local").terminate("cred", None)
    if kind == "AuthFailure":
        assert instances(cluster="cred") == []


def test_everything_failing_lists_every_attempt(hooks, public_key):
    hooks.fail("RunInstances", "InsufficientInstanceCapacity", "no t3.micro capacity here")
    planner = Planner(task({"region": "us-east-1"}))
    with pytest.raises(provision.ProvisionExhausted) as ei:
        provision.provision("exh", planner, public_key=public_key)
    exc = ei.value
    assert exc.exit_code == 4
    zones = [a.zone for a in exc.attempts]
    assert zones == ["use1-az1", "use1-az2", "use1-az4", "use1-az5", "use1-az6"]
    text = str(exc)
    for i, z in enumerate(zones, 1):
        assert (f"  {i}. aws/us-east-1/{z} t3.micro: CapacityError InsufficientInstanceCapacity — "
                f"no t3.micro capacity here") in text
    assert all(a.scope == "zone" for a in exc.attempts)
    assert exc.hint
    assert instances() == []
    assert state.open_intents("exh") == []
    assert len(all_intents("exh")) == 5


def test_invalid_request_does_not_fail_over(hooks, public_key):
    hooks.fail("RunInstances", "InvalidParameterValue", "Value (t3.micro) for parameter instanceType is invalid.")
    planner = Planner(task())
    with pytest.raises(provision.ProvisionExhausted) as ei:
        provision.provision("bad", planner, public_key=public_key)
    exc = ei.value
    assert len(planner.seen) == 1 and hooks.count("RunInstances") == 1
    (a,) = exc.attempts
    assert (a.error, a.code, a.scope) == ("InvalidRequestError", "InvalidParameterValue", "request")
    assert "request itself was refused" in str(exc) and "parameter instanceType is invalid" in str(exc)
    assert instances() == []
    assert state.open_intents("bad") == []


def test_partial_multi_node_launch_is_rolled_back_before_the_next_attempt(hooks, public_key):
    # the head launches alone; the workers' call (MinCount 2) fails in us-east-1b only
    hooks.fail("RunInstances", "InsufficientInstanceCapacity", "workers do not fit",
               when=lambda p: in_zone("us-east-1b")(p) and p["MinCount"] == 2)
    left_behind = []

    def check(blocks):
        left_behind.append(instances(cluster="part", zone="us-east-1b"))
        left_behind.append(state.open_intents("part"))

    planner = Planner(task(num_nodes=3), before_replan=check)
    cand, infos, attempts = provision.provision("part", planner, public_key=public_key)
    # the failed zone really had a head instance that was then terminated
    first_zone = [p for p in hooks.params("RunInstances") if in_zone("us-east-1b")(p)]
    assert [p["MinCount"] for p in first_zone] == [1, 2]
    assert left_behind == [[], []]  # zero live instances and no open intent before re-planning
    dead = instances(cluster="part", zone="us-east-1b", states=("shutting-down", "terminated"))
    assert len(dead) == 1 and tags(dead[0])["skybroker-rank"] == "0"
    assert [(a.zone, a.code) for a in attempts] == [("use1-az1", "InsufficientInstanceCapacity")]
    assert cand.zone == "use1-az2" and len(infos) == 3
    live = instances(cluster="part")
    assert len(live) == 3 and {i["Placement"]["AvailabilityZone"] for i in live} == {"us-east-1c"}
    assert sorted(tags(i)["skybroker-rank"] for i in live) == ["0", "1", "2"]
    # intents: the failed attempt's is closed, the winner's is open (created) until the cluster goes down
    intents = all_intents("part")
    assert [(i["zone"], i["state"]) for i in intents] == [("use1-az1", "cleaned"), ("use1-az2", "created")]
    assert [i["zone"] for i in state.open_intents("part")] == ["use1-az2"]
    registry.get("aws").terminate("part", "us-east-1")
    state.close_intents("part", "aws", "us-east-1")
    assert state.open_intents("part") == [] and instances(cluster="part") == []


def test_a_rolled_back_attempt_is_costed_for_the_instances_it_had(hooks, public_key, tmp_path, monkeypatch):
    """The head of a 3-node launch is created in us-east-1b, the workers' call fails half an hour later and the
    attempt is rolled back: the head was paid for, so the ledger has a `rolled back` run for it (1 node, from the
    create call to the rollback); the winning attempt's run goes on. No run was recorded for the failed attempt."""
    from skybroker.costs import disks, ledger

    clock = tmp_path / "clock"
    clock.write_text(str(1_800_000_000.0))
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))

    def workers_fail(p):
        if in_zone("us-east-1b")(p) and p["MinCount"] == 2:
            clock.write_text(str(1_800_000_000.0 + 1800))  # the head has run half an hour
            return True
        return False

    hooks.fail("RunInstances", "InsufficientInstanceCapacity", "workers do not fit", when=workers_fail)
    cand, infos, attempts = provision.provision("part", Planner(task(num_nodes=3)), public_key=public_key)
    failed, winner = ledger.runs(cluster="part")
    assert (failed.outcome, failed.num_nodes, failed.zone, failed.live) == (ledger.ROLLED_BACK, 1, "use1-az1", False)
    assert (failed.started_at, failed.ended_at) == (1_800_000_000.0, 1_800_000_000.0 + 1800)
    node_h = failed.price + disks.hourly(failed.disk_gb, failed.disk_price)
    assert failed.price > 0 and failed.cost(2e9) == pytest.approx(0.5 * node_h)
    assert (winner.outcome, winner.num_nodes, winner.zone, winner.live) == (ledger.CREATED, 3, "use1-az2", True)
    assert winner.started_at == 1_800_000_000.0 + 1800
    registry.get("aws").terminate("part", "us-east-1")
    state.close_intents("part", "aws", "us-east-1")
    ledger.close_run("part")


def test_interrupt_during_provision_rolls_back(hooks, public_key):
    """KeyboardInterrupt raised while the create call is in flight: the call finishes, then the attempt
    is rolled back and the interrupt propagates."""
    import _thread
    import threading

    def interrupt(params, **_):
        threading.Timer(0.05, _thread.interrupt_main).start()
        time.sleep(0.5)  # still "in flight" when the main thread sees the interrupt

    aws_client._session().events.register("before-parameter-build.ec2.RunInstances", interrupt)
    events = []
    with pytest.raises(KeyboardInterrupt):
        provision.provision("intr", Planner(task()), public_key=public_key,
                            on_event=lambda k, m: events.append((k, m)))
    # the in-flight RunInstances had returned before the rollback (so it was seen and terminated), and the
    # worker started nothing after it (no CreateTags, no wait)
    for t in threading.enumerate():
        if t.name == "provision":
            t.join(10)
    launched = instances(cluster="intr", states=("pending", "running", "shutting-down", "terminated"))
    assert len(launched) == 1 and launched[0]["State"]["Name"] in ("shutting-down", "terminated")
    assert "skybroker-rank" not in tags(launched[0])
    assert instances(cluster="intr") == []
    assert state.open_intents("intr") == []
    assert [k for k, _ in events].count("cleanup") == 2
    assert "no instance of intr is left running" in events[-1][1]


# -- broker gc: a real CLI subprocess against a moto server -----------------------------------------
@pytest.fixture
def moto_srv():
    srv = moto_server.shared()  # one server for the test process, emptied before and after each test
    srv.reset()
    yield srv
    srv.reset()


def test_gc_cli_finds_and_removes_orphans(moto_srv, tmp_path, monkeypatch):
    from skybroker.state import ClusterRecord

    env = {**os.environ, **moto_srv.env(), "PYTHONPATH": str(REPO)}
    for k, v in moto_srv.env().items():
        monkeypatch.setenv(k, v)  # state writes below go to the same BROKER_HOME as the subprocess

    def launch(region, cluster, n=1, home=None):  # as this home's driver tags them (its name on the cloud)
        e = moto_srv.ec2(region)
        tags = [{"Key": "skybroker-cluster", "Value": cluster if home == "" else state.cloud_name_for(cluster)}]
        if home != "":
            tags.append({"Key": "skybroker-home", "Value": home or state.home_id()})
        r = e.run_instances(ImageId=AMI, MinCount=n, MaxCount=n, TagSpecifications=[{
            "ResourceType": "instance", "Tags": tags}])
        return sorted(i["InstanceId"] for i in r["Instances"])

    orphan = launch("us-east-1", "orphan-x", 2)
    known = launch("us-east-1", "known-y")
    launching = launch("us-east-1", "launching-z")  # another broker command holds its lock: in progress
    far = launch("us-west-2", "orphan-far")
    other_home = launch("us-east-1", "theirs", home="0" * 32)  # another BROKER_HOME's: never touched
    no_home = launch("us-east-1", "legacy", home="")  # no home tag (an older broker's): whose is unknown
    untagged = moto_srv.ec2().run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    state.save_cluster(ClusterRecord(name="known-y", cloud="aws", region="us-east-1", zone=None,
                                     instance_type="t3.micro", accelerators=None, use_spot=False, num_nodes=1,
                                     hourly_price=0.01, status="UP", launched_at=time.time(),
                                     name_on_cloud=state.cloud_name_for("known-y")))

    def live(region):
        return sorted(i["InstanceId"] for i in moto_srv.instances(region))

    before = {"us-east-1": live("us-east-1"), "us-west-2": live("us-west-2")}
    assert before["us-east-1"] == sorted(orphan + known + launching + other_home + no_home + [untagged])
    from skybroker.locks import cluster_lock

    busy = cluster_lock("launching-z")
    busy.__enter__()

    # no --yes, no TTY: lists the orphan, removes nothing, exits non-zero
    p = subprocess.run(broker_cmd() + ["gc", "--region", "us-east-1"], env=env, cwd=str(tmp_path),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "orphan-x" in out and all(i in out for i in orphan)
    assert "known-y" not in out and "orphan-far" not in out  # known to the state / outside --region
    assert "theirs" not in out and "legacy" not in out and not any(i in out for i in other_home + no_home)
    assert "1 resource(s) on aws of another broker home" in out and "1 resource(s) on aws without a home tag" in out
    assert "launching-z is being launched by another broker command" in out
    assert "--yes" in out and "Traceback" not in out
    assert {"us-east-1": live("us-east-1"), "us-west-2": live("us-west-2")} == before

    try:
        p = subprocess.run(broker_cmd() + ["gc", "--region", "us-east-1", "--yes"], env=env, cwd=str(tmp_path),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    finally:
        busy.__exit__(None, None, None)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "terminated 2 instance(s)" in p.stdout + p.stderr
    assert live("us-east-1") == sorted(known + launching + other_home + no_home + [untagged])
    assert live("us-west-2") == far
    assert moto_srv.calls("TerminateInstances") and all(c["region"] == "us-east-1"
                                                         for c in moto_srv.calls("TerminateInstances"))


def test_moto_server_faults_and_preemption(moto_srv):
    """The server-mode fault middleware that the CLI tests (and later ones) rely on."""
    e = moto_srv.ec2()
    moto_srv.fault("RunInstances", code="InsufficientInstanceCapacity", message="none left", times=1,
                   region="us-east-1")
    with pytest.raises(ClientError) as ei:
        e.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
    assert ei.value.response["Error"] == {"Code": "InsufficientInstanceCapacity", "Message": "none left"}
    (inst,) = e.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"]  # times=1: passes now
    assert inst["PublicIpAddress"].startswith("127.51.")  # loopback: nothing leaves this machine
    assert [c["region"] for c in moto_srv.calls("RunInstances")] == ["us-east-1", "us-east-1"]
    moto_srv.preempt(inst["InstanceId"])
    (gone,) = e.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"][0]["Instances"]
    assert gone["State"]["Name"] == "terminated"
    assert gone["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    moto_srv.reset()
    assert moto_srv.calls() == [] and moto_srv.instances() == []


CLI_TASK = f"""\
name: t
resources:
  cloud: aws
  region: us-east-1
  instance_type: t3.micro
  image_id: {AMI}
run: echo hi
"""
EC2_ACTIONS = ("DescribeInstances", "DescribeAvailabilityZones", "DescribeKeyPairs", "ImportKeyPair",
               "DescribeSecurityGroups", "DescribeVpcs", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress",
               "DescribeSubnets", "RunInstances", "CreateTags", "TerminateInstances", "DeleteSecurityGroup",
               "DescribeVolumes", "DeleteVolume")


def _cli(args, env, cwd):
    return subprocess.run(broker_cmd() + args, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_launch_refused_credentials_everywhere_leaves_no_record(moto_srv, tmp_path):
    """Every EC2 call refuses the credentials: nothing was created, so no INTERRUPTED record is left that
    only working credentials could remove (it was, and `down` then failed with exit 4)."""
    env = {**os.environ, **moto_srv.env(), "PYTHONPATH": str(REPO)}
    (tmp_path / "task.yaml").write_text(CLI_TASK)
    for action in EC2_ACTIONS:
        moto_srv.fault(action, code="AuthFailure", status=401,
                       message="AWS was not able to validate the provided access credentials")
    p = _cli(["launch", "-y", "task.yaml", "-c", "credx"], env, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert "no instance of credx was created on aws/us-east-1" in out and "`broker gc`" in out
    assert "Traceback" not in out
    assert not moto_srv.calls("RunInstances")
    p = _cli(["status", "--json"], env, tmp_path)
    assert p.returncode == 0 and "credx" not in p.stdout, p.stdout + p.stderr
    p = _cli(["down", "-y", "credx"], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr  # already gone, without asking the cloud


def test_a_launch_whose_instance_exists_keeps_its_record_when_the_cloud_cannot_be_asked(moto_srv, tmp_path):
    """The opposite case: RunInstances created the instance, then every call refuses the credentials
    (tagging it, rolling it back): the record stays for `broker down`, which fails until they work again."""
    env = {**os.environ, **moto_srv.env(), "PYTHONPATH": str(REPO)}
    (tmp_path / "task.yaml").write_text(CLI_TASK)
    for action in ("CreateTags", "TerminateInstances", "DeleteSecurityGroup"):
        moto_srv.fault(action, code="AuthFailure", status=401, message="credentials refused")
    moto_srv.fault("DescribeInstances", code="AuthFailure", status=401, message="credentials refused", skip=1)
    p = _cli(["launch", "-y", "task.yaml", "-c", "credy"], env, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert "could not roll back credy" in out
    assert "nothing of cluster credy is left running" not in out and "may still have instances" in out, out
    p = _cli(["status", "--json"], env, tmp_path)
    assert "credy" in p.stdout, p.stdout + p.stderr
    p = _cli(["down", "-y", "credy"], env, tmp_path)
    assert p.returncode == 4, p.stdout + p.stderr
    moto_srv.clear()  # the credentials work again
    from tests.integration.local_helpers import cloud_name

    assert len(moto_srv.instances(cluster=cloud_name("credy"))) == 1  # tagged with its name on the cloud
    p = _cli(["down", "-y", "credy"], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert moto_srv.instances(cluster=cloud_name("credy")) == []


def test_launch_onto_a_cluster_terminated_in_the_console_relaunches_it(moto_srv, tmp_path, monkeypatch):
    """`launch -c NAME` of an UP cluster whose instances were terminated outside the broker: the launch
    asks the cloud first, says so and creates it afresh (it said the cluster 'stays up' after failing to
    reach the old address). The new launch is refused capacity, so the test ends at provisioning."""
    from skybroker.state import ClusterRecord, NodeRecord

    env = {**os.environ, **moto_srv.env(), "PYTHONPATH": str(REPO)}
    for k, v in moto_srv.env().items():
        monkeypatch.setenv(k, v)
    (tmp_path / "task.yaml").write_text(CLI_TASK)
    (inst,) = moto_srv.ec2().run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                           TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                               {"Key": "skybroker-cluster", "Value": "oob"}]}])["Instances"]
    state.save_cluster(ClusterRecord(
        name="oob", cloud="aws", region="us-east-1", zone="use1-az1", instance_type="t3.micro", accelerators=None,
        use_spot=False, num_nodes=1, hourly_price=0.0104, status="UP", launched_at=time.time(),
        nodes=[NodeRecord(inst["InstanceId"], 0, inst["PublicIpAddress"], None, "ubuntu", 22, None, None)]))
    moto_srv.ec2().terminate_instances(InstanceIds=[inst["InstanceId"]])  # in the console
    moto_srv.fault("RunInstances", code="InsufficientInstanceCapacity", message="no capacity")
    p = _cli(["launch", "-y", "-c", "oob", "task.yaml"], env, tmp_path)
    out = p.stdout + p.stderr
    assert "cluster oob no longer exists on aws/us-east-1/use1-az1 (its instances were terminated outside " \
           "the broker): launching it afresh" in out
    assert p.returncode == 4 and "stays up" not in out and "unreachable" not in out, out
    assert moto_srv.calls("RunInstances")
    assert state.get_cluster("oob") is None


def test_a_retried_run_instances_keeps_the_record_when_the_rollback_is_refused(moto_srv, tmp_path):
    """RunInstances was retried by botocore (a 503 here; a timed-out first attempt may have launched an
    instance whose answer was lost) and then the cloud refuses the credentials for the rollback: the
    record stays for `broker down` (it was closed as "no instance was created": a possible live instance
    with no record)."""
    env = {**os.environ, **moto_srv.env(), "PYTHONPATH": str(REPO), "BROKER_AWS_MAX_ATTEMPTS": "2"}
    (tmp_path / "task.yaml").write_text(CLI_TASK)
    moto_srv.fault("RunInstances", code="ServiceUnavailable", status=503, message="try again")
    for action in ("TerminateInstances", "DeleteSecurityGroup"):
        moto_srv.fault(action, code="AuthFailure", status=401, message="credentials refused")
    moto_srv.fault("DescribeInstances", code="AuthFailure", status=401, message="credentials refused", skip=1)
    p = _cli(["launch", "-y", "task.yaml", "-c", "credz"], env, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert len(moto_srv.calls("RunInstances")) >= 2, out  # botocore retried it
    assert "could not roll back credz" in out and "no instance of credz was created" not in out, out
    assert "is left running" not in out and "`broker down credz` removes them" in out, out
    p = _cli(["status", "--json"], env, tmp_path)
    assert "credz" in p.stdout, p.stdout + p.stderr
    moto_srv.clear()
    p = _cli(["down", "-y", "credz"], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
