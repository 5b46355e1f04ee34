"""The optimizer's plan as shown by `launch`, `jobs launch` and `--dryrun`: the chosen place and the table
of considered resources (chosen first, then each other cloud's best, then other cheap options), the notes
said with it, and its --json form.
"""
from __future__ import annotations

from .console import _m, _say
from .table import Col, _table
from .views import _money

__all__ = ["PLAN_DROP", "candidate_json", "plan_json", "plan_rows", "print_plan", "short_infra"]


def candidate_json(c, chosen: bool = False) -> dict:
    return {
        "cloud": c.cloud,
        "region": c.region,
        "zone": c.zone,
        "instance_type": c.instance_type,
        "use_spot": c.use_spot,
        "accelerators": {c.accelerator_name: c.accelerator_count} if c.accelerator_name else None,
        "vcpus": c.vcpus,
        "memory_gib": c.memory_gib,
        "hourly_price_per_node": round(c.price, 6),
        "hourly_price_total": round(c.total, 6),
        "suspicious_price": bool(c.offer is not None and c.offer.suspicious),
        "expected_hourly_cost_per_node": None if c.expected is None else round(c.expected, 6),
        "chosen": chosen,
    }


def short_infra(c) -> str:
    """`gcp (us-central1-a)`, `aws (us-east-1, use1-az1)`, `azure (eastus)`."""
    if c.zone and c.region and c.zone.startswith(c.region):
        where = c.zone
    else:
        where = ", ".join(p for p in (c.region, c.zone) if p)
    return f"{c.cloud} ({where})" if where and where != c.cloud else c.cloud


def _cloud_region(c) -> str:
    """`aws (us-east-1)`: the plan's INFRA column (the zone has a column of its own)."""
    return f"{c.cloud} ({c.region})" if c.region and c.region != c.cloud else c.cloud


def plan_rows(plan, limit: int = 8) -> list:
    """Chosen first, then the best of each other cloud, then other cheap options."""
    chosen = plan.chosen
    rows = [chosen]
    for c in plan.best_per_cloud():
        if c is not chosen:
            rows.append(c)
    for c in plan.candidates:
        if len(rows) >= limit:
            break
        if c not in rows:
            rows.append(c)
    head, rest = rows[:1], sorted(rows[1:], key=lambda c: c.sort_key())
    return head + rest


def plan_json(plan, task_name: str | None) -> dict:
    rows = plan_rows(plan)
    return {
        "target": "cost",
        "task": task_name,
        "num_nodes": plan.num_nodes,
        "clouds_considered": list(plan.clouds),
        "note": plan.clouds_note,
        "chosen": candidate_json(plan.chosen, True),
        "alternatives": [candidate_json(c, c is plan.chosen) for c in rows],
        "notes": list(plan.notes),
        "prices": [dict(p) for p in plan.prices],
    }


PLAN_DROP = ("ZONE", "MEM(GB)", "vCPUs", "MARKET", "$/h/node")  # the header line says the chosen $/h per node


def print_plan(plan, task_name: str | None) -> None:
    c = plan.chosen
    if plan.clouds_note:
        _say(f"{_m('yellow', 'Note:')} {_m('', plan.clouds_note)}")
    nodes = f"{plan.num_nodes} node" + ("s" if plan.num_nodes != 1 else "")
    _say(f"Target: {_m('bold', 'minimizing cost')} · task {_m('bold', task_name or '(unnamed)')} · {nodes}")
    from .catalog_views import price_header

    price_header(plan.prices)
    acc = f" + {c.accelerators()}" if c.accelerator_name else ""
    market = "spot" if c.use_spot else "on-demand"
    _say(f"Chosen: {_m('bold green', c.instance_type + acc)} on {_m('bold', c.infra)} ({market}) "
         f"— ${_money(c.price)}/h per node, {_m('bold', '$' + _money(c.total) + '/h')} for {nodes}")
    multi = plan.num_nodes > 1  # the total column only says something for several nodes
    cols = [Col("INFRA", soft=18, min=9, squeeze=1), Col("ZONE", soft=10, min=6),
            Col("INSTANCE", soft=16, min=10, squeeze=2),
            Col("vCPUs", "right"), Col("MEM(GB)", "right"), Col("GPUs"), Col("MARKET"),
            Col("$/h/node" if multi else "$/h", "right")] + ([Col("$/h total", "right")] if multi else [])
    cols.append(Col("CHOSEN", "center"))
    rows = []
    for r in plan_rows(plan):
        sus = "*" if r.offer is not None and r.offer.suspicious else ""
        rows.append([_cloud_region(r), r.zone or "-", r.instance_type, f"{r.vcpus:g}", f"{r.memory_gib:g}",
                     r.accelerators() or "-", "spot" if r.use_spot else "on-demand", _money(r.price) + sus]
                    + ([_money(r.total) + sus] if multi else []) + [("✔", "bold green") if r is c else ""])
    if all(r[1] == "-" for r in rows):  # no zone anywhere (Azure, local, ssh): no ZONE column to hide
        cols.pop(1)
        rows = [r[:1] + r[2:] for r in rows]
    if any(r.expected is not None for r in plan_rows(plan)):
        cols.insert(len(cols) - 1, Col("E[$/h]", "right"))
        for r, row in zip(plan_rows(plan), rows):
            row.insert(len(row) - 1, "-" if r.expected is None else _money(r.expected))
    _table("Considered resources", cols, rows, drop=PLAN_DROP)
    if c.expected is not None:
        _say(_m("dim", "E[$/h]: expected $ per useful hour per node: the spot price raised by the preemptions "
                       "managed jobs met there (each costs the restart overhead and the work since the last "
                       "checkpoint; 0.5/h assumed where none ran yet)"))
    for note in plan.notes:
        _say(f"{_m('yellow', 'Note:')} {_m('', note)}")
    if c.offer is not None and c.offer.suspicious:
        _say(f"{_m('yellow', 'Warning:')} the chosen price is far below this instance's price in other regions "
             "(a likely catalog anomaly, kept as published); check it before relying on it.")
