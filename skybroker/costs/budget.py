"""Budgets (skybroker's extension): `budget: {max_cost: 50, hours: 10h}` in a task.

At plan time (`launch`, `launch --dryrun`, `jobs launch`) the launch is refused (BudgetError, exit 6,
naming `budget.max_cost`) when its estimated cost exceeds max_cost. The estimate is the chosen plan's
hourly cost (nodes × (price + disk), as the ledger accrues it) times the *estimated hours*:
  1. `budget.hours` when given;
  2. else the deadline's expected compute (`deadline.compute` / `expected_hours`);
  3. else one hour: with no duration known, only a launch whose hourly cost alone exceeds the budget is
     refused (it could not run an hour).

While a managed job runs, the controller stops it when it is about to exceed max_cost: when the cost the
ledger has accrued across all its runs, plus what its current cluster costs over the next two polls
(`BROKER_JOBS_POLL`), reaches max_cost. The job ends FAILED_BUDGET with a `budget` event; a recovery
is not launched once the budget is spent.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BudgetError
from . import disks


@dataclass(frozen=True)
class Estimate:
    hourly: float
    hours: float
    basis: str  # where the hours come from

    @property
    def cost(self) -> float:
        return self.hourly * self.hours


def hourly_of(cand) -> float:
    disk = disks.hourly(float(cand.resources.disk_size or 0), disks.price_per_gb_month(cand.cloud))
    return cand.num_nodes * (cand.price + disk)


def estimate(task, cand) -> Estimate:
    if task.budget_hours is not None:
        hours, basis = task.budget_hours, "budget.hours"
    elif task.expected_hours is not None:
        hours, basis = task.expected_hours, "the deadline's expected compute"
    else:
        hours, basis = 1.0, "one hour (no budget.hours or deadline given)"
    return Estimate(hourly_of(cand), hours, basis)


def check_plan(task, plan) -> None:
    """Refuse a plan whose estimated cost exceeds the task's budget."""
    if task.budget_max_cost is None:
        return
    est = estimate(task, plan.chosen)
    if est.cost > task.budget_max_cost + 1e-9:
        c = plan.chosen
        raise BudgetError(
            f"the estimated cost ${est.cost:.2f} (${est.hourly:.4f}/h for {c.num_nodes} node(s) of {c.instance_type} "
            f"on {c.infra}{' spot' if c.use_spot else ''}, × {est.hours:g} h from {est.basis}) exceeds the budget "
            f"of ${task.budget_max_cost:.2f}",
            "raise budget.max_cost, lower budget.hours, or ask for cheaper resources (e.g. --use-spot, fewer nodes)",
            source=task.source)


def managed_check(job_id: int, task, launching: bool, lookahead_s: float) -> tuple[str | None, float | None]:
    """(why managed job `job_id` must stop now, None: it may go on; the seconds it may go on at the current
    rate before the next check must stop it, None: no budget or nothing accrues), from the ledger."""
    if task.budget_max_cost is None:
        return None, None
    from . import ledger

    at = ledger.now()
    runs = ledger.runs(job_id=job_id)
    spent = sum(r.cost(at) for r in runs)
    hourly = 0.0 if launching else sum(r.up_hourly for r in runs if r.live and r.state == "UP")
    why = managed_verdict(task, spent, hourly, lookahead_s)
    left = (task.budget_max_cost - spent) / hourly * 3600 - lookahead_s if hourly > 0 else None
    return (why.replace(": stopped", ": no further launch") if why and launching else why), left


def managed_verdict(task, spent: float, hourly_now: float, lookahead_s: float) -> str | None:
    """Why a managed job must stop now (None: it may go on)."""
    if task.budget_max_cost is None:
        return None
    projected = spent + hourly_now * lookahead_s / 3600
    if projected + 1e-9 >= task.budget_max_cost:
        return (f"budget: ${spent:.4f} spent (${projected:.4f} by the next check) would exceed budget.max_cost "
                f"${task.budget_max_cost:.2f}: stopped")
    return None
