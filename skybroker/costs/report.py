"""`broker cost-report`: every cluster run and managed job in the ledger, live or gone, with what it cost.

- a cluster row is one run (one life of its instances: a name reused after `down` is a new row);
- a managed job row sums its runs (one per bring-up: each recovery and market switch), splits its up
  hours into spot and on-demand, and for a deadline job compares its cost with running its expected
  compute (`deadline.compute` / `expected_hours`) on demand from the start — the normalisation
  `broker simulate` prints (1.0 = as expensive as always-on-demand);
- a run's `up_hourly` is what it accrues per hour while up: nodes × (price + disk), the rate its cost adds up
  from (a stopped run accrues only the disks);
- a run whose launch failed is kept with its `outcome`: `rolled back` (a failed provisioning attempt whose
  instances were torn down) or `interrupted` (a launch that died, its instances found by reconcile);
- spot savings = what the same up hours would have cost on demand (the on-demand price of the same
  instance type in the same region, frozen at launch) minus what they cost.

Which rows: everything alive in the last 30 days by default, `since` for another window (a run is shown if
it was alive at some point after it, with its whole cost), `everything` for the whole history.
"""
from __future__ import annotations

import json

from . import disks, ledger

DEFAULT_WINDOW_S = 30 * 86400


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def run_json(r: ledger.Run, at: float) -> dict:
    return {"run_id": r.id, "cluster": r.cluster, "job_id": r.job_id, "cloud": r.cloud, "region": r.region,
            "zone": r.zone, "instance_type": r.instance_type, "accelerators": r.accelerators,
            "num_nodes": r.num_nodes, "market": r.market, "price_per_node": r.price,
            "od_price_per_node": r.od_price, "disk_gb": r.disk_gb, "disk_price_gb_month": r.disk_price,
            "status": r.state, "outcome": r.outcome, "launched_at": r.started_at, "ended_at": r.ended_at,
            "up_hourly": _r(r.up_hourly),
            "up_hours": _r(r.hours(ledger.UP, at)), "stopped_hours": _r(r.hours(ledger.STOPPED, at)),
            "cost": _r(r.cost(at)), "on_demand_cost": _r(r.od_cost(at)), "savings": _r(r.savings(at)),
            "intervals": [{"state": i.state, "start": i.start, "end": i.end,
                           "nodes": r.num_nodes if i.nodes is None else i.nodes} for i in r.intervals]}


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def job_json(job, rs: list[ledger.Run], at: float) -> dict:
    spot_h = sum(r.hours(ledger.UP, at) for r in rs if r.market == ledger.SPOT)
    od_h = sum(r.hours(ledger.UP, at) for r in rs if r.market != ledger.SPOT)
    cost = sum(r.cost(at) for r in rs)
    out = {"job_id": job.id if job else rs[0].job_id, "name": job.name if job else None,
           "status": job.status if job else "UNKNOWN", "recoveries": job.recoveries if job else None,
           "resources": job.resources if job else None, "runs": [run_json(r, at) for r in rs],
           "spot_hours": _r(spot_h), "on_demand_hours": _r(od_h),
           "up_hours": _r(spot_h + od_h), "cost": _r(cost),
           "savings": _r(_sum(r.savings(at) for r in rs)), "deadline": None,
           "budget": None}
    task = json.loads(job.task) if job and job.task else {}
    if task.get("budget_max_cost") is not None:
        out["budget"] = {"max_cost": task["budget_max_cost"], "hours": task.get("budget_hours")}
    if task.get("deadline_hours") is not None and task.get("expected_hours") and rs and rs[0].od_price is not None:
        first = rs[0]
        always = task["expected_hours"] * first.num_nodes * (first.od_price + disks.hourly(first.disk_gb, first.disk_price))
        out["deadline"] = {"deadline_hours": task["deadline_hours"], "expected_hours": task["expected_hours"],
                           "always_on_demand_cost": _r(always),
                           "normalised_cost": _r(cost / always) if always else None}
    return out


def build(since: float | None = None, everything: bool = False, at: float | None = None,
          only_user: str | None = None) -> dict:
    """The report; with `only_user` (a non-admin on a server), that user's cluster runs and jobs only."""
    from ..jobs import store

    at = ledger.now() if at is None else at
    ledger.reconcile(at)
    if everything:
        since = None
    elif since is None:
        since = at - DEFAULT_WINDOW_S
    rs = ledger.runs(since=since)
    clusters = [run_json(r, at) for r in rs if r.job_id is None and (only_user is None or r.user_name == only_user)]
    jobs = []
    for jid in sorted({r.job_id for r in rs if r.job_id is not None}):
        job = store.get(jid)
        if only_user is not None and (job is None or job.user_name != only_user):
            continue
        jobs.append(job_json(job, ledger.runs(job_id=jid), at))
    c_cost = sum(c["cost"] for c in clusters)
    j_cost = sum(j["cost"] for j in jobs)
    savings = _sum([c["savings"] for c in clusters] + [j["savings"] for j in jobs])
    return {"at": at, "since": since, "clusters": clusters, "managed_jobs": jobs,
            "total": {"cost": _r(c_cost + j_cost), "clusters_cost": _r(c_cost), "managed_jobs_cost": _r(j_cost),
                      "savings": _r(savings)}}


def parse_since(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s`, or a bare number of days → seconds."""
    from ..errors import UsageError

    t = text.strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1, "w": 7 * 86400}
    mult = units.get(t[-1:]) if t else None
    num = t[:-1] if mult else t
    try:
        value = float(num) * (mult or 86400)
    except ValueError:
        value = -1
    if not value >= 0 or value != value:
        raise UsageError(f"--since {text!r} is not a duration", "e.g. --since 7d, --since 12h, --since 30m")
    return value
