"""`broker cost-report` (the real CLI as a subprocess) over a ledger written with exact times, and budgets
refused at plan time (`launch --dryrun`, `jobs launch`) with exit 6 and the field named."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import REPO, broker_cmd
from tests.unit.test_ledger import cand, cluster

H = 3600.0


def run(*args, env=None):
    import os

    return subprocess.run(broker_cmd() + list(args), capture_output=True, text=True, timeout=60, cwd=REPO,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))


@pytest.fixture
def ledger_now(tmp_path, monkeypatch):
    """A ledger with a gone spot cluster, a stopped one, and a managed job with two runs; the clock at `now`."""
    from skybroker import state
    from skybroker.costs import ledger
    from skybroker.jobs import store

    now = time.time() // 1 - 10 * H
    t = now - 24 * H
    ledger.open_run(cluster("gone"), cand(spot=True, price=0.05, od=0.096, nodes=2, disk=0), at=t)
    ledger.close_run("gone", at=t + 3 * H)
    state.delete_cluster("gone")
    ledger.open_run(cluster("parked", nodes=1), cand(spot=False, price=0.096, nodes=1, disk=100), at=t)
    ledger.set_state("parked", ledger.STOPPED, at=t + 1 * H)
    state.set_status("parked", state.STOPPED)
    j = store.insert("train", json.dumps({"deadline_hours": 10, "expected_hours": 4}), {}, "1x spot")
    for k, (spot, price) in enumerate([(True, 0.05), (False, 0.096)]):
        ledger.open_run(cluster(f"job-{j.id}", owner=f"managed:{j.id}", nodes=1),
                        cand(spot=spot, price=price, od=0.096, nodes=1, disk=0), at=t + k * 2 * H)
    ledger.close_run(f"job-{j.id}", at=t + 5 * H)
    store.update(j.id, status=store.SUCCEEDED)
    clock = tmp_path / "clock"
    clock.write_text(str(now))
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))
    return now


def test_cost_report_json_matches_the_intervals(ledger_now):
    r = run("cost-report", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    gone, parked = rep["clusters"]
    assert (gone["cluster"], gone["status"], gone["market"]) == ("gone", "DOWN", "spot")
    assert gone["cost"] == pytest.approx(3 * 2 * 0.05) and gone["savings"] == pytest.approx(3 * 2 * 0.046)
    disk_h = 100 * 0.08 / 730
    assert parked["status"] == "STOPPED" and parked["up_hours"] == 1 and parked["stopped_hours"] == 23
    assert parked["cost"] == pytest.approx(0.096 + 24 * disk_h, abs=1e-6)
    (job,) = rep["managed_jobs"]
    assert (job["name"], job["status"], job["spot_hours"], job["on_demand_hours"]) == ("train", "SUCCEEDED", 2, 3)
    assert job["cost"] == pytest.approx(2 * 0.05 + 3 * 0.096)
    assert job["deadline"]["always_on_demand_cost"] == pytest.approx(4 * 0.096)
    assert job["deadline"]["normalised_cost"] == pytest.approx((0.1 + 0.288) / 0.384, abs=1e-6)
    total = rep["total"]
    assert total["cost"] == pytest.approx(gone["cost"] + parked["cost"] + job["cost"], abs=1e-6)
    assert total["savings"] == pytest.approx(gone["savings"] + job["savings"], abs=1e-6)


def test_the_hourly_column_includes_the_disks_as_the_cost_does(ledger_now):
    """UP $/h is nodes × (price + disk), the rate COST adds up from while up: it showed the instance price only,
    though COST included the disks."""
    disk_h = 100 * 0.08 / 730
    rep = json.loads(run("cost-report", "--json").stdout)
    parked = next(c for c in rep["clusters"] if c["cluster"] == "parked")
    assert parked["up_hourly"] == pytest.approx(0.096 + disk_h, abs=1e-6)
    assert parked["cost"] == pytest.approx(1 * parked["up_hourly"] + 23 * disk_h, abs=1e-6)  # 1 h up, 23 h stopped
    r = run("cost-report", env={"COLUMNS": "200"})
    assert "UP $/h" in r.stdout and f"{0.096 + disk_h:.4f}" in r.stdout and "0.0960 " not in r.stdout, r.stdout
    assert "UP $/h: nodes × (price + disk)" in r.stdout


def test_cost_report_table_and_window(ledger_now):
    r = run("cost-report")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("Clusters", "Managed jobs", "gone", "parked", "STOPPED", "DOWN", "train", "SUCCEEDED",
                   "0.3000", "0.2760", "3h00m", "23h00m", "2.00", "3.00", "1.0104", "Total: $"):
        assert needle in out, (needle, out)
    assert "Traceback" not in r.stderr
    assert json.loads(run("cost-report", "--json", "--since", "1h").stdout)["clusters"][0]["cluster"] == "parked"
    assert len(json.loads(run("cost-report", "--json", "--all").stdout)["clusters"]) == 2
    bad = run("cost-report", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    assert run("cost-report", "--all", "--since", "1d").returncode == 2


def test_empty_ledger():
    r = run("cost-report")
    assert r.returncode == 0 and "Nothing in the cost ledger" in r.stdout
    assert json.loads(run("cost-report", "--json").stdout)["total"]["cost"] == 0


def _task(tmp_path, budget: str, extra: str = "") -> str:
    p = tmp_path / "t.yaml"
    p.write_text(f"name: b\nresources: {{accelerators: V100:1}}\n{extra}budget: {budget}\nrun: echo\n")
    return str(p)


def test_a_plan_over_budget_is_refused_with_exit_6(tmp_path):
    r = run("launch", "--dryrun", _task(tmp_path, "{max_cost: 1, hours: 10h}"))
    assert r.returncode == 6, r.stderr
    assert "budget.max_cost" in r.stderr and "10 h from budget.hours" in r.stderr and "Traceback" not in r.stderr
    r = run("jobs", "launch", "-y", "-d", _task(tmp_path, "{max_cost: 1}", "deadline: {by: 20h, compute: 12h}\n"))
    assert r.returncode == 6 and "the deadline's expected compute" in r.stderr, r.stderr
    # no hours known: only a plan whose hourly cost alone exceeds the budget is refused
    assert run("launch", "--dryrun", _task(tmp_path, "{max_cost: 100}")).returncode == 0
    r = run("launch", "--dryrun", _task(tmp_path, "{max_cost: 0.01}"))
    assert r.returncode == 6 and "one hour" in r.stderr


@pytest.mark.parametrize("budget, needle", [("{max_cost: -1}", "budget"), ("{hours: 3}", "max_cost"),
                                            ("{max_cost: 5, hours: soon}", "budget.hours"),
                                            ("{max_cost: 5, limit: 3}", "limit")])
def test_bad_budget_is_bad_input(tmp_path, budget, needle):
    r = run("launch", "--dryrun", _task(tmp_path, budget))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
