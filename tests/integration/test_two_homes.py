"""Two BROKER_HOMEs on one cloud account (two laptops, a laptop and a CI runner): each names its clusters on the
cloud with its own suffix and tags them with its home id, so both can have a cluster `dev` side by side, one's
`down dev` and `gc --yes` never touch the other's, and the other's `status --refresh` still finds its own.

Each cloud family runs against its fake (moto in-process for AWS, the GCE REST fake, the Kubernetes API fake);
the bring-up stops after provisioning (the record is marked UP as a launch does once its job is submitted): what
is under test is what the clouds are asked, not the nodes.
"""
from __future__ import annotations

import sqlite3
import time

import pytest

from skybroker import api, gc, lifecycle, spec, state
from skybroker.clouds import registry


def _use(monkeypatch, home) -> None:
    monkeypatch.setenv("BROKER_HOME", str(home))


def _launch_dev(task, clouds) -> state.ClusterRecord:
    b = lifecycle.BringUp(task=task, cluster="dev", plan_fn=lambda blocks: api.plan(task, blocks, clouds=clouds))
    rec, _, _ = lifecycle._provision(b)
    lifecycle._mark_up(rec, None)
    return state.get_cluster("dev")


def _live(rec) -> set[str]:
    return {i.instance_id for i in registry.get(rec.cloud).query(rec.cloud_name, rec.region)}


def _two_homes(tmp_path, monkeypatch, task, cloud, regions=None):
    a, b = tmp_path / "home-a", tmp_path / "home-b"
    _use(monkeypatch, a)
    rec_a = _launch_dev(task, (cloud,))
    _use(monkeypatch, b)
    rec_b = _launch_dev(task, (cloud,))  # the same name: a cluster of its own, not A's adopted
    assert rec_a.name == rec_b.name == "dev"
    assert rec_a.cloud_name != rec_b.cloud_name and {rec_a.cloud_name, rec_b.cloud_name} == {
        f"dev-{h}" for h in (_suffix(a), _suffix(b))}
    ids_a, ids_b = _live(rec_a), _live(rec_b)
    assert ids_a and ids_b and not ids_a & ids_b and {n.instance_id for n in rec_b.nodes} == ids_b

    # B's `down dev` removes B's cluster only
    api.down(["dev"])
    assert state.get_cluster("dev") is None and _live(rec_b) == set()
    assert _live(rec_a) == ids_a

    # B's `gc --yes`: A's resources are another home's, counted and never touched
    scan = gc.scan(clouds=(cloud,), regions={cloud: regions} if regions else None)
    assert scan.orphans == [] and scan.foreign.get(cloud, 0) >= len(ids_a), (scan.orphans, scan.foreign)
    gc.remove(scan.orphans)
    assert _live(rec_a) == ids_a

    # A still sees its cluster UP, and its own gc finds nothing to remove
    _use(monkeypatch, a)
    [got] = api.status(refresh=True)
    assert (got.name, got.status, got.name_on_cloud) == ("dev", "UP", rec_a.cloud_name)
    scan = gc.scan(clouds=(cloud,), regions={cloud: regions} if regions else None)
    assert scan.orphans == [] and not scan.foreign.get(cloud)
    api.down(["dev"])
    assert _live(rec_a) == set()


def _suffix(home) -> str:
    row = sqlite3.connect(str(home / "state.db")).execute("SELECT v FROM meta WHERE k = 'home_id'").fetchone()
    return row[0][:state.HOME_SUFFIX_LEN]


# -- AWS (moto) -------------------------------------------------------------------------------------
pytest.importorskip("boto3")
pytest.importorskip("moto")
from tests.integration.test_aws import AMI, _moto, aws, public_key  # noqa: E402,F401 - fixtures

_AWS_FIXTURES = (_moto, aws, public_key)


def test_aws_two_homes_keep_their_own_dev(aws, tmp_path, monkeypatch):
    task = spec.task_from_dict({"name": "t", "resources": {"infra": "aws/us-east-1", "instance_type": "t3.micro",
                                                           "image_id": AMI}, "run": "true"}, source="t.yaml")
    _two_homes(tmp_path, monkeypatch, task, "aws", regions=["us-east-1"])


def test_aws_security_group_and_tags_carry_the_home(aws, tmp_path, monkeypatch):
    import boto3

    task = spec.task_from_dict({"name": "t", "resources": {"infra": "aws/us-east-1", "instance_type": "t3.micro",
                                                           "image_id": AMI}, "run": "true"}, source="t.yaml")
    _use(monkeypatch, tmp_path / "h")
    rec = _launch_dev(task, ("aws",))
    ec2 = boto3.client("ec2", region_name="us-east-1")
    [inst] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["skybroker-cluster"] == rec.cloud_name == f"dev-{state.home_suffix()}"
    assert tags["skybroker-home"] == state.home_id()
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"skybroker-{rec.cloud_name}"]}])
    [sg] = groups["SecurityGroups"]
    assert {t["Key"]: t["Value"] for t in sg["Tags"]}["skybroker-home"] == state.home_id()
    api.down(["dev"])


# -- GCP (the GCE REST fake) ------------------------------------------------------------------------
from tests.integration.test_gcp import gce  # noqa: E402,F401 - fixture

_GCP_FIXTURES = (gce,)


def test_gcp_two_homes_keep_their_own_dev(gce, tmp_path, monkeypatch):
    task = spec.task_from_dict({"name": "t", "resources": {"infra": "gcp/us-central1/us-central1-a",
                                                           "instance_type": "n1-standard-4"}, "run": "true"},
                               source="t.yaml")
    creds = tmp_path / "sa.json"  # `broker check` wants a credentials file; the fake takes anonymous calls
    creds.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    _two_homes(tmp_path, monkeypatch, task, "gcp", regions=[None, "us-central1"])
    assert gce.instances() == []


# -- Kubernetes (the API fake) ----------------------------------------------------------------------
pytest.importorskip("kubernetes")
from tests.integration.test_kubernetes import fake  # noqa: E402,F401 - fixture

_K8S_FIXTURES = (fake,)


def test_kubernetes_two_homes_keep_their_own_dev(fake, tmp_path, monkeypatch):
    task = spec.task_from_dict({"name": "t", "resources": {"infra": "k8s", "cpus": 2, "memory": 4}, "run": "true"},
                               source="t.yaml")
    _two_homes(tmp_path, monkeypatch, task, "kubernetes")
    assert fake.pods() == []


# -- a cluster recorded before names on the cloud had a suffix (schema v18) --------------------------
def test_a_legacy_cluster_keeps_its_unsuffixed_name_and_is_downed_by_it(aws, tmp_path, monkeypatch):
    """A home made at schema v18 with cluster `old` (its instances tagged `old`, no home tag): after the migration
    its record keeps `old` as its name on the cloud, `down old` terminates those instances, and the home, having
    launched before, still removes untagged leftovers in gc."""
    import boto3

    from tests.infra.old_state import state_db_at

    home = tmp_path / "legacy"
    conn = state_db_at(home, 18)
    ec2 = boto3.client("ec2", region_name="us-east-1")

    def run(cluster):
        r = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "skybroker-cluster", "Value": cluster}]}])
        return r["Instances"][0]

    inst = run("old")
    leftover = run("gone")["InstanceId"]  # a legacy orphan: no record
    nodes = f'[{{"instance_id": "{inst["InstanceId"]}", "rank": 0, "ip": "10.0.0.1"}}]'
    conn.execute("INSERT INTO clusters (name, cloud, region, zone, num_nodes, status, launched_at, updated_at, nodes)"
                 " VALUES ('old', 'aws', 'us-east-1', NULL, 1, 'UP', ?, ?, ?)", (time.time(), time.time(), nodes))
    conn.execute("INSERT INTO events (cluster, ts, kind, message) VALUES ('old', ?, 'up', 'up')", (time.time(),))
    conn.commit()
    conn.close()
    _use(monkeypatch, home)
    rec = state.get_cluster("old")
    assert rec.name_on_cloud == "old" and rec.cloud_name == "old" and state.legacy_names()
    assert state.cloud_name_for("new") == f"new-{state.home_suffix()}"  # new clusters get the suffix
    scan = gc.scan(clouds=("aws",), regions={"aws": ["us-east-1"]})
    assert [(o.cluster, o.instance_ids) for o in scan.orphans] == [("gone", (leftover,))]  # `old` is known
    api.down(["old"])

    def live(iid):
        [i] = [i for r in ec2.describe_instances(InstanceIds=[iid])["Reservations"] for i in r["Instances"]]
        return i["State"]["Name"] not in ("shutting-down", "terminated")

    assert not live(inst["InstanceId"]) and live(leftover)
    gc.remove(scan.orphans)
    assert not live(leftover)


def test_a_new_home_leaves_untagged_resources_alone(aws, tmp_path, monkeypatch):
    import boto3

    _use(monkeypatch, tmp_path / "new")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    iid = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": "skybroker-cluster", "Value": "someone"}]}])["Instances"][0][
        "InstanceId"]
    assert not state.legacy_names()
    scan = gc.scan(clouds=("aws",), regions={"aws": ["us-east-1"]})
    assert scan.orphans == [] and scan.untagged == {"aws": 1}
    [i] = [i for r in ec2.describe_instances(InstanceIds=[iid])["Reservations"] for i in r["Instances"]]
    assert i["State"]["Name"] == "running"


def test_long_names_stay_unique_and_within_the_cloud_limit(tmp_path, monkeypatch):
    from skybroker.locks import validate_name

    _use(monkeypatch, tmp_path / "h")
    a, b = "a" * 39 + "x", "a" * 39 + "y"
    na, nb = state.cloud_name_for(a), state.cloud_name_for(b)
    assert na != nb and len(na) == len(nb) == 40 and na.endswith("-" + state.home_suffix())
    assert validate_name(na) and validate_name(nb) and validate_name(state.cloud_name_for("x"))
    assert gc.display_name(state.cloud_name_for("dev")) == "dev"


# -- an SSH node pool shared by two homes (real sshd nodes) ------------------------------------------
def test_ssh_pool_hosts_are_claimed_per_home(node_pool, node_key, tmp_path, monkeypatch):
    """Two homes declare the same pool of two hosts: each `dev` gets a host of its own (claimed on the host),
    a third cluster finds no free host (both are claimed, by the other home too), B's `down dev` leaves A's
    host, its agent and its claim alone, and A's `status --refresh` still shows its dev UP."""
    key, pub = node_key
    nodes = node_pool.start(2, pub)
    try:
        homes = {h: tmp_path / f"home-{h}" for h in "ab"}
        for home in homes.values():
            home.mkdir()
            hosts = "\n".join(f"    - {n.ip}" for n in nodes)
            (home / "ssh_node_pools.yaml").write_text(f"lab:\n  user: {nodes[0].user}\n  identity_file: {key}\n"
                                                      f"  hosts:\n{hosts}\n")
        task = spec.task_from_dict({"name": "t", "resources": {"infra": "ssh/lab"}, "run": "echo hi"},
                                   source="t.yaml")

        def launch(cluster):
            return api.launch(task, cluster=cluster, plan=api.plan(task), on_line=lambda r, line: None)

        _use(monkeypatch, homes["a"])
        assert launch("dev").status.exit_code == 0
        ip_a = state.get_cluster("dev").head.ip
        _use(monkeypatch, homes["b"])
        assert launch("dev").status.exit_code == 0
        ip_b = state.get_cluster("dev").head.ip
        assert ip_a != ip_b  # B's dev did not take A's host
        with pytest.raises(Exception) as ei:
            launch("other")
        assert "claimed by another broker home" in str(ei.value)
        by_ip = {n.ip: n for n in nodes}
        claim_a = (by_ip[ip_a].home / ".skybroker-claim").read_text()
        api.down(["dev"])
        assert not (by_ip[ip_b].home / ".skybroker-claim").exists()  # B's claim went with B's cluster
        assert (by_ip[ip_a].home / ".skybroker-claim").read_text() == claim_a  # A's stays, and its agent
        assert (by_ip[ip_a].home / ".skybroker-node").exists()
        _use(monkeypatch, homes["a"])
        [got] = api.status(refresh=True)
        assert (got.name, got.status) == ("dev", "UP")
        api.down(["dev"])
        assert not (by_ip[ip_a].home / ".skybroker-claim").exists()
    finally:
        for n in nodes:
            if n.alive:
                node_pool.kill(n)


# -- applied volumes: a volume name another home applied on the same account -------------------------------
def _apply_in_two_homes(tmp_path, monkeypatch, spec_, find):
    """A applies the volume; B applying the same name is refused naming A's home tag (before, create_volume's
    look-up by name handed B A's volume: B recorded it, its launches attached it, its `volumes delete` deleted
    A's data), records nothing, and A's volume stays; an interrupted apply of B does not delete it either."""
    from skybroker.errors import InvalidRequestError
    from skybroker.volumes import ops, records

    _use(monkeypatch, tmp_path / "home-a")
    va = ops.apply(dict(spec_), "vol.yaml")
    home_a = state.home_id()
    _use(monkeypatch, tmp_path / "home-b")
    with pytest.raises(InvalidRequestError) as ei:
        ops.apply(dict(spec_), "vol.yaml")
    assert home_a in ei.value.message and "another broker home" in ei.value.message and ei.value.exit_code == 2
    assert records.get(spec_["name"]) is None
    events = []
    ops._undo_create(ops.provider_of(va.type), ops.volume_spec(dict(spec_), "vol.yaml", ops.default_type),
                     lambda k, m: events.append(m))
    assert find(va) and any("may be left" in e for e in events)
    _use(monkeypatch, tmp_path / "home-a")
    assert records.get(spec_["name"]).cloud_id == va.cloud_id
    assert ops.apply(dict(spec_), "vol.yaml").cloud_id == va.cloud_id  # A's own re-apply: a no-op
    ops.delete(spec_["name"])
    assert not find(va)


def test_aws_a_volume_of_another_home_is_refused(aws, tmp_path, monkeypatch):
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")

    def find(v):
        return [x for x in ec2.describe_volumes(Filters=[{"Name": "tag:skybroker-volume", "Values": [v.name]}])[
            "Volumes"] if x["State"] not in ("deleting", "deleted")]

    _apply_in_two_homes(tmp_path, monkeypatch, {"name": "shared", "type": "aws-ebs",
                                                 "infra": "aws/us-east-1/us-east-1a", "size": 1}, find)


def test_gcp_a_disk_of_another_home_is_refused(gce, tmp_path, monkeypatch):
    _apply_in_two_homes(tmp_path, monkeypatch, {"name": "shared", "type": "gcp-pd",
                                                 "infra": "gcp/us-central1/us-central1-a", "size": 10},
                        lambda v: [d for d in gce.disks() if d["name"] == v.name])


def test_a_legacy_degraded_cluster_relaunched_keeps_its_name_on_the_cloud(tmp_path, monkeypatch):
    """`launch -c old` of a v18 cluster that `status --refresh` found DEGRADED provisions it again (the record
    stays): its nodes must be made under the record's name on the cloud, `old`. Before, they were made as
    `old-<suffix>` while the record kept `old`: `down`/`status --refresh` asked the cloud for `old` (the new nodes
    unseen) and `gc` took the running cluster's new nodes for this home's orphans."""
    from tests.infra.old_state import state_db_at

    home = tmp_path / "legacy"
    conn = state_db_at(home, 18)
    conn.execute("INSERT INTO clusters (name, cloud, region, zone, num_nodes, status, launched_at, updated_at, nodes)"
                 " VALUES ('old', 'local', NULL, NULL, 1, 'DEGRADED', ?, ?, '[]')", (time.time(), time.time()))
    conn.commit()
    conn.close()
    _use(monkeypatch, home)
    task = spec.task_from_dict({"name": "t", "resources": {"infra": "local"}, "run": "true"}, source="t.yaml")
    b = lifecycle.BringUp(task=task, cluster="old", plan_fn=lambda blocks: api.plan(task, blocks, clouds=("local",)))
    rec, _, _ = lifecycle._provision(b)
    assert rec.cloud_name == state.get_cluster("old").cloud_name == "old"
    local = registry.get("local")
    assert {n.instance_id for n in rec.nodes} == {i.instance_id for i in local.query("old")} != set()
    assert local.query(state.cloud_name_for("old")) == []
    lifecycle._mark_up(rec, None)
    assert [o.cluster for o in gc.scan(clouds=("local",)).orphans] == []
    api.down(["old"])
    assert local.query("old") == []


def test_aws_task_labels_never_replace_the_cluster_and_home_tags(aws, tmp_path, monkeypatch):
    """A task's labels become tags, after which a label `skybroker-home` (or `skybroker-cluster`) replaced the
    broker's own: the instance then looked like another home's (gc never removed it) or was not found by its
    cluster. Labels may set other tags, and the Name."""
    import boto3

    _use(monkeypatch, tmp_path / "h")
    monkeypatch.setenv("BROKER_AWS_WAIT", "15")  # before the fix the launch waited for instances it never found
    task = spec.task_from_dict({"name": "t", "resources": {
        "infra": "aws/us-east-1", "instance_type": "t3.micro", "image_id": AMI,
        "labels": {"skybroker-home": "f" * 32, "skybroker-cluster": "other", "team": "ml", "Name": "mine"}},
        "run": "true"}, source="t.yaml")
    rec = _launch_dev(task, ("aws",))
    ec2 = boto3.client("ec2", region_name="us-east-1")
    [inst] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert (tags["skybroker-home"], tags["skybroker-cluster"]) == (state.home_id(), rec.cloud_name)
    assert (tags["team"], tags["Name"]) == ("ml", "mine")
    assert _live(rec) == {inst["InstanceId"]}
    api.down(["dev"])
    assert _live(rec) == set()
