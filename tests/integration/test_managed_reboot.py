"""A node that reboots under a managed job (a host-maintenance reboot, a kernel panic) leaves the instances
up and the work in memory gone: the node's agent finds the job's boot id changed and fails it ("node rebooted
while the job was RUNNING"). The controller took that for the user's failure (FAILED, or a restart counted
against max_restarts_on_errors); now it restarts the job on the same cluster, not counted as the user's, at
most REBOOT_RESTARTS times (a run that reboots its own node is not restarted for ever).

The reboot is made as a real one looks to the agent: the job's processes are gone (SIGKILL) and the boot id
the agent recorded for the job is not the machine's any more."""
from __future__ import annotations

import sqlite3

from skybroker.clouds.local import _kill_node_processes
from skybroker.jobs import recovery as R
from tests.integration.local_helpers import write_task
from tests.integration.test_managed_jobs import (TERMINAL, assert_clean, cluster_root, diag, events,  # noqa: F401
                                                 fast_controller, launch_detached, ledger, until, wait_status)


def reboot(jid: int) -> None:
    node = cluster_root(jid) / "node-0"
    # the boot id first: a poll between the two steps must not see a runner that died on the same boot
    with sqlite3.connect(str(node / ".skybroker-node" / "agent.db")) as db:
        assert db.execute("UPDATE jobs SET boot_id='the-boot-before' WHERE status IN ('SETTING_UP', 'RUNNING')"
                          ).rowcount == 1
    _kill_node_processes(node)  # the job and its runner die with the machine


def test_a_node_reboot_restarts_the_job_on_the_same_cluster(tmp_path):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    task = write_task(tmp_path / "t.yaml", name="rb", envs={"RUNS": str(runs), "GATE": str(gate)},
                      resources={"infra": "local"},
                      run='echo run >> "$RUNS"; while [ ! -e "$GATE" ]; do sleep 0.1; done; echo done')
    jid = launch_detached(task)
    until(lambda: len(ledger(runs)) == 1, 60, "the first run", jid)
    reboot(jid)
    until(lambda: len(ledger(runs)) == 2, 60, "the run after the reboot", jid)
    gate.touch()
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", diag(jid)
    assert j.recoveries == 0 and j.restarts_on_errors == 0, diag(jid)  # same cluster; not the user's failure
    (rec,) = [e for e in events(jid) if e["kind"] == "recovery"]
    assert rec["message"].startswith(R.REBOOTED) and "node rebooted while the job was RUNNING" in rec["message"]
    assert_clean(jid)


def test_a_run_that_keeps_rebooting_its_node_ends_failed(tmp_path):
    runs = tmp_path / "runs"
    task = write_task(tmp_path / "t.yaml", name="rb2", envs={"RUNS": str(runs)}, resources={"infra": "local"},
                      run='echo run >> "$RUNS"; sleep 60')
    jid = launch_detached(task)
    for n in range(1, R.REBOOT_RESTARTS + 2):
        until(lambda: len(ledger(runs)) == n, 60, f"run {n}", jid)
        reboot(jid)
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "FAILED", diag(jid)
    assert len(ledger(runs)) == R.REBOOT_RESTARTS + 1
    assert f"rebooted under the job {R.REBOOT_RESTARTS + 1} times" in (j.failure or ""), diag(jid)
    assert_clean(jid)
