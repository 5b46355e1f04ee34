"""The GCP driver against a local fake of the GCE REST API (tests/infra/gce_fake.py), through the real
google-cloud-compute SDK: the contract every driver keeps, the request shapes, typed errors with their
scope, and failover through skybroker.provision."""
from __future__ import annotations

import pytest

pytest.importorskip("google.cloud.compute_v1")

from skybroker import state
from skybroker.clouds.base import RUNNING, STOPPED, ProvisionRequest
from skybroker.errors import CapacityError, CredentialsError, InvalidRequestError, QuotaError, Scope
from tests.infra.gce_fake import GCEFake

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtestkeytestkeytestkeytestkeytestkeytest test@host"
ZONE = "us-central1-a"


@pytest.fixture
def gce(monkeypatch):
    from skybroker.clouds.gcp import client

    fake = GCEFake(project="test-project").start()
    for k, v in fake.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BROKER_GCP_POLL", "0.01")
    monkeypatch.setenv("BROKER_GCP_WAIT", "20")
    monkeypatch.setenv("USER", "alice")
    client.reset()
    yield fake
    fake.close()
    client.reset()


@pytest.fixture
def cloud(gce):
    from skybroker.clouds.gcp import GCPCloud

    return GCPCloud()


def req(cluster="c1", **kw) -> ProvisionRequest:
    base = {"cluster": cluster, "region": "us-central1", "zone": ZONE, "instance_type": "n1-standard-4",
            "num_nodes": 1, "public_key": PUBKEY}
    base.update(kw)
    return ProvisionRequest(**base)


def test_provision_is_idempotent_by_cluster_and_labels_instances(cloud, gce):
    first = cloud.provision(req(num_nodes=2, labels=(("team", "ML"),)))
    again = cloud.provision(req(num_nodes=2))
    assert [i.instance_id for i in first] == [i.instance_id for i in again]
    assert len(gce.instances()) == 2
    assert [i.rank_hint for i in first] == [0, 1]
    for info in first:
        assert info.state == RUNNING and info.public_ip and info.private_ip and info.zone == ZONE
        assert info.ssh_user == "broker" and not info.spot
    stored = gce.instance(first[0].instance_id)
    assert stored["labels"] == {"skybroker-cluster": "c1", "skybroker-user": "alice", "skybroker-rank": "0",
                                "skybroker-home": state.home_id(), "team": "ml"}
    assert stored["metadata"]["items"] == [{"key": "ssh-keys", "value": f"broker:{PUBKEY}"}]
    assert stored["machineType"].endswith(f"/zones/{ZONE}/machineTypes/n1-standard-4")
    assert stored["tags"]["items"] == ["skybroker-c1"]
    boot = stored["disks"][0]
    assert boot["boot"] and boot["autoDelete"]
    assert boot["initializeParams"]["sourceImage"] == "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
    assert int(boot["initializeParams"]["diskSizeGb"]) == 256
    assert stored["scheduling"] == {"provisioningModel": "STANDARD", "automaticRestart": True,
                                    "onHostMaintenance": "MIGRATE"}
    # growing the cluster adds only the missing rank
    grown = cloud.provision(req(num_nodes=3))
    assert [i.rank_hint for i in grown] == [0, 1, 2] and len(gce.instances()) == 3


def test_request_shapes_match_the_rest_api(cloud, gce):
    gce.op_delay = 0.05  # operations come back RUNNING: the driver must poll them
    cloud.provision(req(image_id="projects/p/global/images/my-image", disk_size=50))
    inserts = gce.calls("POST", "/compute/v1/projects/test-project/zones/us-central1-a/instances")
    assert len(inserts) == 1
    body = inserts[0][2]
    assert body["name"] == cloud_name("c1", 0)
    assert body["disks"][0]["initializeParams"] == {
        "sourceImage": "projects/p/global/images/my-image", "diskSizeGb": "50",  # int64 → JSON string
        "diskType": f"zones/{ZONE}/diskTypes/pd-balanced",
        "labels": {"skybroker-cluster": "c1", "skybroker-home": state.home_id()}}
    assert body["networkInterfaces"] == [{"network": "global/networks/default",
                                          "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}]
    lists = gce.calls("GET", "/aggregated/instances?")
    assert lists and all("filter=labels.skybroker-cluster%3Dc1" in path for _, path, _ in lists)
    waits = [path for _, path, _ in gce.calls("POST", "/operations/")]
    assert any("/zones/us-central1-a/operations/" in p for p in waits)  # polled through our own clients
    assert any("/global/operations/" in p for p in waits) and all(p.endswith("/wait") for p in waits)


def cloud_name(cluster: str, rank: int) -> str:
    from skybroker.clouds.gcp.instances import instance_name

    return instance_name(cluster, rank)


def test_terminate_twice_and_query_after_terminate_is_empty(cloud, gce):
    cloud.provision(req(num_nodes=2, ports=("8080",)))
    assert set(gce.firewalls) == {"skybroker-c1", "skybroker-c1-internal"}
    cloud.terminate("c1", "us-central1")
    assert cloud.query("c1", "us-central1") == [] and gce.instances() == []
    assert gce.firewalls == {}
    cloud.terminate("c1", "us-central1")  # nothing left: fine
    cloud.terminate("never-existed", None)


def test_spot_instances_are_marked_and_preemption_is_visible(cloud, gce):
    [info] = cloud.provision(req(use_spot=True))
    assert info.spot
    assert gce.instance(info.instance_id)["scheduling"] == {
        "provisioningModel": "SPOT", "instanceTerminationAction": "DELETE", "automaticRestart": False,
        "onHostMaintenance": "TERMINATE"}
    gce.preempt(info.instance_id)
    assert cloud.query("c1", "us-central1") == []  # SPOT + DELETE: the instance is simply gone
    [gone] = cloud.query("c1", "us-central1", include_gone=True)
    assert gone.instance_id == info.instance_id and gone.state_reason == "compute.instances.preempted"


def test_v100_attaches_to_the_n1_host_and_bundled_gpus_do_not(cloud, gce):
    [v100] = cloud.provision(req("g1", instance_type="n1-highmem-8", accelerator="V100", accelerator_count=1))
    stored = gce.instance(v100.instance_id)
    assert stored["guestAccelerators"] == [{
        "acceleratorType": f"projects/test-project/zones/{ZONE}/acceleratorTypes/nvidia-tesla-v100",
        "acceleratorCount": 1}]
    assert stored["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert "ubuntu-accelerator" in stored["disks"][0]["initializeParams"]["sourceImage"]
    [a100] = cloud.provision(req("g2", instance_type="a2-highgpu-1g", accelerator="A100", accelerator_count=1))
    [l4] = cloud.provision(req("g3", instance_type="g2-standard-4", accelerator="L4", accelerator_count=1))
    for info in (a100, l4):
        assert "guestAccelerators" not in gce.instance(info.instance_id)
    with pytest.raises(InvalidRequestError):  # A100 only comes with a2 hosts
        cloud.provision(req("g4", instance_type="n1-standard-8", accelerator="A100", accelerator_count=1))


def test_firewall_opens_exactly_ssh_and_the_task_ports(cloud, gce):
    cloud.provision(req(ports=("8080", "9000-9010")))
    fw = gce.firewalls["skybroker-c1"]
    assert fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["22", "8080", "9000-9010"]}]
    assert fw["sourceRanges"] == ["0.0.0.0/0"] and fw["targetTags"] == ["skybroker-c1"]
    internal = gce.firewalls["skybroker-c1-internal"]
    assert internal["sourceTags"] == internal["targetTags"] == ["skybroker-c1"]
    assert internal["allowed"] == [{"IPProtocol": "all"}]
    cloud.open_ports("c1", "us-central1", ("7000", "8080"))
    assert gce.firewalls["skybroker-c1"]["allowed"] == [{"IPProtocol": "tcp",
                                                         "ports": ["22", "8080", "9000-9010", "7000"]}]
    patches = len(gce.calls("PATCH"))
    cloud.open_ports("c1", "us-central1", ("7000",))
    assert len(gce.calls("PATCH")) == patches  # nothing new to open: no call


@pytest.mark.parametrize("fault, cls, scope, code", [
    (lambda f: f.exhaust(ZONE), CapacityError, Scope.ZONE, "ZONE_RESOURCE_POOL_EXHAUSTED"),
    (lambda f: f.exhaust(ZONE, "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"), CapacityError, Scope.ZONE,
     "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"),
    (lambda f: f.set_quota("us-central1", "NVIDIA_V100_GPUS"), QuotaError, Scope.REGION,
     "QUOTA_EXCEEDED:NVIDIA_V100_GPUS"),
    (lambda f: f.set_quota("us-central1", "CPUS", synchronous=True), QuotaError, Scope.REGION, "quotaExceeded"),
    (lambda f: f.set_quota(None, "GPUS_ALL_REGIONS"), QuotaError, Scope.CLOUD, "QUOTA_EXCEEDED:GPUS_ALL_REGIONS"),
    (lambda f: f.fail_auth(403), CredentialsError, Scope.CLOUD, "forbidden"),
    # on 401 the SDK's session tries to refresh the credentials first (anonymous ones refuse: InvalidOperation)
    (lambda f: f.fail_auth(401), CredentialsError, Scope.CLOUD, "InvalidOperation"),
])
def test_typed_errors_carry_their_scope(cloud, gce, fault, cls, scope, code):
    fault(gce)
    with pytest.raises(cls) as info:
        cloud.provision(req())
    assert info.value.scope == scope and info.value.code == code
    assert info.value.place.cloud == "gcp" and info.value.place.zone in (ZONE, None)


def test_spot_only_stockout_and_invalid_requests(cloud, gce):
    gce.exhaust(ZONE, spot_only=True)
    cloud.provision(req("od"))  # on-demand still fits
    with pytest.raises(CapacityError):
        cloud.provision(req("sp", use_spot=True))
    with pytest.raises(InvalidRequestError) as info:  # GCE rejects it with 400 invalid
        cloud.provision(req("bad", instance_type="N1_Standard"))
    assert info.value.scope == Scope.REQUEST


def test_stop_start_with_slow_transitions(cloud, gce):
    gce.op_delay, gce.boot_delay, gce.stop_delay = 0.05, 0.1, 0.1
    infos = cloud.provision(req(num_nodes=2))
    cloud.stop("c1", "us-central1")
    assert {i.state for i in cloud.query("c1", "us-central1")} == {STOPPED}
    assert {i["status"] for i in gce.instances()} == {"TERMINATED"}
    started = cloud.start("c1", "us-central1")
    assert [i.instance_id for i in started] == [i.instance_id for i in infos]
    assert {i.state for i in started} == {RUNNING}
    cloud.stop("c1", "us-central1")
    again = cloud.provision(req(num_nodes=2))  # provisioning a stopped cluster starts it
    assert {i.state for i in again} == {RUNNING} and len(gce.instances()) == 2
    cloud.terminate("c1", "us-central1")
    assert cloud.query("c1", None) == []


def _instances(cloud, region):
    out: dict = {}
    for t in cloud.list_tagged(region):
        if t.kind == "instance":
            out.setdefault(t.cluster, []).append(t.id)
    return out


def test_list_tagged_for_gc(cloud, gce):
    cloud.provision(req("a", num_nodes=2))
    cloud.provision(req("b", region="us-east1", zone="us-east1-b"))
    assert _instances(cloud, "us-central1") == {"a": [cloud_name("a", 0), cloud_name("a", 1)]}
    assert _instances(cloud, "us-east1") == {"b": [cloud_name("b", 0)]}
    assert _instances(cloud, "europe-west4") == {}
    # firewall rules are global: listed with region None, named by their cluster
    fws = {(t.cluster, t.kind) for t in cloud.list_tagged(None)}
    assert fws == {("a", "firewall"), ("b", "firewall")}


# -- failover through the cloud-agnostic provisioner ----------------------------------------------------
def _provision(task_dict):
    from skybroker import api, provision, spec

    task = spec.task_from_dict(task_dict)
    return provision.provision("fo", lambda blocks: api.plan(task, blocks, clouds=("gcp",)), public_key=PUBKEY)


V100_TASK = {"name": "t", "resources": {"accelerators": "V100:1", "infra": "gcp"}, "run": "true"}


def test_failover_capacity_in_every_zone_moves_to_the_next_region(gce):
    for z in ("a", "b", "c", "f"):
        gce.exhaust(f"us-central1-{z}")
    cand, infos, attempts = _provision(V100_TASK)
    assert [a.zone for a in attempts] == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    assert {a.error for a in attempts} == {"CapacityError"} and {a.scope for a in attempts} == {"zone"}
    assert cand.region == "us-east1" and infos[0].zone == cand.zone and infos[0].state == RUNNING
    assert [i["name"] for i in gce.instances()] == [cloud_name("fo", 0)]


@pytest.mark.parametrize("boot,code", [(False, "PROVISION_TIMEOUT"), (True, "BOOT_TIMEOUT")])
def test_an_insert_that_hangs_is_the_zones_failure_and_fails_over(gce, monkeypatch, boot, code):
    """An insert whose operation never finishes, or whose instance never gets to RUNNING, stopped the launch
    with an InvalidRequestError (a 'bad request') and left the stuck instance to the rollback only by luck.
    Now past BROKER_GCP_WAIT it is the zone's failure: the instance is deleted, the next zone is tried."""
    monkeypatch.setenv("BROKER_GCP_WAIT", "0.5")
    gce.stuck("us-central1-a", boot=boot)
    cand, infos, attempts = _provision(V100_TASK)
    assert [(a.zone, a.error, a.code, a.scope) for a in attempts] == [("us-central1-a", "CapacityError", code, "zone")]
    assert cand.zone == "us-central1-b" and infos[0].state == RUNNING
    assert [(i["name"], i["zone"].rsplit("/", 1)[-1]) for i in gce.instances()] == [(cloud_name("fo", 0), cand.zone)]


def test_failover_quota_blocks_the_region_not_just_the_zone(gce):
    gce.set_quota("us-central1", "NVIDIA_V100_GPUS")
    cand, _, attempts = _provision(V100_TASK)
    assert [(a.zone, a.error, a.scope) for a in attempts] == [("us-central1-a", "QuotaError", "region")]
    assert cand.region == "us-east1" and len(gce.instances()) == 1


def test_failover_global_quota_and_credentials_block_the_cloud(gce):
    from skybroker.provision import ProvisionExhausted

    gce.set_quota(None, "GPUS_ALL_REGIONS")
    with pytest.raises(ProvisionExhausted) as info:
        _provision(V100_TASK)
    assert [(a.error, a.scope) for a in info.value.attempts] == [("GlobalQuotaError", "cloud")]
    gce.clear_quota(None)
    gce.fail_auth(403)
    with pytest.raises(ProvisionExhausted) as info:
        _provision(V100_TASK)
    assert [(a.error, a.scope) for a in info.value.attempts] == [("CredentialsError", "cloud")]
    gce.fail_auth(None)
    assert gce.instances() == []


# -- end to end on real sshd nodes (tests/infra/netns.py): launch → run → down ------------------------
@pytest.fixture
def gce_on_nodes(monkeypatch, node_pool):
    """The GCE (and TPU) fake whose instances and TPU hosts are real sshd nodes of `node_pool`."""
    from skybroker.clouds.gcp import client

    fake = GCEFake(project="test-project", node_pool=node_pool).start()
    try:
        for k, v in fake.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("BROKER_GCP_POLL", "0.05")
        client.reset()
        yield fake
    finally:
        fake.close()
        client.reset()


def test_launch_run_down_on_sshd_nodes(gce_on_nodes, node_pool):
    from skybroker import api, spec

    fake = gce_on_nodes
    task = spec.task_from_dict({"name": "e2e", "num_nodes": 2, "resources": {"infra": "gcp", "cpus": 2},
                                "run": 'echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"'})
    lines = []
    result = api.launch(task, cluster="e2e", plan=api.plan(task, clouds=("gcp",)),
                        on_line=lambda rank, line: lines.append((rank, line)))
    assert result.status is not None and result.status.exit_code == 0, result
    assert sorted(lines) == [(0, "rank 0 of 2"), (1, "rank 1 of 2")]
    ips = {i["networkInterfaces"][0]["accessConfigs"][0]["natIP"] for i in fake.instances()}
    assert ips <= {n.ip for n in node_pool.nodes} and len(ips) == 2
    api.down(["e2e"])
    assert fake.instances() == [] and fake.firewalls == {}
    assert not ips & {n.ip for n in node_pool.nodes}


def test_the_nodes_log_in_to_each_other_as_on_skypilot(gce_on_nodes, node_pool):
    """`ssh <ip>` from a node to every address in $SKYPILOT_NODE_IPS (DeepSpeed's pdsh launcher, mpirun)
    worked on SkyPilot and not here: no key or host key for the other nodes. Now each node logs in to each
    other one with the cluster's own key, checking the host keys this machine pinned (StrictHostKeyChecking)."""
    from skybroker import api, spec

    task = spec.task_from_dict({"name": "peers", "num_nodes": 2, "resources": {"infra": "gcp", "cpus": 2},
                                "run": "for ip in $SKYPILOT_NODE_IPS; do echo \"to $ip: $(ssh $ip 'hostname -I' 2>&1 | "
                                       "tr -d ' ')\"; done"})
    lines = []
    result = api.launch(task, cluster="peers", plan=api.plan(task, clouds=("gcp",)),
                        on_line=lambda rank, line: lines.append((rank, line)))
    assert result.status.exit_code == 0, lines
    ips = [n["networkInterfaces"][0]["networkIP"] for n in sorted(gce_on_nodes.instances(), key=lambda i: i["name"])]
    for rank in (0, 1):
        for ip in ips:
            assert (rank, f"to {ip}: {ip}") in lines, lines  # the other node answered, as itself
    keys = [(n.home / ".ssh" / "skybroker_peer").read_bytes() for n in node_pool.nodes]
    assert keys[0] == keys[1] and b"PRIVATE KEY" in keys[0]
    assert oct((node_pool.nodes[0].home / ".ssh" / "skybroker_peer").stat().st_mode & 0o777) == "0o600"
    api.down(["peers"])
    assert gce_on_nodes.instances() == []


def test_spot_preempted_while_starting_is_a_zone_capacity_error(cloud, gce):
    import threading
    import time

    gce.boot_delay = 5.0
    box = {}

    def run():
        try:
            cloud.provision(req(use_spot=True))
        except Exception as exc:  # noqa: BLE001 - inspected below
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 10
    while not gce.instances() and time.time() < deadline:
        time.sleep(0.01)
    gce.preempt(cloud_name("c1", 0))
    t.join(10)
    assert isinstance(box.get("error"), CapacityError) and box["error"].code == "PREEMPTED_DURING_PROVISIONING"


def test_missing_credentials_and_project_are_cloud_scoped(monkeypatch, tmp_path):
    from skybroker.clouds.gcp import GCPCloud, client

    monkeypatch.delenv("BROKER_GCP_ENDPOINT", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    client.reset()
    with pytest.raises(CredentialsError) as info:
        GCPCloud().query("c1", "us-central1")
    assert info.value.scope == Scope.CLOUD and info.value.code == "DefaultCredentialsError"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    monkeypatch.setenv("BROKER_GCP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("BROKER_GCP_ANONYMOUS", "1")
    client.reset()
    with pytest.raises(CredentialsError) as info:
        GCPCloud().query("c1", "us-central1")
    assert info.value.code == "NoProject"
    client.reset()


# -- autostop on the cluster itself (tests/infra/hypervisor.py plays GCE's reaction to a guest shutdown) --
def test_idle_cluster_stops_itself_and_down_falls_back_to_the_local_watcher(monkeypatch):
    """Stop: the nodes power themselves off (head first, the worker follows it) and GCE stops the VMs,
    with no broker process anywhere. --down needs an API call GCE nodes get no credential for: the
    watcher on this machine guards it instead (the local watcher's down itself is tested on the local
    cloud, test_autostop_node.py)."""
    import shutil
    import time

    from skybroker import api, spec
    from skybroker.clouds.gcp import client
    from tests.infra import hypervisor
    from tests.infra.netns import NodePool, missing_requirements

    if missing_requirements():
        pytest.skip(f"sshd test nodes unavailable: {missing_requirements()}")
    shims = hypervisor.bin_dir()
    pool = NodePool(path_prefix=shims)
    fake = GCEFake(project="test-project", node_pool=pool).start()
    try:
        for k, v in {**fake.env(), "BROKER_GCP_POLL": "0.05", "BROKER_AUTOSTOP_UNIT": "1",
                     "BROKER_AUTOSTOP_POLL": "0.2", "BROKER_AUTOSTOP_FOLLOW_GRACE": "1"}.items():
            monkeypatch.setenv(k, v)
        client.reset()
        task = spec.task_from_dict({"name": "as", "num_nodes": 2, "resources": {"infra": "gcp", "cpus": 2},
                                    "run": "echo hi"})
        assert api.launch(task, cluster="gas", plan=api.plan(task, clouds=("gcp",))).status.exit_code == 0
        rec = api.set_autostop("gas", 600, True)  # --down: the nodes cannot delete themselves
        assert (rec.autostop_where, rec.autostop_down) == ("local", True)
        assert any("could not arm autostop on the cluster" in e["message"] for e in api.events("gas"))
        assert api.set_autostop("gas", None, False).autostop_where is None
        with hypervisor.Hypervisor.gce(fake) as hv:
            assert api.set_autostop("gas", 1, False).autostop_where == "node"
            deadline = time.monotonic() + 30
            while {i["status"] for i in fake.instances()} != {"TERMINATED"}:
                assert time.monotonic() < deadline, fake.instances()
                time.sleep(0.1)
            assert [w for _, w in hv.fired] == ["stop", "stop"] and hv.fired[0][0].endswith("-0")  # head first
            assert not fake.calls("POST", "/stop")  # nobody called the API: the guests shut down
        (c,) = api.status(refresh=True)
        assert c.status == "STOPPED"
    finally:
        fake.close()
        client.reset()
        pool.close()
        shutil.rmtree(shims, ignore_errors=True)


def test_task_config_mig_run_duration_and_provision_timeout(cloud, gce):
    """config.gcp.managed_instance_group: run_duration → GCE maxRunDuration (+ DELETE), provision_timeout →
    the wait in a zone, after which the zone counts as out of capacity (failover moves on)."""
    opts = (("gcp.run_duration", "3600"), ("gcp.provision_timeout", "1"))
    cloud.provision(req(options=opts[:1]))
    sched = gce.instance(cloud_name("c1", 0))["scheduling"]
    assert sched["maxRunDuration"] == {"seconds": "3600"} and sched["instanceTerminationAction"] == "DELETE"
    gce.boot_delay = 30  # never running within the task's 1 s
    with pytest.raises(CapacityError) as ei:
        cloud.provision(req("c2", options=opts))
    assert ei.value.code == "PROVISION_TIMEOUT" and ei.value.scope == Scope.ZONE


def test_a_launch_refused_credentials_everywhere_leaves_no_record(gce, tmp_path):
    """Every GCE call answers 403 forbidden: no instance was inserted, so no INTERRUPTED record is left that
    only working credentials could remove (it was, and `down` then failed with exit 4)."""
    from tests.integration.refused_launch import assert_refused_launch_leaves_no_record

    (tmp_path / "sa.json").write_text("{}")  # `broker check` wants a credentials file; the fake is anonymous
    gce.fail_auth(403)
    assert_refused_launch_leaves_no_record(
        tmp_path, "resources:\n  infra: gcp/us-central1\n  instance_type: n1-standard-4\nrun: echo hi\n",
        "gcp/us-central1", {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "sa.json")})
    gce.fail_auth(None)
    assert gce.instances() == []
