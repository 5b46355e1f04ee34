"""A cluster's jobs: queue, logs, cancel. On a DEGRADED cluster the nodes that answer are asked (its lost
nodes are not: each would wait out a connect timeout), and each node that could not be reached is named
in a warning (`on_event("warning", ...)`). Nothing here prints.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .clusters import _noop, _require_up, get_fresh
from .errors import NotFoundError, UsageError
from .state import DEGRADED

if TYPE_CHECKING:  # pragma: no cover
    from .backend_jobs import JobStatus

Event = Callable[[str, str], None]
Line = Callable[[int, str], None]


def queue(name: str, on_event: Event = _noop) -> list[JobStatus]:
    rt = _jobs_runtime(name)
    try:
        return rt.jobs()
    finally:
        _warn_unreached(rt, "its jobs there show as last seen ended, else UNREACHABLE", on_event)


def _jobs_runtime(name: str):
    """The runtime of a cluster whose jobs are looked at or cancelled: UP, or DEGRADED (its lost nodes
    are not asked; the rest answer)."""
    from .backend import ClusterRuntime

    rec = get_fresh(name)
    _require_up(rec, degraded_ok=True)
    rt = ClusterRuntime(rec)
    if rec.status == DEGRADED:
        rt.skip_lost()
    return rt


def _warn_unreached(rt, what: str, on_event: Event) -> None:
    rt.close()
    for w in rt.unreached_warnings(what):
        on_event("warning", w)


def logs(name: str, job_id: int | None, *, follow: bool, on_line: Line, on_event: Event = _noop) -> JobStatus:
    rt = _jobs_runtime(name)
    try:
        if job_id is None:
            jobs = rt.jobs()
            if not jobs:
                raise NotFoundError(f"cluster {name} has no jobs yet", f"`broker exec {name} -- CMD` runs one")
            job_id = jobs[-1].job_id
        rt.job(job_id)  # NotFoundError for an unknown id
        return rt.stream_logs(job_id, on_line, follow=follow)
    finally:
        _warn_unreached(rt, "its log is not shown", on_event)


def cancel(name: str, job_ids: list[int] | None, all_jobs: bool = False, on_event: Event = _noop) -> list[int]:
    if not job_ids and not all_jobs:
        raise UsageError("name the job(s) to cancel, or pass --all", f"see `broker queue {name}`")
    rt = _jobs_runtime(name)
    try:
        if job_ids:
            for jid in job_ids:
                rt.job(jid)  # NotFoundError (exit 5) for an unknown job, as everywhere
        return rt.cancel(None if all_jobs else job_ids)
    finally:
        _warn_unreached(rt, f"nothing was cancelled there (a job may still run on it: `broker cancel` again "
                            f"once it answers, or `broker down {rt.rec.name}`)", on_event)
