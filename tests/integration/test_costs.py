"""The cost ledger end to end on the `local` cloud, with the real CLI and the real controller process.

The local cloud is given prices (BROKER_LOCAL_PRICES) and the ledger a fake clock (BROKER_LEDGER_CLOCK, a
file every process reads), so every cost is exact: the clock only moves when the test moves it, and each
step waits for the ledger to show what the step did before the clock moves again.

Prices: on demand $1.50/h per node, spot $0.40/h, disk $0.073/GB-month, so a 100 GB disk is exactly
$0.01/h per node (100 × 0.073 / 730).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from tests.integration.local_helpers import (alive, broker, broker_home, cluster_dir, kill_leftovers, kill_pids,
                                             node_dir, node_pids, wait_for, write_task)

OD, SPOT, DISK_H = 1.5, 0.4, 0.01
T0 = 1_800_000_000.0


@pytest.fixture(autouse=True)
def priced_local(tmp_path, monkeypatch):
    clock = tmp_path / "clock"
    clock.write_text(str(T0))
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))
    monkeypatch.setenv("BROKER_LOCAL_PRICES", f"od={OD},spot={SPOT},disk=0.073")
    monkeypatch.setenv("BROKER_SSH_CONFIG", "0")
    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0.5")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "1")
    yield
    pid = _controller_pid()
    if pid:
        kill_pids([pid])
    kill_leftovers(broker_home())


def at(hours: float) -> None:
    """Move the fake clock to T0 + hours."""
    (broker_home().parent / "clock").write_text(repr(T0 + hours * 3600))


def ok(*args) -> str:
    r = broker(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def report(*args) -> dict:
    return json.loads(ok("cost-report", "--json", *args))


def interval_sum(run: dict, end: float) -> float:
    """The cost a run's intervals add up to, from the report's own numbers (the independent check)."""
    total = 0.0
    for i in run["intervals"]:
        hours = ((i["end"] if i["end"] is not None else end) - i["start"]) / 3600
        disk = i["nodes"] * run["disk_gb"] * run["disk_price_gb_month"] / 730
        total += hours * (disk + (i["nodes"] * run["price_per_node"] if i["state"] == "up" else 0.0))
    return total


# ------------------------------------------------------------------------------------------------ clusters
def test_launch_stop_start_down_costs_exactly_its_intervals(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="dev", num_nodes=2, run="echo hi",
                      resources={"infra": "local", "disk_size": 100})
    ok("launch", "-y", "-d", "-c", "dev", task)  # T0: up
    at(1)
    ok("stop", "-y", "dev")  # 1 h up: 2 × (1.50 + 0.01)
    stopped = ok("status")  # a stopped cluster's $/h is what it is billed: its disks, not its running price
    assert f"{2 * DISK_H:.4f}" in stopped and f"{2 * OD:.4f}" not in stopped, stopped
    at(3)
    ok("start", "dev")  # 2 h stopped: disks only, 2 × 0.01
    at(3.5)
    st = json.loads(ok("status", "--json"))
    assert st[0]["cost"] == pytest.approx(2 * (OD + DISK_H) * 1.5 + 2 * DISK_H * 2, abs=1e-9)  # 4.57 so far
    table = ok("status")
    assert "COST ($)" in table and "4.5700" in table
    at(4)
    ok("down", "-y", "dev")  # 2 h up, 2 h stopped in all
    assert json.loads(ok("status", "--json")) == []

    rep = report()  # the history survives `down`
    (c,) = rep["clusters"]
    expected = 2 * (OD + DISK_H) * 2 + 2 * DISK_H * 2
    assert c["cost"] == pytest.approx(expected, abs=1e-9) == pytest.approx(6.08)
    assert abs(c["cost"] - interval_sum(c, T0 + 4 * 3600)) < 0.005  # to the cent
    assert (c["status"], c["market"], c["num_nodes"], c["up_hours"], c["stopped_hours"]) == ("DOWN", "on-demand", 2,
                                                                                               2.0, 2.0)
    assert [i["state"] for i in c["intervals"]] == ["up", "stopped", "up"]
    assert c["savings"] == 0.0 and rep["total"]["cost"] == c["cost"]
    text = ok("cost-report")
    assert "dev" in text and "DOWN" in text and "6.0800" in text and "Total: $6.0800" in text


def test_a_cluster_that_lost_a_node_is_billed_for_the_nodes_it_has(tmp_path):
    """A node of a 2-node cluster is lost (preempted, terminated in the console): once `status --refresh` finds
    the cluster DEGRADED, only the node it still has is billed (it used to bill both until `down`)."""
    task = write_task(tmp_path / "t.yaml", name="two", num_nodes=2, run="echo hi",
                      resources={"infra": "local", "disk_size": 100})
    ok("launch", "-y", "-d", "-c", "two", task)  # T0: 2 nodes up
    at(1)
    kill_pids(node_pids("two", 1))
    shutil.rmtree(node_dir("two", 1))
    (st,) = json.loads(ok("status", "--refresh", "--json"))
    assert st["status"] == "DEGRADED", st
    at(3)
    (c,) = report()["clusters"]
    assert [(i["state"], i["nodes"]) for i in c["intervals"]] == [("up", 2), ("up", 1)]
    assert c["cost"] == pytest.approx(2 * (OD + DISK_H) * 1 + 1 * (OD + DISK_H) * 2, abs=1e-9)  # not 6 × (OD + disk)
    assert abs(c["cost"] - interval_sum(c, T0 + 3 * 3600)) < 0.005
    assert json.loads(ok("status", "--json"))[0]["cost"] == pytest.approx(c["cost"], abs=1e-9)
    ok("down", "-y", "two")


def test_a_killed_launch_is_billed_from_its_create_call_until_down(tmp_path):
    """The broker is killed (like SIGKILL) right after the instances were created; `status --refresh` finds them
    through the intents (INTERRUPTED) and `down` removes them: they are billed from the create call until the
    `down`, as a run marked interrupted (the ledger had no run for them)."""
    task = write_task(tmp_path / "t.yaml", name="k", num_nodes=2, run="echo hi",
                      resources={"infra": "local", "disk_size": 100})
    r = broker("launch", "-y", "-d", "-c", "k", task, env={"BROKER_FAILPOINTS": "provision-wait=exit"})  # T0
    assert r.returncode == 137, (r.stdout, r.stderr)
    at(1)
    (st,) = json.loads(ok("status", "--refresh", "--json"))  # reconciled: its instances found through the intents
    assert st["status"] == "INTERRUPTED", st
    at(2)
    ok("down", "-y", "k")
    (c,) = report()["clusters"]
    assert (c["status"], c["outcome"], c["num_nodes"], c["up_hours"]) == ("DOWN", "interrupted", 2, 2.0)
    assert c["cost"] == pytest.approx(2 * (OD + DISK_H) * 2, abs=1e-9)
    assert "DOWN (interrupted)" in ok("cost-report")


def test_a_launch_killed_before_its_create_call_costs_nothing(tmp_path):
    """Killed after its intent (and its attempt's run) was recorded, before anything was created: reconcile finds
    nothing on the cloud and drops the run, so no cost is reported for time nothing existed."""
    task = write_task(tmp_path / "t.yaml", name="n", run="echo hi", resources={"infra": "local", "disk_size": 100})
    r = broker("launch", "-y", "-d", "-c", "n", task, env={"BROKER_FAILPOINTS": "provision=exit"})  # T0
    assert r.returncode == 137, (r.stdout, r.stderr)
    at(3)
    assert json.loads(ok("status", "--refresh", "--json")) == []  # reconciled: nothing was created
    rep = report()
    assert rep["clusters"] == [] and rep["total"]["cost"] == 0


def test_spot_savings_and_the_report_window(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="sp", run="echo hi",
                      resources={"infra": "local", "use_spot": True, "disk_size": 100})
    ok("launch", "-y", "-d", "-c", "sp", task)
    at(2)
    ok("down", "-y", "sp")
    at(40 * 24)  # 40 days later the same name again, on demand: a second run
    ok("launch", "-y", "-d", "-c", "sp", task, "--no-use-spot")
    at(40 * 24 + 1)
    rep = report("--all")
    first, second = rep["clusters"]
    assert (first["market"], second["market"]) == ("spot", "on-demand")
    assert first["cost"] == pytest.approx(2 * (SPOT + DISK_H))
    assert first["od_price_per_node"] == OD and first["savings"] == pytest.approx(2 * (OD - SPOT))  # 2.20
    assert second["status"] == "UP" and second["cost"] == pytest.approx(OD + DISK_H)  # so far
    assert rep["total"]["cost"] == pytest.approx(first["cost"] + second["cost"])
    assert [c["run_id"] for c in report()["clusters"]] == [second["run_id"]]  # default: the last 30 days
    assert len(report("--since", "41d")["clusters"]) == 2
    assert len(report("--since", "30m")["clusters"]) == 1


# ------------------------------------------------------------------------------------------------ budgets
def test_budget_refuses_a_launch_over_it(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="b", num_nodes=2, run="echo hi",
                      resources={"infra": "local", "disk_size": 100}, budget={"max_cost": 5, "hours": "2h"})
    r = broker("launch", "-y", "-d", "-c", "b", task)
    assert r.returncode == 6, r.stderr
    assert "budget.max_cost" in r.stderr and "$6.04" in r.stderr and "2 h from budget.hours" in r.stderr
    assert "Traceback" not in r.stderr and json.loads(ok("status", "--json")) == []
    assert broker("jobs", "launch", "-y", "-d", task).returncode == 6


# ------------------------------------------------------------------------------------------------ managed
def _controller_pid() -> int | None:
    try:
        pid = int((broker_home() / "managed" / "controller.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def _job(jid: int) -> dict:
    return next(j for j in json.loads(ok("jobs", "queue", "--json")) if j["id"] == jid)


def _launch_job(task) -> int:
    r = broker("jobs", "launch", "-y", "-d", task)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.split("managed job ")[1].split()[0])


def _runs(jid: int) -> list:
    from skybroker.costs import ledger

    return ledger.runs(job_id=jid)


def _wait_runs(jid: int, n: int, timeout: float = 60) -> list:
    """Until the job has n runs, the last one open and its job RUNNING."""
    asked = [0.0]

    def done():
        # the ledger first (read in this process): `jobs queue` is a CLI process, about 0.3 s of CPU, so
        # while the run is not there it is asked once a second only (it also restarts a dead controller)
        rs = _runs(jid)
        if not (len(rs) == n and rs[-1].live):
            if time.monotonic() - asked[0] >= 1.0:
                _job(jid)
                asked[0] = time.monotonic()
            return False
        return _job(jid)["status"] == "RUNNING" and rs
    try:
        return wait_for(done, timeout, 0.1, f"job {jid}: run {n} running")
    except AssertionError as exc:
        from skybroker.jobs import store

        logp = broker_home() / "managed" / "controller.log"
        raise AssertionError(f"{exc}: {[(r.market, r.started_at, r.ended_at) for r in _runs(jid)]}\n"
                             + "\n".join(f"{e['kind']}: {e['message']}" for e in store.events(jid))
                             + (logp.read_text()[-3000:] if logp.exists() else "")) from None


def _preempt(jid: int) -> None:
    from skybroker.clouds.local import _kill_node_processes

    node = cluster_dir(f"job-{jid}") / "node-0"
    _kill_node_processes(node)
    shutil.rmtree(node, ignore_errors=True)


WAIT_RUN = 'while [ ! -f "$STOP_FILE" ]; do sleep 0.2; done'


@pytest.mark.slow
def test_managed_job_two_recoveries_and_a_switch_to_on_demand(tmp_path):
    """Spot 1 h, preempted; spot 1 h, preempted with spot capacity gone; the deadline policy (greedy) waits,
    then goes on demand: 0.5 h. Each run has its own frozen price; the split is exact."""
    # greedy waits out its slack (by - compute - overhead, spent only while nothing runs) before on-demand:
    # 9 s of it leaves room for two spot bring-ups on a busy machine (by 60 s: a 19 s wait, the same path)
    task = write_task(tmp_path / "t.yaml", name="split", envs={"STOP_FILE": str(tmp_path / "stop")}, run=WAIT_RUN,
                      resources={"infra": "local", "use_spot": True, "disk_size": 100},
                      deadline={"by": "50s", "compute": "40s", "policy": "greedy", "overhead": "1s", "tick": "1s"})
    jid = _launch_job(task)
    _wait_runs(jid, 1)
    at(1)
    _preempt(jid)
    _wait_runs(jid, 2)
    at(2)
    (broker_home() / "local" / "NO_SPOT_CAPACITY").write_text("")
    _preempt(jid)
    _wait_runs(jid, 3, timeout=90)
    at(2.5)
    ok("jobs", "cancel", str(jid))
    wait_for(lambda: not _runs(jid)[-1].live and _job(jid)["status"] == "CANCELLED", 30, 0.1, "cancelled")

    (j,) = report()["managed_jobs"]
    assert [r["market"] for r in j["runs"]] == ["spot", "spot", "on-demand"]
    assert [r["price_per_node"] for r in j["runs"]] == [SPOT, SPOT, OD]  # frozen per run
    assert [r["launched_at"] for r in j["runs"]] == [T0, T0 + 3600, T0 + 7200]
    assert (j["spot_hours"], j["on_demand_hours"]) == (2.0, 0.5)
    expected = 2 * (SPOT + DISK_H) + 0.5 * (OD + DISK_H)  # 1.575
    assert j["cost"] == pytest.approx(expected, abs=1e-9)
    assert abs(j["cost"] - sum(interval_sum(r, T0 + 9000) for r in j["runs"])) < 0.005  # to the cent
    assert j["savings"] == pytest.approx(2 * (OD - SPOT))
    dl = j["deadline"]
    assert dl["always_on_demand_cost"] == pytest.approx(40 / 3600 * (OD + DISK_H), abs=1e-6)  # JSON: 6 decimals
    assert dl["normalised_cost"] == pytest.approx(expected / (40 / 3600 * (OD + DISK_H)), abs=1e-6)
    assert _job(jid)["cost"] == pytest.approx(expected)  # `jobs queue` reads the same ledger


def test_ledger_survives_a_controller_kill(tmp_path):
    """The controller is SIGKILLed while the job runs and the node is preempted while it is dead: the run
    stays open (the instances were billed), and the restarted controller closes it and opens the next."""
    task = write_task(tmp_path / "t.yaml", name="kill", envs={"STOP_FILE": str(tmp_path / "stop")}, run=WAIT_RUN,
                      resources={"infra": "local", "use_spot": True, "disk_size": 100})
    jid = _launch_job(task)
    _wait_runs(jid, 1)
    pid = _controller_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, 0.05, "controller dead")
    at(1)
    _preempt(jid)
    (j,) = report()["managed_jobs"]  # no controller: the open run still accrues
    assert len(j["runs"]) == 1 and j["runs"][0]["status"] == "UP" and j["cost"] == pytest.approx(SPOT + DISK_H)
    _wait_runs(jid, 2)  # `jobs queue` (in _wait_runs) started a new controller
    first = _runs(jid)[0]
    assert (first.started_at, first.ended_at) == (T0, T0 + 3600)
    at(1.5)
    ok("jobs", "cancel", str(jid))
    wait_for(lambda: not _runs(jid)[-1].live and _job(jid)["status"] == "CANCELLED", 30, 0.1, "cancelled")
    (j,) = report()["managed_jobs"]
    assert j["cost"] == pytest.approx(1.5 * (SPOT + DISK_H), abs=1e-9) and j["spot_hours"] == 1.5
    assert sum(r["up_hours"] for r in j["runs"]) == 1.5


def test_controller_stops_a_job_about_to_exceed_its_budget(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="capped", envs={"STOP_FILE": str(tmp_path / "stop")}, run=WAIT_RUN,
                      resources={"infra": "local", "disk_size": 100}, budget={"max_cost": 3.02})
    jid = _launch_job(task)
    _wait_runs(jid, 1)
    at(1)  # $1.51 spent: goes on
    wait_for(lambda: _job(jid)["cost"] == pytest.approx(OD + DISK_H), 10, 0.1, "cost at 1 h")
    assert _job(jid)["status"] == "RUNNING"
    at(2)  # $3.02: the budget is reached
    wait_for(lambda: _job(jid)["status"] == "FAILED_BUDGET", 30, 0.1, "FAILED_BUDGET")
    from skybroker.jobs import store

    ev = [e for e in store.events(jid) if e["kind"] == "budget"]
    assert ev and "budget.max_cost $3.02" in ev[0]["message"], store.events(jid)
    wait_for(lambda: not _runs(jid)[-1].live, 30, 0.1, "run closed")
    assert _job(jid)["cost"] == pytest.approx(2 * (OD + DISK_H)) and "budget" in (_job(jid)["failure"] or "")
    assert not cluster_dir(f"job-{jid}").exists() or \
        not any(cluster_dir(f"job-{jid}").iterdir())


def test_autostop_stops_the_billing_of_an_idle_cluster(tmp_path):
    from skybroker import autostop, state

    task = write_task(tmp_path / "t.yaml", name="idle", run="true", resources={"infra": "local", "disk_size": 100})
    ok("launch", "-y", "-c", "idle", task)  # waits for the job: the cluster is idle afterwards
    at(1)
    state.set_autostop("idle", 0, False)  # idle for 0 minutes is enough (the watcher itself is not needed)
    assert autostop.check_once() == [("idle", "stop")]
    at(3)
    (c,) = report()["clusters"]
    assert c["status"] == "STOPPED" and (c["up_hours"], c["stopped_hours"]) == (1.0, 2.0)
    assert c["cost"] == pytest.approx(OD + DISK_H + 2 * DISK_H)
