"""Autostop on an Azure cluster itself (skybroker/clouds/azure/selfstop.py): the real azure-mgmt-* SDKs
against tests/infra/arm_fake.py, with RBAC (tests/infra/arm_rbac.py) and the instance metadata service's
managed-identity token (tests/infra/metadata_fake.py).

Without root: what arming grants (a custom role with exactly the autostop's actions, assigned at the cluster's
resource group to each VM's own identity), what cancelling takes back, the fallback when the user may not
assign roles, and the node's command itself run here against the fakes: it deallocates its VM, and cannot
delete the group with the stop role. With root (sshd nodes as VMs, the fakes on the node network's gateway):
armed, the cluster deallocates / deletes itself with no broker process doing anything."""
from __future__ import annotations

import itertools
import os
import subprocess
import time

import pytest

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("azure.mgmt.authorization")
pytest.importorskip("cryptography")

from skybroker.clouds.base import ProvisionRequest
from skybroker.errors import CredentialsError
from tests.infra.arm_fake import SUBSCRIPTION, ArmFake
from tests.infra.metadata_fake import Metadata
from tests.integration.azure_fixtures import arm, fake  # noqa: F401 - fixtures
from tests.integration.local_helpers import cloud_name

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests broker@test"
FAST = {"BROKER_AUTOSTOP_UNIT": "1", "BROKER_AUTOSTOP_POLL": "0.2", "BROKER_AUTOSTOP_FOLLOW_GRACE": "1"}
_names = itertools.count()


@pytest.fixture
def drv(arm):
    from skybroker.clouds.azure import AzureCloud

    return AzureCloud()


def _cluster(drv, n=1, **kw) -> str:
    c = f"azs{next(_names)}"
    drv.provision(ProvisionRequest(cluster=c, region="eastus", zone=None, num_nodes=n, public_key=KEY,
                                   instance_type="Standard_B2s", **kw))
    return c


def _assignments(fake, cluster):
    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/skybroker-{cluster}".lower()
    return [a["properties"] for a in fake.rbac.assignments.values() if a["properties"]["scope"].lower() == scope]


def _role_actions(fake, role_id):
    return fake.rbac.roles[role_id.lower()]["properties"]["permissions"][0]["actions"]


def test_arming_grants_each_vm_only_the_autostop_role_and_cancel_takes_it_back(drv, fake):
    from skybroker.clouds.azure import selfstop

    c = _cluster(drv, n=2)
    assert drv.prepare_self_stop(c, "eastus", "stop") == "stop"
    vms = fake.find("virtualMachines", f"skybroker-{c}")
    pids = sorted(vm["identity"]["principalId"] for vm in vms)
    assert len(set(pids)) == 2 and all(vm["identity"]["type"] == "SystemAssigned" for vm in vms)
    got = _assignments(fake, c)
    assert sorted(a["principalId"] for a in got) == pids  # each VM's own identity, at the group only
    (role,) = {a["roleDefinitionId"] for a in got}
    assert _role_actions(fake, role) == selfstop.ROLE_ACTIONS["stop"]
    assert fake.rbac.roles[role.lower()]["properties"]["roleName"].endswith(SUBSCRIPTION)  # unique per tenant
    assert not any(a.endswith("/write") or a == "*" for a in _role_actions(fake, role))  # it can create nothing
    again = drv.prepare_self_stop(c, "eastus", "stop")  # re-arming is idempotent: same identities, no new rows
    assert again == "stop" and sorted(a["principalId"] for a in _assignments(fake, c)) == pids
    assert sorted(vm["identity"]["principalId"] for vm in fake.find("virtualMachines", f"skybroker-{c}")) == pids
    assert drv.prepare_self_stop(c, "eastus", "down") == "down"  # switching: the stop role goes
    (down_role,) = {a["roleDefinitionId"] for a in _assignments(fake, c)}
    assert down_role != role and len(_assignments(fake, c)) == 2
    assert "Microsoft.Resources/subscriptions/resourceGroups/delete" in _role_actions(fake, down_role)
    drv.release_self_stop(c, "eastus")
    assert _assignments(fake, c) == []
    drv.prepare_self_stop(c, "eastus", "stop")
    assert len(_assignments(fake, c)) == 2
    drv.terminate(c, "eastus")  # down takes the roles back first (ARM would keep them, pointing at nothing)
    assert _assignments(fake, c) == [] and f"skybroker-{c}" not in fake.groups


def test_a_user_who_may_not_assign_roles_gets_a_typed_refusal(drv, fake):
    c = _cluster(drv)
    fake.rbac.deny_rbac = True  # a Contributor: may create VMs, not role assignments
    try:
        with pytest.raises(CredentialsError) as ei:
            drv.prepare_self_stop(c, "eastus", "stop")
        assert ei.value.code == "AuthorizationFailed" and "roleDefinitions" in ei.value.message
        assert _assignments(fake, c) == []
    finally:
        fake.rbac.deny_rbac = False
        drv.terminate(c, "eastus")


def _node_run(drv, c, rank, action, md) -> subprocess.CompletedProcess:
    from skybroker.state import NodeRecord

    head = NodeRecord(rank=0, instance_id="i0", ip="10.0.0.1", private_ip="10.0.0.1", ssh_port=22)
    node = head if rank == 0 else NodeRecord(rank=rank, instance_id="i1", ip="10.0.0.2", private_ip="10.0.0.2",
                                             ssh_port=22)
    plan = drv.self_stop_command(c, node, head, action)
    assert plan is not None and "fake-token" not in plan.command and md.base in plan.command
    return subprocess.run(["bash", "-c", plan.command], capture_output=True, text=True, timeout=60)


def test_the_node_command_deallocates_its_own_vm_and_may_do_nothing_else(drv, fake, monkeypatch):
    """The node's script, run here (the metadata fake gives it the VM's identity token): with the stop role it
    deallocates its VM; it cannot delete the group (403, the group stays); with the down role it can."""
    c = _cluster(drv)
    drv.prepare_self_stop(c, "eastus", "stop")
    (vm,) = fake.find("virtualMachines", f"skybroker-{c}")
    md = Metadata()
    md.identity_token = lambda ip: "mi-" + vm["identity"]["principalId"]
    monkeypatch.setenv("BROKER_AZURE_IMDS", md.base)
    try:
        r = _node_run(drv, c, 0, "stop", md)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while fake.power[vm["id"].lower()] != "deallocated" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.power[vm["id"].lower()] == "deallocated"
        assert [m for _, m, _ in fake.callers][-1] == "POST" and md.token_requests == 1
        r = _node_run(drv, c, 0, "down", md)  # the stop role does not allow deleting the group
        assert r.returncode != 0 and "403" in r.stderr and "resourceGroups/delete" in r.stderr, r.stderr
        assert f"skybroker-{c}".lower() in fake.groups
        drv.prepare_self_stop(c, "eastus", "down")
        r = _node_run(drv, c, 0, "down", md)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while f"skybroker-{c}".lower() in fake.groups and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"skybroker-{c}".lower() not in fake.groups
        assert "mi-" not in r.stdout + r.stderr  # the token is never printed
        assert len(_assignments(fake, c)) == 1  # the group deleted itself: ARM keeps its assignment (an orphan)
        other = _cluster(drv)
        drv.prepare_self_stop(other, "eastus", "stop")  # the next arm anywhere sweeps it
        assert _assignments(fake, c) == [] and len(_assignments(fake, other)) == 1
        drv.terminate(other, "eastus")
        md.identity_token = lambda ip: None  # a VM without identity: a clear failure, retried by the agent
        r = _node_run(drv, c, 0, "stop", md)
        assert r.returncode != 0 and "Identity not found" in r.stderr
    finally:
        md.close()
        drv.terminate(c, "eastus")


def test_down_is_the_heads_alone_stop_is_every_nodes(drv, fake):
    from skybroker.state import NodeRecord

    head = NodeRecord(rank=0, instance_id="i0", ip="10.0.0.1", private_ip="10.0.0.1", ssh_port=22)
    worker = NodeRecord(rank=1, instance_id="i1", ip="10.0.0.2", private_ip="10.0.0.2", ssh_port=22)
    assert drv.self_stop_command("x", worker, head, "down") is None
    w = drv.self_stop_command("x", worker, head, "stop")
    assert w.follow == "10.0.0.1:22" and "x-1" in w.command
    h = drv.self_stop_command("x", head, head, "stop")
    assert h.follow is None and "x-0" in h.command
    assert "BEGIN CERTIFICATE" in h.command  # the fake is a custom endpoint: its CA goes to the nodes


def test_the_public_endpoint_is_verified_with_the_nodes_own_cas(drv, monkeypatch):
    """A CA bundle set on this machine (e.g. for a proxy) is not handed to nodes talking to the public ARM."""
    from skybroker.clouds.azure import selfstop

    bundle = os.environ["BROKER_AZURE_CA_BUNDLE"]  # the fake's (set by the arm fixture)
    cmd = selfstop.node_command("sub", "rg", "vm-0", "stop", None, bundle, "http://169.254.169.254")
    assert "BEGIN CERTIFICATE" not in cmd and selfstop.PUBLIC_ARM in cmd


# ------------------------------------------------------------------------- root: sshd nodes as Azure VMs
@pytest.fixture
def azure_nodes(monkeypatch, node_pool):
    from skybroker.clouds.azure import client

    fake = ArmFake(nodes=node_pool, host=node_pool.gateway)
    md = Metadata(host=node_pool.gateway)
    md.identity_token = fake.token_for
    for k, v in {**fake.env(), **FAST, "BROKER_AZURE_IMDS": md.base}.items():
        monkeypatch.setenv(k, v)
    client.reset()
    try:
        yield fake, md
    finally:
        client.reset()
        md.close()
        fake.close()


def _launch(name: str, nodes: int):
    from skybroker import api, spec

    task = spec.task_from_dict({"name": name, "num_nodes": nodes, "run": "echo rank $SKYPILOT_NODE_RANK",
                                "resources": {"cloud": "azure", "cpus": "2+"}}, source="<test>")
    res = api.launch(task, cluster=name, plan=api.plan(task, [], clouds=("azure",)))
    assert res.status.status == "SUCCEEDED"


def _wait(pred, timeout: float, what: str, fake, nodes):
    """Wait for pred; on a timeout, show every node's autostop log (the dead ones' too: their homes stay) and
    the calls the nodes made."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            logs = [(n.ip, n.alive, (n.home / ".skybroker-node" / "autostop.log").read_text()[-700:])
                    for n in nodes if (n.home / ".skybroker-node" / "autostop.log").exists()]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; node logs: {logs}; "
                                 f"node calls: {[(m, path.rsplit('/', 1)[-1]) for _, m, path in fake.callers]}")
        time.sleep(0.1)


@pytest.mark.slow
def test_idle_azure_cluster_deallocates_itself(azure_nodes):
    from skybroker import api

    fake, md = azure_nodes
    _launch("azstop", 2)
    nodes = list(fake.nodes.nodes)
    vms = {vm["id"].lower(): vm for vm in fake.find("virtualMachines", f"skybroker-{cloud_name('azstop')}")}
    assert len(vms) == 2
    before = len(fake.log)
    rec = api.set_autostop("azstop", 1, False)
    assert rec.autostop_where == "node"
    assert api.daemons()["autostop_watcher"] is False  # nothing on this side: the cluster does it
    _wait(lambda: all(fake.power.get(k) == "deallocated" for k in vms), 60, "both VMs to deallocate themselves",
          fake, nodes)
    pids = {vm["identity"]["principalId"] for vm in fake.find("virtualMachines", f"skybroker-{cloud_name('azstop')}")}
    posts = [(p, path) for p, m, path in fake.callers if m == "POST"]
    assert {p for p, _ in posts} == pids and len(posts) == 2  # each VM deallocated itself, as itself
    assert all(path.lower().endswith("/deallocate") for _, path in posts)
    broker_calls = [e for e in fake.log[before:] if e[0] == "POST"]
    assert len(broker_calls) == 2  # the POSTs were the nodes' (the broker made none after arming)
    assert fake.node_of == {}  # deallocated VMs' nodes are gone
    (c,) = api.status(refresh=True)
    assert c.status == "STOPPED"
    assert len(_assignments(fake, cloud_name("azstop"))) == 2
    api.start("azstop")  # clears autostop, as SkyPilot does: the VMs keep no role
    assert _assignments(fake, cloud_name("azstop")) == [] and all(fake.power.get(k) == "running" for k in vms)
    api.down(["azstop"])
    assert fake.groups == {}


@pytest.mark.slow
def test_idle_azure_cluster_deletes_its_group_with_down(azure_nodes):
    from skybroker import api

    fake, md = azure_nodes
    _launch("azdown", 1)
    nodes = list(fake.nodes.nodes)
    rec = api.set_autostop("azdown", 1, True)
    assert rec.autostop_where == "node" and rec.autostop_down
    _wait(lambda: f"skybroker-{cloud_name('azdown')}" not in fake.groups, 60, "the cluster to delete its own resource group",
          fake, nodes)
    assert [m for _, m, _ in fake.callers if m != "GET"] == ["DELETE"]
    assert fake.node_of == {}
    assert api.status(refresh=True) == []


@pytest.mark.slow
def test_an_arm_failing_half_way_falls_back_to_the_watcher_and_leaves_no_role(azure_nodes):
    """The first VM's identity gets its role, the second's assignment is refused: the cluster is guarded by
    the watcher on this machine, and the first VM keeps no right (the half-made arm is taken back)."""
    from skybroker import api, state

    fake, md = azure_nodes
    _launch("azhalf", 2)
    fake.rbac.assignments_allowed = 1
    rec = api.set_autostop("azhalf", 5, False)
    assert rec.autostop_where == "local"
    assert [a for a in fake.rbac.assignments.values() if f"skybroker-{cloud_name('azhalf')}" in a["properties"]["scope"]] == []
    assert any("could not arm autostop on the cluster" in e["message"] for e in state.events("azhalf"))
    fake.rbac.assignments_allowed = None
    api.down(["azhalf"])
