"""Job-pool use cases for the CLI: apply, status, down, launch jobs into a pool. Nothing here prints; the
controller (pools.py) does the work, these record what is wanted and report what is."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import NotFoundError, SpecError, UsageError
from . import ops, store
from . import pool_sched as S
from . import pool_store as PS

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def check_name(name: str | None) -> str:
    if not name or not _NAME.match(name):
        raise UsageError(f"{name!r} is not a pool name", "lowercase letters, digits and hyphens, e.g. -p my-pool")
    return name


def require_pool_task(task) -> None:
    if task.pool_workers is None:
        raise SpecError("this task has no `pool:` section", "a pool's task says how many workers it keeps, e.g. "
                        "`pool: {workers: 2}`; run a plain task with `broker jobs launch`", source=task.source,
                        field="pool")


def _comparable(task_json: str) -> dict:
    d = json.loads(task_json)
    d.pop("pool_workers", None)
    d.pop("warnings", None)
    return d


def apply(name: str, task, workers: int | None = None) -> PS.Pool:
    """Create the pool or resize it (the controller brings workers up or down). Changing anything but
    the size of an existing pool needs `pool down` first (its workers were set up with the old task)."""
    from ..spec import task_to_dict

    check_name(name)
    if task is None:  # resize: the task it was applied with
        if workers is None:
            raise UsageError("give the pool's task file, or --workers N to resize an existing pool",
                             f"broker jobs pool apply -p {name} pool.yaml")
        task = stored_task(get(name))
    require_pool_task(task)
    n = task.pool_workers if workers is None else workers
    if n < 0:
        raise UsageError(f"{n} is not a worker count", "--workers N with N ≥ 0")
    task = ops._with_config_defaults(task)
    task_json = json.dumps(task_to_dict(replace(task, pool_workers=n)))
    old = PS.get(name)
    if old is not None and old.down_requested:
        raise UsageError(f"pool {name} is being torn down", "apply it again once `broker jobs pool status` no "
                         "longer lists it")
    if old is not None and _comparable(old.task) != _comparable(task_json):
        raise UsageError(f"pool {name} exists with another task; only its size can change in place",
                         f"`broker jobs pool down {name}` then apply again, or pass the same task with "
                         "another `pool.workers` (or --workers N)")
    res = task.candidates[0]
    desc = res.describe() if len(task.candidates) == 1 else f"{len(task.candidates)} options"
    pool = PS.upsert(name, task_json, task.secret_dict, desc, n)
    for w in PS.workers(name):
        if w.status == PS.FAILED:  # applying again retries failed workers
            PS.update_worker(name, w.idx, status=PS.PROVISIONING, message="retrying (pool applied again)",
                             recoveries=0, blocked=None)
    ops.ensure_controller()
    return pool


def stored_task(p: PS.Pool):
    from ..spec import task_from_stored

    return task_from_stored(json.loads(p.task), store.decrypt(p.secrets))


def get(name: str) -> PS.Pool:
    p = PS.get(name)
    if p is None:
        known = [x.name for x in PS.all_pools()]
        raise NotFoundError(f"pool {name} not found", f"pools: {', '.join(known)}" if known else
                            "create one with `broker jobs pool apply -p NAME pool.yaml`")
    return p


def status(name: str | None = None) -> list[dict]:
    """Each pool: size, workers (cluster, where, state, current job) and its queued jobs."""
    from .. import state

    pools = [get(name)] if name else PS.all_pools()
    if any(PS.jobs_of(p.name) for p in pools) or pools:
        ops.ensure_controller()  # resumes the pools if the controller died (e.g. after a reboot)
    out = []
    for p in pools:
        ws = []
        for w in PS.workers(p.name):
            rec = state.get_cluster(w.cluster)
            ws.append({"worker": w.idx, "cluster": w.cluster, "status": w.status, "job_id": w.job_id,
                       "where": rec.infra if rec and rec.cloud else None,
                       "instance_type": rec.instance_type if rec else None, "spot": bool(rec and rec.use_spot),
                       "hourly_price": rec.hourly_price if rec else None, "recoveries": w.recoveries,
                       "message": w.message, "draining": w.idx >= p.workers})
        jobs = PS.jobs_of(p.name)
        held = {w["job_id"] for w in ws if w["job_id"] is not None}
        out.append({"name": p.name, "workers": p.workers, "resources": p.resources,
                    "status": "TEARING_DOWN" if p.down_requested else _pool_status(p.workers, ws),
                    "ready": sum(1 for w in ws if w["status"] in (PS.READY, PS.BUSY)),
                    "worker_list": ws, "created_at": p.created_at,
                    "queued": [{"id": j.id, "name": j.name, "status": j.status, "rank": j.job_rank}
                               for j in jobs if j.id not in held and j.status in (store.PENDING, store.RECOVERING)],
                    "running": [j.id for j in jobs if j.id in held]})
    return out


def _pool_status(target: int, ws: list[dict]) -> str:
    up = sum(1 for w in ws if w["status"] in (PS.READY, PS.BUSY) and not w["draining"])
    if any(w["status"] == PS.FAILED for w in ws):
        return "FAILED"
    if up >= target and len(ws) == target:
        return "READY"
    return "SCALING" if up else "STARTING"


def wait_ready(name: str, on_change: Callable[[dict], None], timeout: float | None = None,
               poll: float = 0.5, status_fn: Callable | None = None) -> dict:
    """Until every worker of the pool is set up (or one failed): the pool's status at the end.
    `status_fn` is how to ask (a broker server's pool_status in client mode)."""
    deadline = None if timeout is None else time.time() + timeout
    seen = None
    while True:
        st = (status_fn or status)(name)[0]
        snap = [(w["worker"], w["status"], w["message"]) for w in st["worker_list"]]
        if snap != seen:
            seen = snap
            on_change(st)
        if st["status"] in ("READY", "FAILED") or (deadline and time.time() > deadline):
            return st
        time.sleep(poll)


def down(name: str, wait: bool = True, timeout: float = 600, poll: float = 0.3,
         exists: Callable[[str], bool] | None = None) -> int:
    """Ask the controller to cancel the pool's jobs and tear every worker down; with wait, until it is
    gone (`exists`: how to ask, in client mode). Returns how many workers it had."""
    n = 0
    if exists is None:
        get(name)
        n = len(PS.workers(name))
        PS.request_down(name)
        ops.ensure_controller()
    deadline = time.time() + timeout
    resume = ops._Resumer()  # a controller that dies meanwhile is started again: the pool does go
    while wait and ((exists or (lambda x: PS.get(x) is not None))(name)):
        if exists is None:
            resume(None)
        if time.time() > deadline:
            from ..errors import BrokerError

            raise BrokerError(f"pool {name} is still being torn down after {timeout:.0f}s",
                              "see `broker jobs pool status`; the controller goes on in the background")
        time.sleep(poll)
    return n


def _workers_misfit(task, pool: str) -> tuple[str, str] | None:
    """Judge a job by the machines the pool's ready workers got, where the catalog knows them: ("", "") when
    one admits it, (field, why) when none does; None when there is no such worker (the pool's spec decides,
    pool_sched.misfit). A pool's `cpus: 4+` got 4-vCPU machines, which a job's `cpus: 4` fits."""
    from .. import state
    from ..lifecycle import cluster_spec
    from ..offer_fit import cluster_misfit

    why = []
    for w in PS.workers(pool):
        rec = state.get_cluster(w.cluster) if w.status in (PS.READY, PS.BUSY) else None
        spec = cluster_spec(rec) if rec is not None else None
        if spec is None or not spec.shape_known:
            continue
        if task.num_nodes > rec.num_nodes:
            return "num_nodes", f"the job needs {task.num_nodes} node(s), the pool's workers have {rec.num_nodes}"
        bad = cluster_misfit(replace(task, num_nodes=rec.num_nodes, num_nodes_explicit=False), rec, spec)
        if bad is None:
            return "", ""
        why.append(f"{w.cluster}: {bad}")
    return ("resources", "no worker's machine admits it (" + "; ".join(why) + ")") if why else None


def launch(pool: str, task, num_jobs: int = 1, name: str | None = None) -> list[store.ManagedJob]:
    """`num_jobs` managed jobs of the task (ranks 0..num_jobs-1) that run on the pool's workers."""
    from ..spec import task_to_dict

    p = get(pool)
    if p.down_requested:
        raise UsageError(f"pool {pool} is being torn down", f"apply it again: `broker jobs pool apply -p {pool} ...`")
    if num_jobs < 1:
        raise UsageError(f"--num-jobs {num_jobs}: at least 1", None)
    if task.pool_workers is not None:
        raise SpecError("a job for a pool has no `pool:` section of its own", "drop `pool:` from the job's task "
                        "(the pool's task is the one given to `pool apply`)", source=task.source, field="pool")
    if task.deadline_hours is not None:
        raise SpecError("deadline-aware jobs choose their market themselves; pool workers are already up",
                        "drop `deadline:` or launch without --pool", source=task.source, field="deadline")
    from .pools import _task as pool_task

    bad = _workers_misfit(task, pool) or S.misfit(task, pool_task(p))
    if bad == ("", ""):  # the workers' machines admit it, whatever the pool's spec guarantees
        bad = None
    if bad is not None:
        raise SpecError(f"the job does not fit pool {pool}: {bad[1]}", "ask for what the pool's workers have (or "
                        "less), or apply a pool that has it", source=task.source, field=bad[0])
    task, _ = ops._prepared(task)
    desc = f"pool {pool}"
    body = json.dumps(task_to_dict(task))
    jobs = [store.insert(name or task.name, body, task.secret_dict, desc, pool=pool, job_rank=i, num_jobs=num_jobs)
            for i in range(num_jobs)]
    ops.ensure_controller()
    return jobs
