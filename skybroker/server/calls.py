"""What a client may ask the server: api.py's use cases, each with its authorization, run for a user.

Rules (README "Teams and CI"):
- every cluster and managed job records its user; listing shows the caller's unless `all_users`;
- a non-admin may not launch onto, exec on, ssh into, read the logs or queue of, stop, start, autostop,
  cancel on or tear down another user's cluster, nor read or cancel another user's managed job: ForbiddenError (HTTP
  403), checked before anything is done; admins may (clusters made in local mode have no user: admins only);
- a task's local sources must be the caller's own uploads (`upload://ID/...`): the server never reads its
  own files for a client; the local cloud (nodes on the server machine itself) only when the server was
  started with --allow-local-cloud.

Each entry: (check, run, stream). `check(user, args, kwargs)` raises before anything happens; `run(user,
*args, **kwargs)` does the work; `stream` maps the callback parameters to stream message types (None: a
plain JSON answer).
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from .. import api, state
from ..errors import ForbiddenError, NotFoundError, UsageError, not_yours

EV, LN, RAW = "event", "line", "raw"
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def upload_root(user_name: str) -> Path:
    from ..paths import ensure_home, private_dir

    return private_dir(private_dir(ensure_home() / "uploads") / user_name)


# ----------------------------------------------------------------------------------------------
# ownership

def _deny(what: str, owner: str | None) -> ForbiddenError:
    return not_yours(what, owner)


def own_cluster(user, name) -> None:
    if not isinstance(name, str):
        raise UsageError("a cluster name must be a string")
    rec = state.get_cluster(name)
    if rec is not None and not user.admin and rec.user_name != user.name:
        raise _deny(f"cluster {name}", rec.user_name)


def own_job(user, job_id) -> None:
    from ..jobs import store

    if isinstance(job_id, bool) or not isinstance(job_id, (int, str)) or not str(job_id).isdigit():
        raise UsageError(f"a managed job id must be a number, not {job_id!r}")
    j = store.get(int(job_id))
    if j is not None and not user.admin and j.user_name != user.name:
        raise _deny(f"managed job {job_id}", j.user_name)


def _mine(user, rec) -> bool:
    return rec.user_name == user.name


# ----------------------------------------------------------------------------------------------
# tasks from a client

def server_task(user, task):
    """The task with its upload:// sources resolved to the caller's uploads; any other local path is
    refused (the server does not hand its own files to a client's cluster)."""
    from ..spec import Task

    if not isinstance(task, Task):
        raise UsageError("expected a task")

    def resolve(src: str, what: str) -> str:
        if not src.startswith("upload://"):
            raise UsageError(f"{what} {src} is a path on the server", "in client mode local sources are "
                             "uploaded by the client; send the task with `broker` in client mode")
        uid, _, rest = src[len("upload://"):].partition("/")
        base = upload_root(user.name) / uid
        if not _UPLOAD_ID.match(uid) or not base.is_dir() or not re.match(r"^[wm][0-9]*$", rest):
            raise UsageError(f"{what}: unknown upload {uid!r}", "upload again (the client does it on launch)")
        return str(base / rest)

    for r in task.candidates:
        if r.cloud == "local" and os.environ.get("BROKER_SERVER_ALLOW_LOCAL_CLOUD") != "1":
            raise ForbiddenError("this server does not run the local cloud (its nodes would be the server machine)",
                                 "name a cloud, or start the server with --allow-local-cloud (trusted users only)")
    workdir = resolve(task.workdir, "workdir") if task.workdir else None
    mounts = tuple(m if m.is_bucket else replace(m, source=resolve(m.source, f"file mount {m.remote}"))
                   for m in task.file_mounts)
    # placement (allowed clouds/regions) is the server's config, never the client's (jobs launch bakes it in here)
    return replace(task, workdir=workdir, file_mounts=mounts, placement=None)


def _plan_check(user, task):
    from ..spec import Task

    if not isinstance(task, Task):
        raise UsageError("expected a task")


# ----------------------------------------------------------------------------------------------
# the calls

def _none(user, args, kwargs) -> None:
    return None


def _admin(user, args, kwargs) -> None:
    if not user.admin:
        raise ForbiddenError("only an admin may do this", "ask an admin (`broker server token create NAME --admin`)")


def _at(args: list, i: int):
    """The i-th argument of a call (bind() put every argument the use case takes by position there)."""
    return args[i] if len(args) > i else None


def _first_cluster(user, args, kwargs) -> None:
    own_cluster(user, _at(args, 0))


def run_status(user, refresh=False, names=None, all_users=False):
    """The clusters and, in the same answer, the daemons' state (`status` is one round trip)."""
    recs = api.status(refresh=refresh, names=names)
    if not all_users and not names:
        recs = [r for r in recs if _mine(user, r)]
    return {"clusters": recs, "daemons": run_daemons(user)}


def run_cluster_names(user):
    return [r.name for r in state.list_clusters() if user.admin or _mine(user, r)]


def check_launch(user, args, kwargs) -> None:
    server_task(user, _at(args, 0))
    if kwargs.get("cluster"):
        own_cluster(user, kwargs["cluster"])


def run_launch(user, task, **kw):
    try:
        return api.launch(server_task(user, task), **kw)
    finally:
        drop_uploads(user, task)  # synced to the nodes (or the launch failed): not needed any more


def check_exec(user, args, kwargs) -> None:
    own_cluster(user, _at(args, 0))
    server_task(user, _at(args, 1))


def run_exec(user, name, task, **kw):
    try:
        return api.exec_(name, server_task(user, task), **kw)
    finally:
        drop_uploads(user, task)


def check_down(user, args, kwargs) -> None:
    names = args[0] if args else kwargs.get("names") or []
    if not isinstance(names, list):
        raise UsageError("expected a list of cluster names")
    for n in names:
        own_cluster(user, n)


def check_events(user, args, kwargs) -> None:
    cluster = args[0] if args else kwargs.get("cluster")
    job_id = args[1] if len(args) > 1 else kwargs.get("job_id")
    if cluster:
        own_cluster(user, cluster)
    if job_id is not None:
        own_job(user, job_id)


def run_events(user, cluster=None, job_id=None, limit=50):
    if job_id is not None or user.admin:
        return api.events(cluster, job_id, limit)
    # a cluster's events are its user's: recorded for them, or recorded for no user (the broker's own
    # watchers, events from before v16) while the cluster exists and is theirs; a gone cluster's history,
    # or an earlier user's of a reused name, is nobody else's
    mine = {r.name for r in state.list_clusters() if _mine(user, r)}
    evs = api.events(cluster, None, 10 ** 6 if cluster else limit)
    out = [e for e in evs if e.get("user_name") == user.name or (e.get("user_name") is None and e.get("cluster") in mine)]
    if cluster and not out and cluster not in mine:
        raise NotFoundError(f"cluster {cluster!r} has no events and does not exist", "see `broker status`")
    return out[-limit:]


def run_jobs_launch(user, task):
    return api.jobs_launch(server_task(user, task))  # its uploads stay until the job ends (sweep_uploads)


def check_pipeline(user, args, kwargs) -> None:
    tasks = args[0] if args else kwargs.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UsageError("expected a list of tasks")
    for t in tasks:
        server_task(user, t)


def run_jobs_launch_pipeline(user, tasks, name=None):
    from ..spec import Pipeline

    return api.jobs_launch_pipeline(Pipeline([server_task(user, t) for t in tasks], name))


def run_jobs_queue(user, all_users=False):
    js = api.jobs_queue()
    return js if all_users else [j for j in js if j.user_name == user.name]


def check_job(user, args, kwargs) -> None:
    own_job(user, _at(args, 0))


def check_jobs_cancel(user, args, kwargs) -> None:
    ids = _at(args, 0) or []
    if not isinstance(ids, list):
        raise UsageError("expected a list of job ids")
    for jid in ids:
        own_job(user, jid)


def run_jobs_cancel(user, job_ids, all_=False):
    from ..errors import names_or_all

    names_or_all(job_ids, all_, "job ids")
    if all_:  # every active job *of the caller* (an admin cancels others' jobs by id)
        from ..jobs import store

        job_ids = [j.id for j in store.active() if j.user_name == user.name]
        if not job_ids:
            return []
        all_ = False
    return api.jobs_cancel(job_ids, all_)


def run_cluster_costs(user):
    mine = {r.name for r in state.list_clusters() if user.admin or _mine(user, r)}
    return {k: v for k, v in api.cluster_costs().items() if k in mine}


def run_stopped_hourly(user):
    mine = {r.name for r in state.list_clusters() if user.admin or _mine(user, r)}
    return {k: v for k, v in api.stopped_hourly().items() if k in mine}


def run_job_costs(user):
    from ..jobs import store

    mine = {j.id for j in store.all_jobs() if user.admin or j.user_name == user.name}
    return {str(k): v for k, v in api.job_costs().items() if k in mine}


def run_cost_report(user, since_s=None, everything=False):
    """An admin: the team's whole ledger; anyone else: their own clusters' runs and jobs."""
    return api.cost_report(since_s, everything, None if user.admin else user.name)


def run_daemons(user):
    from . import daemons

    lead = daemons.leader_alive()
    return {"autostop_watcher": lead, "jobs_controller": lead, "where": "server"}


def own_pool(user, name) -> None:
    from ..jobs import pool_store

    p = pool_store.get(name) if isinstance(name, str) else None
    if p is not None and not user.admin and p.user_name != user.name:
        raise _deny(f"pool {name}", p.user_name)


def check_pool_apply(user, args, kwargs) -> None:
    own_pool(user, _at(args, 0))
    if len(args) > 1 and args[1] is not None:
        server_task(user, args[1])


def run_pool_apply(user, name, task, workers=None):
    api.pool_apply(name, server_task(user, task) if task is not None else None, workers)  # the row stays here


def run_pool_status(user, name=None):
    from ..jobs import pool_store

    if name is not None:
        own_pool(user, name)
        return api.pool_status(name)
    mine = {p.name for p in pool_store.all_pools() if user.admin or p.user_name == user.name}
    return [p for p in api.pool_status() if p["name"] in mine]


def run_jobs_launch_pool(user, pool, task, num_jobs=1):
    return api.jobs_launch_pool(pool, server_task(user, task), num_jobs)


def _plain(fn):
    def run(user, *a, **kw):
        return fn(*a, **kw)

    run.__wrapped__ = fn  # bind() reads the use case's own parameters
    return run


CALLS = {
    "plan": (lambda u, a, k: _plan_check(u, _at(a, 0)), _plain(api.plan), None),
    "preflight": (lambda u, a, k: server_task(u, _at(a, 0)),
                  lambda u, task, plan=None: api.preflight(server_task(u, task), plan), None),
    "cluster_exists": (_none, _plain(api.cluster_exists), None),
    "get_cluster": (lambda u, a, k: own_cluster(u, _at(a, 0)), _plain(api.get_cluster), None),  # its record: its user only
    "cluster_names": (_none, run_cluster_names, None),
    "status": (_none, run_status, None),
    "daemons": (_none, run_daemons, None),
    "launch": (check_launch, run_launch, {"on_event": EV, "on_line": LN}),
    "exec_": (check_exec, run_exec, {"on_event": EV, "on_line": LN}),
    "adopt": (_admin, _plain(api.adopt), {"on_event": EV}),
    "gc_scan": (_admin, _plain(api.gc_scan), {"on_event": EV}),  # the server's clouds and state: admins
    "gc_remove": (_admin, _plain(api.gc_remove), {"on_event": EV}),
    "forget_host_keys": (_first_cluster, _plain(api.forget_host_keys), None),
    "ssh_grant": (_first_cluster, _plain(api.ssh_grant), None),
    "down": (check_down, _plain(api.down), {"on_event": EV}),
    "stop": (_first_cluster, _plain(api.stop), {"on_event": EV}),
    "start": (_first_cluster, _plain(api.start), {"on_event": EV}),
    "set_autostop": (_first_cluster, _plain(api.set_autostop), None),
    "queue": (_first_cluster, _plain(api.queue), {"on_event": EV}),
    "logs": (_first_cluster, _plain(api.logs), {"on_line": LN, "on_event": EV}),
    "cancel": (_first_cluster, _plain(api.cancel), {"on_event": EV}),
    "events": (check_events, run_events, None),
    "jobs_launch": (lambda u, a, k: server_task(u, _at(a, 0)), run_jobs_launch, None),
    "jobs_launch_pipeline": (check_pipeline, run_jobs_launch_pipeline, None),
    "jobs_queue": (_none, run_jobs_queue, None),
    "jobs_get": (check_job, _plain(api.jobs_get), None),
    "jobs_logs": (check_job, _plain(api.jobs_logs), {"on_line": RAW}),
    "jobs_cancel": (check_jobs_cancel, run_jobs_cancel, None),
    "cluster_costs": (_none, run_cluster_costs, None),
    "job_costs": (_none, run_job_costs, None),
    "stopped_hourly": (_none, run_stopped_hourly, None),
    "job_timeline": (check_job, _plain(api.job_timeline), None),
    "cost_report": (_none, run_cost_report, None),
    "pool_apply": (check_pool_apply, run_pool_apply, None),
    "pool_status": (_none, run_pool_status, None),
    "pool_down": (lambda u, a, k: own_pool(u, _at(a, 0)), lambda u, name, wait=False: api.pool_down(name, False), None),
    "jobs_launch_pool": (lambda u, a, k: (own_pool(u, _at(a, 0)), server_task(u, _at(a, 1))), run_jobs_launch_pool, None),
}


def _status_cacheable(args, kwargs, value) -> bool:
    refresh = args[0] if args else kwargs.get("refresh", False)
    return not refresh and all(r.status not in (state.INIT, state.INTERRUPTED) for r in value["clusters"])


# The reads whose answers the server caches (cache.py): the tables each is read from, and whether one
# answer may be cached (not when it depends on anything but those tables).
CACHED = {
    "status": (("clusters",), _status_cacheable),
    "jobs_queue": (("managed_jobs",), lambda args, kwargs, value: True),
}


# Calls that are pure computation (the optimizer): run a few at a time, so that a burst of them leaves
# the GIL to the event loop serving the cached reads.
CPU_BOUND = frozenset({"plan", "preflight"})


def bind(fn: str, run, stream, args: list, kwargs: dict) -> tuple[list, dict]:
    """The client's arguments as the use case takes them: one it named that has a position goes in that
    position, so every check (which reads positions) sees it however it was sent (a non-admin's
    `jobs_cancel` with `job_ids` by name cancelled another user's job); one the use case does not take, or a
    callback the server passes itself, is refused (exit 2)."""
    import inspect

    sig = inspect.signature(run)  # follows _plain's __wrapped__ to the use case
    params = list(sig.parameters.values())
    if not hasattr(run, "__wrapped__"):
        params = params[1:]  # run(user, ...)
    if set(kwargs) & set(stream or ()):
        raise UsageError(f"the call {fn!r} takes no {', '.join(sorted(set(kwargs) & set(stream)))} from a client")
    try:
        bound = sig.replace(parameters=params).bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise UsageError(f"bad arguments for the call {fn!r}: {exc}", "client and server versions differ? "
                         "install the same skybroker version on both") from None
    return list(bound.args), dict(bound.kwargs)


def lookup(fn: str):
    entry = CALLS.get(fn)
    if entry is None:
        raise NotFoundError(f"the server has no call {fn!r}", "client and server versions differ? "
                            "install the same skybroker version on both")
    return entry


UPLOAD_GRACE = 3600.0  # an upload no launch used (a declined confirmation, a client gone) lives this long


def _upload_ids(task) -> set[str]:
    srcs = [task.workdir] + [m.source for m in task.file_mounts if not m.is_bucket]
    return {s[len("upload://"):].partition("/")[0] for s in srcs if s and s.startswith("upload://")}


def drop_uploads(user, task) -> None:
    import shutil

    for uid in _upload_ids(task):
        if _UPLOAD_ID.match(uid):
            shutil.rmtree(upload_root(user.name) / uid, ignore_errors=True)


def sweep_uploads(user_name: str | None = None, grace: float = UPLOAD_GRACE) -> list[str]:
    """Remove uploads older than `grace` that no active managed job uses (a job's recoveries sync from its
    upload, so it lives until the job ends). One user's, or everyone's. Returns the ids removed."""
    import shutil
    import time

    from ..jobs import store
    from ..paths import broker_home

    root = broker_home() / "uploads"
    if not root.is_dir():
        return []
    used = " ".join(f"{j.task} {getattr(j, 'stages', '') or ''}" for j in store.active())
    gone = []
    for udir in ([root / user_name] if user_name else [p for p in root.iterdir() if p.is_dir()]):
        for d in (udir.iterdir() if udir.is_dir() else ()):
            try:
                old = time.time() - d.stat().st_mtime > grace
            except OSError:
                continue
            if old and _UPLOAD_ID.match(d.name) and d.name not in used:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
    return gone


def _link_inside(top: str, name: str, link: str, filtered: bool) -> bool:
    """Whether a symlink of the upload points inside its own source (`w/sub/l` → `../a.txt` does): judged
    by its path here; the tarfile data filter then checks the real path as it extracts (without that
    filter, Python < 3.11.4, no link may go up at all)."""
    import posixpath

    if link.startswith("/") or (not filtered and ".." in link.split("/")):
        return False
    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    return target == top or target.startswith(top + "/")


def extract_upload(user, data) -> str:
    """Unpack a client's tar.gz of task sources (bytes, or a file open at its start) into the user's upload
    area; returns its id."""
    import io
    import tarfile
    import uuid

    sweep_uploads(user.name)
    uid = uuid.uuid4().hex
    dest = upload_root(user.name) / uid
    dest.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=data if hasattr(data, "read") else io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                top = m.name.split("/", 1)[0]
                if m.name.startswith("/") or ".." in m.name.split("/") or not re.match(r"^[wm][0-9]*$", top) \
                        or not (m.isfile() or m.isdir() or m.issym()):
                    raise UsageError(f"upload: refusing the entry {m.name!r}")
                if m.issym() and not _link_inside(top, m.name, m.linkname, hasattr(tarfile, "data_filter")):
                    where = "the workdir" if top == "w" else "its file mount"
                    raise UsageError(f"upload: the link {m.name.partition('/')[2] or m.name} → {m.linkname} points "
                                     f"out of {where}, which a server cannot follow",
                                     "make it a relative link inside it, mount its target with file_mounts, or "
                                     "leave it out (.brokerignore)")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4: members were checked above
                tar.extractall(dest)
    except (tarfile.TarError, OSError, EOFError) as exc:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
        raise UsageError(f"upload: not a readable tar.gz ({exc})") from None
    except BaseException:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
        raise
    os.chmod(dest, 0o700)
    return uid
