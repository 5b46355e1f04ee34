"""Autostop on the cluster itself on AWS: EC2 is moto (through the real boto3 driver), its instances are
real OpenSSH nodes in network namespaces (as in test_aws_e2e.py), and tests/infra/hypervisor.py plays the
hypervisor: a node's own `sudo shutdown -h now` stops or terminates its moto instance according to the
InstanceInitiatedShutdownBehavior the broker set. After arming, the broker side does nothing at all (no
local watcher, no client call): the head decides on its idleness, the worker follows it, and the cloud
shows the result. One autostop "minute" is one second here. Root only (network namespaces)."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

moto = pytest.importorskip("moto")

ACCOUNT = "123456789012"
FAST = {"BROKER_AUTOSTOP_UNIT": "1", "BROKER_AUTOSTOP_POLL": "0.2", "BROKER_AUTOSTOP_FOLLOW_GRACE": "1"}


def _aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "BROKER_AWS_POLL": "0.05", **FAST}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def mocked_aws(monkeypatch):
    from skybroker.clouds import registry
    from skybroker.clouds.aws import client as c

    _aws_env(monkeypatch)
    mock = moto.mock_aws()
    mock.start()
    c.reset()
    registry._instances.clear()
    try:
        yield c
    finally:
        mock.stop()
        c.reset()
        registry._instances.clear()


@pytest.fixture
def ec2_nodes(mocked_aws):
    """(instance id → node, hypervisor): every RunInstances boots one sshd node per instance, with the
    instance's public and private IP set to the node's; a node's shutdown is acted on by the hypervisor."""
    from moto.ec2.models import ec2_backends

    from skybroker import state
    from skybroker.runtime.keys import ensure_user_key
    from tests.infra import hypervisor
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    shims = hypervisor.bin_dir()
    pool = NodePool(user="ubuntu", path_prefix=shims)
    _, pubkey = ensure_user_key(state.db_path().parent)
    nodes: dict[str, object] = {}
    lock = threading.Lock()

    def backend_of(instance_id):
        for be in ec2_backends[ACCOUNT].values():
            try:
                be.get_instance(instance_id)
                return be
            except Exception:  # noqa: BLE001 - not in this region
                continue
        raise KeyError(instance_id)

    def on_run(parsed, **kw):
        for inst in parsed.get("Instances", []):
            node = pool.add_node(pubkey)
            with lock:
                nodes[inst["InstanceId"]] = node
            nic = backend_of(inst["InstanceId"]).get_instance(inst["InstanceId"]).nics[0]
            nic.public_ip = nic.private_ip_address = node.ip

    def on_terminate(parsed, **kw):
        for change in parsed.get("TerminatingInstances", []):
            with lock:
                node = nodes.pop(change["InstanceId"], None)
            if node is not None and node.alive:
                pool.kill(node)

    session = mocked_aws._session()
    session.events.register("after-call.ec2.RunInstances", on_run)
    session.events.register("after-call.ec2.TerminateInstances", on_terminate)
    try:
        with hypervisor.Hypervisor.ec2(pool, nodes, backend_of, lock) as hv:
            hv.pool = pool  # the node pool (its gateway is this machine, as seen from the nodes)
            yield nodes, hv
    finally:
        pool.close()
        shutil.rmtree(shims, ignore_errors=True)


def _launch(name: str, nodes: int):
    from skybroker import api, spec

    task = spec.task_from_dict({"name": name, "num_nodes": nodes, "run": "echo rank $SKYPILOT_NODE_RANK",
                                "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large",
                                              "image_id": "ami-12345678"}})
    res = api.launch(task, cluster=name, plan=api.plan(task, clouds=("aws",)))
    assert res.status.status == "SUCCEEDED"


def _states(cluster: str) -> dict[str, str]:
    """The instances of a cluster launched in this home (found by its name on the cloud)."""
    import boto3

    from tests.integration.local_helpers import cloud_name

    cluster = cloud_name(cluster)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    return {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag:skybroker-cluster", "Values": [cluster]}])["Reservations"] for i in r["Instances"]}


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_idle_two_node_cluster_stops_itself_on_ec2(ec2_nodes):
    from skybroker import api, clusters

    nodes, hv = ec2_nodes
    _launch("aws-stop", 2)
    t0 = time.monotonic()
    rec = api.set_autostop("aws-stop", 1, False)
    assert rec.autostop_where == "node"
    assert api.daemons()["autostop_watcher"] is False  # no watcher on this side: the cluster does it
    ids = set(_states("aws-stop"))
    _wait(lambda: set(_states("aws-stop").values()) == {"stopped"}, 30, "both instances to stop themselves")
    assert sorted(b for _, b in hv.fired) == ["stop", "stop"] and {i for i, _ in hv.fired} == ids
    head = min(clusters.get("aws-stop").nodes, key=lambda n: n.rank).instance_id
    assert hv.fired[0][0] == head  # the head decided, the worker followed it
    print(f"armed → head off {hv.fired_at[0] - t0:.1f}s → worker off {hv.fired_at[1] - hv.fired_at[0]:.1f}s later")
    (c,) = api.status(refresh=True)
    assert c.status == "STOPPED"


def test_idle_cluster_terminates_itself_and_leaves_no_security_group(ec2_nodes):
    """Also: arming --down sets the instance to terminate on shutdown, cancelling puts stop back."""
    import boto3

    from skybroker import api

    nodes, hv = ec2_nodes
    _launch("aws-down", 1)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    (iid,) = _states("aws-down")

    def behaviour():
        return ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")[
            "InstanceInitiatedShutdownBehavior"]["Value"]

    assert behaviour() == "stop"  # on-demand instances are launched with EC2's default
    api.set_autostop("aws-down", 600, True)
    assert behaviour() == "terminate"
    api.set_autostop("aws-down", None, False)
    assert behaviour() == "stop"  # cancelled: an OS shutdown stops again, never terminates
    api.set_autostop("aws-down", 1, True)
    _wait(lambda: set(_states("aws-down").values()) <= {"terminated", "shutting-down"}, 30,
          "the instance to terminate itself")
    assert [b for _, b in hv.fired] == ["terminate"]  # the broker set InstanceInitiatedShutdownBehavior
    from tests.integration.local_helpers import cloud_name

    name = [{"Name": "group-name", "Values": [f"skybroker-{cloud_name('aws-down')}"]}]  # its name on the cloud
    assert ec2.describe_security_groups(Filters=name)["SecurityGroups"]  # still there until the broker looks
    assert api.status(refresh=True) == []
    assert ec2.describe_security_groups(Filters=name)["SecurityGroups"] == []


def test_busy_cluster_is_not_stopped(ec2_nodes):
    from skybroker import api

    nodes, hv = ec2_nodes
    _launch("aws-busy", 1)
    r = api.exec_("aws-busy", api.exec_task(["sleep 30"]), detach=True)
    api.set_autostop("aws-busy", 0, False)  # 0: at once when idle, never while busy
    time.sleep(2)  # 10 watcher rounds
    assert hv.fired == [] and set(_states("aws-busy").values()) == {"running"}
    api.cancel("aws-busy", [r.job_id])
    _wait(lambda: set(_states("aws-busy").values()) == {"stopped"}, 30, "the instance to stop once idle")


def test_refresh_of_a_cluster_terminated_outside_removes_its_security_group(mocked_aws, monkeypatch):
    """No SSH needed: a cluster recorded UP whose instances went away (terminated by itself or anyone)
    is torn down by `status --refresh`, security group included (not only forgotten)."""
    import boto3

    from skybroker import api, state
    from skybroker.clouds.base import ProvisionRequest
    from skybroker.clouds.registry import get
    from skybroker.state import ClusterRecord, NodeRecord

    from skybroker.runtime.keys import ensure_user_key

    aws = get("aws")
    _, pubkey = ensure_user_key(state.db_path().parent)
    req = ProvisionRequest(cluster="gone", region="us-east-1", zone=None, instance_type="m5.large", num_nodes=1,
                           image_id="ami-12345678", public_key=pubkey)
    (iid,) = aws.run_instances(req)
    state.save_cluster(ClusterRecord(name="gone", cloud="aws", region="us-east-1", zone=None, instance_type="m5.large",
                                     accelerators=None, use_spot=False, num_nodes=1, hourly_price=0.1, status="UP",
                                     launched_at=time.time(), nodes=[NodeRecord(iid, 0, "127.0.0.1")],
                                     autostop_minutes=5, autostop_down=True, autostop_where="node"))
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.terminate_instances(InstanceIds=[iid])
    name = [{"Name": "group-name", "Values": ["skybroker-gone"]}]
    assert ec2.describe_security_groups(Filters=name)["SecurityGroups"]
    assert api.status(refresh=True) == []
    assert ec2.describe_security_groups(Filters=name)["SecurityGroups"] == []
    assert any("it terminated itself" in e["message"] for e in state.events("gone"))


def test_spot_instances_can_only_terminate_themselves(mocked_aws):
    """A one-time spot instance cannot be stopped: asked to stop, prepare_self_stop sets terminate and says
    so ("down"), which `broker autostop` then records and shows."""
    import boto3

    from skybroker import state
    from skybroker.clouds.base import ProvisionRequest
    from skybroker.clouds.registry import get
    from skybroker.runtime.keys import ensure_user_key

    aws = get("aws")
    _, pubkey = ensure_user_key(state.db_path().parent)
    ids = aws.run_instances(ProvisionRequest(cluster="sp", region="us-east-1", zone=None, instance_type="m5.large",
                                             num_nodes=1, use_spot=True, image_id="ami-12345678", public_key=pubkey))
    assert aws.prepare_self_stop("sp", "us-east-1", "stop") == "down"
    ec2 = boto3.client("ec2", region_name="us-east-1")
    got = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="instanceInitiatedShutdownBehavior")
    assert got["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    aws.terminate("sp", "us-east-1")
