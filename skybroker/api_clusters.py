"""The api use cases of clusters (re-exported by api.py, the facade; clusters.py does the work): launch
(re-planning through api_plan.plan on failover), exec, status, ssh, stop/start/down, autostop, a
cluster's queue, logs and cancel, adopting what the clouds have by tag, and the orphan scan (gc). Nothing
here prints or reads the terminal.
"""
from __future__ import annotations

from .api_plan import plan as _plan_task  # `launch` takes a `plan=` argument that shadows the function


def cluster_exists(name: str) -> bool:
    from . import clusters

    return clusters.exists(clusters.validate_name(name))


def get_cluster(name: str):
    """The cluster's record (local state only; no cloud call). NotFoundError (exit 5) when unknown."""
    from . import state
    from .errors import NotFoundError

    rec = state.get_cluster(name)
    if rec is None:
        raise NotFoundError(f"cluster {name!r} not found", "see `broker status` for your clusters")
    return rec


def cluster_names() -> list[str]:
    """Names of the known clusters (local state; for shell completion)."""
    from . import state

    return [r.name for r in state.list_clusters()]


def launch(task, *, cluster: str | None = None, plan=None, detach: bool = False, retry_until_up: bool = False,
           keep_on_failure: bool = False, on_event=None, on_line=None):
    """Provision (failing over zone → region → cloud) or reuse a cluster, then run the task on it."""
    from . import clusters

    first = plan

    def plan_fn(blocks):
        nonlocal first
        if first is not None and not blocks:
            p, first = first, None
            return p
        return _plan_task(task, blocks, clouds=plan.clouds if plan is not None else None,
                          allow_suspicious=plan.allow_suspicious if plan is not None else None)

    return clusters.launch(task, cluster=cluster, plan_fn=plan_fn, detach=detach, retry_until_up=retry_until_up,
                           keep_on_failure=keep_on_failure, on_event=on_event or (lambda k, m: None),
                           on_line=on_line or (lambda r, l: None))


def exec_(name: str, task, *, detach: bool = False, on_event=None, on_line=None):
    from . import clusters

    return clusters.exec_(name, task, detach=detach, on_event=on_event or (lambda k, m: None),
                          on_line=on_line or (lambda r, l: None))


def status(refresh: bool = False, names=None, all_users: bool = False):
    """Clusters in the state (with refresh: reconciled with the clouds). `all_users` matters in server
    mode only (a server shows each user theirs by default); locally every cluster is the user's."""
    from . import clusters

    recs = clusters.status(refresh=refresh, names=names)
    if names:
        missing = [n for n in names if n not in {r.name for r in recs}]
        if missing:
            from .errors import NotFoundError

            raise NotFoundError(f"cluster{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found",
                                "see `broker status` for your clusters")
    return recs


def ssh_target(name: str, rank: int = 0) -> dict:
    from . import clusters

    return clusters.ssh_target(name, rank)


def gc_scan(clouds=None, regions=None, on_event=None):
    """Resources tagged by skybroker that the state does not know, and interrupted launches (gc.py)."""
    from . import gc

    return gc.scan(tuple(clouds) if clouds else None, regions, on_event=on_event or (lambda k, m: None))


def gc_remove(orphans, on_event=None) -> list[str]:
    """Remove what gc_scan found; returns warnings."""
    from . import gc

    return gc.remove(list(orphans), on_event=on_event or (lambda k, m: None))


def ssh_grant(name: str, rank: int, public_key: str) -> dict:
    """(A server's) authorize a client's own public key on a node; how to reach it (clusters.ssh_grant)."""
    from . import clusters

    return clusters.ssh_grant(name, rank, public_key)


def forget_host_keys(cluster: str, rank: int | None = None) -> list[str]:
    from . import clusters

    return clusters.forget_host_keys(cluster, rank)


def adopt(on_event=None) -> list[str]:
    """Record in the state every cluster the ready clouds have by tag and the state does not know."""
    from . import clusters

    return clusters.adopt(on_event=on_event or (lambda k, m: None))


def down(names, on_event=None):
    """`broker down`: a cluster of an active managed job or pool is skipped with a note saying what ends it."""
    from . import clusters

    return clusters.down(list(names), on_event=on_event or (lambda k, m: None), spare_owned=True)


def stop(name: str, on_event=None):
    from . import clusters

    clusters.refuse_if_owned(name, "stopped")
    return clusters.stop(name, on_event=on_event or (lambda k, m: None))


def start(name: str, on_event=None):
    from . import clusters

    return clusters.start(name, on_event=on_event or (lambda k, m: None))


def set_autostop(name: str, minutes, down: bool):
    from . import clusters

    clusters.refuse_if_owned(name, "given an autostop")
    return clusters.set_autostop(name, minutes, down)


def queue(name: str, on_event=None):
    """A cluster's jobs. On a DEGRADED cluster the nodes that answer are asked, and each lost node is
    named in a warning (on_event("warning", ...))."""
    from . import cluster_jobs

    return cluster_jobs.queue(name, on_event=on_event or (lambda k, m: None))


def logs(name: str, job_id, *, follow: bool, on_line, on_event=None):
    from . import cluster_jobs

    return cluster_jobs.logs(name, job_id, follow=follow, on_line=on_line, on_event=on_event or (lambda k, m: None))


def cancel(name: str, job_ids, all_jobs: bool = False, on_event=None):
    """Cancel jobs on a cluster. An id the cluster never had is NotFoundError (exit 5), checked before
    anything is cancelled; a job that already finished is simply not in the returned list."""
    from . import cluster_jobs
    from .errors import names_or_all

    names_or_all(job_ids, all_jobs, "job ids")  # also for a server's clients
    if job_ids and not all_jobs:
        get_cluster(name)
        known = {j.job_id for j in cluster_jobs.queue(name)}
        unknown = [j for j in job_ids if j not in known]
        if unknown:
            from .errors import NotFoundError

            raise NotFoundError(f"no job {', '.join(map(str, unknown))} on cluster {name}",
                                f"see `broker queue {name}`")
    return cluster_jobs.cancel(name, job_ids, all_jobs, on_event=on_event or (lambda k, m: None))
