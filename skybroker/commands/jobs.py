"""broker jobs: managed jobs that survive spot preemption."""
from __future__ import annotations


import click

from .. import render
from ..errors import Declined, names_or_all
from .options import (JOB_ID, complete_managed_job_id, confirm, confirm_destructive, examples, task_options, use_api)


@click.group(epilog=examples("broker jobs launch -y examples/managed.yaml", "broker jobs queue",
                             "broker jobs logs 1 -f", "broker jobs cancel 1"))
def jobs():
    """Managed jobs: run to completion through preemptions (relaunch, resume from checkpoint)."""


@jobs.command("launch", epilog=examples(
    "broker jobs launch -y examples/managed.yaml          # follows the logs until the job ends",
    "broker jobs launch -d -y task.yaml --use-spot        # detached: prints the job id",
    "broker jobs launch --dryrun --json task.yaml         # the plan, with expected costs"))
@click.argument("task_file", type=click.Path(dir_okay=True))
@task_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
@click.option("--dryrun", is_flag=True, help="Only print the plan (spot places ranked by expected cost).")
@click.option("--json", "as_json", is_flag=True, help="With --dryrun: the plan as JSON (a list, one per stage, for a pipeline).")
@click.option("--pool", "-p", "pool_name", help="Run on a free worker of this pool (`broker jobs pool`), not a cluster of its own.")
@click.option("--num-jobs", type=int, help="With --pool: launch N jobs, ranks 0..N-1 ($SKYPILOT_JOB_RANK, $SKYPILOT_NUM_JOBS).")
def launch(task_file, overrides, yes, detach, dryrun, as_json, pool_name, num_jobs):
    """Run TASK_FILE as a managed job (cluster owned by the broker, torn down at the end). A file of
    several tasks (YAML documents separated by ---) is a pipeline: its stages run in order, each to
    completion on its own cheapest cluster before the next starts.

    Spot places are ranked by expected cost: the price raised by the preemptions the broker's managed
    jobs met there (each costs the restart overhead and the work since the last checkpoint), shown as
    E[$/h] in the plan."""
    from ..errors import UsageError

    api = use_api()

    if as_json and not dryrun:
        raise UsageError("--json needs --dryrun", "broker jobs launch --dryrun --json TASK")
    if num_jobs is not None and not pool_name:
        raise UsageError("--num-jobs needs --pool", "broker jobs launch --pool NAME --num-jobs N job.yaml")
    if num_jobs is not None and num_jobs < 1:  # 0 too: never read as "the default, 1"
        raise UsageError(f"--num-jobs {num_jobs}: at least 1", "broker jobs launch --pool NAME --num-jobs N job.yaml")
    pipeline = api.load_pipeline(task_file, {k: v for k, v in overrides.items() if k != "name"})
    for t in pipeline:
        render.task_warnings(t)
    if pool_name:
        n = 1 if num_jobs is None else num_jobs
        return _launch_in_pool(api, pipeline, pool_name, n, overrides.get("name"), yes, detach, dryrun)
    if not dryrun and any(not t.run for t in pipeline):  # said before planning, naming the file and the stage
        from ..errors import SpecError

        i = next(i for i, t in enumerate(pipeline) if not t.run)
        stage = f"stage {i + 1} ({pipeline[i].name or 'unnamed'}) of the pipeline: " if len(pipeline) > 1 else ""
        if not any(t.pool_workers is not None for t in pipeline):
            raise SpecError(f"{stage}a managed job needs `run:`", "add the command it runs, e.g. `run: python train.py`",
                            source=str(task_file), field="run")
    if any(t.pool_workers is not None for t in pipeline) and not dryrun:
        raise UsageError("this is a pool's task (`pool:`): it brings up workers for other jobs, it is not a job",
                         f"`broker jobs pool apply -p NAME {task_file}`, then `broker jobs launch --pool NAME "
                         "job.yaml`")
    if len(pipeline) > 1:
        pipeline.name = overrides.get("name") or pipeline.name  # --name names the pipeline, not every stage
        plans = []
        for i, t in enumerate(pipeline):  # fail early (exit 3) when a stage fits nowhere
            plans.append(api.plan(t, managed=True))
            if not as_json:
                render.stage_title(i, len(pipeline), t.name)
                render.print_plan(plans[-1], t.name)
        if as_json:
            render.print_json([render.plan_json(p, t.name) for p, t in zip(plans, pipeline)])
        if dryrun:
            return 0
        if not confirm(f"Launch managed pipeline of {len(pipeline)} stages?", yes):
            raise Declined()
        job = api.jobs_launch_pipeline(pipeline)
        render.info(f"managed job {job.id} submitted: pipeline {job.name or '(unnamed)'} of {len(pipeline)} stages "
                    f"(task id {job.task_id})")
        if detach:
            render.info(f"follow it with `broker jobs logs {job.id} --follow`")
            return 0
        return _follow(job.id)
    task = pipeline[0]
    if overrides.get("name"):
        from dataclasses import replace

        task = replace(task, name=overrides["name"])
    # exit 3 early when nothing fits; the controller plans again at launch, with the same risk ranking
    plan = api.plan(task, managed=True)
    if as_json:
        render.print_json(render.plan_json(plan, task.name))
    else:
        render.print_plan(plan, task.name)
        render.pool_note(task, task_file)
    if dryrun:
        return 0
    if not confirm("Launch managed job?", yes):
        raise Declined()
    job = api.jobs_launch(task)
    render.info(f"managed job {job.id} submitted (task id {job.task_id})")
    if detach:
        render.info(f"follow it with `broker jobs logs {job.id} --follow`")
        return 0
    return _follow(job.id)


def _launch_in_pool(api, pipeline, pool_name, num_jobs, name, yes, detach, dryrun) -> int:
    from ..errors import UsageError

    if len(pipeline) > 1:
        raise UsageError("a pipeline cannot run in a pool", "launch its stages one by one with --pool")
    task = pipeline[0]
    if name:
        from dataclasses import replace

        task = replace(task, name=name)
    if dryrun:
        render.info(f"{num_jobs} job(s) would run on the workers of pool {pool_name} (no provisioning)")
        return 0
    if not confirm(f"Launch {num_jobs} managed job(s) on pool {pool_name}?", yes):
        raise Declined()
    js = api.jobs_launch_pool(pool_name, task, num_jobs)
    ids = ", ".join(str(j.id) for j in js)
    render.info(f"managed job {ids} submitted to pool {pool_name}" if len(js) == 1 else
                f"managed jobs {ids} submitted to pool {pool_name} (ranks 0-{len(js) - 1})")
    sized = next((p["workers"] for p in api.pool_status(pool_name)), None)
    if sized == 0:  # a pool resized to 0 runs nothing: following would wait for ever
        render.warning(f"pool {pool_name} has 0 workers: the job(s) stay PENDING until it has some "
                       f"(`broker jobs pool apply -p {pool_name} --workers N`)")
    if detach or len(js) > 1 or sized == 0:
        render.info(f"follow one with `broker jobs logs {js[0].id} --follow`; workers: `broker jobs pool status "
                    f"{pool_name}`")
        return 0
    return _follow(js[0].id)


def _follow(job_id: int, as_json: bool = False) -> int:
    j = use_api().jobs_logs(job_id, True, render.LinePrinter(as_json=as_json).raw)
    render.managed_summary(j, use_api().job_costs())
    if j.status == "SUCCEEDED":
        return 0
    if j.status == "CANCELLED":
        return 130
    if j.status == "FAILED_BUDGET":
        return 6
    if j.status == "FAILED_NO_RESOURCE":  # the clouds refused after failover, as `broker launch` says it
        return 4
    return j.exit_code if j.exit_code not in (None, 0) else 1


@jobs.command("queue", epilog=examples("broker jobs queue", "broker jobs queue --json",
                                        "broker jobs queue -s                   # only jobs not yet ended",
                                        "broker jobs queue --all-users          # server mode: the team's jobs"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all-users", "-u", is_flag=True, help="Server mode: every user's jobs (default: yours).")
@click.option("--skip-finished", "-s", is_flag=True,
              help="Only jobs that have not ended (pending, starting, running, recovering), as SkyPilot's -s.")
def queue(as_json, all_users, skip_finished):
    """List managed jobs: id, name, resources, status, submitted, duration, recoveries, cost so far (a
    pipeline's stages on lines of their own: stage i/n)."""
    api = use_api()
    js = api.jobs_queue(all_users=all_users)
    if skip_finished:
        from ..jobs.store import TERMINAL

        js = [j for j in js if j.status not in TERMINAL]
    costs = api.job_costs()  # from the cost ledger, across recoveries
    if as_json:
        render.print_json([render.managed_json(j, costs) for j in js])
    else:
        render.print_managed(js, costs, show_user=all_users)


@jobs.command("logs", epilog=examples("broker jobs logs 1", "broker jobs logs 1 -f", "broker jobs logs 1 --json"))
@click.argument("job_id", type=JOB_ID, shell_complete=complete_managed_job_id)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep streaming until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per output line.")
def logs(job_id, follow, as_json):
    """A managed job's output across recoveries (with a marker at each recovery)."""
    if follow:
        return _follow(job_id, as_json)
    printer, seen = render.LinePrinter(as_json=as_json), []

    def on_line(text):
        seen.append(1)
        printer.raw(text)

    j = use_api().jobs_logs(job_id, False, on_line)
    if not seen:  # said, not an empty answer that looks like a job that printed nothing
        render.info(f"managed job {job_id} is {j.status} and has no output yet: `broker jobs logs {job_id} -f` follows "
                    "it" if j.status not in _ENDED else f"managed job {job_id} ended {j.status} with no output: "
                    f"`broker events --job {job_id}` says what happened")
    return 0


_ENDED = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED", "FAILED_CONTROLLER", "FAILED_BUDGET")


@jobs.command("timeline", epilog=examples("broker jobs timeline 3", "broker jobs timeline 3 --json"))
@click.argument("job_id", type=JOB_ID, shell_complete=complete_managed_job_id)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every segment).")
def timeline(job_id, as_json):
    """A managed job's market over time: each run of its instances (spot or on-demand, where, how long,
    what it cost) and the gaps between them (preemptions, relaunches, waits for spot), with a one-line
    picture (S spot, O on-demand, · nothing held)."""
    t = use_api().job_timeline(job_id)
    if as_json:
        render.print_json(t)
    else:
        render.print_timeline(t)


@jobs.command("cancel", epilog=examples("broker jobs cancel 3 4",
                                          "broker jobs cancel --all -y                      # -y required in scripts"))
@click.argument("job_ids", type=JOB_ID, nargs=-1, shell_complete=complete_managed_job_id)
@click.option("--all", "-a", "all_", is_flag=True, help="Cancel every active managed job.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --all).")
def cancel(job_ids, all_, yes):
    """Cancel managed jobs (their clusters are torn down). An unknown id is an error (exit 5)."""
    names_or_all(job_ids, all_, "job ids")
    if all_:
        confirm_destructive("Cancel every active managed job?", yes)
    api = use_api()
    done = api.jobs_cancel(list(job_ids), all_)
    if done:
        render.info(f"cancelling: {', '.join(map(str, done))}")
    elif all_:
        render.info("nothing to cancel: no managed job is active")
    for jid in (j for j in job_ids if j not in done):  # already ended: say how, not "nothing"
        render.info(f"managed job {jid} already ended {api.jobs_get(jid).status}: nothing to cancel")


from .pools import pool as _pool  # noqa: E402  (`broker jobs pool ...`)

jobs.add_command(_pool)
