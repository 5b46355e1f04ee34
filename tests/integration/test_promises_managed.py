"""The README's managed-job promises, proven by injecting the fault, with the real `broker jobs` CLI and the
real controller process on the `local` cloud:

  - "a managed job survives preemption": a node preempted during each bring-up stage (waiting for the
    nodes, installing the agent, syncing, restoring the checkpoint, submitting) is a recovery, and the
    job SUCCEEDS;
  - "... and runs once": the controller SIGKILLed after the job reached the cluster but before it was
    marked RUNNING → the restarted controller finds the job by its submit token and does not run it again;
  - `jobs logs` loses nothing after output that is not UTF-8;
  - a checkpoint copy interrupted halfway never replaces the last complete one.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.local_helpers import alive, broker, broker_home, wait_for, write_task, cluster_dir
from tests.integration.test_managed_jobs import (TERMINAL, controller_pid, diag, events,  # noqa: F401
                                                 fast_controller, job, launch_detached, preempt_local, until,
                                                 wait_status)


def ledger(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


STAGE_EVENT = {"ready": "waiting for 1 node(s) to accept commands", "agent": "installing the node agent",
               "sync": "syncing workdir and file mounts", "prepare": "preparing the nodes",
               "submit": "submitting the job to 1 node(s)"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGE_EVENT))
def test_preemption_during_each_bring_up_stage_is_recovered(tmp_path, monkeypatch, stage):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "x").write_text("x")
    led = tmp_path / "ledger"
    monkeypatch.setenv("BROKER_FAILPOINTS", f"{stage}=sleep(2)")
    task = write_task(tmp_path / "t.yaml", name="early", workdir=str(wd), envs={"LEDGER": str(led)},
                      run='echo "ran on $SKYPILOT_TASK_ID" >> "$LEDGER"; echo done')
    jid = launch_detached(task)
    until(lambda: any(STAGE_EVENT[stage] in e["message"] for e in events(jid)), 30, f"stage {stage}", jid)
    preempt_local(jid)  # the node goes while the stage is in progress
    j = wait_status(jid, TERMINAL, 90)
    assert j.status == "SUCCEEDED", diag(jid)
    assert j.recoveries >= 1, diag(jid)
    assert any(e["kind"] == "bring-up" and "instance lost" in e["message"] or "preempted" in e["message"]
               for e in events(jid)), diag(jid)
    assert len(ledger(led)) == 1, ledger(led)  # ran exactly once, after the recovery
    assert not cluster_dir(f"job-{jid}").exists()


@pytest.mark.slow
def test_controller_killed_between_submit_and_running_runs_the_job_once(tmp_path, monkeypatch):
    led = tmp_path / "ledger"
    monkeypatch.setenv("BROKER_FAILPOINTS", "after-submit=sleep(3)")
    task = write_task(tmp_path / "t.yaml", name="once", num_nodes=2, envs={"LEDGER": str(led)},
                      run='echo "rank $SKYPILOT_NODE_RANK" >> "$LEDGER"; sleep 2')
    jid = launch_detached(task)
    until(lambda: any("submitted to job-" in e["message"] for e in events(jid)), 30, "the submit", jid)
    pid = controller_pid()
    assert pid and job(jid).status == "STARTING", diag(jid)
    os.kill(pid, signal.SIGKILL)  # the job is on the cluster; the state still says STARTING
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    assert broker("jobs", "queue").returncode == 0  # starts a new controller
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", diag(jid)
    assert sorted(ledger(led)) == ["rank 0", "rank 1"], ledger(led)  # once per node, not twice
    assert any(e["kind"] == "adopt" for e in events(jid)), diag(jid)
    kinds = [e["kind"] for e in events(jid)]
    assert kinds.count("provision") == 1, kinds  # the same cluster, not a second one


def test_job_logs_lose_nothing_after_bytes_that_are_not_utf8(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="bytes",
                      run="printf 'before\\n\\377\\376 bad bytes\\n'; for i in $(seq 1 5); do echo \"line $i\"; "
                          "sleep 0.3; done; printf 'caf\\303\\251 end\\n'")
    jid = launch_detached(task)
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", diag(jid)
    out = broker("jobs", "logs", jid).stdout
    for want in ("before", "bad bytes", *(f"line {i}" for i in range(1, 6)), "café end"):
        assert want in out, out
    assert out.count("line 3") == 1


def test_interrupted_checkpoint_copy_keeps_the_last_complete_one(tmp_path):
    from skybroker.jobs import checkpoint

    jd = tmp_path / "job"
    src = tmp_path / "src"
    src.mkdir()
    (src / "ckpt").write_text("step 1")

    def good(dst, prev):
        import shutil

        for f in src.iterdir():
            shutil.copy(f, dst / f.name)

    checkpoint.take(jd, good)
    assert (checkpoint.current(jd) / "ckpt").read_text() == "step 1"

    def torn(dst, prev):  # the node is preempted halfway through the copy
        (dst / "ckpt").write_text("")
        raise OSError("connection lost during rsync")

    with pytest.raises(OSError):
        checkpoint.take(jd, torn)
    assert (checkpoint.current(jd) / "ckpt").read_text() == "step 1"  # the complete copy is what is restored
    (src / "ckpt").write_text("step 2")
    snap = checkpoint.take(jd, good)
    assert checkpoint.current(jd) == snap and (snap / "ckpt").read_text() == "step 2"
    assert len(list((jd / "checkpoint").glob("snap-*"))) == 1  # old snapshots are removed


@pytest.mark.slow
def test_checkpoint_written_write_then_rename_is_never_restored_empty(tmp_path):
    """The README's pattern, written as fast as possible while the controller copies it every 0.3 s:
    every snapshot taken holds a complete value, and after a preemption the job resumes from one."""
    led = tmp_path / "ledger"
    run = ('f="$BROKER_CHECKPOINT_DIR/step"; i=$(cat "$f" 2>/dev/null || echo 0); '
           'echo "resume $i" >> "$LEDGER"; '
           'while [ "$i" -lt 400 ]; do i=$((i+1)); echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"; sleep 0.01; done')
    task = write_task(tmp_path / "t.yaml", name="ckpt", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "job_recovery": "FAILOVER"}, run=run)
    jid = launch_detached(task)
    wait_status(jid, "RUNNING")
    snaps = []
    deadline = time.time() + 20
    while time.time() < deadline and len(snaps) < 3:
        from skybroker.jobs import checkpoint, store

        cur = checkpoint.current(store.job_dir(jid))
        if cur is not None and (cur / "step").exists():
            v = (cur / "step").read_text()
            assert v.strip().isdigit(), repr(v)  # never an empty or torn file
            if not snaps or snaps[-1] != v:
                snaps.append(v)
        time.sleep(0.1)
    assert snaps, diag(jid)
    preempt_local(jid)
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", diag(jid)
    resumes = [int(x.split()[1]) for x in ledger(led)]
    assert resumes[0] == 0 and len(resumes) == 2 and resumes[1] > 0, resumes


@pytest.mark.slow
def test_preemption_notice_syncs_the_checkpoint_and_relaunches_before_the_loss(tmp_path, monkeypatch):
    """A spot managed job whose node gets the cloud's preemption notice (a fake AWS metadata server:
    IMDSv2 token + spot/instance-action): the job gets SIGTERM and writes its checkpoint, the controller
    copies it one last time and relaunches at once — the node was never lost — and the job resumes from
    the checkpoint written in its SIGTERM handler."""
    from tests.infra.metadata_fake import Metadata as _Metadata

    md = _Metadata()
    monkeypatch.setenv("BROKER_NOTICE_ENDPOINT", md.base)
    monkeypatch.setenv("BROKER_NOTICE_EVERY", "0.2")
    led = tmp_path / "ledger"
    run = ('f="$BROKER_CHECKPOINT_DIR/step"; i=$(cat "$f" 2>/dev/null || echo 0); echo "resume $i" >> "$LEDGER"; '
           'trap \'echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"; echo "term at $i" >> "$LEDGER"; exit 143\' TERM; '
           'while [ "$i" -lt 60 ]; do i=$((i+1)); sleep 0.1; done; echo "done $i" >> "$LEDGER"')
    task = write_task(tmp_path / "t.yaml", name="notice", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "use_spot": True, "job_recovery": "FAILOVER"}, run=run)
    try:
        jid = launch_detached(task)
        wait_status(jid, "RUNNING")
        until(lambda: len(ledger(led)) >= 1, 20, "the job to start", jid)
        time.sleep(1.0)
        md.noticed = True
        until(lambda: any(e["kind"] == "notice" for e in events(jid)), 20, "the notice", jid)
        until(lambda: job(jid).recoveries >= 1, 20, "the relaunch", jid)
        md.noticed = False  # the replacement is not under notice
        j = wait_status(jid, TERMINAL, 60)
    finally:
        md.close()
    assert j.status == "SUCCEEDED", diag(jid)
    lines = ledger(led)
    term = [int(x.split()[2]) for x in lines if x.startswith("term at")]
    resumes = [int(x.split()[1]) for x in lines if x.startswith("resume")]
    assert len(term) == 1 and resumes[0] == 0 and resumes[1] == term[0] > 0, lines  # resumed where it stopped
    assert lines[-1] == "done 60"
    rec = [e for e in events(jid) if e["kind"] == "recovery"]
    assert rec and "notice" in rec[0]["message"], diag(jid)


@pytest.mark.slow
def test_controller_killed_while_tearing_down_an_ended_job_does_not_run_it_again(tmp_path, monkeypatch):
    """The job succeeded and its cluster is gone, but the controller died before it recorded SUCCEEDED: the
    next controller ends it SUCCEEDED (its outcome was recorded before the teardown), it does not take the
    missing cluster for a preemption and run the job a second time."""
    from skybroker import state

    led = tmp_path / "ledger"
    monkeypatch.setenv("BROKER_FAILPOINTS", "after-teardown=sleep(3)")
    task = write_task(tmp_path / "t.yaml", name="ended", num_nodes=2, envs={"LEDGER": str(led)},
                      run='echo "rank $SKYPILOT_NODE_RANK" >> "$LEDGER"')
    jid = launch_detached(task)
    until(lambda: any(e["kind"] == "running" for e in events(jid)), 30, "running", jid)
    until(lambda: state.get_cluster(f"job-{jid}") is None, 30, "the cluster torn down", jid)
    pid = controller_pid()
    assert pid and job(jid).status == "RUNNING", diag(jid)  # torn down, its end not recorded yet
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    assert broker("jobs", "queue").returncode == 0  # starts a new controller
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED" and j.exit_code == 0, diag(jid)
    time.sleep(1)  # a relaunch, if one was decided, would have started by now
    assert sorted(ledger(led)) == ["rank 0", "rank 1"], ledger(led)  # ran once
    assert not any(e["kind"] in ("recovery", "provision") and e["ts"] > j.started_at for e in events(jid)), diag(jid)
    assert not cluster_dir(f"job-{jid}").exists() or not any(cluster_dir(f"job-{jid}").iterdir())


@pytest.mark.slow
def test_controller_killed_after_submitting_a_restart_runs_the_restart_once(tmp_path, monkeypatch):
    """The run failed and the controller resubmitted the job on the same cluster (max_restarts_on_errors),
    then died before it recorded the new run: the next controller finds that run by its submit token and
    follows it; it does not restart the job a second time beside it."""
    led = tmp_path / "ledger"
    monkeypatch.setenv("BROKER_FAILPOINTS", "after-resubmit=sleep(5)")
    task = write_task(tmp_path / "t.yaml", name="again", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "job_recovery": {"max_restarts_on_errors": 2}},
                      run='echo "start" >> "$LEDGER"; [ "$(wc -l < "$LEDGER")" -ge 2 ] || exit 3; sleep 2; '
                          'echo "end" >> "$LEDGER"')
    jid = launch_detached(task)
    until(lambda: ledger(led) == ["start", "start"], 30, "the restart started", jid)
    pid = controller_pid()
    assert pid and job(jid).restarts_on_errors == 1, diag(jid)  # in the failpoint: the new run not recorded
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    assert broker("jobs", "queue").returncode == 0  # starts a new controller
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED" and j.restarts_on_errors == 1, diag(jid)
    assert ledger(led) == ["start", "start", "end"], ledger(led)  # the restart ran once
    assert any(e["kind"] == "adopt" for e in events(jid)), diag(jid)


@pytest.mark.slow
def test_a_follower_starts_a_dead_controller_again_so_the_job_recovers(tmp_path):
    """`jobs launch` follows its job; the controller is killed and the job's node preempted while no controller
    watches: the follower starts a controller again (as any `broker jobs` command does), the job recovers and
    the follower ends with the job's success, instead of waiting for ever on a job nobody serves."""
    from tests.integration.local_helpers import broker_bg

    led = tmp_path / "ledger"
    task = write_task(tmp_path / "t.yaml", name="followed", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "use_spot": True},
                      run='echo run >> "$LEDGER"; for i in $(seq 1 6); do echo "step $i"; sleep 0.5; done')
    fg = broker_bg("jobs", "launch", "-y", task)
    try:
        wait_for(lambda: ledger(led) == ["run"], 30, 0.05, "the job started")
        until(lambda: job(1) is not None and job(1).status == "RUNNING", 30, "running", 1)
        pid = controller_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
        preempt_local(1)
        out, err = fg.communicate(timeout=60)
    finally:
        if fg.poll() is None:
            fg.kill()
    assert fg.returncode == 0, (err, diag(1))
    j = job(1)
    assert j.status == "SUCCEEDED" and j.recoveries == 1, diag(1)
    assert "step 6" in out and ledger(led) == ["run", "run"]
