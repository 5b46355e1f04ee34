"""AWS end to end: EC2 (moto, through the real boto3 driver) whose instances are real OpenSSH nodes in
network namespaces — RunInstances boots one node per instance (the imported key pair authorised) and
gives the instance that node's IP; TerminateInstances powers the node off. So launch → sync → run →
logs → down runs exactly as on EC2, and afterwards zero instances and zero nodes remain. Root only."""
from __future__ import annotations

import threading

import pytest

moto = pytest.importorskip("moto")

ACCOUNT = "123456789012"


@pytest.fixture
def ubuntu_pool():
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    pool = NodePool(user="ubuntu")  # the login user of the AWS driver's Ubuntu images
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def ec2_with_nodes(monkeypatch, ubuntu_pool):
    from moto.ec2.models import ec2_backends

    from skybroker import state
    from skybroker.clouds import registry
    from skybroker.clouds.aws import client as c
    from skybroker.runtime.keys import ensure_user_key

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "BROKER_AWS_POLL": "0.05"}.items():
        monkeypatch.setenv(k, v)
    _, pubkey = ensure_user_key(state.db_path().parent)
    mock = moto.mock_aws()
    mock.start()
    c.reset()
    registry._instances.clear()
    nodes: dict[str, object] = {}
    lock = threading.Lock()

    def on_run(parsed, **kw):
        for inst in parsed.get("Instances", []):
            node = ubuntu_pool.add_node(pubkey)
            with lock:
                nodes[inst["InstanceId"]] = node
            for be in ec2_backends[ACCOUNT].values():
                try:
                    moto_inst = be.get_instance(inst["InstanceId"])
                except Exception:  # noqa: BLE001 - not in this region
                    continue
                moto_inst.nics[0].public_ip = node.ip
                break

    def on_terminate(parsed, **kw):
        for change in parsed.get("TerminatingInstances", []):
            with lock:
                node = nodes.pop(change["InstanceId"], None)
            if node is not None and node.alive:
                ubuntu_pool.kill(node)

    session = c._session()
    session.events.register("after-call.ec2.RunInstances", on_run)
    session.events.register("after-call.ec2.TerminateInstances", on_terminate)
    try:
        yield nodes
    finally:
        mock.stop()
        c.reset()
        registry._instances.clear()


def test_launch_sync_run_logs_down_on_aws(ec2_with_nodes, ubuntu_pool, tmp_path):
    import boto3

    from skybroker import api, spec

    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "hello.txt").write_text("from the workdir")
    (wd / ".gitignore").write_text("*.log\n")
    (wd / "noise.log").write_text("ignored")
    task = spec.task_from_dict({
        "name": "aws-e2e", "num_nodes": 2, "workdir": str(wd),
        "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large", "image_id": "ami-12345678",
                      "ports": [8080]},
        "setup": "echo setup on $SKYPILOT_NODE_RANK",
        "run": 'echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES: $(cat hello.txt) $(ls noise.log 2>&1 | wc -l)"',
    })
    lines = []
    plan = api.plan(task, clouds=("aws",))
    res = api.launch(task, cluster="awse2e", plan=plan, on_line=lambda r, l: lines.append((r, l)))
    assert res.status.status == "SUCCEEDED" and res.status.exit_code == 0
    assert (0, "rank 0 of 2: from the workdir 1") in lines and (1, "rank 1 of 2: from the workdir 1") in lines
    assert (0, "setup on 0") in lines
    ec2 = boto3.client("ec2", region_name="us-east-1")
    live = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] == "running"]
    assert len(live) == 2 and {i["PublicIpAddress"] for i in live} <= {n.ip for n in ubuntu_pool.nodes}
    # logs and exec on the running "EC2" cluster
    got = []
    st = api.logs("awse2e", res.job_id, follow=False, on_line=lambda r, l: got.append(l))
    assert st.status == "SUCCEEDED" and any("rank 1 of 2" in l for l in got)
    r2 = api.exec_("awse2e", api.exec_task(["exit 4"]))
    assert r2.status.exit_code == 4
    api.down(["awse2e"])
    live = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert live == []
    assert ec2_with_nodes == {} and ubuntu_pool.nodes == []
    sgs = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["skybroker-awse2e"]}])
    assert sgs["SecurityGroups"] == []


@pytest.mark.slow
@pytest.mark.parametrize("source", ["files", "env"])
def test_local_credentials_copied_onto_real_aws_nodes(ec2_with_nodes, ubuntu_pool, monkeypatch, source):
    """config.aws.remote_identity: LOCAL_CREDENTIALS on 2 "EC2" instances: ~/.aws/credentials and config
    (or, with no files, the AWS_* variables written as a credentials file) land on every node byte for
    byte, mode 0600; the CLI's caches do not; the secret shows nowhere else."""
    import hashlib
    import os
    from pathlib import Path

    from skybroker import api, paths, spec
    from skybroker.clouds import credfiles
    from tests.integration.identity_helpers import SECRET, assert_no_leak, files_holding, report_command

    aws = Path(os.environ["HOME"]) / ".aws"
    for rel in ("cli/cache/role.json", "sso/cache/token.json"):  # never copied
        (aws / rel).parent.mkdir(parents=True, exist_ok=True)
        (aws / rel).write_text(f'{{"SecretAccessKey": "{SECRET}"}}\n')
    if source == "files":
        (aws / "credentials").write_text(f"[default]\naws_access_key_id = AKIAEXAMPLE\n"
                                         f"aws_secret_access_key = {SECRET}\n")
        (aws / "config").write_text("[default]\nregion = us-east-1\n")
        os.chmod(aws / "credentials", 0o644)
        present = [".aws/credentials", ".aws/config"]
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"env-{SECRET}")  # moto takes any key
        present = [".aws/credentials"]
    want_files = dict(credfiles.aws())
    assert sorted(want_files) == sorted(f"~/{p}" for p in present)
    assert SECRET.encode() in want_files["~/.aws/credentials"]
    absent = [".aws/cli", ".aws/sso"] + ([".aws/config"] if source == "env" else [])
    task = spec.task_from_dict({
        "name": "aws-idn", "num_nodes": 2, "config": {"aws": {"remote_identity": "LOCAL_CREDENTIALS"}},
        "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large", "image_id": "ami-12345678"},
        "run": report_command(present, absent, [".aws"])})
    lines, events = [], []
    res = api.launch(task, cluster="awsidn", plan=api.plan(task, clouds=("aws",)),
                     on_line=lambda r, l: lines.append((r, l)), on_event=lambda k, m: events.append((k, m)))
    assert res.status.status == "SUCCEEDED", lines
    want = [f"{p} 600 {hashlib.sha256(want_files['~/' + p]).hexdigest()}" for p in present]
    want += [".aws dir 700"] + [f"{p} absent" for p in absent]
    for rank in (0, 1):
        assert [l for r, l in lines if r == rank] == want
    assert ("sync", f"copying {len(present)} aws credential file(s) onto every node "
                    "(config.aws.remote_identity: LOCAL_CREDENTIALS)") in events
    assert len(ec2_with_nodes) == 2
    assert files_holding(aws, SECRET)  # the scan sees the secret where it is
    assert_no_leak(lines, events + api.events("awsidn", limit=500), paths.broker_home())
    api.down(["awsidn"])
    assert ec2_with_nodes == {} and ubuntu_pool.nodes == []
    assert_no_leak([], api.events("awsidn", limit=500), paths.broker_home())
