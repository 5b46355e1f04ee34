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
    from tests.integration.local_helpers import cloud_name

    sg_name = [{"Name": "group-name", "Values": [f"skybroker-{cloud_name('awse2e')}"]}]  # its name on the cloud
    assert ec2.describe_security_groups(Filters=sg_name)["SecurityGroups"]
    api.down(["awse2e"])
    live = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert live == []
    assert ec2_with_nodes == {} and ubuntu_pool.nodes == []
    sgs = ec2.describe_security_groups(Filters=sg_name)
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


def _aws_task(name):
    from skybroker import spec

    return spec.task_from_dict({"name": name, "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large",
                                                            "image_id": "ami-12345678"}, "run": "echo ran"})


def _live_instances():
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]


def test_wrong_ssh_user_is_an_authentication_error_after_the_grace_and_tears_down(ec2_with_nodes, ubuntu_pool,
                                                                                   monkeypatch):
    """config `ssh_user: {aws: ec2-user}` on an image whose user is ubuntu: the VM answers SSH and refuses
    the key. After BROKER_SSH_AUTH_GRACE of refusals in a row the launch fails saying so (user, host,
    key), exit 2 — not "unreachable" after the whole BROKER_WAIT_READY — and the instance is terminated."""
    import time

    from skybroker import api, paths, state
    from skybroker.lifecycle import BringUpError

    (paths.broker_home() / "config.yaml").write_text("ssh_user: {aws: ec2-user}\n")
    monkeypatch.setenv("BROKER_WAIT_READY", "60")
    monkeypatch.setenv("BROKER_SSH_AUTH_GRACE", "3")
    task = _aws_task("aws-user")
    t0 = time.monotonic()
    with pytest.raises(BringUpError) as ei:
        api.launch(task, cluster="awsuser", plan=api.plan(task, clouds=("aws",)))
    took = time.monotonic() - t0
    err = ei.value
    key = paths.broker_home() / "keys" / "id_ed25519"
    assert "SSH authentication failed for ec2-user@" in err.message and f"with {key}: check ssh_user" in err.message
    assert "unreachable" not in err.message and err.exit_code == 2
    assert 3 <= took < 40, took  # the grace, then at once
    assert err.torn_down and _live_instances() == [] and ec2_with_nodes == {}
    assert state.get_cluster("awsuser") is None


def test_a_fresh_vm_refusing_the_key_for_a_few_seconds_is_waited_for(ec2_with_nodes, ubuntu_pool, monkeypatch):
    """A VM that refuses our key until cloud-init installs it (here: for ~4 s) is not an authentication
    error within BROKER_SSH_AUTH_GRACE: the launch waits and runs."""
    import threading

    from skybroker import api

    monkeypatch.setenv("BROKER_SSH_AUTH_GRACE", "30")
    real_add = ubuntu_pool.add_node
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnC8v3mv6n4uC1Mq2Ykgq2y4ZbH3j1uQ0Qm1xQe0p2K not-ours"

    def add_node(pubkey, **kw):
        node = real_add(other, **kw)  # boots refusing our key; "cloud-init" installs it a little later
        auth = node.home / ".ssh" / "authorized_keys"
        threading.Timer(4.0, lambda: auth.write_text(pubkey.strip() + "\n")).start()
        return node

    monkeypatch.setattr(ubuntu_pool, "add_node", add_node)
    task = _aws_task("aws-late")
    lines = []
    res = api.launch(task, cluster="awslate", plan=api.plan(task, clouds=("aws",)),
                     on_line=lambda r, l: lines.append(l))
    assert res.status.status == "SUCCEEDED" and "ran" in lines
    api.down(["awslate"])
    assert _live_instances() == []


def test_an_unusable_broker_key_is_exit_2_before_an_instance_is_created(ec2_with_nodes, ubuntu_pool, monkeypatch):
    """The broker's own SSH key (BROKER_HOME/keys) that cannot be loaded is refused when the place is
    chosen, before RunInstances (it used to create the VM and wait the whole BROKER_WAIT_READY)."""
    from skybroker import api, paths, state
    from skybroker.errors import BrokerError

    key = paths.broker_home() / "keys" / "id_ed25519"
    key.write_text("damaged\n")  # its .pub stays: the launch would otherwise go ahead
    monkeypatch.setenv("BROKER_WAIT_READY", "30")
    task = _aws_task("aws-key")
    with pytest.raises(BrokerError) as ei:
        api.launch(task, cluster="awskey", plan=api.plan(task, clouds=("aws",)))
    assert ei.value.exit_code == 2
    assert f"the broker's SSH key {key} is not an SSH private key" in ei.value.message
    assert _live_instances() == [] and ec2_with_nodes == {} and state.get_cluster("awskey") is None
