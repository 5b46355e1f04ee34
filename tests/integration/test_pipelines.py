"""Managed pipelines end to end on the `local` cloud: a multi-document task file through the real
`broker jobs launch` CLI, the real controller and node agents. Stages run in order, each on its own
cluster torn down after it; stage 2 reads what stage 1 left in $BROKER_CHECKPOINT_DIR; a failing stage 1
means stage 2 never starts; a cancel during stage 1 cancels the pipeline. Jobs append to a ledger file on
the host (the local nodes are this machine): the ground truth of what ran."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.integration.local_helpers import broker, broker_home, kill_leftovers, kill_pids, status_json, wait_for, cluster_dir, cloud_name

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")


@pytest.fixture(autouse=True)
def fast_controller(monkeypatch):
    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "1")
    yield
    try:
        kill_pids([int((broker_home() / "managed" / "controller.pid").read_text())])
    except (OSError, ValueError):
        pass
    kill_leftovers(broker_home())


def pipeline(tmp_path, *stages: str, name="pipe"):
    docs = [f"name: {name}"] + list(stages)
    p = tmp_path / "pipe.yaml"
    p.write_text("\n---\n".join(docs) + "\n")
    return p


def queue_row(jid: int) -> dict:
    r = broker("jobs", "queue", "--json")
    assert r.returncode == 0, r.stderr
    return next(j for j in json.loads(r.stdout) if j["id"] == jid)


def submitted(r) -> int:
    m = re.search(r"managed job (\d+) submitted", r.stderr)
    assert m, r.stderr
    return int(m.group(1))


def test_two_stages_in_order_each_on_its_own_cluster_passing_the_checkpoint_dir(tmp_path):
    led = tmp_path / "ledger"
    home = broker_home()
    p = pipeline(tmp_path, f"""name: produce
resources: {{infra: local}}
run: |
  echo "stage1 $SKYPILOT_TASK_ID" >> {led}
  echo made-by-stage-1 > "$BROKER_CHECKPOINT_DIR/out.tmp" && mv "$BROKER_CHECKPOINT_DIR/out.tmp" "$BROKER_CHECKPOINT_DIR/out"
""", f"""name: consume
num_nodes: 2
resources: {{infra: local}}
run: |
  c1=$(test -d {home}/local/$STAGE1 && echo up || echo gone)
  echo "stage2 rank=$SKYPILOT_NODE_RANK read=$(cat "$BROKER_CHECKPOINT_DIR/out") stage1-cluster=$c1 $SKYPILOT_TASK_ID" >> {led}
""")
    p.write_text(p.read_text().replace("$STAGE1", cloud_name("job-1-1")))  # the first managed job's stage 1
    r = broker("jobs", "launch", "-y", p, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    jid = submitted(r)
    assert jid == 1
    assert "Stage 1/2: produce" in r.stdout and "Stage 2/2: consume" in r.stdout  # each stage's own plan
    assert r.stdout.index("stage 1/2 (produce)") < r.stdout.index("stage 2/2 (consume)")  # the log's markers
    lines = led.read_text().splitlines()
    assert lines[0].startswith("stage1 ") and lines[0].endswith("_1-0")
    rest = sorted(lines[1:])
    assert len(rest) == 2 and all("read=made-by-stage-1 stage1-cluster=gone" in ln and ln.endswith("_1-1")
                                  for ln in rest), lines
    row = queue_row(jid)
    assert row["status"] == "SUCCEEDED" and row["num_stages"] == 2
    assert [(s["name"], s["status"]) for s in row["stages"]] == [("produce", "SUCCEEDED"), ("consume", "SUCCEEDED")]
    text = broker("jobs", "queue", env={"COLUMNS": "200"}).stdout
    assert re.search(r"↳ 1/2 produce .*SUCCEEDED", text) and re.search(r"↳ 2/2 consume .*SUCCEEDED", text), text
    assert status_json() == []  # every stage's cluster is gone
    assert not cluster_dir("job-1-2", home).exists() or not any(cluster_dir("job-1-2", home).iterdir())


def test_a_failing_stage_fails_the_pipeline_and_later_stages_never_start(tmp_path):
    led = tmp_path / "ledger"
    p = pipeline(tmp_path, f"name: first\nresources: {{infra: local}}\nrun: echo first >> {led}; exit 3\n",
                 f"name: second\nresources: {{infra: local}}\nrun: echo second >> {led}\n")
    r = broker("jobs", "launch", "-y", p, timeout=90)
    assert r.returncode == 3, r.stdout + r.stderr  # the failing stage's exit code
    assert "FAILED" in r.stderr and "stage 1/2 (first)" in r.stderr
    assert led.read_text().splitlines() == ["first"]
    row = queue_row(submitted(r))
    assert row["status"] == "FAILED"
    assert [s["status"] for s in row["stages"]] == ["FAILED", "CANCELLED"]
    assert status_json() == []


def test_cancel_during_stage_one_cancels_the_pipeline(tmp_path):
    led = tmp_path / "ledger"
    p = pipeline(tmp_path, f"name: slow\nresources: {{infra: local}}\nrun: echo slow >> {led}; sleep 60\n",
                 f"name: never\nresources: {{infra: local}}\nrun: echo never >> {led}\n")
    r = broker("jobs", "launch", "-y", "-d", p)
    assert r.returncode == 0, r.stderr
    jid = submitted(r)
    wait_for(lambda: led.exists() and queue_row(jid)["status"] == "RUNNING", 30, 0.1, "stage 1 running")
    assert queue_row(jid)["stage"] == 1
    r = broker("jobs", "cancel", jid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: queue_row(jid)["status"] == "CANCELLED", 30, 0.1, "pipeline cancelled")
    row = queue_row(jid)
    assert [s["status"] for s in row["stages"]] == ["CANCELLED", "CANCELLED"]
    assert led.read_text().splitlines() == ["slow"]  # stage 2 never started
    wait_for(lambda: status_json() == [], 10, 0.1, "stage 1's cluster torn down")


def test_launch_refuses_a_pipeline_but_dryrun_plans_every_stage(tmp_path):
    p = pipeline(tmp_path, "name: a\nresources: {infra: local}\nrun: echo a\n",
                 "name: b\nresources: {infra: local}\nnum_nodes: 2\nrun: echo b\n")
    r = broker("launch", "-y", p)
    assert r.returncode == 2 and "broker jobs launch" in r.stderr, r.stderr
    r = broker("launch", "--dryrun", p)
    assert r.returncode == 0, r.stderr
    assert "Stage 1/2: a" in r.stdout and "Stage 2/2: b" in r.stdout and r.stdout.count("Chosen:") == 2
    r = broker("launch", "--dryrun", "--json", p)
    doc = json.loads(r.stdout)
    assert doc["pipeline"] == "pipe" and len(doc["stages"]) == 2
    assert status_json() == []


def test_a_preempted_stage_is_recovered_and_the_pipeline_goes_on(tmp_path):
    """Managed-job recovery per stage: stage 1's node is preempted mid-run (its processes killed, its
    instance gone), stage 1 is relaunched on a new cluster and finishes, then stage 2 runs once."""
    from skybroker.clouds.local import _kill_node_processes

    led = tmp_path / "ledger"
    p = pipeline(tmp_path, f"name: long\nresources: {{infra: local}}\n"
                           f"run: echo start >> {led}; sleep 3; echo done >> {led}\n",
                 f"name: after\nresources: {{infra: local}}\nrun: echo after >> {led}\n")
    r = broker("jobs", "launch", "-y", "-d", p)
    jid = submitted(r)
    wait_for(lambda: led.exists() and "start" in led.read_text(), 30, 0.05, "stage 1 running")
    node = cluster_dir(f"job-{jid}-1") / "node-0"
    _kill_node_processes(node)
    shutil.rmtree(node, ignore_errors=True)
    wait_for(lambda: queue_row(jid)["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "FAILED_CONTROLLER"), 60, 0.2,
             "pipeline ended")
    row = queue_row(jid)
    assert row["status"] == "SUCCEEDED" and row["recoveries"] == 1, row
    assert led.read_text().splitlines() == ["start", "start", "done", "after"]
    assert [s["status"] for s in row["stages"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert status_json() == []
