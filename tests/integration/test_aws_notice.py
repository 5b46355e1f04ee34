"""The preemption notice on real SSH nodes: a managed spot job on "EC2" (moto, through the real boto3 driver)
whose instances are OpenSSH nodes in network namespaces (tests/integration/test_aws_autostop.py's
fixture). The node agent on the spot node polls the instance metadata server (tests/infra/metadata_fake.py,
listening on the pool's gateway, i.e. this machine as the nodes see it, and answering IMDSv2 for the one
instance the test names), so what crosses the wire is what would on EC2: the agent's IMDSv2 token PUT and
spot/instance-action GETs from the node, SIGTERM to the job's process on the node, the checkpoint copied
back by rsync over SSH, a replacement RunInstances.

The promise (README "Managed jobs"): on the notice the job gets SIGTERM and writes its checkpoint, the
broker copies that checkpoint while the node still answers and starts the replacement at once — before
the cloud takes the instance — and the job resumes from the checkpoint written in its SIGTERM handler.
The controller runs in this process (as inside `broker server`), so it shares moto with the test.
Root only (network namespaces)."""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from tests.integration.local_helpers import wait_for
from tests.integration.test_aws_autostop import ec2_nodes, mocked_aws  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")

RUN = ('f="$BROKER_CHECKPOINT_DIR/step"; i=$(cat "$f" 2>/dev/null || echo 0); '
       'echo "resume $i" >> "$LEDGER"; '
       'trap \'echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"; echo "term at $i" >> "$LEDGER"; exit 143\' TERM; '
       'while [ "$i" -lt 80 ]; do i=$((i+1)); sleep 0.1; done; echo "done $i" >> "$LEDGER"')


@pytest.fixture
def shared_dir():
    """A directory both this process and the nodes' login user can write (the nodes shadow /tmp and
    their home, not /var/tmp): the job's ledger, the ground truth of what ran where."""
    d = Path(tempfile.mkdtemp(prefix="skybroker-notice-", dir="/var/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_notice_on_an_ec2_spot_node_checkpoints_and_relaunches_before_the_loss(ec2_nodes, shared_dir,  # noqa: F811
                                                                              monkeypatch):
    from skybroker import spec
    from skybroker.jobs import controller as ctl
    from skybroker.jobs import ops, store
    from tests.infra.metadata_fake import Metadata

    nodes, hv = ec2_nodes
    md = Metadata(host=hv.pool.gateway)
    for k, v in {"BROKER_NOTICE_ENDPOINT": md.base, "BROKER_NOTICE_EVERY": "0.2", "BROKER_JOBS_POLL": "0.3",
                 "BROKER_CHECKPOINT_INTERVAL": "0.5"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(ops, "IN_PROCESS", True)  # the controller below, not a process of its own
    led = shared_dir / "ledger"
    task = spec.task_from_dict({
        "name": "notice-ec2", "envs": {"LEDGER": str(led)}, "run": RUN,
        "resources": {"infra": "aws/us-east-1", "instance_type": "m5.large", "image_id": "ami-12345678",
                      "use_spot": True, "job_recovery": "FAILOVER"}})
    stop = threading.Event()
    controller = threading.Thread(target=ctl.Controller(workers=2).run, kwargs={"keep_going": lambda: not stop.is_set()},
                                  daemon=True)
    lines = lambda: led.read_text().splitlines() if led.exists() else []  # noqa: E731
    events = lambda: store.events(jid)  # noqa: E731
    diag = lambda: "\n".join(f"{e['kind']}: {e['message']}" for e in events()) + "\n" + "\n".join(lines())  # noqa: E731
    try:
        jid = ops.launch(task).id
        controller.start()
        wait_for(lambda: any(x.startswith("resume") for x in lines()), 60, 0.05, "the job to start")
        first = next(iter(nodes))  # the one spot instance so far
        first_node = nodes[first]
        wait_for(lambda: len(lines()) == 1 and store.get(jid).status == "RUNNING", 10, 0.05, "RUNNING")
        # EC2 announces the reclaim of this instance only (its own metadata server answers its own address)
        md.noticed_for = lambda ip: first in nodes and ip == first_node.ip
        wait_for(lambda: any(e["kind"] == "notice" for e in events()), 20, 0.05, "the notice\n" + diag())
        wait_for(lambda: store.get(jid).recoveries >= 1, 30, 0.05, "the relaunch\n" + diag())
        wait_for(lambda: store.get(jid).status in ("SUCCEEDED", "FAILED", "CANCELLED", "FAILED_CONTROLLER"),
                 90, 0.1, "the job to end\n" + diag())
    finally:
        stop.set()
        controller.join(30)
        md.close()
    j = store.get(jid)
    assert j.status == "SUCCEEDED", diag()
    got = lines()
    term = [int(x.split()[2]) for x in got if x.startswith("term at")]
    resumes = [x.split() for x in got if x.startswith("resume")]
    assert len(term) == 1 and term[0] > 0, got  # SIGTERM reached the process on the node, once
    assert [int(r[1]) for r in resumes] == [0, term[0]], got  # resumed where its SIGTERM handler stopped
    assert got[-1] == "done 80", got
    assert not hv.fired, hv.fired  # no instance powered itself off: the broker acted on the notice alone
    kinds = [e["kind"] for e in events()]
    assert kinds.index("notice") < kinds.index("recovery"), kinds
    rec = [e for e in events() if e["kind"] == "recovery"]
    assert "notice" in rec[0]["message"], diag()
    assert first not in nodes  # the noticed instance was terminated by the broker (its replacement ran the job)
