"""Volumes, the pure parts and the state: the task's `volumes:` forms, volume YAMLs, the placement
constraint on Resources, the launch check, and the `volumes` table on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from skybroker.errors import SpecError, UsageError
from skybroker.spec import task_from_dict
from skybroker.volumes import model, ops, records
from skybroker.volumes.records import VolumeRecord


def parse(d: dict):
    return task_from_dict({"run": "x", **d}, source="t.yaml")


def test_task_volume_forms_as_skypilot_writes_them():
    t = parse({"volumes": {"/mnt/data0": "pvc0", "/mnt/data1/": {"name": "existing0", "sub_path": "/subdir/path/"},
                           "/mnt/data2": {"size": "1Gi", "labels": {"key": "value"}}, "/mnt/data4": {"size": 100}}})
    by = {m.path: m for m in t.volumes}
    assert by["/mnt/data0"].name == "pvc0" and not by["/mnt/data0"].ephemeral
    assert by["/mnt/data1"].sub_path == "subdir/path" and by["/mnt/data1"].name == "existing0"
    assert by["/mnt/data2"].ephemeral and by["/mnt/data2"].size_gb == 1 and by["/mnt/data2"].labels == (("key", "value"),)
    assert by["/mnt/data4"].size_gb == 100


@pytest.mark.parametrize("vols, field, words", [
    ({"data": "v"}, "volumes.data", "absolute"),
    ({"/": "v"}, "volumes./", "absolute"),
    ({"/mnt/d": "Bad_Name"}, "volumes./mnt/d", "not a volume name"),
    ({"/mnt/d": {"name": "v", "sub_path": "../up"}}, "volumes./mnt/d.sub_path", "inside the volume"),
    ({"/mnt/d": {"name": "v", "size": "1Gi"}}, "volumes./mnt/d.size", "not both"),
    ({"/mnt/d": {"labels": {"a": "b"}}}, "volumes./mnt/d", "needs `name`"),
    ({"/mnt/d": {"size": "lots"}}, "volumes./mnt/d.size", "not a size"),
    ({"/mnt/d": {"name": "v", "mode": "ro"}}, "volumes./mnt/d.mode", "unknown key"),
    ({"/mnt/d": "v", "/mnt/d/x": "w"}, "volumes./mnt/d", "overlap"),
])
def test_task_volume_errors_name_the_field(vols, field, words):
    with pytest.raises(SpecError) as ei:
        parse({"volumes": vols})
    assert ei.value.exit_code == 2 and ei.value.field == field and words in ei.value.message + (ei.value.hint or "")


@pytest.mark.parametrize("size, gb", [("10Gi", 10), ("1Ti", 1024), ("500Mi", 1), ("1.5Gi", 2), (100, 100),
                                      ("100GB", 100), ("2T", 2048)])
def test_sizes(size, gb):
    assert model.size_gb(size, "size") == gb


def test_volume_yaml():
    spec = model.volume_spec({"name": "new-pvc", "type": "ebs", "infra": "aws/us-east-1", "size": "10Gi",
                              "labels": {"a": 1}}, "v.yaml", ops.default_type)
    assert (spec.type, spec.cloud, spec.region, spec.zone, spec.size_gb, spec.labels) == \
        ("aws-ebs", "aws", "us-east-1", None, 10, (("a", "1"),))
    assert model.volume_spec({"name": "d", "infra": "gcp/us-central1/us-central1-a", "size": 5}, "v.yaml",
                             ops.default_type).type == "gcp-pd"  # the cloud's default type


@pytest.mark.parametrize("data, field, words", [
    ({"name": "v", "type": "k8s-pvc", "infra": "k8s", "size": "1Gi"}, "type", "Kubernetes PVCs"),
    ({"name": "v", "type": "runpod-network-volume", "size": "1Gi"}, "type", "RunPod"),
    ({"name": "v", "type": "nfs", "size": "1Gi"}, "type", "unknown volume type"),
    ({"name": "v", "type": "aws-ebs", "size": "1Gi", "use_existing": True}, "use_existing", "not supported"),
    ({"name": "v", "infra": "azure/eastus", "size": "1Gi"}, "infra", "no volumes on azure"),
    ({"name": "v", "type": "aws-ebs"}, "size", "needs a size"),
    ({"type": "aws-ebs", "size": 1}, "name", "needs a name"),
    ({"name": "v", "type": "aws-ebs", "size": 1, "access_mode": "x"}, "access_mode", "unknown key"),
])
def test_volume_yaml_refusals(data, field, words):
    with pytest.raises(SpecError) as ei:
        model.volume_spec(data, "v.yaml", ops.default_type)
    assert ei.value.field == field and words in ei.value.message


def test_apply_refuses_a_type_on_another_cloud():
    with pytest.raises(SpecError, match="lives on aws"):
        ops.apply({"name": "v", "type": "aws-ebs", "infra": "gcp/us-central1", "size": 1}, "v.yaml")


def _record(name="vol1", cloud="aws", region="us-east-1", zone="use1-az1", **kw):
    rec = VolumeRecord(name, {"aws": "aws-ebs", "gcp": "gcp-pd", "local": "local-dir"}[cloud], cloud, region, zone,
                       10, f"id-{name}", **kw)
    records.save(rec)
    return rec


def test_an_applied_volume_pins_every_resources_to_its_zone():
    _record()
    t = parse({"resources": {"any_of": [{"cpus": "4+"}, {"infra": "aws/us-east-1", "accelerators": "T4"},
                                        {"infra": "gcp", "cpus": "2+"}]}, "volumes": {"/data": "vol1"}})
    t2, notes = ops.constrain(t)
    assert notes == []
    assert [(r.cloud, r.region, r.zone) for r in t2.candidates] == [("aws", "us-east-1", "use1-az1")] * 2  # gcp dropped
    from skybroker.optimizer import optimize

    assert {(c.cloud, c.zone) for c in optimize(t2, ("aws", "gcp", "azure")).candidates} == {("aws", "use1-az1")}


def test_constraint_conflicts_and_missing_volumes():
    _record("vol1")
    _record("vol2", "gcp", "us-central1", "us-central1-a")
    with pytest.raises(SpecError) as ei:
        ops.constrain(parse({"resources": {"infra": "gcp"}, "volumes": {"/d": "vol1"}}))
    assert ei.value.field == "volumes./d" and "aws/us-east-1/use1-az1" in ei.value.message
    with pytest.raises(SpecError, match="one place"):
        ops.constrain(parse({"volumes": {"/a": "vol1", "/b": "vol2"}}))
    t = parse({"volumes": {"/a": "nope"}})
    t2, notes = ops.constrain(t)  # --dryrun: a note, and the plan is unconstrained
    assert t2 is t and notes and "nope" in notes[0] and "broker volumes apply" in notes[0]
    with pytest.raises(SpecError) as ei:  # launch: refused before anything is created
        ops.preflight(t)
    assert ei.value.exit_code == 2 and ei.value.field == "volumes./a" and "broker volumes apply" in ei.value.hint


def test_ephemeral_volumes_plan_on_clouds_that_create_them():
    t = parse({"resources": {"cpus": "2+"}, "volumes": {"/scratch": {"size": "10Gi"}}})
    t2, _ = ops.constrain(t, ("aws", "gcp", "azure"))
    assert sorted(r.cloud for r in t2.candidates) == ["aws", "gcp"]  # azure creates no volumes (yet)
    with pytest.raises(SpecError) as ei:
        ops.constrain(parse({"resources": {"infra": "azure"}, "volumes": {"/s": {"size": 1}}}))
    assert ei.value.field == "volumes./s"


def test_a_block_volume_on_another_live_cluster_is_refused_and_multinode_is_head_only(tmp_path):
    import time

    from skybroker import state

    _record("vol1", cluster="c1", mount_path="/d")
    t = parse({"volumes": {"/d": "vol1"}, "num_nodes": 2})
    ops.preflight(t, "other")  # c1 is not in the state: a stale attachment does not block
    state.save_cluster(state.ClusterRecord("c1", "aws", "us-east-1", "use1-az1", "m6i.large", None, False, 1, 0.1,
                                           state.UP, time.time()))
    with pytest.raises(SpecError, match="attached to cluster c1"):
        ops.preflight(t, "other")
    ops.preflight(t, "c1")  # a relaunch on the same cluster
    assert any("head node only" in w for w in ops.warnings(t))
    with pytest.raises(UsageError, match="attached to cluster c1") as ei:
        ops.delete("vol1")
    assert "broker down c1" in ei.value.hint


def test_volume_records_on_both_backends(state_backend):
    rec = _record("vol1", labels={"team": "ml"})
    rec.add_mount("c1", "/a")
    rec.add_mount("c1", "/b")
    records.save(rec)
    got = records.get("vol1")
    assert got.labels == {"team": "ml"} and got.mount_paths == ["/a", "/b"] and got.cluster == "c1"
    assert [r.name for r in records.of_cluster("c1")] == ["vol1"]
    got.add_mount("c2", "/c")  # another cluster: only its path
    assert got.mount_paths == ["/c"]
    records.delete("vol1")
    assert records.all_records() == []
