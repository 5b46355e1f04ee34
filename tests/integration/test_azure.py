"""The Azure driver with the real azure-mgmt-* SDKs against tests/infra/arm_fake.py (ARM over HTTPS on
127.0.0.1 with a self-signed certificate). No test hooks in product code: the client factory reads
BROKER_AZURE_ENDPOINT / BROKER_AZURE_FAKE_TOKEN / BROKER_AZURE_CA_BUNDLE / BROKER_AZURE_POLL."""
from __future__ import annotations

import itertools

import pytest

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("azure.mgmt.network")
pytest.importorskip("azure.mgmt.resource")
pytest.importorskip("cryptography")

from skybroker import state
from skybroker.clouds.base import RUNNING, STOPPED, TAG_CLUSTER, TAG_USER, TERMINATED, ProvisionRequest
from skybroker.errors import CapacityError, CredentialsError, InvalidRequestError, QuotaError, Scope
from tests.infra.arm_fake import SUBSCRIPTION, ArmFake
from tests.integration.azure_fixtures import arm, fake  # noqa: F401 - fixtures

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests broker@test"
_names = itertools.count()


@pytest.fixture
def drv(arm):
    from skybroker.clouds.azure import AzureCloud

    return AzureCloud()


def cluster_name() -> str:
    return f"az{next(_names)}"


def req(cluster, region="eastus", n=1, **kw) -> ProvisionRequest:
    kw.setdefault("instance_type", "Standard_B2s")
    return ProvisionRequest(cluster=cluster, region=region, zone=None, num_nodes=n, public_key=KEY, **kw)


def test_provision_is_idempotent_by_cluster(drv, arm):
    c = cluster_name()
    first = drv.provision(req(c, n=2))
    assert [i.rank_hint for i in first] == [0, 1]
    assert all(i.state == RUNNING and i.public_ip and i.private_ip and i.ssh_user == "broker" for i in first)
    assert len({i.public_ip for i in first}) == 2
    vm_puts = len(arm.requests("PUT", "/virtualMachines/"))
    again = drv.provision(req(c, n=2))
    assert [i.instance_id for i in again] == [i.instance_id for i in first]
    assert len(arm.requests("PUT", "/virtualMachines/")) == vm_puts  # nothing created twice
    grown = drv.provision(req(c, n=3))  # a missing node is added with the next rank
    assert [i.rank_hint for i in grown] == [0, 1, 2]
    assert [i.instance_id for i in grown][:2] == [i.instance_id for i in first]
    assert drv.query(c, "eastus") == grown
    drv.terminate(c, "eastus")


def test_terminate_twice_and_query_after_is_empty(drv, arm):
    c = cluster_name()
    drv.provision(req(c, n=2))
    assert arm.find("virtualMachines", f"skybroker-{c}")
    drv.terminate(c, "eastus")
    drv.terminate(c, "eastus")  # the group is gone: fine
    assert drv.query(c, "eastus") == []
    assert f"skybroker-{c}" not in arm.groups
    assert arm.find("", f"skybroker-{c}") == []  # one group delete took every resource with it
    # the delete was ARM's long-running kind: 202 + Location, polled until done
    assert arm.requests("DELETE", f"/resourcegroups/skybroker-{c}")
    assert arm.requests("GET", "/operationresults/")


def test_cluster_in_another_region_is_left_alone(drv, arm):
    c = cluster_name()
    ids = [i.instance_id for i in drv.provision(req(c))]
    with pytest.raises(InvalidRequestError):
        drv.provision(req(c, region="westus2"))
    drv.terminate(c, "westus2")  # what the provisioner's rollback does: must not touch eastus
    assert drv.query(c, "westus2") == []
    assert [i.instance_id for i in drv.query(c, "eastus")] == ids
    drv.terminate(c, "eastus")
    assert drv.query(c, "eastus") == []


def test_vm_body_spot_tags_image_and_disk(drv, arm):
    c = cluster_name()
    infos = drv.provision(req(c, use_spot=True, disk_size=64, labels=(("team", "ml"),)))
    assert infos[0].spot
    vm = arm.find("virtualMachines", f"skybroker-{c}")[0]
    p = vm["properties"]
    assert (p["priority"], p["evictionPolicy"], p["billingProfile"]) == ("Spot", "Delete", {"maxPrice": -1})
    assert vm["tags"][TAG_CLUSTER] == c and vm["tags"]["skybroker-rank"] == "0" and vm["tags"]["team"] == "ml"
    assert TAG_USER in vm["tags"]
    assert p["hardwareProfile"] == {"vmSize": "Standard_B2s"}
    assert p["storageProfile"]["imageReference"] == {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
                                                     "sku": "22_04-lts-gen2", "version": "latest"}
    assert p["storageProfile"]["osDisk"]["diskSizeGB"] == 64
    # the ledger prices the disk the VM gets: Standard SSD LRS is $0.075/GiB-month (E15 256 GiB $19.20, E30
    # 1 TiB $76.80, East US); Premium SSD (P15 $38.01, ~$0.15) was charged for a Standard SSD disk before
    from skybroker.costs import disks

    sku = p["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"]
    assert disks.price_per_gb_month("azure") == {"StandardSSD_LRS": 0.075, "Premium_LRS": 0.15}[sku]
    lin = p["osProfile"]["linuxConfiguration"]
    assert p["osProfile"]["adminUsername"] == "broker" and lin["disablePasswordAuthentication"] is True
    assert lin["ssh"]["publicKeys"] == [{"path": "/home/broker/.ssh/authorized_keys", "keyData": KEY}]
    assert arm.groups[f"skybroker-{c}"]["tags"][TAG_CLUSTER] == c
    ip = arm.find("publicIPAddresses", f"skybroker-{c}")[0]
    assert ip["sku"]["name"] == "Standard" and ip["properties"]["publicIPAllocationMethod"] == "Static"
    drv.terminate(c, "eastus")
    plain = cluster_name()
    assert not drv.provision(req(plain, image_id="Canonical:ubuntu-24_04-lts:server:latest"))[0].spot
    vm = arm.find("virtualMachines", f"skybroker-{plain}")[0]["properties"]
    assert "priority" not in vm and vm["storageProfile"]["imageReference"]["offer"] == "ubuntu-24_04-lts"
    drv.terminate(plain, "eastus")


def _open_tcp(arm, c) -> set[str]:
    nsg = arm.find("networkSecurityGroups", f"skybroker-{c}")[0]
    return {r["properties"]["destinationPortRange"] for r in nsg["properties"]["securityRules"]
            if r["properties"]["protocol"] == "Tcp" and r["properties"]["access"] == "Allow"
            and r["properties"]["sourceAddressPrefix"] == "*"}


def test_nsg_opens_exactly_ssh_and_task_ports(drv, arm):
    c = cluster_name()
    drv.provision(req(c, ports=("8000-8010", "9000", "9000")))
    assert _open_tcp(arm, c) == {"22", "8000-8010", "9000"}
    rules = arm.find("networkSecurityGroups", f"skybroker-{c}")[0]["properties"]["securityRules"]
    intra = next(r for r in rules if r["name"] == "intra-vnet")["properties"]
    assert intra["sourceAddressPrefix"] == "VirtualNetwork" and intra["protocol"] == "*"
    assert len({r["properties"]["priority"] for r in rules}) == len(rules)
    nic = arm.find("networkInterfaces", f"skybroker-{c}")[0]
    assert nic["properties"]["networkSecurityGroup"]["id"].endswith("/networkSecurityGroups/skybroker-nsg")
    drv.open_ports(c, "eastus", ("9000", "7000"))
    assert _open_tcp(arm, c) == {"22", "8000-8010", "9000", "7000"}
    drv.terminate(c, "eastus")
    with pytest.raises(InvalidRequestError):
        drv.open_ports(c, "eastus", ("1",))


def test_stop_deallocates_and_start_resumes(drv, arm):
    c = cluster_name()
    ids = [i.instance_id for i in drv.provision(req(c, n=2))]
    drv.stop(c, "eastus")
    assert {i.state for i in drv.query(c, "eastus")} == {STOPPED}
    assert len(arm.requests("POST", "/deallocate")) >= 2
    back = drv.start(c, "eastus")
    assert [i.instance_id for i in back] == ids and {i.state for i in back} == {RUNNING}
    drv.stop(c, "eastus")
    assert [i.instance_id for i in drv.provision(req(c, n=2))] == ids  # provision resumes a stopped cluster
    drv.terminate(c, "eastus")


def test_spot_eviction_deletes_the_vm(drv, arm):
    c = cluster_name()
    drv.provision(req(c, n=2, use_spot=True))
    arm.evict(f"{c}-1")
    left = drv.query(c, "eastus")
    assert [i.rank_hint for i in left] == [0]
    gone = [i for i in drv.query(c, "eastus", include_gone=True) if i.state == TERMINATED]
    assert [(i.rank_hint, i.state_reason, i.spot) for i in gone] == [(1, "Evicted", True)]
    assert [i.rank_hint for i in drv.provision(req(c, n=2, use_spot=True))] == [0, 1]  # recovery re-creates rank 1
    drv.terminate(c, "eastus")


def test_a_running_vm_whose_last_operation_failed_is_still_running(drv, arm):
    """ARM's provisioningState is the last control-plane operation's (an extension that timed out, a failed
    update), separate from the power state. Such a VM used to count as TERMINATED: a 1-node cluster was taken
    for gone by `status --refresh` (and torn down, disks and all), a relaunch deleted and re-created it."""
    c = cluster_name()
    ids = [i.instance_id for i in drv.provision(req(c, n=2))]
    arm.fail_provisioning(f"{c}-0")
    got = drv.query(c, "eastus")
    assert [(i.instance_id, i.state) for i in got] == [(ids[0], RUNNING), (ids[1], RUNNING)]
    assert [i.instance_id for i in drv.provision(req(c, n=2))] == ids  # resumed, nothing deleted
    assert not arm.requests("DELETE", f"/virtualMachines/{c}-0")
    drv.terminate(c, "eastus")


@pytest.mark.parametrize("fault,code,etype,scope", [
    (("capacity", "SkuNotAvailable"), "SkuNotAvailable", CapacityError, Scope.ZONE),  # sync 409
    (("capacity", "AllocationFailed"), "AllocationFailed", CapacityError, Scope.ZONE),  # failed LRO
    (("capacity", "ZonalAllocationFailed"), "ZonalAllocationFailed", CapacityError, Scope.ZONE),
    (("quota", "OperationNotAllowed"), "OperationNotAllowed", QuotaError, Scope.REGION),
    (("quota", "QuotaExceeded"), "QuotaExceeded", QuotaError, Scope.REGION),
    (("auth", "AuthenticationFailed"), "AuthenticationFailed", CredentialsError, Scope.CLOUD),  # 401
    (("auth", "AuthorizationFailed"), "AuthorizationFailed", CredentialsError, Scope.CLOUD),  # 403
])
def test_typed_errors_carry_scope_and_code(drv, arm, fault, code, etype, scope):
    c = cluster_name()
    kind, fcode = fault
    if kind == "auth":
        arm.auth(fcode)
    else:
        getattr(arm, kind)("westus2", fcode)
    with pytest.raises(etype) as ei:
        drv.provision(req(c, region="westus2"))
    assert ei.value.scope == scope and ei.value.code == code
    assert ei.value.place.cloud == "azure" and ei.value.place.region == "westus2"
    arm.clear_faults()
    drv.terminate(c, "westus2")


def test_bad_requests_are_request_scoped(drv, arm):
    bad = cluster_name()
    with pytest.raises(InvalidRequestError) as ei:
        drv.provision(req(bad, image_id="not-an-image"))
    assert ei.value.scope == Scope.REQUEST
    # the task's mistake: exit 2 naming the field, found before the group, vnet and NSG were made (and rolled back)
    assert ei.value.exit_code == 2 and ei.value.message.startswith("resources.image_id:") and ei.value.hint
    assert not arm.requests("PUT", f"/resourcegroups/skybroker-{bad}")
    c = cluster_name()
    with pytest.raises(InvalidRequestError) as ei:  # ARM's 400 InvalidParameter (no vmSize)
        drv.provision(req(c, instance_type=""))
    assert ei.value.code == "InvalidParameter"
    drv.terminate(c, "eastus")


def test_no_subscription_is_a_credentials_error(drv, arm, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    with pytest.raises(CredentialsError):
        drv.query("x", "eastus")


def _tagged(drv, region):
    out: dict = {}
    for t in drv.list_tagged(region):
        out.setdefault(t.cluster, []).append((t.kind, t.id))
    return out


def test_list_tagged_for_gc(drv, arm):
    a, b = cluster_name(), cluster_name()
    drv.provision(req(a, n=2))
    drv.provision(req(b, region="westeurope"))
    east = _tagged(drv, "eastus")
    ids_a = sorted(i.instance_id for i in drv.query(a, "eastus"))  # the same ids everywhere in the protocol
    assert sorted(east[a]) == sorted([("instance", i) for i in ids_a] + [("resource-group", f"skybroker-{a}")])
    assert b not in east
    assert {("instance", i.instance_id) for i in drv.query(b, "westeurope")} <= set(_tagged(drv, "westeurope")[b])
    flt = [q.get("$filter") for _, path, q, _ in arm.requests("GET") if path.rstrip("/").endswith("/resourcegroups")]
    assert flt and set(flt) == {f"tagName eq '{TAG_CLUSTER}'"}
    for c, r in ((a, "eastus"), (b, "westeurope")):
        drv.terminate(c, r)


def test_every_request_is_versioned_and_authenticated(drv, arm):
    c = cluster_name()
    drv.provision(req(c))
    drv.terminate(c, "eastus")
    assert all("api-version" in q for _, _, q, _ in arm.requests())
    lists = [q for _, p, q, _ in arm.requests("GET") if p.endswith("/virtualMachines")]
    assert lists and all(q.get("$expand") == "instanceView" for q in lists)


# ---------------------------------------------------------------------- failover through the provisioner
def _task(**res):
    from skybroker import spec

    return spec.task_from_dict({"name": "t", "resources": {"cloud": "azure", "cpus": "2+", **res}, "run": "true"},
                               source="<test>")


def _provision(cluster, task):
    from skybroker import api, provision

    return provision.provision(cluster, lambda blocks: api.plan(task, blocks, clouds=("azure",)), public_key=KEY)


def _cheapest_region(task) -> str:
    from skybroker import api

    return api.plan(task, [], clouds=("azure",)).chosen.region


@pytest.mark.parametrize("fault", ["SkuNotAvailable", "AllocationFailed", "quota"])
def test_failover_to_next_region(drv, arm, fault):
    task = _task()
    first = _cheapest_region(task)
    if fault == "quota":
        arm.quota(first)
    else:
        arm.capacity(first, fault)
    c = cluster_name()
    cand, infos, attempts = _provision(c, task)
    assert [(a.region, a.scope) for a in attempts] == [(first, "region" if fault == "quota" else "zone")]
    assert attempts[0].code == ("OperationNotAllowed" if fault == "quota" else fault)
    assert cand.region != first and infos and infos[0].state == RUNNING
    assert arm.groups[f"skybroker-{c}"]["location"] == cand.region  # the failed attempt was rolled back
    from skybroker.clouds.registry import get as get_cloud

    get_cloud("azure").terminate(c, cand.region)


def test_auth_failure_blocks_the_cloud(drv, arm):
    from skybroker.provision import ProvisionExhausted

    arm.auth("AuthenticationFailed")
    with pytest.raises(ProvisionExhausted) as ei:
        _provision(cluster_name(), _task())
    assert [(a.error, a.scope) for a in ei.value.attempts] == [("CredentialsError", "cloud")]


# ---------------------------------------------------------------------- stretch: real sshd nodes as VMs
def test_launch_run_down_on_real_nodes(arm, monkeypatch, node_pool):
    """The fake backs each VM with an sshd node in a network namespace (public IP = node IP, the VM's
    SSH key → authorized_keys): launch → run on 2 nodes → down, through the real API."""
    from skybroker import api, spec

    fake = ArmFake(nodes=node_pool)
    try:
        monkeypatch.setenv("BROKER_AZURE_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("BROKER_AZURE_CA_BUNDLE", str(fake.ca_path))
        task = spec.task_from_dict({"name": "e2e", "num_nodes": 2, "resources": {"cloud": "azure", "cpus": "2+"},
                                    "run": "echo rank=$SKYPILOT_NODE_RANK n=$SKYPILOT_NUM_NODES user=$(whoami)"},
                                   source="<test>")
        lines = []
        res = api.launch(task, cluster="aze2e", plan=api.plan(task, [], clouds=("azure",)),
                         on_line=lambda rank, line: lines.append((rank, line)))
        assert res.status.status == "SUCCEEDED"
        assert sorted(lines) == [(0, "rank=0 n=2 user=broker"), (1, "rank=1 n=2 user=broker")]
        vms = fake.find("virtualMachines", f"skybroker-{state.cloud_name_for('aze2e')}")  # its name on the cloud
        assert len(vms) == 2 and {n.ip for n in fake.node_of.values()} <= {n.ip for n in node_pool.nodes}
        api.down(["aze2e"])
        assert fake.groups == {} and fake.node_of == {}
    finally:
        fake.close()


def test_a_launch_refused_credentials_everywhere_leaves_no_record(arm, tmp_path):
    """Every ARM call answers 403 AuthorizationFailed: not even the resource group was made, so no
    INTERRUPTED record is left that only working credentials could remove (`down` failed with exit 4)."""
    from tests.integration.refused_launch import assert_refused_launch_leaves_no_record

    arm.auth("AuthorizationFailed")
    assert_refused_launch_leaves_no_record(
        tmp_path, "resources:\n  infra: azure/eastus\n  instance_type: Standard_D2s_v5\nrun: echo hi\n",
        "azure/eastus", {"AZURE_CLIENT_ID": "x", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"})
    arm.clear_faults()
    assert not [g for g in arm.groups if "credx" in g]


def test_a_start_that_fails_half_way_stops_what_started(drv, arm):
    """ARM's start of a deallocated VM can fail to allocate (a failed LRO, AllocationFailed) while the others
    start: the started VM is deallocated again, the cluster stays STOPPED (it used to stay STOPPED in the state
    with that VM running and billed, and `stop` said "already stopped"), the ledger bills only its disks."""
    import time

    from skybroker import clusters
    from skybroker.costs import ledger
    from skybroker.errors import BrokerError

    c = cluster_name()
    infos = drv.provision(req(c, n=2))
    rec = state.ClusterRecord(name=c, cloud="azure", region="eastus", zone=None, instance_type="Standard_B2s",
                              accelerators=None, use_spot=False, num_nodes=2, hourly_price=0.1, status=state.UP,
                              launched_at=time.time(), name_on_cloud=c,
                              nodes=[state.NodeRecord(i.instance_id, r, i.public_ip) for r, i in enumerate(infos)])
    state.save_cluster(rec)
    from types import SimpleNamespace

    cand = SimpleNamespace(cloud="azure", region="eastus", zone=None, instance_type="Standard_B2s", num_nodes=2,
                           use_spot=False, price=0.1, offer=None, accelerators=lambda: None,
                           resources=SimpleNamespace(disk_size=30, describe=lambda: "Standard_B2s"))
    ledger.open_run(rec, cand)
    assert clusters.stop(c) is True
    arm.start_capacity(f"{c}-1")
    with pytest.raises(BrokerError) as ei:
        clusters.start(c)
    assert sorted(arm.power[vm["id"].lower()] for vm in arm.find("virtualMachines", f"skybroker-{c}")) == \
        ["deallocated", "deallocated"]  # nothing left running
    assert state.get_cluster(c).status == state.STOPPED
    assert ledger.runs(cluster=c)[-1].state == "STOPPED"  # billed for its disks only
    assert ei.value.exit_code == 4 and "AllocationFailed" in ei.value.message, ei.value.message
    assert f"cluster {c}" in ei.value.message and "stays STOPPED" in ei.value.message
    assert f"broker start {c}" in ei.value.hint
    drv.terminate(c, "eastus")


def test_throttling_is_waited_out_when_short_and_reported_when_long(drv, arm, monkeypatch):
    """ARM answers 429 with a Retry-After. A short one is waited out by the SDK (the launch just goes on); a
    create throttled for long (Compute asks for 20+ minutes at times) used to be waited out silently too (the
    launch hung with no word); now it is a ThrottledError at once naming the wait, which the provisioner
    reports and backs off from. A teardown still waits as ARM asks (it must finish)."""
    from azure.core.pipeline.transport import RequestsTransport

    from skybroker.clouds.azure import client
    from skybroker.errors import ThrottledError

    slept: list[float] = []
    monkeypatch.setattr(RequestsTransport, "sleep", lambda self, s: slept.append(s))
    monkeypatch.setenv("BROKER_AZURE_RETRIES", "3")
    client.reset()
    c = cluster_name()
    arm.throttle(1, retry_after=2, method="PUT", contains="/virtualMachines/")
    assert drv.provision(req(c))[0].state == RUNNING and 2 in slept  # short: waited out
    arm.throttle(1, retry_after=1200, method="PUT", contains="/virtualMachines/")
    with pytest.raises(ThrottledError) as ei:
        drv.provision(req(c, n=2))
    assert ei.value.scope == Scope.RETRY and "1200s" in ei.value.message and ei.value.hint
    assert 1200 not in slept
    arm.throttle(1, retry_after=1200, method="DELETE", contains=f"/resourcegroups/skybroker-{c}")
    drv.terminate(c, "eastus")  # a teardown waits as told
    assert 1200 in slept and f"skybroker-{c}" not in arm.groups


def test_ctrl_c_while_a_vm_is_being_created_stops_waiting_for_it(arm, monkeypatch):
    """A VM create is a long-running operation (minutes on ARM). Ctrl-C used to wait for it to finish before the
    rollback could start; now the wait ends at once (the VM is in the cluster's group, which the rollback
    deletes): the rollback starts long before the create would have finished, and nothing is left."""
    import _thread
    import threading
    import time

    from skybroker.clouds.azure import client

    monkeypatch.setenv("BROKER_AZURE_POLL", "0.1")
    client.reset()
    put = arm._put

    def slow_vms(rid, rtype, name, body):  # from the VM create on, an operation takes 100 polls (10 s here)
        if rtype.lower().endswith("virtualmachines"):
            arm.lro_polls = 100
        return put(rid, rtype, name, body)

    monkeypatch.setattr(arm, "_put", slow_vms)
    monkeypatch.setattr(arm, "lro_polls", 1)
    seen: dict = {}
    c = cluster_name()

    def interrupt_during_the_vm_create():
        while not arm.requests("PUT", f"skybroker-{c}/providers/Microsoft.Compute/virtualMachines/"):
            time.sleep(0.02)
        time.sleep(0.3)
        op = list(arm.ops)[-1]  # the VM create's operation, being polled
        _thread.interrupt_main()
        while not arm.requests("DELETE", f"/resourcegroups/skybroker-{c}"):
            time.sleep(0.02)
        seen["polls"] = arm.ops[op]["polls"]  # how far the create had got when the rollback started

    threading.Thread(target=interrupt_during_the_vm_create, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _provision(c, _task())
    assert seen["polls"] < 50  # the rollback did not wait for the create (it finishes at 100)
    assert f"skybroker-{c}" not in arm.groups  # rolled back


def test_a_cluster_that_deallocated_itself_is_billed_as_stopped_from_then(drv, arm, monkeypatch, tmp_path):
    """Autostop on the cluster: the VMs deallocate themselves through ARM with no broker process; the broker
    notices at its next command, maybe hours later. The ledger used to bill those hours as up; now the stopped
    interval starts when ARM says the deallocation finished (the instance view's ProvisioningState time)."""
    import datetime
    import time
    from types import SimpleNamespace

    from skybroker import reconcile
    from skybroker.costs import ledger

    c = cluster_name()
    infos = drv.provision(req(c, n=2))
    rec = state.ClusterRecord(name=c, cloud="azure", region="eastus", zone=None, instance_type="Standard_B2s",
                              accelerators=None, use_spot=False, num_nodes=2, hourly_price=0.1, status=state.UP,
                              launched_at=time.time(), name_on_cloud=c,
                              nodes=[state.NodeRecord(i.instance_id, r, i.public_ip) for r, i in enumerate(infos)])
    state.save_cluster(rec)
    cand = SimpleNamespace(cloud="azure", region="eastus", zone=None, instance_type="Standard_B2s", num_nodes=2,
                           use_spot=False, price=0.1, offer=None, accelerators=lambda: None,
                           resources=SimpleNamespace(disk_size=30, describe=lambda: "Standard_B2s"))
    ledger.open_run(rec, cand, at=time.time() - 3600)
    drv.stop(c, "eastus")  # what the nodes' own autostop does through ARM; the broker's state still says UP
    stopped_at = max(datetime.datetime.fromisoformat(arm.op_time[vm["id"].lower()]).timestamp()
                     for vm in arm.find("virtualMachines", f"skybroker-{c}"))
    clock = tmp_path / "clock"
    clock.write_text(repr(time.time() + 8 * 3600))  # noticed 8 hours later
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))
    assert reconcile.refresh(state.get_cluster(c)).status == state.STOPPED
    (run,) = ledger.runs(cluster=c)
    assert [i.state for i in run.intervals] == ["up", "stopped"]
    assert run.intervals[1].start == pytest.approx(stopped_at, abs=1e-3)  # not 8 h later
    drv.terminate(c, "eastus")


def test_a_vm_create_that_never_finishes_fails_over_to_the_next_region(drv, arm, monkeypatch):
    """An ARM VM create that hangs (the operation InProgress for ever) waited for ever: no deadline on the
    create's operation. Now past BROKER_AZURE_WAIT it is the region's failure: the group is deleted, the next
    region is tried."""
    monkeypatch.setenv("BROKER_AZURE_WAIT", "0.5")
    task = _task()
    first = _cheapest_region(task)
    arm.stuck(first)
    c = cluster_name()
    cand, infos, attempts = _provision(c, task)
    assert [(a.region, a.error, a.code, a.scope) for a in attempts] == [(first, "CapacityError", "PROVISION_TIMEOUT",
                                                                         "zone")]
    assert cand.region != first and infos and infos[0].state == RUNNING
    assert arm.groups[f"skybroker-{c}"]["location"] == cand.region  # the stuck attempt's group was deleted
    from skybroker.clouds.registry import get as get_cloud

    get_cloud("azure").terminate(c, cand.region)
