"""The api use cases of managed jobs and job pools (re-exported by api.py, the facade; jobs/ops.py and
jobs/pool_ops.py do the work, the controller runs them): submit a job or a pipeline, list, follow logs
across recoveries, cancel; create, resize, wait for and tear down a pool, and submit jobs onto its
workers. Nothing here prints or reads the terminal.
"""
from __future__ import annotations


# ----------------------------------------------------------------------------------------------
# Managed jobs (jobs/ops.py does the work)

def jobs_launch(task):
    """Submit a managed job (its controller is started if needed). Returns the ManagedJob."""
    from .jobs import ops

    return ops.launch(task)


def jobs_launch_pipeline(pipeline):
    """Submit a pipeline as one managed job (its stages run in order). Returns the ManagedJob."""
    from .jobs import ops

    return ops.launch_pipeline(pipeline)


def jobs_queue(all_users: bool = False):
    from .jobs import ops

    return ops.queue()


def jobs_get(job_id: int):
    from .jobs import ops

    return ops.get(job_id)


def jobs_logs(job_id: int, follow: bool, on_line):
    """A managed job's log across recoveries; with follow, until it ends. Returns the final ManagedJob.
    Ctrl-C while following is Interrupted (the job keeps running)."""
    from .jobs import ops

    try:
        return ops.follow_logs(job_id, follow, on_line)
    except KeyboardInterrupt:
        from .errors import Interrupted

        raise Interrupted(f"stopped following; managed job {job_id} keeps running",
                          f"`broker jobs logs {job_id} -f` to follow again, `broker jobs cancel {job_id}` to stop it") from None


def jobs_cancel(job_ids, all_: bool = False) -> list[int]:
    from .errors import names_or_all
    from .jobs import ops

    names_or_all(job_ids, all_, "job ids")  # also for a server's clients

    return ops.cancel(list(job_ids), all_)


# ----------------------------------------------------------------------------------------------
# Job pools (jobs/pool_ops.py does the work; the controller runs them, jobs/pools.py)

def pool_apply(name: str, task, workers: int | None = None):
    """Create pool NAME from a pool task, or resize it (task None: the task it was applied with)."""
    from .jobs import pool_ops

    return pool_ops.apply(name, task, workers)


def pool_status(name: str | None = None) -> list[dict]:
    from .jobs import pool_ops

    return pool_ops.status(name)


def pool_wait_ready(name: str, on_change, timeout: float | None = None) -> dict:
    from .jobs import pool_ops

    return pool_ops.wait_ready(name, on_change, timeout)


def pool_down(name: str, wait: bool = True) -> int:
    from .jobs import pool_ops

    return pool_ops.down(name, wait)


def jobs_launch_pool(pool: str, task, num_jobs: int = 1):
    """Submit `num_jobs` managed jobs that run on a pool's workers (ranks 0..num_jobs-1)."""
    from .jobs import pool_ops

    return pool_ops.launch(pool, task, num_jobs)
