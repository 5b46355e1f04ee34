"""Cluster use cases: launch, exec, status, down, stop, start, autostop, queue, logs, cancel.

Nothing here prints: progress goes to `on_event(kind, message)`, job output to `on_line(rank, line)`.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import state
from .backend import ClusterRuntime, JobStatus, check_mounts, setup_fingerprint
from .errors import BrokerError, Interrupted, NotFoundError, UsageError
from .locks import cluster_lock
from .paths import broker_home
from .state import INIT, STOPPED, UP, ClusterRecord, NodeRecord

Event = Callable[[str, str], None]
Line = Callable[[int, str], None]

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")


def _noop(*_a) -> None:
    return None


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UsageError(f"invalid cluster name {name!r}",
                         "use 1-40 lowercase letters, digits and '-', starting with a letter (clouds restrict names)")
    return name


def default_name(task) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", (task.name or "broker").lower()).strip("-")[:30] or "broker"
    if not base[0].isalpha():
        base = "c-" + base
    return f"{base}-{secrets.token_hex(2)}"


def get(name: str) -> ClusterRecord:
    rec = state.get_cluster(name)
    if rec is None:
        raise NotFoundError(f"cluster {name!r} not found", "see `broker status` for your clusters")
    return rec


def exists(name: str) -> bool:
    return state.get_cluster(name) is not None


@dataclass
class LaunchResult:
    cluster: str
    job_id: int | None
    status: JobStatus | None
    attempts: list
    reused: bool


def launch(task, *, cluster: str | None = None, plan_fn=None, detach: bool = False,
           retry_until_up: bool = False, on_event: Event = _noop, on_line: Line = _noop,
           task_id: str | None = None, extra_env: dict | None = None,
           prepare: Callable[[ClusterRuntime], dict | None] | None = None) -> LaunchResult:
    """Provision (or reuse) a cluster for `task`, sync, run setup+run on every node, stream logs.

    `prepare(runtime)` runs after sync and before submit (managed jobs restore checkpoints there) and
    may return extra environment variables per node rank ({rank: {NAME: value}})."""
    from . import provision

    name = validate_name(cluster) if cluster else default_name(task)
    check_mounts(task)  # before provisioning: an unsupported mount must not leave a cluster behind
    attempts: list = []
    with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
        rec = state.get_cluster(name)
        reused = rec is not None and rec.status == UP
        if rec is not None and rec.status == STOPPED:
            on_event("start", f"starting stopped cluster {name}")
            rec = _start_locked(rec)
        if rec is not None and rec.status == UP:
            if task.num_nodes > rec.num_nodes:
                raise UsageError(f"cluster {name} has {rec.num_nodes} node(s); the task needs {task.num_nodes}",
                                 f"use another cluster name or `broker down {name}` first")
            on_event("reuse", f"reusing cluster {name} ({rec.infra}, {rec.num_nodes} node(s))")
        else:
            if plan_fn is None:
                raise BrokerError("no plan given for a new cluster")
            public_key = None
            if not _all_virtual(task):
                from .runtime.keys import ensure_user_key

                _, public_key = ensure_user_key(broker_home())
            state.add_event(name, "launch", "provisioning")
            cand, infos, attempts = provision.provision(name, plan_fn, public_key=public_key, on_event=on_event,
                                                       retry_until_up=retry_until_up)
            rec = _record(name, cand, infos)
            state.save_cluster(rec)
            try:
                rt = ClusterRuntime(rec)
                on_event("wait", f"waiting for {len(rec.nodes)} node(s) to accept commands")
                rt.wait_ready()
                on_event("agent", "installing the node agent")
                rt.install_agent()
            except BaseException as exc:
                why = "interrupted" if isinstance(exc, KeyboardInterrupt) else "bring-up failed"
                on_event("cleanup", f"{why}: terminating {name} so nothing is left running")
                _terminate(rec)
                if isinstance(exc, KeyboardInterrupt):
                    raise Interrupted(f"launch interrupted; cluster {name} was terminated, nothing is left running") from None
                raise
            rec.status = UP
            state.save_cluster(rec)
            if cand.resources.autostop:
                state.set_autostop(name, cand.resources.autostop.idle_minutes, cand.resources.autostop.down)
                _ensure_autostop_watcher()
        rt = ClusterRuntime(rec)
        try:
            job_id = _sync_and_submit(rt, rec, task, reused, task_id, on_event, extra_env, prepare)
        except KeyboardInterrupt:
            raise Interrupted(f"launch interrupted; cluster {name} is still up (nothing was started on it)",
                              f"reuse it with `broker launch -c {name} ...` or remove it with `broker down {name}`") from None
    if detach:
        rt.close()
        return LaunchResult(name, job_id, None, attempts, reused)
    return LaunchResult(name, job_id, _stream(rt, name, job_id, on_line), attempts, reused)


def _stream(rt: ClusterRuntime, name: str, job_id: int, on_line: Line) -> JobStatus:
    try:
        return rt.stream_logs(job_id, on_line)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following; job {job_id} keeps running on cluster {name}",
                          f"`broker logs {name} {job_id} -f` to follow again, `broker cancel {name} {job_id}` to stop it, "
                          f"`broker down {name}` to remove the cluster") from None
    finally:
        rt.close()


def _sync_and_submit(rt, rec, task, reused, task_id, on_event, extra_env=None, prepare=None) -> int:
    if task.workdir or task.file_mounts:
        on_event("sync", "syncing workdir and file mounts to every node")
        rt.sync(task)
    env = dict(extra_env or {})
    by_rank = prepare(rt) if prepare is not None else None
    run_setup = True
    if reused and task.setup and rec.setup_key == setup_fingerprint(task):
        run_setup = False
        on_event("setup", "setup unchanged since the last launch on this cluster: skipped")
    job_id = rt.submit(task, job_name=task.name, task_id=task_id, run_setup=run_setup, extra_env=env,
                       env_by_rank=by_rank)
    if task.setup and run_setup:
        rec.setup_key = setup_fingerprint(task)
        state.save_cluster(rec)
    on_event("submitted", f"job {job_id} submitted to {rec.name}")
    return job_id


def _all_virtual(task) -> bool:
    return all(r.cloud in ("local", "ssh") for r in task.candidates)


def _record(name: str, cand, infos) -> ClusterRecord:
    ordered = sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))
    nodes = [NodeRecord(i.instance_id, rank, i.public_ip or i.private_ip or "", i.private_ip, i.ssh_user,
                        i.ssh_port, i.home, i.identity_file) for rank, i in enumerate(ordered)]
    return ClusterRecord(name=name, cloud=cand.cloud, region=cand.region, zone=cand.zone or ordered[0].zone,
                         instance_type=cand.instance_type, accelerators=cand.accelerators(), use_spot=cand.use_spot,
                         num_nodes=len(nodes), hourly_price=cand.total, status=INIT, launched_at=time.time(),
                         nodes=nodes, resources=cand.resources.describe())


def exec_(name: str, task, *, detach: bool = False, on_event: Event = _noop, on_line: Line = _noop) -> LaunchResult:
    """Run a task (no setup) on an existing cluster."""
    rec = get(name)
    if rec.status != UP:
        raise UsageError(f"cluster {name} is {rec.status}", f"`broker start {name}` first")
    check_mounts(task)
    with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
        rt = ClusterRuntime(rec)
        if task.workdir or task.file_mounts:
            on_event("sync", "syncing workdir and file mounts to every node")
            rt.sync(task)
        job_id = rt.submit(replace(task, num_nodes=rec.num_nodes), job_name=task.name, run_setup=False)
        on_event("submitted", f"job {job_id} submitted to {name}")
    if detach:
        rt.close()
        return LaunchResult(name, job_id, None, [], True)
    return LaunchResult(name, job_id, _stream(rt, name, job_id, on_line), [], True)


def status(refresh: bool = False, names: list[str] | None = None) -> list[ClusterRecord]:
    recs = state.list_clusters()
    if names:
        recs = [r for r in recs if r.name in names]
    if refresh:
        recs = [r for r in (_refresh(r) for r in recs) if r is not None]
    return recs


def _refresh(rec: ClusterRecord) -> ClusterRecord | None:
    """Reconcile one record with the cloud (the truth)."""
    from .clouds.base import RUNNING, STOPPED as S_STOPPED
    from .clouds.registry import get_cloud

    cloud = get_cloud(rec.cloud)
    infos = cloud.query(rec.name, rec.region)
    if not infos:
        state.add_event(rec.name, "refresh", "no instances found in the cloud: removed from state")
        state.delete_cluster(rec.name)
        return None
    states = {i.state for i in infos}
    new = UP if states == {RUNNING} and len(infos) >= rec.num_nodes else (
        STOPPED if states <= {S_STOPPED, "stopping"} else "DEGRADED")
    if new != rec.status:
        state.set_status(rec.name, new)
        rec.status = new
    return rec


def down(names: list[str], *, on_event: Event = _noop) -> list[str]:
    """Terminate clusters. Idempotent: a name that is already gone is reported, not an error."""
    done = []
    for name in names:
        with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
            rec = state.get_cluster(name)
            if rec is None:
                on_event("skip", f"cluster {name} does not exist (already down)")
                continue
            on_event("down", f"terminating {name} ({rec.infra})")
            _terminate(rec)
            done.append(name)
    return done


def _terminate(rec: ClusterRecord) -> None:
    from .clouds.registry import get_cloud

    get_cloud(rec.cloud).terminate(rec.name, rec.region)
    state.close_intents(rec.name)
    state.add_event(rec.name, "down", "terminated")
    state.delete_cluster(rec.name)


def stop(name: str, *, on_event: Event = _noop) -> None:
    from .clouds.registry import get_cloud

    with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
        rec = get(name)
        cloud = get_cloud(rec.cloud)
        if not cloud.supports_stop:
            raise UsageError(f"the {rec.cloud} cloud cannot stop instances", f"use `broker down {name}`")
        if rec.use_spot:
            raise UsageError("spot instances cannot be stopped", f"use `broker down {name}`")
        cloud.stop(rec.name, rec.region)
        state.set_status(name, STOPPED)
        state.add_event(name, "stop", "stopped")


def start(name: str, *, on_event: Event = _noop) -> ClusterRecord:
    with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
        rec = get(name)
        if rec.status == UP:
            return rec
        return _start_locked(rec)


def _start_locked(rec: ClusterRecord) -> ClusterRecord:
    from .clouds.registry import get_cloud

    cloud = get_cloud(rec.cloud)
    infos = cloud.start(rec.name, rec.region)
    by_id = {i.instance_id: i for i in infos}
    for n in rec.nodes:  # IPs may change across a stop/start
        i = by_id.get(n.instance_id)
        if i is not None:
            n.ip = i.public_ip or i.private_ip or n.ip
            n.private_ip = i.private_ip or n.private_ip
    rec.status = UP
    state.save_cluster(rec)
    rt = ClusterRuntime(rec)
    rt.wait_ready()
    rt.install_agent()
    rt.close()
    state.add_event(rec.name, "start", "started")
    if rec.autostop_minutes is not None:  # as SkyPilot: a restarted cluster starts without autostop
        state.set_autostop(rec.name, None, False)
        rec.autostop_minutes, rec.autostop_down = None, False
        state.add_event(rec.name, "autostop", "cleared by start; set it again with `broker autostop`")
    return rec


def set_autostop(name: str, minutes: int | None, down_after: bool) -> ClusterRecord:
    get(name)  # NotFoundError for an unknown cluster
    state.set_autostop(name, minutes, down_after)
    if minutes is not None:
        _ensure_autostop_watcher()
    return get(name)


def _ensure_autostop_watcher() -> None:
    from . import autostop

    autostop.ensure_watcher()


def queue(name: str) -> list[JobStatus]:
    rec = get(name)
    _require_up(rec)
    rt = ClusterRuntime(rec)
    try:
        return rt.jobs()
    finally:
        rt.close()


def _require_up(rec: ClusterRecord) -> None:
    if rec.status != UP:
        raise UsageError(f"cluster {rec.name} is {rec.status}", f"`broker start {rec.name}` first")


def logs(name: str, job_id: int | None, *, follow: bool, on_line: Line) -> JobStatus:
    rec = get(name)
    _require_up(rec)
    rt = ClusterRuntime(rec)
    try:
        if job_id is None:
            jobs = rt.jobs()
            if not jobs:
                raise NotFoundError(f"cluster {name} has no jobs yet", f"`broker exec {name} -- CMD` runs one")
            job_id = jobs[-1].job_id
        rt.job(job_id)  # NotFoundError for an unknown id
        return rt.stream_logs(job_id, on_line, follow=follow)
    finally:
        rt.close()


def cancel(name: str, job_ids: list[int] | None, all_jobs: bool = False) -> list[int]:
    rec = get(name)
    _require_up(rec)
    if not job_ids and not all_jobs:
        raise UsageError("name the job(s) to cancel, or pass --all", f"see `broker queue {name}`")
    rt = ClusterRuntime(rec)
    try:
        return rt.cancel(None if all_jobs else job_ids)
    finally:
        rt.close()
