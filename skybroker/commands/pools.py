"""broker jobs pool: job pools (SkyPilot's `sky jobs pool`), workers kept up for many managed jobs."""
from __future__ import annotations

import click

from .. import render
from ..errors import Declined
from .options import confirm, confirm_destructive, examples, task_options, use_api


@click.group("pool", epilog=examples("broker jobs pool apply -p mypool -y pool.yaml",
                                     "broker jobs launch --pool mypool --num-jobs 10 -y job.yaml",
                                     "broker jobs pool status", "broker jobs pool down mypool -y"))
def pool():
    """Job pools: N workers set up once and kept up; `jobs launch --pool NAME` runs jobs on them."""


@pool.command("apply", epilog=examples(
    "broker jobs pool apply -p mypool -y pool.yaml            # waits until every worker is set up",
    "broker jobs pool apply -p mypool -y --workers 4          # resize (the task it was applied with)",
    "broker jobs pool apply -p mypool --dryrun pool.yaml      # the plan of one worker"))
@click.argument("task_file", required=False, type=click.Path(dir_okay=True))
@task_options
@click.option("--pool", "-p", "name", required=True, help="The pool's name.")
@click.option("--workers", type=int, help="Number of workers (overrides `pool.workers`).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--detach", "-d", is_flag=True, help="Return at once; workers come up in the background.")
@click.option("--dryrun", is_flag=True, help="Only print the plan of a worker.")
@click.option("--json", "as_json", is_flag=True, help="With --dryrun: the plan as JSON.")
def apply(task_file, overrides, name, workers, yes, detach, dryrun, as_json):
    """Create pool NAME from TASK_FILE (a task with `pool: {workers: N}`: resources, setup, file mounts,
    workdir), or resize it: each worker is a cluster on the cheapest fit, its setup run once. Applying
    again with another size scales up or down (busy workers go after their job)."""
    from ..errors import UsageError
    from ..jobs.pool_ops import check_name

    check_name(name)  # said before any plan is shown (a dry run too), not after it
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers} is not a worker count", "--workers N with N ≥ 0")
    api = use_api()
    task = None
    if task_file is None:  # resize with the task it was applied with (planned again by the controller)
        if workers is None:
            raise UsageError("give the pool's task file, or --workers N to resize an existing pool",
                             f"broker jobs pool apply -p {name} pool.yaml")
        if dryrun:
            raise UsageError("--dryrun needs the pool's task file", f"broker jobs pool apply -p {name} --dryrun pool.yaml")
        api.pool_status(name)  # exit 5 when there is no such pool
    else:
        task = api.load_task(task_file, {k: v for k, v in overrides.items() if k != "name"})
        render.task_warnings(task)
        from ..jobs.pool_ops import require_pool_task

        require_pool_task(task)
    n = workers if workers is not None else task.pool_workers
    plan = api.plan(task, managed=True) if n and task is not None else None
    if plan is not None:
        if as_json:
            render.print_json({"pool": name, "workers": n, "worker_plan": render.plan_json(plan, task.name)})
        else:
            render.print_plan(plan, task.name)
            render.info(f"pool {name}: {n} worker(s) of this plan, setup once on each")
    if dryrun:
        return 0
    if not confirm(f"Apply pool {name} with {n} worker(s)?", yes):
        raise Declined()
    api.pool_apply(name, task, workers)
    render.info(f"pool {name}: {n} worker(s) wanted")
    if detach or not n:
        render.info(f"see it with `broker jobs pool status {name}`")
        return 0
    st = api.pool_wait_ready(name, lambda s: render.pool_progress(s))
    render.print_pools([st])
    if st["status"] == "FAILED":
        bad = next((w for w in st["worker_list"] if w["status"] == "FAILED"), None)
        raise UsageError(f"pool {name}: a worker failed: {bad['message'] if bad else '?'}",
                         "fix the task and apply again (failed workers are retried)")
    render.info(f"pool {name} is ready: `broker jobs launch --pool {name} job.yaml` runs jobs on it")
    return 0


@pool.command("status", epilog=examples("broker jobs pool status", "broker jobs pool status mypool --json"))
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name, as_json):
    """Pools: each worker (cluster, where, state, current job) and the jobs waiting for a worker."""
    pools = use_api().pool_status(name)
    if as_json:
        render.print_json(pools)
    else:
        render.print_pools(pools)


@pool.command("down", epilog=examples("broker jobs pool down mypool -y"))
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def down(name, yes):
    """Tear pool NAME down: its jobs are cancelled and every worker is terminated."""
    api = use_api()
    api.pool_status(name)  # exit 5 when there is no such pool, before asking
    confirm_destructive(f"Tear down pool {name} (its jobs are cancelled)?", yes)
    n = api.pool_down(name)
    render.info(f"pool {name} is down ({n} worker(s) terminated)")
