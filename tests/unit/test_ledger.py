"""The cost ledger's arithmetic and bookkeeping (costs/ledger.py), budgets (costs/budget.py), the disk table,
with explicit times (`at=`), so every figure is exact."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from skybroker import state
from skybroker.costs import budget, disks, ledger, report
from skybroker.errors import UsageError
from skybroker.optimizer import Candidate
from skybroker.resources import Resources
from skybroker.state import ClusterRecord

T = 1_700_000_000.0
H = 3600.0


def cand(cloud="aws", spot=True, price=0.05, od=0.096, nodes=2, disk=100, offer=True):
    res = Resources(cloud=cloud, use_spot=spot, disk_size=disk)
    return Candidate(res, 0, cloud, "us-east-1", "us-east-1a", "m5.large", 2, 8, None, 0.0, spot, price, nodes,
                     offer=SimpleNamespace(price=od, suspicious=False) if offer else None)


def cluster(name="c", owner=None, status=state.UP, nodes=2):
    rec = ClusterRecord(name, "aws", "us-east-1", "us-east-1a", "m5.large", None, True, nodes, 0.1, status, T,
                        owner=owner)
    state.save_cluster(rec)
    return rec


def test_a_run_accrues_price_and_disk_up_and_only_disk_stopped():
    rec = cluster()
    ledger.open_run(rec, cand(), at=T)
    ledger.set_state("c", ledger.STOPPED, at=T + 2 * H)
    ledger.set_state("c", ledger.STOPPED, at=T + 3 * H)  # already stopped: no new interval
    ledger.set_state("c", ledger.UP, at=T + 5 * H)
    ledger.close_run("c", at=T + 6 * H)
    ledger.close_run("c", at=T + 9 * H)  # idempotent
    (r,) = ledger.runs()
    disk_h = 2 * 100 * 0.08 / 730  # aws gp3, both nodes
    assert [(i.state, i.start, i.end) for i in r.intervals] == [
        ("up", T, T + 2 * H), ("stopped", T + 2 * H, T + 5 * H), ("up", T + 5 * H, T + 6 * H)]
    assert (r.market, r.price, r.od_price, r.disk_price, r.ended_at) == ("spot", 0.05, 0.096, 0.08, T + 6 * H)
    assert r.cost(T + 99 * H) == pytest.approx(3 * (2 * 0.05 + disk_h) + 3 * disk_h)
    assert r.savings(T + 99 * H) == pytest.approx(3 * 2 * (0.096 - 0.05))
    assert r.state == "DOWN" and ledger.cluster_costs(at=T + 7 * H) == {}


def test_a_live_run_costs_so_far_and_a_new_launch_of_the_name_closes_the_old_run():
    rec = cluster()
    ledger.open_run(rec, cand(spot=False, price=0.096, disk=0), at=T)
    assert ledger.cluster_costs(at=T + 1.5 * H) == {"c": pytest.approx(1.5 * 2 * 0.096)}
    ledger.open_run(rec, cand(spot=False, price=0.2, disk=0), at=T + 2 * H)
    first, second = ledger.runs()
    assert first.ended_at == T + 2 * H and second.live and second.price == 0.2
    assert first.savings(T) == 0.0 and first.od_price == 0.096  # on demand: its own price is the reference


def test_managed_job_runs_are_tied_to_the_job_and_summed():
    for k, (spot, price) in enumerate([(True, 0.05), (True, 0.06), (False, 0.096)]):
        ledger.open_run(cluster("job-7", owner="managed:7"), cand(spot=spot, price=price, disk=0), at=T + k * H)
    ledger.close_run("job-7", at=T + 3.5 * H)
    assert ledger.job_costs(at=T + 9 * H) == {7: pytest.approx(2 * (0.05 + 0.06 + 1.5 * 0.096))}
    assert ledger.job_cost(7, at=T + 9 * H) == pytest.approx(2 * (0.05 + 0.06 + 1.5 * 0.096))


def test_reconcile_closes_runs_whose_cluster_left_the_state_and_follows_its_status():
    ledger.open_run(cluster("gone"), cand(), at=T)
    ledger.open_run(cluster("stopped"), cand(), at=T)
    state.delete_cluster("gone")  # e.g. a state rebuilt, or a crash between terminate and close
    state.set_status("stopped", state.STOPPED)
    changed = ledger.reconcile(at=T + H)
    assert sorted(changed) == ["gone: closed (no longer in the state)", "stopped: stopped"]
    by = {r.cluster: r for r in ledger.runs()}
    assert by["gone"].ended_at == T + H and by["stopped"].state == "STOPPED"
    assert ledger.reconcile(at=T + 2 * H) == []


def test_unknown_on_demand_price_means_unknown_savings():
    ledger.open_run(cluster(), cand(offer=False), at=T)
    (r,) = ledger.runs()
    assert r.od_price is None and r.savings(T + H) is None


def test_the_ledger_clock(tmp_path, monkeypatch):
    clock = tmp_path / "clock"
    clock.write_text("1234.5\n")
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))
    assert ledger.now() == 1234.5
    clock.write_text("soon")
    with pytest.raises(UsageError, match="BROKER_LEDGER_CLOCK"):
        ledger.now()


def test_a_clock_set_back_never_closes_a_run_before_its_intervals_began(tmp_path, monkeypatch):
    """The wall clock steps back (NTP, a VM restored): close_run at a time before the open interval began
    closes it when that interval began: no negative time, no run that ends before its intervals."""
    clock = tmp_path / "clock"
    monkeypatch.setenv("BROKER_LEDGER_CLOCK", str(clock))
    rec = cluster()
    clock.write_text(str(T))
    ledger.open_run(rec, cand(spot=False, price=0.1, disk=0))
    clock.write_text(str(T + 2 * H))
    ledger.set_state("c", ledger.STOPPED)
    clock.write_text(str(T + H))  # an hour back
    ledger.close_run("c")
    (r,) = ledger.runs()
    assert r.ended_at == T + 2 * H and all(i.end >= i.start for i in r.intervals)
    assert [(i.state, i.start, i.end) for i in r.intervals] == [("up", T, T + 2 * H), ("stopped", T + 2 * H, T + 2 * H)]
    assert r.cost(T + 9 * H) == pytest.approx(2 * 2 * 0.1)
    ledger.open_run(cluster("d"), cand(spot=False, price=0.1, disk=100), at=T)
    ledger.close_run("d", at=T - 5 * H)  # before the run even began
    d = ledger.runs(cluster="d")[0]
    assert (d.started_at, d.ended_at, d.cost(T + H)) == (T, T, 0.0)


def test_an_attempt_is_billed_only_if_its_instances_existed():
    """provision.py's hooks: a run opens before the create call; a rollback drops it if nothing was created,
    closes it as rolled back (for the nodes that existed) if something was; lifecycle's open_run keeps the run of
    the attempt that brought the cluster up, billed from its create call."""
    cluster("c", owner="managed:7")
    ledger.open_attempt("c", cand(spot=False, price=0.1, nodes=3, disk=0), 11, at=T)
    ledger.attempt_gone(11, ledger.ROLLED_BACK, at=T + H)  # nothing created: no run
    assert ledger.runs() == []
    ledger.open_attempt("c", cand(spot=False, price=0.1, nodes=3, disk=0), 12, at=T + H)
    ledger.attempt_created(12, 1)  # the rollback found the head only
    ledger.attempt_gone(12, ledger.ROLLED_BACK, at=T + 2 * H)
    ledger.open_attempt("c", cand(spot=False, price=0.2, nodes=3, disk=0), 13, at=T + 2 * H)
    ledger.attempt_created(13, 3)
    rec = cluster("c", owner="managed:7", nodes=3)
    ledger.open_run(rec, cand(spot=False, price=0.2, nodes=3, disk=0), at=T + 3 * H)
    failed, up = ledger.runs()
    assert (failed.outcome, failed.num_nodes, failed.job_id, failed.started_at, failed.ended_at) == (
        ledger.ROLLED_BACK, 1, 7, T + H, T + 2 * H)
    assert failed.cost(T + 9 * H) == pytest.approx(0.1)
    assert (up.outcome, up.live, up.started_at, up.num_nodes) == (None, True, T + 2 * H, 3)
    assert ledger.job_cost(7, at=T + 4 * H) == pytest.approx(0.1 + 2 * 3 * 0.2)


def test_every_provider_has_a_disk_price_with_its_source():
    from skybroker.clouds import registry

    for name in registry.names():
        assert name in disks.DISK_PRICES, f"{name}: add its disk price to costs/disks.py"
        price, what, source = disks.DISK_PRICES[name]
        assert price >= 0 and what and source
    assert disks.hourly(730, 0.08) == pytest.approx(0.08)


def test_budget_estimate_hours_and_the_controller_verdict():
    task = SimpleNamespace(budget_max_cost=10.0, budget_hours=None, expected_hours=None)
    c = cand(spot=False, price=1.0, nodes=2, disk=0)
    assert budget.estimate(task, c).hours == 1.0 and budget.estimate(task, c).cost == 2.0
    task.expected_hours = 4
    assert budget.estimate(task, c).cost == 8.0 and "deadline" in budget.estimate(task, c).basis
    task.budget_hours = 6
    est = budget.estimate(task, c)
    assert (est.hours, est.basis, est.cost) == (6, "budget.hours", 12.0)
    assert budget.managed_verdict(task, 9.0, 2.0, 1799) is None  # $9.9994 by the next check: goes on
    assert "budget.max_cost $10.00" in budget.managed_verdict(task, 9.0, 2.0, 1800)  # would reach $10
    assert budget.managed_verdict(SimpleNamespace(budget_max_cost=None), 1e9, 1, 1) is None


def test_since_durations():
    assert report.parse_since("7d") == 7 * 86400 and report.parse_since("12h") == 12 * H
    assert report.parse_since("30m") == 1800 and report.parse_since("2") == 2 * 86400
    for bad in ("", "soon", "-1d", "nand"):
        with pytest.raises(UsageError, match="--since"):
            report.parse_since(bad)
