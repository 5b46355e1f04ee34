"""Job pools end to end on the `local` cloud: the real `broker jobs pool ...` / `jobs launch --pool` CLI,
the real controller process, real node agents. Jobs and setups write ledgers to host files (the local
nodes are this machine): the ground truth of what ran, and where.

  - apply 2 workers → setup ran once on each; launch --num-jobs 3 → two run, the third queues, then runs;
    each ran once, with ranks 0, 1, 2 and the job count in SkyPilot's variables and ours;
  - a job that asks for more than the workers have is refused (exit 2, naming the field);
  - a busy worker preempted → the pool replaces it (setup again, on the new worker) and its job is
    re-queued and completes once;
  - scale down (apply --workers 1) removes the idle worker; `pool down` leaves no cluster, node or process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from skybroker.clouds.local import _kill_node_processes
from tests.integration.local_helpers import (
    broker,
    broker_home,
    pids_with_env,
    wait_for,
    write_task,
    cluster_dir,
)
from tests.integration.test_managed_jobs import (  # noqa: F401
    TERMINAL,
    controller_pid,
    diag,
    events,
    fast_controller,
    job,
)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def workers(name: str) -> list:
    """The pool's worker rows, read from the state (polling with the CLI would cost a process a look)."""
    from skybroker.jobs import pool_store

    return pool_store.workers(name)


def pool_status(name: str) -> dict:
    r = broker("jobs", "pool", "status", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def apply(tmp_path, name: str, workers: int, ledger) -> None:
    task = write_task(tmp_path / "pool.yaml", pool={"workers": workers}, envs={"SETUP": str(ledger)},
                      setup='echo "$SKYPILOT_CLUSTER_NAME" >> "$SETUP"')
    r = broker("jobs", "pool", "apply", "-p", name, "-y", task, timeout=90)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "is ready" in r.stderr


def launch(task, *extra) -> list[int]:
    r = broker("jobs", "launch", "-y", "-d", *extra, task)
    assert r.returncode == 0, r.stderr
    import re

    ids = re.search(r"managed jobs? ([\d, ]+) submitted", r.stderr)
    assert ids, r.stderr
    return [int(x) for x in ids.group(1).split(", ")]


def wait_done(ids, timeout=60):
    for jid in ids:
        try:
            wait_for(lambda jid=jid: (j := job(jid)) is not None and j.status in TERMINAL, timeout, 0.1, f"job {jid}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diag(jid)}") from None
    return [job(j) for j in ids]


def assert_nothing_left() -> None:
    st = broker("status", "--json")
    assert st.returncode == 0 and json.loads(st.stdout) == [], st.stdout
    root = broker_home() / "local"
    assert not root.exists() or not any(p.name.startswith("pool-") and any(p.iterdir()) for p in root.iterdir())
    wait_for(lambda: pids_with_env(f"HOME={root}/", prefix=True) == [], 10, 0.1, "no node process left behind")


def test_pool_runs_jobs_once_each_with_ranks_queues_the_rest_and_scales(tmp_path):
    setup, runs = tmp_path / "setup.ledger", tmp_path / "runs.ledger"
    apply(tmp_path, "p1", 2, setup)
    assert sorted(lines(setup)) == ["pool-p1-0", "pool-p1-1"]  # setup ran once per worker
    st = pool_status("p1")
    assert st["status"] == "READY" and [w["status"] for w in st["worker_list"]] == ["READY", "READY"]

    gate, wd = tmp_path / "gate", tmp_path / "wd"
    wd.mkdir()
    (wd / "data.txt").write_text("from-the-workdir\n")  # the job's own workdir reaches the worker
    jt = write_task(tmp_path / "job.yaml", envs={"RUNS": str(runs), "GATE": str(gate)}, workdir=str(wd),
                    run='echo "$SKYPILOT_JOB_RANK $BROKER_JOB_RANK $SKYPILOT_NUM_JOBS $BROKER_NUM_JOBS '
                        '$SKYPILOT_CLUSTER_NAME $(cat data.txt)" >> "$RUNS"; while [ ! -e "$GATE" ]; do sleep 0.1; done')
    ids = launch(jt, "--pool", "p1", "--num-jobs", "3")
    assert len(ids) == 3
    wait_for(lambda: len(lines(runs)) == 2, 60, 0.1, "two jobs running")
    st = pool_status("p1")  # both workers busy, the third job waits
    assert sorted(w["job_id"] for w in st["worker_list"]) == ids[:2], st
    assert [q["id"] for q in st["queued"]] == [ids[2]] and st["queued"][0]["rank"] == 2
    assert job(ids[2]).status == "PENDING"
    [extra] = launch(jt, "--pool", "p1")  # queued behind the third, then cancelled: it never runs
    r = broker("jobs", "cancel", extra)
    assert r.returncode == 0, r.stderr
    assert wait_done([extra])[0].status == "CANCELLED"
    gate.write_text("go")
    done = wait_done(ids)
    assert [j.status for j in done] == ["SUCCEEDED"] * 3, [diag(j) for j in ids]
    got = sorted(lines(runs))
    assert [g.split()[:4] for g in got] == [[str(r), str(r), "3", "3"] for r in range(3)]  # each rank once
    assert {g.split()[4] for g in got} == {"pool-p1-0", "pool-p1-1"}
    assert {g.split()[5] for g in got} == {"from-the-workdir"}
    q = {j["id"]: j for j in json.loads(broker("jobs", "queue", "--json").stdout)}
    assert [(q[i]["pool"], q[i]["job_rank"], q[i]["num_jobs"], q[i]["resources"]) for i in ids] == \
        [("p1", r, 3, "pool p1") for r in range(3)]
    assert len(lines(setup)) == 2  # jobs do not run the pool's setup again

    hold = tmp_path / "hold"  # a running pool job cancelled: its worker goes back to the pool
    jt2 = write_task(tmp_path / "job2.yaml", envs={"RUNS": str(runs), "HOLD": str(hold)},
                     run='echo running >> "$RUNS"; while [ ! -e "$HOLD" ]; do sleep 0.1; done')
    [busy] = launch(jt2, "--pool", "p1")
    wait_for(lambda: lines(runs)[-1] == "running", 60, 0.1, "the job to cancel running")
    assert broker("jobs", "cancel", busy).returncode == 0
    assert wait_done([busy])[0].status == "CANCELLED"
    wait_for(lambda: all(w.status == "READY" and w.job_id is None for w in workers("p1")), 60, 0.1,
             "the worker back in the pool")

    small = write_task(tmp_path / "big.yaml", resources={"infra": "local", "accelerators": "H100:1"}, run="true")
    r = broker("jobs", "launch", "-y", "--pool", "p1", small)
    assert r.returncode == 2 and "resources.accelerators" in r.stderr and "Traceback" not in r.stderr

    r = broker("jobs", "pool", "apply", "-p", "p1", "-y", "--workers", "1", timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(workers("p1")) == 1, 60, 0.1, "scale down to 1 worker")
    assert not (cluster_dir("pool-p1-1") / "node-0").exists()

    r = broker("jobs", "pool", "apply", "-p", "p1", "-y", "--workers", "0", timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(workers("p1")) == 0, 60, 0.1, "scale down to 0 workers")
    r = broker("jobs", "launch", "-y", "--pool", "p1", jt2, timeout=30)  # followed: it would wait for ever
    assert r.returncode == 0 and "pool p1 has 0 workers" in r.stderr and "--workers N" in r.stderr, r.stderr
    [waiting] = [j["id"] for j in json.loads(broker("jobs", "queue", "--json").stdout) if j["status"] == "PENDING"]
    assert broker("jobs", "cancel", waiting).returncode == 0 and wait_done([waiting])[0].status == "CANCELLED"

    r = broker("jobs", "pool", "down", "p1", "-y", timeout=60)
    assert r.returncode == 0 and "is down" in r.stderr, r.stderr
    assert_nothing_left()
    assert json.loads(broker("jobs", "pool", "status", "--json").stdout) == []


def test_a_preempted_worker_is_replaced_and_its_job_runs_to_completion_once(tmp_path):
    setup, runs = tmp_path / "setup.ledger", tmp_path / "runs.ledger"
    apply(tmp_path, "p2", 2, setup)
    gate = tmp_path / "gate"
    jt = write_task(tmp_path / "job.yaml", envs={"RUNS": str(runs), "GATE": str(gate)},
                    run='echo "start $SKYPILOT_JOB_RANK $SKYPILOT_CLUSTER_NAME" >> "$RUNS"; '
                        'while [ ! -e "$GATE" ]; do sleep 0.1; done; echo "end $SKYPILOT_JOB_RANK" >> "$RUNS"')
    [jid] = launch(jt, "--pool", "p2")
    wait_for(lambda: lines(runs), 60, 0.1, "the job started")
    worker = lines(runs)[0].split()[2]
    node = cluster_dir(worker) / "node-0"
    _kill_node_processes(node)  # the worker is preempted under its job
    shutil.rmtree(node, ignore_errors=True)
    wait_for(lambda: len([x for x in lines(runs) if x.startswith("start")]) == 2, 60, 0.1, "the job restarted")
    gate.write_text("go")
    [j] = wait_done([jid])
    assert j.status == "SUCCEEDED" and j.recoveries == 1, diag(jid)
    assert [x for x in lines(runs) if x.startswith("end")] == ["end 0"]  # ran to completion once
    wait_for(lambda: [w.status for w in workers("p2")] == ["READY", "READY"], 60, 0.1, "the lost worker replaced")
    st = pool_status("p2")
    lost = next(w for w in st["worker_list"] if w["cluster"] == worker)
    assert lost["recoveries"] == 1
    assert sorted(lines(setup)) == sorted(["pool-p2-0", "pool-p2-1", worker])  # setup ran on the replacement
    r = broker("jobs", "pool", "down", "p2", "-y", timeout=60)
    assert r.returncode == 0, r.stderr
    assert_nothing_left()


def test_a_worker_preempted_during_its_setup_is_replaced_not_failed(tmp_path):
    """The node's processes die first (its setup fails) and the instance goes a moment later, as on a cloud
    whose API shows a reclaimed spot VM late: the worker is replaced and set up again, not left FAILED."""
    from tests.integration.local_helpers import broker_bg

    setup = tmp_path / "setup.ledger"
    task = write_task(tmp_path / "pool.yaml", pool={"workers": 1}, envs={"SETUP": str(setup)},
                      setup='echo "$SKYPILOT_CLUSTER_NAME" >> "$SETUP"; [ "$(wc -l < "$SETUP")" -ge 2 ] || sleep 30')
    ap = broker_bg("jobs", "pool", "apply", "-p", "p5", "-y", task)
    try:
        wait_for(lambda: lines(setup), 60, 0.1, "the setup started")
        node = cluster_dir("pool-p5-0") / "node-0"
        _kill_node_processes(node)  # the setup fails under the preemption; the cloud still shows the node
        seen = wait_for(lambda: (w := workers("p5")[0]).status == "FAILED" or "looking once more" in (w.message or "")
                        and w, 30, 0.05, "the failed setup seen")
        assert seen is not True and seen.status == "SETTING_UP", [(w.status, w.message) for w in workers("p5")]
        shutil.rmtree(node, ignore_errors=True)  # now the instance is gone too
        wait_for(lambda: [w.status for w in workers("p5")] == ["READY"], 60, 0.1, "the worker replaced")
        assert workers("p5")[0].recoveries == 1 and lines(setup) == ["pool-p5-0", "pool-p5-0"]
        _, err = ap.communicate(timeout=60)
        assert ap.returncode == 0 and "is ready" in err, err
    finally:
        if ap.poll() is None:
            ap.kill()
    r = broker("jobs", "pool", "down", "p5", "-y", timeout=60)
    assert r.returncode == 0, r.stderr
    assert_nothing_left()


def test_controller_killed_after_a_pool_job_was_submitted_runs_it_once(tmp_path, monkeypatch):
    """The submit token guarantees once-only on a worker too: the controller SIGKILLed between the
    submit and RUNNING, the next one finds the job on the worker instead of submitting it again."""
    from tests.integration.local_helpers import alive

    setup, runs = tmp_path / "setup.ledger", tmp_path / "runs.ledger"
    apply(tmp_path, "p3", 1, setup)
    pid = controller_pid()
    os.kill(pid, signal.SIGKILL)  # the next controller (started by launch) gets the failpoint
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    monkeypatch.setenv("BROKER_FAILPOINTS", "after-submit=sleep(3)")
    jt = write_task(tmp_path / "job.yaml", envs={"RUNS": str(runs)}, run='echo ran >> "$RUNS"; sleep 1')
    [jid] = launch(jt, "--pool", "p3")
    wait_for(lambda: any("submitted to pool-p3-0" in e["message"] for e in events(jid)), 30, 0.05, "the submit")
    pid = controller_pid()
    assert pid and job(jid).status == "STARTING", diag(jid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    assert broker("jobs", "queue").returncode == 0  # starts a new controller
    [j] = wait_done([jid])
    assert j.status == "SUCCEEDED" and lines(runs) == ["ran"], diag(jid)
    assert any(e["kind"] == "adopt" for e in events(jid)), diag(jid)
    assert broker("jobs", "pool", "down", "p3", "-y").returncode == 0
    assert_nothing_left()


def test_pools_through_a_broker_server(tmp_path):
    """Client mode: the server's controller runs the pool; another user can neither see nor tear it down."""
    pytest.importorskip("fastapi")
    from tests.integration.server_helpers import Server

    server = Server(tmp_path / "server_home").start()
    try:
        alice = server.client(server.token("alice"), tmp_path / "alice")
        bob = server.client(server.token("bob"), tmp_path / "bob")
        pool = write_task(tmp_path / "pool.yaml", pool={"workers": 1}, setup="echo set up")
        r = alice("jobs", "pool", "apply", "-p", "ap", "-y", pool)
        assert r.returncode == 0 and "is ready" in r.stderr, r.stderr
        jt = write_task(tmp_path / "job.yaml", run='echo "rank=$SKYPILOT_JOB_RANK/$SKYPILOT_NUM_JOBS"')
        r = alice("jobs", "launch", "-y", "-d", "--pool", "ap", "--num-jobs", "2", jt)
        assert r.returncode == 0, r.stderr
        for jid in (1, 2):
            r = alice("jobs", "logs", str(jid), "-f")
            assert r.returncode == 0 and f"rank={jid - 1}/2" in r.stdout, r.stdout + r.stderr
        r = bob("jobs", "pool", "status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == []
        r = bob("jobs", "pool", "down", "ap", "-y")
        assert r.returncode == 7 and "belongs to user alice" in r.stderr, (r.returncode, r.stderr)
        [st] = json.loads(alice("jobs", "pool", "status", "--json").stdout)
        assert st["status"] == "READY" and st["worker_list"][0]["cluster"] == "pool-ap-0"
        r = alice("jobs", "pool", "down", "ap", "-y")
        assert r.returncode == 0 and "is down" in r.stderr, r.stderr
        assert json.loads(alice("status", "--json").stdout) == []
    finally:
        server.stop()


def test_pool_down_goes_through_when_the_controller_dies_meanwhile(tmp_path):
    """`pool down` waits for the controller to cancel the pool's jobs and remove its workers; the controller is
    killed meanwhile: the waiting command starts it again and the pool goes (it waited out its 600 s before)."""
    from tests.integration.local_helpers import broker_bg

    setup, runs = tmp_path / "setup.ledger", tmp_path / "runs.ledger"
    apply(tmp_path, "p6", 1, setup)
    jt = write_task(tmp_path / "job.yaml", envs={"RUNS": str(runs)},
                    run='trap "sleep 2; exit 1" TERM; echo start >> "$RUNS"; sleep 60 & wait')
    [jid] = launch(jt, "--pool", "p6")
    wait_for(lambda: lines(runs) == ["start"], 60, 0.1, "the job started")
    down = broker_bg("jobs", "pool", "down", "p6", "-y")
    try:
        wait_for(lambda: job(jid).cancel_requested, 30, 0.05, "the job's cancel requested")
        pid = controller_pid()
        os.kill(pid, signal.SIGKILL)
        _, err = down.communicate(timeout=60)
    finally:
        if down.poll() is None:
            down.kill()
    assert down.returncode == 0 and "pool p6 is down" in err, err
    assert job(jid).status == "CANCELLED", diag(jid)
    assert_nothing_left()
