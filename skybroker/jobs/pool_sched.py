"""Pure scheduling decisions for job pools (data in, data out; jobs/pools.py executes them).

  resize(target, workers, down)   which worker rows to add and which to remove (scale up/down, teardown)
  pick_worker(job, queued, free)  the worker a queued job gets, first come first served
  misfit(job_task, pool_task)     the field of a job's resources the pool's workers cannot honour
  job_env(rank, count, pool)      what a pool job finds in its environment (SkyPilot's names and ours)
"""
from __future__ import annotations

from dataclasses import dataclass

from .pool_store import BUSY, READY


@dataclass(frozen=True)
class WorkerView:
    idx: int
    status: str
    job_id: int | None = None


@dataclass(frozen=True)
class Resize:
    add: tuple[int, ...] = ()  # new worker indices
    remove: tuple[int, ...] = ()  # workers to tear down now (idle, or everything when the pool goes)
    draining: tuple[int, ...] = ()  # beyond the size but running a job: removed once it ends


def resize(target: int, workers: list[WorkerView], down: bool = False) -> Resize:
    """Workers 0..target-1 are kept (missing ones added); a worker beyond the size goes at once when idle,
    after its job when busy (no running job is cut short by a resize). `down`: every worker goes now."""
    have = {w.idx: w for w in workers}
    if down:
        return Resize(remove=tuple(sorted(have)))
    excess = sorted(i for i in have if i >= target)
    busy = tuple(i for i in excess if have[i].job_id is not None or have[i].status == BUSY)
    return Resize(add=tuple(i for i in range(target) if i not in have),
                  remove=tuple(i for i in excess if i not in busy), draining=busy)


def free_workers(target: int, workers: list[WorkerView]) -> list[int]:
    """Workers a new job may take: READY, free, and within the pool's size (not on their way out)."""
    return [w.idx for w in workers if w.status == READY and w.job_id is None and w.idx < target]


def pick_worker(job_id: int, queued: list[int], free: list[int]) -> int | None:
    """First come first served: the k-th oldest queued job gets the k-th free worker (lowest index first)
    or waits. `queued` are the ids of the pool's jobs waiting for a worker, `job_id` among them."""
    order = sorted(queued)
    if job_id not in order:
        order = sorted(order + [job_id])
    pos = order.index(job_id)
    free = sorted(free)
    return free[pos] if pos < len(free) else None


def misfit(job_task, pool_task) -> tuple[str, str] | None:
    """(field, why) when the job asks for something the pool's workers do not have, else None. The job
    fits when one of the pool's resources options honours every field the job sets."""
    if job_task.num_nodes > pool_task.num_nodes:
        return "num_nodes", f"the job needs {job_task.num_nodes} node(s), the pool's workers have {pool_task.num_nodes}"
    first = None
    for jr in job_task.candidates:
        for pr in pool_task.candidates:
            bad = _resources_misfit(jr, pr)
            if bad is None:
                return None
            first = first or bad
    return first


def _resources_misfit(jr, pr) -> tuple[str, str] | None:
    if jr.accelerator and ((pr.accelerator or "").lower() != jr.accelerator.lower()
                           or pr.accelerator_count < jr.accelerator_count):
        return ("resources.accelerators", (f"the job asks for {jr.accelerator_str()}, the pool's workers have "
                                           f"{pr.accelerator_str() or 'no accelerator'}"))
    for name, fld in (("cloud", "resources.infra"), ("region", "resources.infra"), ("zone", "resources.infra"),
                      ("instance_type", "resources.instance_type")):
        want, have = getattr(jr, name), getattr(pr, name)
        if want and have != want:
            return fld, f"the job asks for {name} {want}, the pool's workers {('are on ' + have) if have else 'may be anywhere'}"
    if jr.use_spot_explicit and pr.use_spot_explicit and jr.use_spot != pr.use_spot:
        return ("resources.use_spot", (f"the job asks for {'spot' if jr.use_spot else 'on-demand'}, the pool's "
                                       f"workers are {'spot' if pr.use_spot else 'on-demand'}"))
    for name in ("cpus", "memory"):
        want, have = getattr(jr, name), _floor(pr, name)
        if want is None or want.per_cpu or (have is None and (pr.instance_type or pr.accelerator)):
            continue  # a ratio, or a machine fixed by its type: the catalog decides, not the spec
        if have is None or not want.admits(have.value) or (have.at_least and not want.at_least):
            return (f"resources.{name}", (f"the job asks for {name} {want}, the pool's workers have "
                                          f"{have if have is not None else 'the default'}"))
    if jr.disk_size > pr.disk_size:
        return "resources.disk_size", f"the job asks for {jr.disk_size} GB of disk, the pool's workers have {pr.disk_size}"
    return None


def _floor(r, name: str):
    """What the pool's resources guarantee for cpus/memory (SkyPilot's CPU default: 8+ vCPUs, 4 GiB each)."""
    from ..resources import DEFAULT_CPUS, DEFAULT_MEMORY_PER_CPU, Amount

    v = getattr(r, name)
    if r.cloud == "local" and v is None:  # the local cloud's nodes are this machine (no SkyPilot default size)
        from ..clouds.local import machine_shape

        return Amount(machine_shape()[0 if name == "cpus" else 1], at_least=False)
    cpus = r.cpus.value if r.cpus is not None and not r.cpus.per_cpu else DEFAULT_CPUS
    if v is not None and v.per_cpu:
        return Amount(v.value * cpus, at_least=True)
    if v is None and not (r.instance_type or r.accelerator) and (r.cpus is None and r.memory is None):
        return Amount(DEFAULT_CPUS if name == "cpus" else DEFAULT_CPUS * DEFAULT_MEMORY_PER_CPU, at_least=True)
    return v


def job_env(rank: int, count: int, pool: str) -> dict[str, str]:
    return {"SKYPILOT_JOB_RANK": str(rank), "SKYPILOT_NUM_JOBS": str(count),
            "BROKER_JOB_RANK": str(rank), "BROKER_NUM_JOBS": str(count), "BROKER_POOL": pool}
