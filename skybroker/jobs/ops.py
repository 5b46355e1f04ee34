"""Managed-job use cases for the CLI: launch, queue, logs, cancel. Nothing here prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

from ..errors import NotFoundError, UsageError
from ..paths import ensure_home, private_dir, private_file
from . import store


IN_PROCESS = False  # set by the broker server, which runs the controller itself (server/daemons.py)


def ensure_controller() -> bool:
    """Start the controller if it is not running. Returns True if one was started."""
    if IN_PROCESS:
        return False
    from filelock import FileLock, Timeout

    d = private_dir(ensure_home() / "managed")
    lock = FileLock(str(d / "controller.lock"), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    logf = private_file(d / "controller.log")
    subprocess.Popen([sys.executable, "-m", "skybroker.jobs.controller"], stdin=subprocess.DEVNULL, stdout=logf,
                     stderr=logf, start_new_session=True, env=dict(os.environ), close_fds=True)
    return True


def launch(task, name: str | None = None) -> store.ManagedJob:
    from ..spec import task_to_dict

    task, desc = _prepared(task)
    job = store.insert(name or task.name, json.dumps(task_to_dict(task)), task.secret_dict, desc)
    ensure_controller()
    return job


def launch_pipeline(pipeline, name: str | None = None) -> store.ManagedJob:
    """A pipeline (spec.Pipeline, several tasks) as one managed job whose stages run in order, each to
    completion on its own cluster (planned on its own cheapest fit) before the next starts; stage N+1 finds
    stage N's checkpoint directory contents in its own $BROKER_CHECKPOINT_DIR (controller.py)."""
    from ..spec import task_to_dict

    stages = []
    for i, task in enumerate(pipeline):
        task, desc = _prepared(task, f"stage {i + 1} ({task.name or 'unnamed'}): ")
        stages.append((task.name, json.dumps(task_to_dict(task)), task.secret_dict, desc))
    job = store.insert_pipeline(name or pipeline.name or pipeline[0].name, stages)
    ensure_controller()
    return job


def _prepared(task, where: str = ""):
    from .. import settings

    settings.check_all()  # a bad BROKER_* value is refused here, not in the controller (which would die on it)
    if not task.run:
        raise UsageError(f"{where}a managed job needs `run:`")
    task = _with_config_defaults(task)
    res = task.candidates[0]
    desc = res.describe() if len(task.candidates) == 1 else f"{len(task.candidates)} options"
    if task.num_nodes > 1:
        desc = f"{task.num_nodes}× {desc}"
    return task, desc


def _with_config_defaults(task):
    """The config file's `jobs:` defaults (recovery strategy, restarts) for a task that sets none."""
    from dataclasses import replace

    from .. import config
    from ..resources import JobRecovery

    if task.placement is None:  # the controller (started with another environment) plans it with these
        task = replace(task, placement=placement_of_config())
    d = config.get("jobs") or {}
    if not d or any(r.job_recovery for r in task.candidates):
        return task
    jr = JobRecovery(d.get("job_recovery", "EAGER_NEXT_REGION"), int(d.get("max_restarts_on_errors", 0)))
    return replace(task, groups=tuple(tuple(replace(r, job_recovery=jr) for r in g) for g in task.groups))


def placement_of_config() -> str:
    """The config's settings that decide where a job may be planned, as Task.placement (api_plan.plan)."""
    from .. import config

    keys = ("allowed_clouds", "allowed_regions", "allow_suspicious_prices")
    return json.dumps({k: config.get(k) for k in keys if config.get(k) is not None}, sort_keys=True)


def queue(all_jobs: bool = True) -> list[store.ManagedJob]:
    jobs = store.all_jobs()
    if any(j.status in store.ACTIVE for j in jobs):
        ensure_controller()  # resumes jobs if the controller died (e.g. after a reboot)
    return jobs


def get(job_id: int) -> store.ManagedJob:
    j = store.get(job_id)
    if j is None:
        raise NotFoundError(f"managed job {job_id} not found", "see `broker jobs queue`")
    return j


def cancel(job_ids: list[int], all_: bool = False) -> list[int]:
    if all_:
        job_ids = [j.id for j in store.active()]
    elif not job_ids:
        raise UsageError("name the job(s) to cancel, or pass --all", "see `broker jobs queue`")
    done = []
    for jid in job_ids:
        get(jid)
        if store.request_cancel(jid):
            done.append(jid)
    if done:
        ensure_controller()
    return done


RESUME_EVERY = 5.0  # how often a command waiting on an active job makes sure a controller serves it


class _Resumer:
    """A command that waits for a job (`jobs launch` following it, `jobs logs -f`) starts the controller
    again if it died meanwhile: the job is not left unwatched (no recovery) while someone waits for it."""

    def __init__(self):
        self.last = time.monotonic()

    def __call__(self, j) -> None:  # j: the job waited for (None: a pool being torn down)
        if (j is None or j.status not in store.TERMINAL) and time.monotonic() - self.last >= RESUME_EVERY:
            self.last = time.monotonic()
            ensure_controller()


def wait(job_id: int, timeout: float | None = None, poll: float = 0.5) -> store.ManagedJob:
    deadline = None if timeout is None else time.time() + timeout
    resume = _Resumer()
    while True:
        j = get(job_id)
        if j.status in store.TERMINAL:
            return j
        if deadline and time.time() > deadline:
            return j
        resume(j)
        time.sleep(poll)


def follow_logs(job_id: int, follow: bool, on_line: Callable[[str], None], poll: float = 0.3) -> store.ManagedJob:
    """Print the job's log (all recoveries, with a marker at each) and, with follow, keep going until
    the job ends."""
    get(job_id)
    path = store.job_dir(job_id) / "run.log"
    pos = 0
    buf = ""
    resume = _Resumer()
    while True:
        j = get(job_id)
        if follow:
            resume(j)
        if path.exists():
            with open(path, "r", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                on_line(line)
        if not follow or j.status in store.TERMINAL:
            if j.status in store.TERMINAL and path.exists() and os.path.getsize(path) > pos:
                continue  # drain what arrived with the final status
            if buf:
                on_line(buf)
            return j
        time.sleep(poll)
