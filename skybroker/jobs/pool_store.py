"""Job-pool rows in the state database (tables `pools` and `pool_workers`, migration v11).

A pool is its task (the `pool:` task: resources, setup, file mounts), its size (`workers`) and a flag
asking the controller to tear it down. Each worker is a cluster named `pool-<pool>-<idx>` with a status
(worker statuses below) and the managed job it runs, if any. A job claims a worker with one conditional
UPDATE, so two jobs never get the same worker, on SQLite and PostgreSQL alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .. import state
from . import store

# worker statuses
PROVISIONING = "PROVISIONING"  # being brought up (lifecycle.bring_up), then setup runs
SETTING_UP = "SETTING_UP"  # the pool's setup (and `run`, if any) runs on it, once
READY = "READY"  # free for a job
BUSY = "BUSY"  # runs the managed job `job_id`
RECOVERING = "RECOVERING"  # its instances were lost: replaced (recovery.py decides where)
FAILED = "FAILED"  # setup failed, or no place would take it: `pool apply` again retries
REMOVING = "REMOVING"  # beyond the pool's size (or the pool goes): being torn down
WORKER_STATUSES = (PROVISIONING, SETTING_UP, READY, BUSY, RECOVERING, FAILED, REMOVING)


@dataclass
class Pool:
    name: str
    task: str
    secrets: bytes | None
    resources: str | None
    workers: int
    down_requested: int
    created_at: float
    updated_at: float | None = None
    user_name: str | None = None


@dataclass
class Worker:
    pool: str
    idx: int
    cluster: str
    status: str
    job_id: int | None = None
    setup_job: int | None = None
    recoveries: int = 0
    blocked: str | None = None
    message: str | None = None
    updated_at: float | None = None


def cluster_name(pool: str, idx: int) -> str:
    return f"pool-{pool}-{idx}"


def _pool(r) -> Pool:
    return Pool(**{k: r[k] for k in Pool.__dataclass_fields__})


def _worker(r) -> Worker:
    return Worker(**{k: r[k] for k in Worker.__dataclass_fields__})


def get(name: str) -> Pool | None:
    r = state.db().execute("SELECT * FROM pools WHERE name = ?", (name,)).fetchone()
    return _pool(r) if r else None


def all_pools() -> list[Pool]:
    return [_pool(r) for r in state.db().execute("SELECT * FROM pools ORDER BY name")]


def upsert(name: str, task_json: str, secrets: dict, resources: str, workers: int) -> Pool:
    """Create the pool, or set its size (and task) if it exists."""
    now = time.time()
    conn = state.db()
    blob = store.encrypt(secrets)
    cur = conn.execute("UPDATE pools SET task = ?, secrets = ?, resources = ?, workers = ?, updated_at = ? "
                       "WHERE name = ?", (task_json, blob, resources, workers, now, name))
    if not cur.rowcount:
        conn.execute("INSERT INTO pools (name, task, secrets, resources, workers, down_requested, created_at, "
                     "updated_at, user_name) VALUES (?,?,?,?,?,0,?,?,?)",
                     (name, task_json, blob, resources, workers, now, now, state.current_user.get()))
    return get(name)


def request_down(name: str) -> bool:
    cur = state.db().execute("UPDATE pools SET down_requested = 1, updated_at = ? WHERE name = ?",
                             (time.time(), name))
    return bool(cur.rowcount)


def delete(name: str) -> None:
    conn = state.db()
    conn.execute("DELETE FROM pool_workers WHERE pool = ?", (name,))
    conn.execute("DELETE FROM pools WHERE name = ?", (name,))


def workers(pool: str) -> list[Worker]:
    return [_worker(r) for r in state.db().execute("SELECT * FROM pool_workers WHERE pool = ? ORDER BY idx",
                                                   (pool,))]


def worker(pool: str, idx: int) -> Worker | None:
    r = state.db().execute("SELECT * FROM pool_workers WHERE pool = ? AND idx = ?", (pool, idx)).fetchone()
    return _worker(r) if r else None


def add_worker(pool: str, idx: int) -> None:
    state.db().execute("INSERT OR IGNORE INTO pool_workers (pool, idx, cluster, status, recoveries, updated_at) "
                       "VALUES (?,?,?,?,0,?)", (pool, idx, cluster_name(pool, idx), PROVISIONING, time.time()))


def update_worker(pool: str, idx: int, **fields) -> None:
    fields["updated_at"] = time.time()
    cols = ", ".join(f"{k} = ?" for k in fields)
    state.db().execute(f"UPDATE pool_workers SET {cols} WHERE pool = ? AND idx = ?", (*fields.values(), pool, idx))


def remove_worker(pool: str, idx: int) -> None:
    state.db().execute("DELETE FROM pool_workers WHERE pool = ? AND idx = ?", (pool, idx))


def claim(pool: str, idx: int, job_id: int) -> bool:
    """Give a READY worker to a job; False if another job took it first."""
    cur = state.db().execute("UPDATE pool_workers SET status = ?, job_id = ?, updated_at = ? WHERE pool = ? AND "
                             "idx = ? AND status = ? AND job_id IS NULL", (BUSY, job_id, time.time(), pool, idx, READY))
    return bool(cur.rowcount)


def retire(pool: str, idx: int) -> bool:
    """Take a worker no job holds out of service (REMOVING); False if a job claimed it first."""
    cur = state.db().execute("UPDATE pool_workers SET status = ?, updated_at = ? WHERE pool = ? AND idx = ? AND "
                             "job_id IS NULL AND status <> ?", (REMOVING, time.time(), pool, idx, BUSY))
    return bool(cur.rowcount)


def holder_of(job_id: int) -> Worker | None:
    """The worker a job holds, if any."""
    r = state.db().execute("SELECT * FROM pool_workers WHERE job_id = ?", (job_id,)).fetchone()
    return _worker(r) if r else None


def jobs_of(pool: str, active_only: bool = True) -> list[store.ManagedJob]:
    rows = state.db().execute("SELECT * FROM managed_jobs WHERE pool = ? ORDER BY id", (pool,))
    jobs = [store._row(r) for r in rows]
    return [j for j in jobs if j.status in store.ACTIVE] if active_only else jobs
