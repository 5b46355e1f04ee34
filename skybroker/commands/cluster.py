"""launch, exec, status, down, stop, start, autostop, queue, logs, cancel."""
from __future__ import annotations

import click

from .. import render
from .options import confirm, task_options


@click.command()
@click.argument("task_file", type=click.Path(dir_okay=True))
@task_options
@click.option("--cluster", "-c", "cluster", help="Cluster name (reused if it exists).")
@click.option("--dryrun", is_flag=True, help="Only print the plan; provision nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (with --dryrun).")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
def launch(task_file, overrides, cluster, dryrun, yes, as_json, detach):
    """Plan TASK_FILE on the cheapest feasible cloud, provision it and run the task."""
    from .. import api

    task = api.load_task(task_file, overrides)
    plan = api.plan(task)
    if as_json:
        render.print_json(render.plan_json(plan, task.name))
    else:
        render.print_plan(plan, task.name)
    if dryrun:
        return 0
    if not confirm("Launch?", yes):
        raise click.Abort()
    from ..errors import BrokerError

    raise BrokerError("provisioning is not available in this build yet", "use --dryrun to see the plan")
