"""Deadline-aware managed jobs on the local cloud (whose spot is simulated: spot nodes can be preempted,
and a switch file takes spot capacity away). The controller asks the same policy objects the simulator
measures, every tick, whether to run on spot, on on-demand or to wait — and the job meets its deadline."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, broker_cmd
from tests.integration.local_helpers import cloud_name

COUNT = """
ck="$BROKER_CHECKPOINT_DIR/n"
i=$(cat "$ck" 2>/dev/null || echo 0)
while [ "$i" -lt 25 ]; do i=$((i+1)); echo "step $i"; echo "$i" > "$ck.tmp" && mv "$ck.tmp" "$ck"; sleep 0.2; done
echo "final $i"
"""


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, BROKER_JOBS_POLL="0.3", BROKER_CHECKPOINT_INTERVAL="0.3", BROKER_CONTROLLER_EXIT_GRACE="1")
    yield e
    pid_file = Path(e["BROKER_HOME"]) / "managed" / "controller.pid"
    subprocess.run(broker_cmd() + ["jobs", "cancel", "--all", "-y"], env=e, capture_output=True, timeout=60)
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 9)
        except (OSError, ValueError):
            pass


def submit(tmp_path, env, policy: str, by: str = "45s") -> int:
    task = tmp_path / "dl.yaml"
    task.write_text(f"name: dl\nresources: {{infra: local, use_spot: true}}\n"
                    f"deadline: {{by: {by}, compute: 5s, policy: {policy}, overhead: 2s, tick: 1s}}\n"
                    f"run: |\n" + "".join(f"  {line}\n" for line in COUNT.strip().splitlines()))
    r = subprocess.run(broker_cmd() + ["jobs", "launch", "-y", "-d", str(task)], env=env, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.split("managed job ")[1].split()[0])


def job(env, jid) -> dict:
    r = subprocess.run(broker_cmd() + ["jobs", "queue", "--json"], env=env, capture_output=True, text=True, timeout=60)
    return next(j for j in json.loads(r.stdout) if j["id"] == jid)


def events(env, jid) -> list[str]:
    from skybroker.jobs import store

    os.environ["BROKER_HOME"] = env["BROKER_HOME"]
    return [f"{e['kind']}: {e['message']}" for e in store.events(jid)]


def status(env, jid) -> str | None:
    """The job's status read from the state in this process: a poll costs no CLI process (a `jobs queue`
    per poll kept about a third of a core busy for the whole wait)."""
    from skybroker.jobs import store

    os.environ["BROKER_HOME"] = env["BROKER_HOME"]
    j = store.get(jid)
    return j.status if j else None


def wait_done(env, jid, timeout=90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if status(env, jid) in ("SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", "CANCELLED", "FAILED_CONTROLLER"):
            return job(env, jid)  # what the user sees: `jobs queue --json`
        time.sleep(0.2)
    raise AssertionError(f"job {jid} did not finish: {job(env, jid)}\n" + "\n".join(events(env, jid)))


def test_spot_available_runs_on_spot_and_meets_deadline(tmp_path, env):
    # slack_aware: mdp's availability model is fitted on real traces (runs of minutes to hours), so on a
    # 5-second job it may rightly prefer on-demand; its deadline safety is tested below
    jid = submit(tmp_path, env, "slack_aware")
    j = wait_done(env, jid)
    assert j["status"] == "SUCCEEDED", events(env, jid)
    assert j["ended_at"] - j["submitted_at"] <= 45
    ev = events(env, jid)
    assert any("running on spot" in e for e in ev) and not any("on-demand" in e for e in ev)


@pytest.mark.parametrize("policy", ["uniform_progress", "slack_aware", "mdp"])
def test_no_spot_capacity_falls_back_to_on_demand_in_time(tmp_path, env, policy):
    home = Path(env["BROKER_HOME"])
    (home / "local").mkdir(parents=True, exist_ok=True)
    (home / "local" / "NO_SPOT_CAPACITY").write_text("")
    # by 20 s: a policy may wait for spot until its slack runs out before on-demand (slack_aware sometimes
    # did, then the test took by - 2 s); the deadline check keeps the same margin at any `by`
    jid = submit(tmp_path, env, policy, by="20s")
    j = wait_done(env, jid)
    ev = events(env, jid)
    assert j["status"] == "SUCCEEDED", ev
    assert j["ended_at"] - j["submitted_at"] <= 20, ev  # the deadline was met
    if policy != "mdp":  # mdp may go to on-demand at once on a 5-second job (see above): no spot tried
        assert any("no spot capacity" in e for e in ev)
    assert any("running on on-demand" in e for e in ev)


def test_preempted_spot_then_no_capacity_switches_to_on_demand(tmp_path, env):
    from skybroker.clouds.local import LocalCloud

    from skybroker.jobs import checkpoint

    # by 28 s: after the loss, slack_aware waits for spot while its slack lasts (about by - 5 s here), then
    # goes on-demand in time; a longer deadline only makes that wait longer
    jid = submit(tmp_path, env, "slack_aware", by="28s")
    home = Path(env["BROKER_HOME"])

    def checkpointed() -> bool:  # a complete snapshot with progress in it reached the controller's side
        snap = checkpoint.current(home / "managed" / str(jid))
        try:
            return status(env, jid) == "RUNNING" and snap is not None and int((snap / "n").read_text()) >= 1
        except (OSError, ValueError):
            return False

    deadline = time.time() + 60
    while time.time() < deadline and not checkpointed():  # (a fixed wait could preempt before the first copy)
        time.sleep(0.1)
    assert checkpointed(), events(env, jid)
    (home / "local" / "NO_SPOT_CAPACITY").write_text("")  # spot is gone for good
    os.environ["BROKER_HOME"] = env["BROKER_HOME"]
    LocalCloud().preempt(cloud_name(f"job-{jid}"), 0)
    j = wait_done(env, jid)
    ev = events(env, jid)
    assert j["status"] == "SUCCEEDED", ev
    assert j["ended_at"] - j["submitted_at"] <= 28, ev
    assert j["recoveries"] >= 1
    assert any("running on on-demand" in e for e in ev), ev
    log = subprocess.run(broker_cmd() + ["jobs", "logs", str(jid)], env=env, capture_output=True, text=True).stdout
    assert "final 25" in log and "step 1\n" in log
    assert log.count("step 1\n") == 1  # resumed from the checkpoint, not from zero


def test_spot_job_whose_cloud_refuses_the_credentials_ends_no_resource_at_once(tmp_path, env):
    """Every EC2 call refuses the credentials (moto server): the deadline policy does not take that for a
    lack of spot capacity and try again (on another market, or later, up to the deadline): the job ends
    FAILED_NO_RESOURCE after one provisioning, its reason saying why and the cloud's hint."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    from tests.infra import moto_server

    srv = moto_server.shared()
    srv.reset()
    try:
        for action in ("DescribeInstances", "DescribeAvailabilityZones", "DescribeKeyPairs", "ImportKeyPair",
                       "DescribeSecurityGroups", "CreateSecurityGroup", "DescribeSubnets", "RunInstances",
                       "TerminateInstances", "DeleteSecurityGroup", "DescribeVolumes"):
            srv.fault(action, code="AuthFailure", status=401, message="AWS was not able to validate the credentials")
        e = {**env, **srv.env(), "AWS_EC2_METADATA_DISABLED": "true"}
        task = tmp_path / "cr.yaml"
        task.write_text("name: cr\nresources: {cloud: aws, region: us-east-1, instance_type: t3.micro, "
                        "image_id: ami-12345678, use_spot: true}\n"
                        "deadline: {by: 10m, compute: 5s, policy: uniform_progress, overhead: 2s, tick: 1s}\n"
                        "run: echo hi\n")
        r = subprocess.run(broker_cmd() + ["jobs", "launch", "-y", "-d", str(task)], env=e, capture_output=True,
                           text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        jid = int(r.stderr.split("managed job ")[1].split()[0])
        j = wait_done(e, jid, timeout=60)
        ev = events(e, jid)
        assert j["status"] == "FAILED_NO_RESOURCE", ev
        assert "refused our credentials" in j["failure"] and "IAM permissions" in j["failure"], j
        assert sum(x.startswith("provision:") for x in ev) == 1, ev
        assert not any("no spot capacity" in x for x in ev), ev
    finally:
        srv.reset()
