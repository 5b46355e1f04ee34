"""Managed-job rows in the state database, their events, and secrets encrypted at rest."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import state
from ..paths import ensure_home, private_dir

PENDING, STARTING, RUNNING, RECOVERING = "PENDING", "STARTING", "RUNNING", "RECOVERING"
SUCCEEDED, FAILED, FAILED_SETUP, FAILED_NO_RESOURCE = "SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE"
CANCELLING, CANCELLED, FAILED_CONTROLLER = "CANCELLING", "CANCELLED", "FAILED_CONTROLLER"
FAILED_BUDGET = "FAILED_BUDGET"  # stopped by the controller before it exceeded the task's budget
TERMINAL = frozenset({SUCCEEDED, FAILED, FAILED_SETUP, FAILED_NO_RESOURCE, CANCELLED, FAILED_CONTROLLER,
                      FAILED_BUDGET})
ACTIVE = frozenset({PENDING, STARTING, RUNNING, RECOVERING, CANCELLING})


@dataclass
class ManagedJob:
    id: int
    name: str | None
    task: str
    secrets: bytes | None
    resources: str | None
    status: str
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    cluster: str | None = None
    cluster_job_id: int | None = None
    task_id: str = ""
    recoveries: int = 0
    restarts_on_errors: int = 0
    cost: float = 0.0
    segment_start: float | None = None
    segment_price: float | None = None
    place: str | None = None
    blocked: str = "[]"
    cancel_requested: int = 0
    exit_code: int | None = None
    failure: str | None = None
    log_offsets: str = "{}"
    updated_at: float | None = None
    deadline_state: str | None = None
    submit_token: str | None = None  # recorded before a submit: a restarted controller finds that job
    stages: str | None = None  # a pipeline: JSON list of its stages (see insert_pipeline); None for one task
    stage: int = 0  # the pipeline's current stage (0-based); task/secrets/resources are that stage's
    user_name: str | None = None  # server mode: who submitted it (its cluster records the same user)
    pool: str | None = None  # runs on a worker of this pool (jobs/pools.py) instead of its own cluster
    job_rank: int | None = None  # its rank among the jobs launched together (`--num-jobs`)
    num_jobs: int | None = None
    outcome: str | None = None  # its end as decided (JSON), recorded before the teardown (controller._end)
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def stage_list(self) -> list[dict]:
        return json.loads(self.stages) if self.stages else []

    @property
    def num_stages(self) -> int:
        return len(self.stage_list) or 1

    @property
    def cost_so_far(self) -> float:
        running = 0.0
        if self.segment_start and self.segment_price:
            running = (time.time() - self.segment_start) / 3600 * self.segment_price
        return self.cost + running

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        return (self.ended_at or time.time()) - self.started_at


_FIELDS = [f for f in ManagedJob.__dataclass_fields__ if f != "extra"]


def _row(r) -> ManagedJob:
    return ManagedJob(**{k: r[k] for k in _FIELDS})


def insert(name: str | None, task_json: str, secrets: dict, resources: str, stages: str | None = None,
           pool: str | None = None, job_rank: int | None = None, num_jobs: int | None = None) -> ManagedJob:
    now = time.time()
    conn = state.db()
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute(
            "INSERT INTO managed_jobs (name, task, secrets, resources, status, submitted_at, task_id, updated_at,"
            " stages, user_name, pool, job_rank, num_jobs) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (name, task_json, encrypt(secrets), resources, PENDING, now, "", now, stages, state.current_user.get(),
             pool, job_rank, num_jobs))
        jid = int(cur.lastrowid)
        # stable across recoveries, so a job can find its own checkpoint
        from ..backend_submit import global_task_id

        task_id = global_task_id(name or "job", jid, managed=True, at=now)
        conn.execute("UPDATE managed_jobs SET task_id = ? WHERE id = ?", (task_id, jid))
        conn.execute("COMMIT")
    except BaseException:
        state.rollback(conn)
        raise
    add_event(jid, "submitted", "job submitted")
    return get(jid)


def insert_pipeline(name: str | None, stages: list[tuple[str | None, str, dict, str]]) -> ManagedJob:
    """A pipeline as ONE managed job (one id, one log, one cancel), as SkyPilot shows it: `stages` are
    (name, task JSON, secrets, resources) in order. The row holds the current stage's task, secrets and
    resources; `stages` keeps every stage's (secrets encrypted) and its outcome (status, times, place,
    cost). The first stage's fields are the row's from the start."""
    import base64

    entries = []
    for sname, task_json, secrets, desc in stages:
        blob = encrypt(secrets)
        entries.append({"name": sname, "task": task_json, "resources": desc, "status": PENDING,
                        "secrets": base64.b64encode(blob).decode() if blob else None})
    return insert(name, stages[0][1], stages[0][2], stages[0][3], stages=json.dumps(entries))


def stage_secrets(entry: dict) -> bytes | None:
    import base64

    return base64.b64decode(entry["secrets"]) if entry.get("secrets") else None


def get(job_id: int) -> ManagedJob | None:
    r = state.db().execute("SELECT * FROM managed_jobs WHERE id = ?", (job_id,)).fetchone()
    return _row(r) if r else None


def all_jobs() -> list[ManagedJob]:
    return [_row(r) for r in state.db().execute("SELECT * FROM managed_jobs ORDER BY id")]


def active() -> list[ManagedJob]:
    marks = ",".join("?" * len(ACTIVE))
    return [_row(r) for r in state.db().execute(
        f"SELECT * FROM managed_jobs WHERE status IN ({marks}) ORDER BY id", tuple(ACTIVE))]


class ActiveJob(NamedTuple):
    id: int
    status: str
    cancel_requested: int
    cluster: str | None
    cluster_job_id: int | None


def active_brief() -> list[ActiveJob]:
    """What the controller's loop reads of every active job several times a second: these columns only
    (not the task, secrets, events), so a thousand jobs cost a few milliseconds a round."""
    marks = ",".join("?" * len(ACTIVE))
    return [ActiveJob(r["id"], r["status"], r["cancel_requested"], r["cluster"], r["cluster_job_id"])
            for r in state.db().execute(f"SELECT id, status, cancel_requested, cluster, cluster_job_id FROM managed_jobs"
                                        f" WHERE status IN ({marks}) ORDER BY id", tuple(ACTIVE))]


def update(job_id: int, **fields) -> None:
    fields["updated_at"] = time.time()
    cols = ", ".join(f"{k} = ?" for k in fields)
    state.db().execute(f"UPDATE managed_jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))


def request_cancel(job_id: int) -> bool:
    """Mark for cancellation; the controller does the rest. False if the job already ended."""
    marks = ",".join("?" * len(TERMINAL))
    cur = state.db().execute(f"UPDATE managed_jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND "
                             f"status NOT IN ({marks})", (time.time(), job_id, *TERMINAL))
    if cur.rowcount:
        add_event(job_id, "cancel", "cancellation requested")
    return bool(cur.rowcount)


def add_event(job_id: int, kind: str, message: str) -> None:
    state.db().execute("INSERT INTO job_events (job_id, ts, kind, message) VALUES (?,?,?,?)",
                       (job_id, time.time(), kind, message))


def events(job_id: int) -> list[dict]:
    return [dict(r) for r in state.db().execute("SELECT * FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))]


def job_dir(job_id: int):
    private_dir(ensure_home() / "managed")
    return private_dir(ensure_home() / "managed" / str(int(job_id)))


# ----------------------------------------------------------------------------------------------
# Secrets at rest: Fernet (cryptography, already a dependency of paramiko) with a per-user key file

def _key() -> bytes:
    from cryptography.fernet import Fernet

    shared = os.environ.get("BROKER_SECRETS_KEY")  # server replicas on several machines share one key
    if shared:
        return shared.strip().encode()
    d = private_dir(ensure_home() / "keys")
    path = d / "secrets.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        key = Fernet.generate_key()
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return key
    except OSError:
        raise


def encrypt(secrets: dict) -> bytes | None:
    if not secrets:
        return None
    from cryptography.fernet import Fernet

    return Fernet(_key()).encrypt(json.dumps(secrets).encode())


def decrypt(blob: bytes | None) -> dict:
    if not blob:
        return {}
    from cryptography.fernet import Fernet

    return json.loads(Fernet(_key()).decrypt(blob))
