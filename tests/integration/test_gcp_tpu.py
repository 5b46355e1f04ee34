"""TPU VMs through the Cloud TPU API v2: the real google-cloud-tpu SDK (REST transport) against the fake of
tests/infra/tpu_fake.py (served by the GCE fake, so the cluster's firewall rules are real Compute calls too).
Driver level: the request shapes, slices with several hosts, spot preemption reported with its reason,
stockout and per-zone quota failing over to the next zone, queued resources, stop/start, gc listing.
End to end on real sshd nodes (every host of the slice is one): a 2-host v4-16 slice runs the task on both
hosts and `down` leaves nothing."""
from __future__ import annotations

import pytest

pytest.importorskip("google.cloud.tpu_v2")

from skybroker import state
from skybroker.clouds.base import RUNNING, STOPPED, TERMINATED, ProvisionRequest
from skybroker.errors import CapacityError, InvalidRequestError, QuotaError, Scope
from tests.integration.test_gcp import cloud, gce, gce_on_nodes  # noqa: F401 - fixtures

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtestkeytestkeytestkeytestkeytestkeytest test@host"
ZONE = "us-central2-b"


def req(cluster="t1", accelerator="tpu-v4-8", **kw) -> ProvisionRequest:
    base = {"cluster": cluster, "region": "us-central2", "zone": ZONE, "instance_type": "TPU-VM", "num_nodes": 1,
            "accelerator": accelerator, "accelerator_count": 1, "public_key": PUBKEY}
    base.update(kw)
    return ProvisionRequest(**base)


def test_a_slice_is_one_tpu_node_whose_hosts_are_the_cluster_nodes(cloud, gce):
    infos = cloud.provision(req(accelerator="tpu-v4-16", labels=(("team", "ML"),),
                                accelerator_args=(("tpu_runtime_version", "tpu-vm-v4-base"),)))
    again = cloud.provision(req(accelerator="tpu-v4-16"))  # a retried launch finds the same slice (409 → ours)
    assert [i.instance_id for i in infos] == [i.instance_id for i in again]
    assert len(gce.tpu.nodes()) == 1
    node = gce.tpu.nodes()[0]
    assert node["name"] == f"projects/test-project/locations/{ZONE}/nodes/{infos[0].instance_id[:-3]}"
    assert node["acceleratorType"] == "v4-16" and node["runtimeVersion"] == "tpu-vm-v4-base"
    assert node["labels"] == {"skybroker-cluster": "t1", "skybroker-user": "alice", "skybroker-tpu": "1",
                              "skybroker-home": state.home_id(), "team": "ml"}
    assert node["metadata"] == {"ssh-keys": f"broker:{PUBKEY}"} and node["tags"] == ["skybroker-t1"]
    assert node["networkConfig"] == {"enableExternalIps": True}
    assert [i.rank_hint for i in infos] == [0, 1] and all(i.state == RUNNING and i.public_ip for i in infos)
    assert {i.public_ip for i in infos} == {ep["accessConfig"]["externalIp"] for ep in node["networkEndpoints"]}
    assert set(gce.firewalls) == {"skybroker-t1", "skybroker-t1-internal"}  # the slice carries the tag
    creates = gce.calls("POST", f"/v2/projects/test-project/locations/{ZONE}/nodes")
    assert len(creates) == 2 and "nodeId=" in creates[0][1]
    assert [(t.kind, t.cluster) for t in cloud.list_tagged("us-central2")] == [("tpu", "t1")]
    cloud.terminate("t1", "us-central2")
    assert gce.tpu.nodes() == [] and gce.firewalls == {}


def test_default_runtime_per_generation_and_spot(cloud, gce):
    cloud.provision(req(accelerator="tpu-v5litepod-8", use_spot=True))
    node = gce.tpu.nodes()[0]
    assert node["runtimeVersion"] == "v2-alpha-tpuv5-lite" and node["schedulingConfig"] == {"spot": True}
    assert len(node["networkEndpoints"]) == 1


def test_preempted_slice_is_reported_gone_with_its_reason_and_deleted_on_down(cloud, gce):
    infos = cloud.provision(req(accelerator="tpu-v4-16", use_spot=True))
    gce.tpu.preempt(infos[0].instance_id[:-3])
    assert cloud.query("t1", "us-central2") == []
    gone = cloud.query("t1", "us-central2", include_gone=True)
    assert [(i.state, i.state_reason) for i in gone] == [(TERMINATED, "tpu.nodes.preempted")] * 2
    assert len(gce.tpu.nodes()) == 1  # a PREEMPTED node stays listed until deleted
    cloud.terminate("t1", "us-central2")
    assert gce.tpu.nodes() == []


def test_terminate_with_no_region_finds_the_slice_in_any_zone(cloud, gce):
    """terminate(cluster, None) means everywhere (as GCE instances are found with an aggregated list): a
    TPU slice was skipped and left running."""
    cloud.provision(req())
    assert len(gce.tpu.nodes()) == 1
    cloud.terminate("t1", None)
    assert gce.tpu.nodes() == []


def test_stockout_and_zone_quota_fail_over_to_the_next_zone(cloud, gce):
    gce.tpu.exhaust(ZONE)
    with pytest.raises(CapacityError) as info:
        cloud.provision(req())
    assert info.value.scope == Scope.ZONE and info.value.code == "RESOURCE_EXHAUSTED"
    assert "no more capacity" in info.value.message
    gce.tpu.restore(ZONE)
    gce.tpu.set_quota(ZONE)
    with pytest.raises(QuotaError) as info:  # the zone's TPU quota
        cloud.provision(req())
    assert type(info.value).__name__ == "ZoneQuotaError" and info.value.scope == Scope.ZONE
    assert gce.tpu.nodes() == []


def test_a_slice_create_that_never_finishes_fails_over(gce, monkeypatch):
    """A TPU create whose operation never finishes: the SDK's wait timed out with an untyped TimeoutError
    that stopped the launch. Now past BROKER_GCP_WAIT it is the zone's failure: the half-made slice is
    deleted and the next zone is tried."""
    from skybroker import api, spec
    from skybroker.provision import provision

    monkeypatch.setenv("BROKER_GCP_WAIT", "0.3")
    task = spec.task_from_dict({"name": "tpu", "resources": {"infra": "gcp", "accelerators": "tpu-v2-8"},
                                "run": "true"})
    first = api.plan(task, clouds=("gcp",)).chosen
    gce.tpu.stuck(first.zone)
    cand, infos, attempts = provision("tpu2", lambda blocks: api.plan(task, blocklist=blocks, clouds=("gcp",)),
                                      public_key=PUBKEY)
    assert [(a.zone, a.error, a.code) for a in attempts] == [(first.zone, "CapacityError", "PROVISION_TIMEOUT")]
    assert cand.zone != first.zone and len(infos) == 1
    assert [n["name"].split("/")[3] for n in gce.tpu.nodes()] == [cand.zone]


def test_failover_through_provision_moves_to_a_zone_with_capacity(gce, monkeypatch):
    """skybroker.provision with the real optimizer: the cheapest zone for tpu-v2-8 is out of capacity,
    the zone is blocked and the next one is used."""
    from skybroker import api, spec
    from skybroker.provision import provision

    task = spec.task_from_dict({"name": "tpu", "resources": {"infra": "gcp", "accelerators": "tpu-v2-8"},
                                "run": "true"})
    first = api.plan(task, clouds=("gcp",)).chosen
    gce.tpu.exhaust(first.zone)
    cand, infos, attempts = provision("tpu1", lambda blocks: api.plan(task, blocklist=blocks, clouds=("gcp",)),
                                      public_key=PUBKEY)
    assert [(a.zone, a.error) for a in attempts] == [(first.zone, "CapacityError")]
    assert cand.zone != first.zone and len(infos) == 1
    assert [n["name"].split("/")[3] for n in gce.tpu.nodes()] == [cand.zone]


def test_queued_resource_becomes_active_and_goes_with_its_node(cloud, gce):
    cloud.provision(req(use_spot=True, accelerator_args=(("tpu_gcp_queued_resource", "True"),)))
    qrs = list(gce.tpu._queued.values())
    assert len(qrs) == 1 and qrs[0]["state"] == {"state": "ACTIVE"} and "spot" in qrs[0]
    assert gce.tpu.nodes()[0]["queuedResource"] == qrs[0]["name"]
    cloud.terminate("t1", "us-central2")
    assert gce.tpu.nodes() == [] and gce.tpu._queued == {}
    gce.tpu.exhaust(ZONE)
    with pytest.raises(CapacityError) as info:
        cloud.provision(req(cluster="t2", accelerator_args=(("tpu_gcp_queued_resource", "True"),)))
    assert info.value.scope == Scope.ZONE
    assert gce.tpu._queued == {}  # the failed request is withdrawn, not left to block the name or fire later


def test_stop_start_single_host_and_refuse_stop_of_a_pod(cloud, gce):
    cloud.provision(req())
    cloud.stop("t1", "us-central2")
    assert [i.state for i in cloud.query("t1", "us-central2")] == [STOPPED]
    started = cloud.start("t1", "us-central2")
    assert [i.state for i in started] == [RUNNING] and started[0].public_ip
    cloud.provision(req(cluster="pod", accelerator="tpu-v4-16"))
    with pytest.raises(InvalidRequestError):
        cloud.stop("pod", "us-central2")


def test_a_gce_cluster_never_needs_the_tpu_api(cloud, gce):
    """A GCE cluster's lookups do not touch the TPU API while it has instances, and a project without
    the TPU API (403) still queries and terminates its clusters."""
    cloud.provision(ProvisionRequest(cluster="vm", region="us-central1", zone="us-central1-a",
                                     instance_type="n1-standard-4", num_nodes=1, public_key=PUBKEY))
    before = len(gce.calls(contains="/v2/"))
    assert len(cloud.query("vm", "us-central1")) == 1
    assert len(gce.calls(contains="/v2/")) == before
    cloud.terminate("vm", "us-central1")
    assert cloud.query("vm", "us-central1") == []


@pytest.mark.slow
def test_launch_on_a_two_host_slice_runs_on_both_hosts_and_down_leaves_nothing(gce_on_nodes, node_pool):  # noqa: F811
    from skybroker import api, spec

    fake = gce_on_nodes
    task = spec.task_from_dict({"name": "tpu", "resources": {"infra": "gcp", "accelerators": "tpu-v4-16"},
                                "run": 'echo "host $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"'})
    lines = []
    res = api.launch(task, cluster="tpue2e", plan=api.plan(task, clouds=("gcp",)),
                     on_line=lambda rank, line: lines.append((rank, line)))
    assert res.status is not None and res.status.exit_code == 0, res
    assert sorted(lines) == [(0, "host 0 of 2"), (1, "host 1 of 2")]
    ips = {ep["ipAddress"] for ep in fake.tpu.nodes()[0]["networkEndpoints"]}
    assert ips <= {n.ip for n in node_pool.nodes} and len(ips) == 2
    api.down(["tpue2e"])
    assert fake.tpu.nodes() == [] and fake.firewalls == {}
    assert not ips & {n.ip for n in node_pool.nodes}


@pytest.mark.slow
def test_managed_spot_job_on_a_preempted_slice_is_recovered_on_a_new_slice(monkeypatch, gce_on_nodes):  # noqa: F811
    """A managed spot job on a TPU VM (real sshd host): the slice is preempted mid-run (its host dies, the
    node stays listed as PREEMPTED); the controller (in this process, as inside `broker server`) sees the
    loss with the TPU's own reason, deletes the preempted slice, runs the job on a new one, and nothing is
    left when it ends."""
    import shutil
    import tempfile
    import threading
    from pathlib import Path

    from skybroker import spec
    from skybroker.jobs import controller as ctl
    from skybroker.jobs import ops, store
    from tests.integration.local_helpers import wait_for

    fake = gce_on_nodes
    shared = Path(tempfile.mkdtemp(prefix="skybroker-tpu-", dir="/var/tmp"))
    shared.chmod(0o777)
    led = shared / "ledger"
    stop = threading.Event()
    t = None
    try:
        monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
        monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0.5")
        monkeypatch.setattr(ops, "IN_PROCESS", True)
        task = spec.task_from_dict({
            "name": "tpu-job", "envs": {"LEDGER": str(led)},
            "resources": {"infra": "gcp", "accelerators": "tpu-v2-8", "use_spot": True},
            "run": 'echo "start $(hostname)" >> "$LEDGER"; for i in $(seq 30); do sleep 0.1; done; echo done >> "$LEDGER"'})
        jid = ops.launch(task).id
        t = threading.Thread(target=ctl.Controller(workers=2).run, kwargs={"keep_going": lambda: not stop.is_set()},
                             daemon=True)
        t.start()
        lines = lambda: led.read_text().splitlines() if led.exists() else []  # noqa: E731
        diag = lambda: "\n".join(f"{e['kind']}: {e['message']}" for e in store.events(jid)) + "\n" + "\n".join(lines())  # noqa: E731
        wait_for(lambda: any(x.startswith("start") for x in lines()), 60, 0.05, "the job to start\n" + diag())
        first = fake.tpu.nodes()[0]["name"].rsplit("/", 1)[-1]
        fake.tpu.preempt(first)
        wait_for(lambda: store.get(jid).status in ("SUCCEEDED", "FAILED", "FAILED_CONTROLLER", "CANCELLED"), 90, 0.1,
                 "the job to end\n" + diag())
        j = store.get(jid)
        assert j.status == "SUCCEEDED" and j.recoveries >= 1, diag()
        got = lines()
        assert len([x for x in got if x.startswith("start")]) == 2 and got[-1] == "done", got
        assert any(e["kind"] == "recovery" and "preempted" in e["message"] for e in store.events(jid)), diag()
        wait_for(lambda: fake.tpu.nodes() == [], 30, 0.1, "the job's slices to be deleted")  # the preempted one too
    finally:
        stop.set()
        if t is not None:
            t.join(30)
        shutil.rmtree(shared, ignore_errors=True)


def test_a_slice_refused_on_credentials_before_its_create_created_nothing(cloud, gce):
    """Every call answers 403: the firewall rule is refused before the TPU create is sent, so the error says
    no instance was created (the provisioner then keeps no record only working credentials could remove)."""
    from skybroker.errors import CredentialsError

    gce.fail_auth(403)
    with pytest.raises(CredentialsError) as ei:
        cloud.run_instances(req("tcred"))
    assert ei.value.created_nothing is True
    gce.fail_auth(None)
