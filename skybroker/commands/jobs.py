"""broker jobs: managed jobs that survive spot preemption."""
from __future__ import annotations

import sys

import click

from .. import render
from .options import confirm, task_options


@click.group()
def jobs():
    """Managed jobs: run to completion through preemptions (relaunch, resume from checkpoint)."""


@jobs.command("launch")
@click.argument("task_file", type=click.Path(dir_okay=True))
@task_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
def launch(task_file, overrides, yes, detach):
    """Run TASK_FILE as a managed job (cluster owned by the broker, torn down at the end)."""
    from .. import api
    from ..jobs import ops

    if overrides.get("name"):
        overrides = dict(overrides)
    task = api.load_task(task_file, overrides)
    plan = api.plan(task)  # fail early (exit 3) when nothing fits; the controller plans again at launch
    render.print_plan(plan, task.name)
    if not confirm("Launch managed job?", yes):
        raise click.Abort()
    job = ops.launch(task)
    render.info(f"managed job {job.id} submitted (task id {job.task_id})")
    if detach:
        render.info(f"follow it with `broker jobs logs {job.id} --follow`")
        return 0
    return _follow(job.id)


def _follow(job_id: int) -> int:
    from ..jobs import ops, store

    try:
        j = ops.follow_logs(job_id, True, lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    except KeyboardInterrupt:
        from ..errors import Interrupted

        raise Interrupted(f"stopped following; managed job {job_id} keeps running",
                          f"`broker jobs logs {job_id} -f` to follow again, `broker jobs cancel {job_id}` to stop it") from None
    render.managed_summary(j)
    if j.status == store.SUCCEEDED:
        return 0
    if j.status == store.CANCELLED:
        return 130
    return j.exit_code if j.exit_code not in (None, 0) else 1


@jobs.command("queue")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue(as_json):
    """List managed jobs: id, name, resources, status, submitted, duration, recoveries, cost so far."""
    from ..jobs import ops

    js = ops.queue()
    if as_json:
        render.print_json([render.managed_json(j) for j in js])
    else:
        render.print_managed(js)


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep streaming until the job ends.")
def logs(job_id, follow):
    """A managed job's output across recoveries (with a marker at each recovery)."""
    from ..jobs import ops

    if follow:
        return _follow(job_id)
    ops.follow_logs(job_id, False, lambda line: sys.stdout.write(line + "\n"))
    return 0


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--all", "-a", "all_", is_flag=True, help="Cancel every active managed job.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def cancel(job_ids, all_, yes):
    """Cancel managed jobs (their clusters are torn down)."""
    from ..jobs import ops

    if not confirm("Cancel?", yes):
        raise click.Abort()
    done = ops.cancel(list(job_ids), all_)
    render.info(f"cancelling: {', '.join(map(str, done)) if done else 'nothing (already finished?)'}")
