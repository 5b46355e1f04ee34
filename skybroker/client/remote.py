"""api.py's use cases, done by a broker server: the same functions with the same signatures, so the
commands in skybroker/commands/ work unchanged in client mode (commands.options.use_api picks this
module or api.py). Task files are read here, on the client; a task's local workdir and file-mount
sources are uploaded (tar.gz, .gitignore/.brokerignore honoured as in a sync) and the server gets the
task pointing at its copy. Callbacks (on_event, on_line) are fed from the server's stream.
"""
from __future__ import annotations

from dataclasses import replace

from ..api_plan import COMMON_GPUS, GpuRow, exec_task, load_pipeline, load_task, show_gpus  # noqa: F401 - client-side
from ..errors import Interrupted, UsageError

_client = None
_uploaded: dict[int, tuple[object, object]] = {}


def client():
    global _client
    if _client is None:
        from . import endpoint
        from .http import Client

        url, token = endpoint()
        _client = Client(url, token)
    return _client


def _call(fn, *args, **kw):
    return client().call(fn, *args, **kw)


def _streamed(fn, interrupted: str, *args, **kw):
    try:
        return client().call(fn, *args, **kw)
    except KeyboardInterrupt:
        raise Interrupted(interrupted) from None


def _submitting(fn, interrupted: str, *args, on_event=None, **kw):
    """A launch or exec: interrupted before its job was submitted, `interrupted`; after (the server said
    "job N submitted to C"), what a local one says then: the job keeps running, how to follow or stop it."""
    import re

    seen: list = []

    def event(kind, msg):
        m = re.match(r"job (\d+) submitted to (\S+)$", msg) if kind == "submitted" else None
        if m:
            seen.append(m.groups())
        if on_event is not None:
            on_event(kind, msg)

    try:
        return client().call(fn, *args, on_event=event, **kw)
    except KeyboardInterrupt:
        if not seen:
            raise Interrupted(interrupted) from None
        job, name = seen[-1]
        raise Interrupted(f"stopped following; job {job} keeps running on cluster {name}",
                          f"`broker logs {name} {job} -f` to follow again, `broker cancel {name} {job}` to stop it, "
                          f"`broker down {name}` to remove the cluster") from None


# ----------------------------------------------------------------------------------------------
# tasks: local sources travel as an upload

def _prepare(task):
    """The task with its local sources replaced by an upload on the server (once per task object)."""
    hit = _uploaded.get(id(task))
    if hit is not None and hit[0] is task:
        return hit[1]
    mounts = [m for m in task.file_mounts if not m.is_bucket]
    if not task.workdir and not mounts:
        return task
    with _tarball(task.workdir, [m.source for m in mounts]) as tgz:
        uid = client().upload(tgz)
    i = iter(range(len(mounts)))
    fms = tuple(m if m.is_bucket else replace(m, source=f"upload://{uid}/m{next(i)}") for m in task.file_mounts)
    new = replace(task, workdir=f"upload://{uid}/w" if task.workdir else None, file_mounts=fms)
    _uploaded[id(task)] = (task, new)
    return new


def _tarball(workdir: str | None, sources: list[str]):
    """The task's workdir and local file-mount sources as one tar.gz in an unnamed temp file (open, at its
    start): never held in memory whole. Over the server's limit it is refused here, before it is sent."""
    import os
    import tarfile
    import tempfile

    from ..runtime.sync import copy_tree
    from ..wire import MAX_UPLOAD

    class _Over(Exception):
        pass

    def within(info):  # per member, before it is added: stop as soon as the limit is passed
        if out.tell() > MAX_UPLOAD:
            raise _Over
        return info

    out = tempfile.TemporaryFile()
    try:
        try:
            with tarfile.open(fileobj=out, mode="w:gz") as tar, tempfile.TemporaryDirectory() as tmp:
                if workdir:
                    staged = os.path.join(tmp, "w")
                    copy_tree(workdir, staged, ignore_files=True)  # what a sync would ship, nothing more
                    tar.add(staged, arcname="w", filter=within)
                for n, src in enumerate(sources):
                    if not os.path.exists(src):
                        raise UsageError(f"file mount source {src} does not exist")
                    tar.add(src, arcname=f"m{n}", filter=within)
        except _Over:
            pass
        if out.tell() > MAX_UPLOAD:
            raise UsageError(f"the task's workdir and local file mounts are over {MAX_UPLOAD >> 30} GiB compressed, "
                             f"more than a broker server accepts as an upload",
                             "leave large files out (.brokerignore / .gitignore in the workdir), or put data in "
                             "a bucket and mount it (file_mounts: {/data: s3://...})")
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


# ----------------------------------------------------------------------------------------------
# the use cases (see api.py for what each does)

def plan(task, blocklist=(), clouds=None, allow_suspicious=None, managed=False, check_budget=True):
    return _call("plan", task, list(blocklist), clouds, allow_suspicious=allow_suspicious, managed=managed,
                 check_budget=check_budget)


def preflight(task, plan=None) -> None:
    return _call("preflight", _prepare(task), plan)


def cluster_exists(name: str) -> bool:
    return _call("cluster_exists", name)


def get_cluster(name: str):
    return _call("get_cluster", name)


def cluster_names() -> list[str]:
    return _call("cluster_names")


def launch(task, *, cluster=None, plan=None, detach=False, retry_until_up=False, keep_on_failure=False,
           on_event=None, on_line=None):
    return _submitting("launch", "interrupted: the server rolls back what this launch was creating "
                       "(a job already running keeps running; see `broker status`)",
                       _prepare(task), cluster=cluster, plan=plan, detach=detach, retry_until_up=retry_until_up,
                       keep_on_failure=keep_on_failure, on_event=on_event, on_line=on_line)


def exec_(name: str, task, *, detach=False, on_event=None, on_line=None):
    return _submitting("exec_", f"exec interrupted; cluster {name} stays up (`broker queue {name}` shows "
                       "whether its job was submitted)",
                       name, _prepare(task), detach=detach, on_event=on_event, on_line=on_line)


_daemons: dict | None = None


def status(refresh=False, names=None, all_users=False):
    global _daemons
    out = _call("status", refresh=refresh, names=names, all_users=all_users)
    _daemons = out["daemons"]  # `status` then asks daemons(): already answered, no second round trip
    return out["clusters"]


def ssh_target(name: str, rank: int = 0) -> dict:
    """ssh with this machine's own key (BROKER_HOME/keys, made on first use), which the server authorizes
    on the node (the broker's key stays on the server), and the host key the server pinned at launch."""
    from ..paths import ensure_home, private_dir, private_file
    from ..runtime.keys import ensure_user_key

    home = ensure_home()
    key, pub = ensure_user_key(home)
    g = _call("ssh_grant", name, rank, pub)
    if not g.get("host_key"):
        raise UsageError(f"the server has no pinned host key for {name} node {rank}",
                         f"`broker exec {name} -- true` makes the server connect (and pin it), then retry")
    alias = f"{name}-node{rank}"
    known = private_dir(home / "ssh") / f"{alias}.known_hosts"
    with private_file(known, "w") as f:
        f.write(f"{alias} {g['host_key'][0]} {g['host_key'][1]}\n")
    return {"kind": "ssh", "argv": ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f"HostKeyAlias={alias}",
                                    "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                                    "-p", str(g["port"]), "-l", g["user"], g["host"]]}


def gc_scan(clouds=None, regions=None, on_event=None):
    return _call("gc_scan", list(clouds) if clouds else None, regions, on_event=on_event)


def gc_remove(orphans, on_event=None) -> list[str]:
    return _call("gc_remove", list(orphans), on_event=on_event)


def forget_host_keys(cluster: str, rank: int | None = None) -> list[str]:
    return _call("forget_host_keys", cluster, rank)


def adopt(on_event=None) -> list[str]:
    return _call("adopt", on_event=on_event)


def down(names, on_event=None):
    return _call("down", list(names), on_event=on_event)


def stop(name: str, on_event=None):
    return _call("stop", name, on_event=on_event)


def start(name: str, on_event=None):
    return _call("start", name, on_event=on_event)


def set_autostop(name: str, minutes, down: bool):
    return _call("set_autostop", name, minutes, down)


def queue(name: str, on_event=None):
    return _call("queue", name, on_event=on_event)


def logs(name: str, job_id, *, follow: bool, on_line, on_event=None):
    return _streamed("logs", f"stopped following; the job keeps running on cluster {name}",
                     name, job_id, follow=follow, on_line=on_line, on_event=on_event)


def cancel(name: str, job_ids, all_jobs: bool = False, on_event=None):
    return _call("cancel", name, list(job_ids), all_jobs, on_event=on_event)


def daemons() -> dict:
    return _daemons if _daemons is not None else _call("daemons")


def events(cluster=None, job_id=None, limit=50):
    return _call("events", cluster, job_id, limit)


def jobs_launch(task):
    return _call("jobs_launch", _prepare(task))


def jobs_launch_pipeline(pipeline):
    return _call("jobs_launch_pipeline", [_prepare(t) for t in pipeline], pipeline.name)


def jobs_queue(all_users: bool = False):
    return _call("jobs_queue", all_users=all_users)


def cluster_costs() -> dict:
    return _call("cluster_costs")


def job_timeline(job_id: int) -> dict:
    return _call("job_timeline", job_id)


def stopped_hourly() -> dict:
    return _call("stopped_hourly")


def job_costs() -> dict:
    return {int(k): v for k, v in _call("job_costs").items()}  # (JSON object keys are strings)


def cost_report(since_s=None, everything=False) -> dict:
    return _call("cost_report", since_s, everything)


def jobs_get(job_id: int):
    return _call("jobs_get", job_id)


def jobs_logs(job_id: int, follow: bool, on_line):
    return _streamed("jobs_logs", f"stopped following; managed job {job_id} keeps running",
                     job_id, follow, on_raw=on_line)


def jobs_cancel(job_ids, all_: bool = False):
    return _call("jobs_cancel", list(job_ids), all_)


# ----------------------------------------------------------------------------------------------
# job pools: the server's controller runs them; waiting is polling from here

def pool_apply(name: str, task, workers=None):
    return _call("pool_apply", name, _prepare(task) if task is not None else None, workers)


def pool_status(name=None):
    return _call("pool_status", name)


def pool_wait_ready(name: str, on_change, timeout=None):
    from ..jobs.pool_ops import wait_ready

    return wait_ready(name, on_change, timeout, poll=1.0, status_fn=pool_status)


def pool_down(name: str, wait: bool = True) -> int:
    from ..errors import BrokerError
    from ..jobs.pool_ops import down

    n = _call("pool_down", name, False)

    def exists(x):
        try:
            pool_status(x)
            return True
        except BrokerError as exc:
            if exc.exit_code == 5:  # not found (errors cross the wire as message, hint and exit code)
                return False
            raise

    down(name, wait, poll=1.0, exists=exists)
    return n


def jobs_launch_pool(pool: str, task, num_jobs: int = 1):
    return _call("jobs_launch_pool", pool, _prepare(task), num_jobs)
