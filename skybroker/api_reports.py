"""The api use cases that report (re-exported by api.py, the facade): whether this machine's background
processes run, the stored lifecycle/failover/recovery/autostop events, and what was spent, from the cost
ledger (cost report, live clusters' and managed jobs' costs, stopped clusters' disk rate, a managed job's
market timeline). Nothing here prints or reads the terminal.
"""
from __future__ import annotations


def daemons() -> dict:
    """Whether the background processes on this machine are running: the autostop watcher and the
    managed-jobs controller (each holds a lock file while it runs). No process is started."""
    from .paths import broker_home

    def held(path) -> bool:
        from filelock import FileLock, Timeout

        if not path.exists():
            return False
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    home = broker_home()
    return {"autostop_watcher": held(home / "autostop.lock"),
            "jobs_controller": held(home / "managed" / "controller.lock")}


def events(cluster: str | None = None, job_id: int | None = None, limit: int = 50) -> list[dict]:
    """Stored lifecycle, failover, recovery and autostop events: of a cluster, of a managed job, or the
    most recent of all clusters."""
    from . import state
    from .errors import NotFoundError, UsageError

    if cluster and job_id is not None:
        raise UsageError("give a cluster or --job, not both")
    if job_id is not None:
        from .jobs import ops, store

        ops.get(job_id)
        return [dict(e, job_id=job_id) for e in store.events(job_id)][-limit:]
    if cluster:
        from .locks import validate_name

        ev = state.events(validate_name(cluster))
        if not ev and state.get_cluster(cluster) is None:
            raise NotFoundError(f"cluster {cluster!r} has no events and does not exist", "see `broker status`")
        return ev[-limit:]
    return state.recent_events(limit)


def cost_report(since_s: float | None = None, everything: bool = False, only_user: str | None = None) -> dict:
    """Every cluster run and managed job in the cost ledger, with costs (costs/report.py); a server's
    non-admin gets `only_user`'s."""
    from .costs import ledger, report

    at = ledger.now()
    return report.build(None if since_s is None else at - since_s, everything, at, only_user)


def cluster_costs() -> dict:
    """Cost so far of each live cluster (its current run in the ledger)."""
    from .costs import ledger

    return ledger.cluster_costs()


def job_timeline(job_id: int) -> dict:
    """A managed job's market over time (costs/timeline.py): its runs from the ledger and its recoveries."""
    from .costs import ledger, timeline
    from .errors import NotFoundError
    from .jobs import store

    j = store.get(job_id)
    if j is None:
        raise NotFoundError(f"no managed job {job_id}", "see `broker jobs queue`")
    at = ledger.now()
    segs = timeline.segments(ledger.runs(job_id=job_id), at)
    recoveries = [e["ts"] for e in store.events(job_id) if e["kind"] in ("recovery", "switch")]
    return {"id": j.id, "name": j.name, "status": j.status, "submitted_at": j.submitted_at,
            "ended_at": j.ended_at, "now": at, "segments": segs, "recoveries": recoveries}


def stopped_hourly() -> dict:
    """$/h each stopped cluster is billed (its disks), from the ledger."""
    from .costs import ledger

    return ledger.stopped_hourly()


def job_costs() -> dict:
    """Cost so far (or total) of each managed job across its recoveries, from the ledger."""
    from .costs import ledger

    return ledger.job_costs()
