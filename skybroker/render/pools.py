"""Job pools: `broker jobs pool status`, apply progress, the note under a pool task's plan."""
from __future__ import annotations

from .console import _err_line, _say, info
from .table import Col, _table

POOL_STYLE = {"READY": "green", "BUSY": "cyan", "SETTING_UP": "dim", "PROVISIONING": "dim", "RECOVERING": "yellow",
              "FAILED": "red", "REMOVING": "yellow", "SCALING": "yellow", "STARTING": "dim", "TEARING_DOWN": "yellow"}

__all__ = ["pool_note", "pool_progress", "print_pools"]


def pool_note(task, task_file) -> None:
    """Under the plan of a pool's task (`--dryrun`): what the plan is for, and the command to use."""
    if task.pool_workers is not None:
        info(f"pool task: {task.pool_workers} worker(s) of this plan, each set up once; bring them up with "
             f"`broker jobs pool apply -p NAME {task_file}`, then `broker jobs launch --pool NAME job.yaml`")


def pool_progress(st: dict) -> None:
    ws = st["worker_list"]
    up = sum(1 for w in ws if w["status"] in ("READY", "BUSY") and not w["draining"])
    bits = ", ".join(f"{w['worker']}: {w['status'].lower()}" + (" (going)" if w["draining"] else "") +
                     (f" ({w['message']})" if w["message"] and
                     w["status"] not in ("READY", "BUSY") else "") for w in ws)
    _err_line(None, f"pool {st['name']}: {up}/{st['workers']} ready — {bits or 'no workers yet'}")


def print_pools(pools: list[dict]) -> None:
    if not pools:
        _say("No pools. Create one with `broker jobs pool apply -p NAME pool.yaml`.")
        return
    rows = [[p["name"], (p["status"], POOL_STYLE.get(p["status"], "")), f"{p['ready']}/{p['workers']}",
             p["resources"] or "-", str(len(p["running"])), str(len(p["queued"]))] for p in pools]
    _table("Pools", [Col("POOL", soft=14, min=6), Col("STATUS"), Col("READY", "right"),
                     Col("RESOURCES", soft=20, min=10, squeeze=1), Col("RUNNING", "right"), Col("QUEUED", "right")],
           rows, drop=("RESOURCES",))
    wrows = []
    for p in pools:
        for w in p["worker_list"]:
            where = w["where"] or "-"
            if w["instance_type"]:
                where += f" {w['instance_type']}" + (" spot" if w["spot"] else "")
            wrows.append([p["name"], str(w["worker"]), w["cluster"], where,
                          (w["status"] + (" (draining)" if w["draining"] else ""), POOL_STYLE.get(w["status"], "")),
                          str(w["job_id"]) if w["job_id"] is not None else "-", str(w["recoveries"])])
    if wrows:
        _table("Workers", [Col("POOL", soft=14, min=6), Col("WORKER", "right"), Col("CLUSTER", soft=18, min=8),
                           Col("WHERE", soft=30, min=8, squeeze=1), Col("STATE"), Col("JOB", "right"),
                           Col("RECOVERIES", "right")], wrows, drop=("RECOVERIES", "WHERE"))
    qrows = [[p["name"], str(q["id"]), q["name"] or "-", str(q["rank"]) if q["rank"] is not None else "-", q["status"]]
             for p in pools for q in p["queued"]]
    if qrows:
        _table("Queued jobs", [Col("POOL", soft=14, min=6), Col("JOB", "right"), Col("NAME", soft=14, min=6),
                               Col("RANK", "right"), Col("STATUS")], qrows)
