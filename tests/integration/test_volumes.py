"""Volumes end to end: on the local cloud through the real CLI (apply, a launch writes on the volume, down,
a relaunch reads it back, the ephemeral volume is gone after down); the block-volume mount script on a real
loop device (format on first use only, sub_path); EBS against moto (create/attach/detach/delete calls,
tags, the plan's zone, gc: an applied volume is not a leak, an orphaned ephemeral one is)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.integration.local_helpers import broker, broker_home, kill_leftovers, cluster_dir


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _write(path, text: str):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ local
@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync")
def test_local_volume_outlives_its_cluster_and_ephemeral_goes_with_it(tmp_path):
    mnt = tmp_path / "mnt"
    vol = _write(tmp_path / "vol.yaml", "name: data1\ntype: local-dir\nsize: 1Gi\nlabels: {team: ml}\n")
    task = _write(tmp_path / "t.yaml", f"""
resources: {{infra: local}}
volumes:
  {mnt}/data: data1
  {mnt}/sub: {{name: data1, sub_path: runs/a}}
  {mnt}/scratch: {{size: 1Gi}}
run: |
  if [ -f {mnt}/data/f.txt ]; then echo "found $(cat {mnt}/data/f.txt)"; fi
  echo "$SKYPILOT_TASK_ID" > {mnt}/data/f.txt; echo sub > {mnt}/sub/g.txt; echo tmp > {mnt}/scratch/t
""")
    missing = broker("launch", "-y", "-c", "v1", task, cwd=tmp_path)
    assert missing.returncode == 2 and "volumes." in missing.stderr and "broker volumes apply" in missing.stderr
    assert not cluster_dir("v1").exists()  # refused before anything was created

    r = broker("volumes", "apply", "-y", vol)
    assert r.returncode == 0, r.stderr
    r = broker("launch", "-y", "-c", "v1", task, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "found" not in r.stdout
    vols = {v["name"]: v for v in json.loads(broker("volumes", "ls", "--json").stdout)}
    assert vols["data1"]["cluster"] == "v1" and vols["data1"]["labels"] == {"team": "ml"}
    assert sorted(vols["data1"]["mount_paths"]) == [f"{mnt}/data", f"{mnt}/sub"]
    (eph,) = [v for v in vols.values() if v["ephemeral"]]
    assert eph["cluster"] == "v1" and os.path.isdir(eph["id"])
    written = (mnt / "data" / "f.txt").read_text()
    assert (mnt / "sub" / "g.txt").read_text() == "sub\n"
    assert os.path.realpath(mnt / "sub") == os.path.join(vols["data1"]["id"], "runs", "a")

    same = broker("launch", "-y", "-c", "v1", task, cwd=tmp_path)  # relaunch on the cluster that has it
    assert same.returncode == 0 and f"found {written.strip()}" in same.stdout, same.stderr
    written = (mnt / "data" / "f.txt").read_text()
    busy = broker("volumes", "delete", "data1", "-y")
    assert busy.returncode == 2 and "broker down v1" in busy.stderr
    # another cluster may not take it meanwhile: the record names one cluster, so the second's `down` freed it
    # (and unlinked the first's mount path), and `volumes delete` then deleted the data the first still used
    other = broker("launch", "-y", "-c", "v3", task, cwd=tmp_path)
    assert other.returncode == 2 and "volumes." in other.stderr and "attached to cluster v1" in other.stderr, \
        other.stdout + other.stderr
    assert not (broker_home() / "local" / "v3").exists()
    assert json.loads(broker("volumes", "ls", "--json").stdout)[0]["cluster"] == "v1"
    assert broker("down", "v1", "-y").returncode == 0
    assert not os.path.exists(eph["id"]) and not os.path.lexists(mnt / "scratch")
    assert not os.path.lexists(mnt / "data")  # detached: the mount point is gone, the data is not
    vols = {v["name"]: v for v in json.loads(broker("volumes", "ls", "--json").stdout)}
    assert list(vols) == ["data1"] and vols["data1"]["cluster"] is None

    again = broker("launch", "-y", "-c", "v2", task, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"found {written.strip()}" in again.stdout
    assert broker("down", "v2", "-y").returncode == 0
    assert broker("volumes", "delete", "data1", "-y").returncode == 0
    assert json.loads(broker("volumes", "ls", "--json").stdout) == []
    assert not (broker_home() / "volumes" / "data1").exists()


# ------------------------------------------------------------------------------------------------ block
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"),
                    reason="needs root, losetup and mkfs.ext4")
def test_block_mount_formats_a_new_volume_once_and_keeps_its_data(tmp_path):
    from skybroker.volumes.mount import STORE, block_mount_command

    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    try:
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                             check=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no loop device: {exc.stderr.strip()}")
    path = str(tmp_path / "data")
    script = block_mount_command("/dev/sdz", path, "runs/a", candidates=("/dev/nonexistent", dev))
    real = f"{STORE}/dev_sdz"

    def umount():
        for p in (path, real):
            subprocess.run(["umount", p], capture_output=True)

    try:
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert subprocess.run(["blkid", "-o", "value", "-s", "TYPE", dev], capture_output=True,
                              text=True).stdout.strip() == "ext4"
        (tmp_path / "data" / "kept.txt").write_text("kept")
        assert os.path.isfile(f"{real}/runs/a/kept.txt")  # the sub_path is what the task sees
        umount()
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "data" / "kept.txt").read_text() == "kept"  # not formatted again
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr  # mounted already: nothing to do
    finally:
        umount()
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(real, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ EBS
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from tests.integration.test_aws import _moto, aws, ec2, public_key, req, tags  # noqa: E402,F401


class _Runtime:
    """The parts of backend.ClusterRuntime volumes.attach uses; the node side records the mount commands
    (the script itself runs for real in the loop-device test)."""

    def __init__(self, rec, provider):
        self.rec, self.provider, self.nodes, self.commands = rec, provider, rec.nodes, []

    def runner(self, node):
        rt = self

        class R:
            def run(self, cmd, **kw):
                from skybroker.runtime.runner import RunResult

                rt.commands.append((node.rank, cmd))
                return RunResult(0, "", "")
        return R()


def _cluster(name, infos, zone):
    from skybroker import state

    rec = state.ClusterRecord(name=name, cloud="aws", region="us-east-1", zone=zone, instance_type="m6i.large",
                              accelerators=None, use_spot=False, num_nodes=len(infos), hourly_price=0.1,
                              status=state.UP, launched_at=time.time(),
                              nodes=[state.NodeRecord(i.instance_id, r, i.public_ip or "") for r, i in enumerate(infos)])
    state.save_cluster(rec)
    return rec


def _ebs(**flt):
    return ec2().describe_volumes(Filters=[{"Name": f"tag:{k}", "Values": [v]} for k, v in flt.items()])["Volumes"]


def test_ebs_volume_apply_plan_attach_down_and_gc(aws, public_key):
    from skybroker import api, cluster_ops, gc, lifecycle
    from skybroker.clouds import registry
    from skybroker.errors import SpecError
    from skybroker.spec import task_from_dict
    from skybroker.volumes import ops, records

    v = ops.apply({"name": "ebs1", "type": "ebs", "infra": "aws/us-east-1/us-east-1b", "size": "10Gi",
                   "labels": {"team": "ml"}}, "vol.yaml")
    assert (v.cloud, v.region, v.zone, v.size_gb) == ("aws", "us-east-1", "use1-az1", 10)  # recorded as the AZ ID
    (vol,) = ec2().describe_volumes(VolumeIds=[v.cloud_id])["Volumes"]
    assert vol["AvailabilityZone"] == "us-east-1b" and vol["Size"] == 10 and vol["VolumeType"] == "gp3"
    t = tags(vol)
    assert t["skybroker-volume"] == "ebs1" and t["team"] == "ml" and "skybroker-cluster" not in t

    task = task_from_dict({"run": "x", "num_nodes": 2, "resources": {"cpus": "2+"},
                           "volumes": {"/mnt/data": "ebs1", "/mnt/scratch": {"size": "5Gi"}}})
    plan = api.plan(task, clouds=("aws", "gcp", "azure"))
    assert {(c.cloud, c.region, c.zone) for c in plan.candidates} == {("aws", "us-east-1", "use1-az1")}
    with pytest.raises(SpecError) as ei:
        api.plan(task_from_dict({"run": "x", "resources": {"infra": "gcp"}, "volumes": {"/mnt/data": "ebs1"}}))
    assert ei.value.field == "volumes./mnt/data" and "aws/us-east-1/use1-az1" in ei.value.message

    prov = registry.get("aws")
    infos = prov.provision(req("vc", num_nodes=2, zone="use1-az1", public_key=public_key))
    rec = _cluster("vc", infos, "use1-az1")
    rt = _Runtime(rec, prov)
    ops.attach(rt, task)
    ops.attach(rt, task)  # a relaunch on the same cluster: nothing new
    (vol,) = ec2().describe_volumes(VolumeIds=[v.cloud_id])["Volumes"]
    assert [(a["InstanceId"], a["Device"]) for a in vol["Attachments"]] == [(infos[0].instance_id, "/dev/sdf")]
    eph = _ebs(**{"skybroker-cluster": "vc", "skybroker-ephemeral": "true"})
    assert len(eph) == 2 and {e["Size"] for e in eph} == {5}  # one per node, in the cluster's zone
    assert {e["Attachments"][0]["InstanceId"] for e in eph} == {i.instance_id for i in infos}
    assert {e["AvailabilityZone"] for e in eph} == {"us-east-1b"}
    assert [r for r, _ in rt.commands].count(0) == 4 and [r for r, _ in rt.commands].count(1) == 2  # head-only ebs1
    assert all("mkfs.ext4" in c and "nvme-Amazon_Elastic_Block_Store_vol" in c for _, c in rt.commands)
    assert records.get("ebs1").cluster == "vc"
    with pytest.raises(SpecError, match="attached to cluster vc"):
        lifecycle.preflight(task_from_dict({"run": "x", "volumes": {"/d": "ebs1"}}), "other")

    found = {(r.kind, r.cluster) for r in prov.list_tagged("us-east-1")}
    assert ("volume", "vc") in found and not any(r.id == v.cloud_id for r in prov.list_tagged("us-east-1"))
    assert [o.cluster for o in gc.scan(("aws",), {"aws": ["us-east-1"]}).orphans] == []  # all known

    cluster_ops.terminate(rec)
    assert _ebs(**{"skybroker-ephemeral": "true"}) == []
    (vol,) = ec2().describe_volumes(VolumeIds=[v.cloud_id])["Volumes"]
    assert vol["State"] == "available" and not vol["Attachments"]
    assert [r.name for r in records.all_records()] == ["ebs1"] and records.get("ebs1").cluster is None

    # an ephemeral volume whose cluster the state forgot (a crash) is a leak; an applied one never is
    cid, _, _ = prov.create_volume("lost-scratch-0", 1, "us-east-1", "use1-az1", {}, cluster="lost")
    scan = gc.scan(("aws",), {"aws": ["us-east-1"]})
    assert [(o.cluster, o.resources) for o in scan.orphans] == [("lost", (("volume", cid),))]
    gc.remove(scan.orphans)
    assert _ebs(**{"skybroker-ephemeral": "true"}) == []

    # attached outside skybroker (to an instance it does not track): refused with what to do, kept recorded
    from skybroker.errors import BrokerError

    other = ec2().run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                Placement={"AvailabilityZone": vol["AvailabilityZone"]})["Instances"][0]["InstanceId"]
    ec2().attach_volume(VolumeId=v.cloud_id, InstanceId=other, Device="/dev/sdf")
    with pytest.raises(BrokerError) as ei:
        ops.delete("ebs1")
    assert ei.value.exit_code == 2 and f"attached to {other}" in ei.value.message, ei.value.message
    assert "detach-volume" in ei.value.hint and records.get("ebs1") is not None
    ec2().detach_volume(VolumeId=v.cloud_id, InstanceId=other)
    ec2().terminate_instances(InstanceIds=[other])

    ops.delete("ebs1")
    assert _ebs(**{"skybroker-volume": "ebs1"}) == [] and records.get("ebs1") is None


def _cluster_with_scratch(name, public_key):
    from skybroker.clouds import registry
    from skybroker.spec import task_from_dict
    from skybroker.volumes import ops

    prov = registry.get("aws")
    infos = prov.provision(req(name, zone="use1-az1", public_key=public_key))
    rec = _cluster(name, infos, "use1-az1")
    ops.attach(_Runtime(rec, prov), task_from_dict({"run": "x", "volumes": {"/mnt/scratch": {"size": "5Gi"}}}))
    (eph,) = _ebs(**{"skybroker-cluster": name, "skybroker-ephemeral": "true"})
    return eph["VolumeId"]


def test_down_retries_an_ephemeral_volume_ec2_still_reports_in_use(aws, public_key, monkeypatch):
    """EC2 answers VolumeInUse for a while after the instance is gone: down retries the delete (it left the
    volume behind with a warning and exit 0, for `broker gc` to find)."""
    from skybroker import clusters
    from tests.integration.test_aws import Hooks

    hooks = Hooks()  # before the volume calls' client is made (it copies the session's hooks)
    hooks.watch("DeleteVolume")
    hooks.fail("DeleteVolume", "VolumeInUse", "Volume is currently attached", times=2)
    _cluster_with_scratch("vu", public_key)
    assert clusters.down(["vu"]) == ["vu"]
    assert _ebs(**{"skybroker-ephemeral": "true"}) == []
    assert hooks.count("DeleteVolume") >= 3


def test_down_that_cannot_delete_an_ephemeral_volume_fails_naming_gc(aws, public_key, monkeypatch):
    """Still in use after the bound: `down` exits non-zero naming the volume and `broker gc`, which then
    finds it (nothing leaks silently)."""
    from skybroker import clusters, gc, state
    from skybroker.errors import LeftBehind
    from tests.integration.test_aws import Hooks

    monkeypatch.setenv("BROKER_AWS_VOLUME_WAIT", "0.3")
    Hooks().fail("DeleteVolume", "VolumeInUse", "Volume is currently attached")
    vol = _cluster_with_scratch("vk", public_key)
    with pytest.raises(LeftBehind) as ei:
        clusters.down(["vk"])
    assert ei.value.exit_code == 1
    assert vol in ei.value.message and "still in use" in ei.value.message
    assert "`broker gc --yes`" in ei.value.hint
    assert state.get_cluster("vk") is None  # its instances are gone
    assert [v["VolumeId"] for v in _ebs(**{"skybroker-ephemeral": "true"})] == [vol]
    scan = gc.scan(("aws",), {"aws": ["us-east-1"]})
    assert [(o.cluster, o.resources) for o in scan.orphans] == [("vk", (("volume", vol),))]


def test_a_failed_bring_up_whose_volume_cannot_be_deleted_says_so(aws, public_key, monkeypatch):
    """The lifecycle's teardown of a failed bring-up (the same policy as down) says the volume was left and
    that gc removes it (it said 'nothing is left running')."""
    from skybroker import lifecycle, state
    from skybroker.spec import task_from_dict
    from tests.integration.test_aws import Hooks

    monkeypatch.setenv("BROKER_AWS_VOLUME_WAIT", "0.3")
    Hooks().fail("DeleteVolume", "VolumeInUse", "Volume is currently attached")
    vol = _cluster_with_scratch("vf", public_key)
    b = lifecycle.BringUp(task=task_from_dict({"run": "x"}), cluster="vf")
    err = lifecycle._fail(b, state.get_cluster("vf"), lifecycle.Stage.SYNC, True, RuntimeError("sync broke"))
    assert err.torn_down and state.get_cluster("vf") is None
    assert vol in err.note and "not all of it is gone" in err.note and "`broker gc --yes`" in err.note
    assert "nothing is left running" not in err.note


def test_an_interrupted_apply_leaves_no_ebs_volume(aws, monkeypatch):
    """Ctrl-C while EBS made the volume left it in the account, recorded nowhere: `volumes ls` did not show it,
    `volumes delete` did not know it and gc never reports an applied volume (no cluster tag)."""
    from skybroker.clouds import registry
    from skybroker.volumes import ops, records

    prov = registry.get("aws")
    real = type(prov)._wait_volume
    calls = []

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the volume exists, "creating" is still being waited for
        return real(self, *a, **kw)

    monkeypatch.setattr(type(prov), "_wait_volume", interrupted)
    events = []
    with pytest.raises(KeyboardInterrupt):
        ops.apply({"name": "ebs-int", "type": "aws-ebs", "infra": "aws/us-east-1/us-east-1a", "size": 1}, "v.yaml",
                  on_event=lambda k, m: events.append(m))
    assert [v for v in _ebs(**{"skybroker-volume": "ebs-int"}) if v["State"] != "deleted"] == []
    assert records.get("ebs-int") is None and any("interrupted: removing volume ebs-int" in e for e in events)


# ------------------------------------------------------------------------------------------------ GCE PD
def test_gcp_persistent_disk_against_the_gce_fake(monkeypatch):
    pytest.importorskip("google.cloud.compute_v1")
    from skybroker import cluster_ops, state
    from skybroker.clouds import registry
    from skybroker.clouds.base import ProvisionRequest
    from skybroker.clouds.gcp import client
    from skybroker.errors import ProvisionError, UsageError
    from skybroker.spec import task_from_dict
    from skybroker.volumes import ops, records
    from tests.infra.gce_fake import GCEFake

    fake = GCEFake(project="test-project").start()
    for k, v in fake.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BROKER_GCP_POLL", "0.01")
    monkeypatch.setattr(registry, "_instances", {})
    client.reset()
    try:
        v = ops.apply({"name": "pd1", "type": "gcp-pd", "infra": "gcp/us-central1/us-central1-a", "size": "20Gi"},
                      "vol.yaml")
        assert (v.cloud, v.region, v.zone, v.cloud_id) == ("gcp", "us-central1", "us-central1-a", "pd1")
        (_, _, body), = fake.calls("POST", "/zones/us-central1-a/disks")
        assert body["sizeGb"] == "20" and body["type"] == "zones/us-central1-a/diskTypes/pd-balanced"
        assert body["labels"]["skybroker-volume"] == "pd1" and "skybroker-cluster" not in body["labels"]
        with pytest.raises(UsageError, match="exists already"):
            ops.apply({"name": "pd1", "type": "gcp-pd", "infra": "gcp/us-central1", "size": "30Gi"}, "vol.yaml")

        prov = registry.get("gcp")
        infos = prov.provision(ProvisionRequest("vc", "us-central1", "us-central1-a", "n1-standard-4", 2,
                                                public_key="ssh-ed25519 AAAAC3Nza test"))
        rec = state.ClusterRecord(name="vc", cloud="gcp", region="us-central1", zone="us-central1-a",
                                  instance_type="n1-standard-4", accelerators=None, use_spot=False, num_nodes=2,
                                  hourly_price=0.2, status=state.UP, launched_at=time.time(),
                                  nodes=[state.NodeRecord(i.instance_id, r, i.public_ip or "") for r, i in enumerate(infos)])
        state.save_cluster(rec)
        task = task_from_dict({"run": "x", "num_nodes": 2, "volumes": {"/mnt/data": "pd1",
                                                                       "/mnt/scratch": {"size": "5Gi"}}})
        rt = _Runtime(rec, prov)
        ops.attach(rt, task)
        head = fake.instance(infos[0].instance_id)
        (att,) = [d for d in head["disks"] if d.get("deviceName") == "pd1"]
        assert att["source"].endswith("/zones/us-central1-a/disks/pd1") and att["mode"] == "READ_WRITE"
        assert not att["autoDelete"]
        assert fake.disk("pd1")["users"] == [head["selfLink"]]
        eph = [d for d in fake.disks() if d["labels"].get("skybroker-ephemeral") == "true"]
        assert len(eph) == 2 and {d["labels"]["skybroker-cluster"] for d in eph} == {"vc"}
        assert {d["sizeGb"] for d in eph} == {"5"} and all(d.get("users") for d in eph)
        assert any("/dev/disk/by-id/google-pd1" in c for r, c in rt.commands if r == 0)
        with pytest.raises(ProvisionError, match="already being used"):  # READ_WRITE on one machine only
            prov.attach_volume(records.get("pd1"), "vc", "us-central1", rec.nodes[1])
        assert ("volume", "vc") in {(t.kind, t.cluster) for t in prov.list_tagged("us-central1")}
        assert "pd1" not in {t.id for t in prov.list_tagged("us-central1")}

        cluster_ops.terminate(rec)
        assert [d["name"] for d in fake.disks()] == ["pd1"] and not fake.disk("pd1").get("users")
        assert records.get("pd1").cluster is None and [r.name for r in records.all_records()] == ["pd1"]
        ops.delete("pd1")
        assert fake.disks() == [] and records.all_records() == []
    finally:
        fake.close()
        client.reset()


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync")
def test_a_failed_bring_up_detaches_and_deletes_like_down(tmp_path):
    """The teardown policy of a failed bring-up (lifecycle.py) releases volumes exactly as `down` does."""
    mnt = tmp_path / "mnt"
    vol = _write(tmp_path / "vol.yaml", "name: keep\ninfra: local\nsize: 1\n")
    task = _write(tmp_path / "t.yaml", f"resources: {{infra: local}}\nvolumes:\n  {mnt}/d: keep\n"
                                       f"  {mnt}/s: {{size: 1Gi}}\nrun: 'true'\n")
    assert broker("volumes", "apply", "-y", vol).returncode == 0
    r = broker("launch", "-y", "-c", "vf", task, env={"BROKER_FAILPOINTS": "after-volumes=raise"})
    assert r.returncode != 0 and "failpoint after-volumes" in r.stderr and "terminated" in r.stderr
    vols = json.loads(broker("volumes", "ls", "--json").stdout)
    assert [(v["name"], v["cluster"]) for v in vols] == [("keep", None)]
    assert not os.path.lexists(mnt / "d") and not os.path.lexists(mnt / "s")
    assert not cluster_dir("vf").exists()
