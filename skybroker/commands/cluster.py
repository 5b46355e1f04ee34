"""launch, exec, status, down, stop, start, autostop, queue, logs, cancel."""
from __future__ import annotations

import click

from .. import render
from .options import confirm, task_options


def _job_exit(st, cluster: str) -> int:
    """The job's exit code carries through (for CI); a lost node is an error with a clear message."""
    if st is None:
        return 0
    render.job_summary(st, cluster)
    if any(n.status == "UNREACHABLE" for n in st.nodes):
        from ..errors import BrokerError

        lost = [str(n.rank) for n in st.nodes if n.status == "UNREACHABLE"]
        raise BrokerError(f"node(s) {', '.join(lost)} of cluster {cluster} became unreachable during the job "
                          "(preempted, stopped or network lost)", f"`broker status --refresh` shows what remains; "
                          f"`broker down {cluster}` cleans up")
    if st.status == "SUCCEEDED":
        return 0
    if st.status == "CANCELLED":
        return 130
    return st.exit_code if st.exit_code not in (None, 0) else 1


@click.command()
@click.argument("task_file", type=click.Path(dir_okay=True))
@task_options
@click.option("--cluster", "-c", "cluster", help="Cluster name (reused if it exists).")
@click.option("--dryrun", is_flag=True, help="Only print the plan; provision nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (with --dryrun).")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
@click.option("--retry-until-up", is_flag=True, help="Keep retrying with backoff when every place fails.")
@click.option("--keep-on-failure", is_flag=True,
              help="If bring-up fails after provisioning, keep the new cluster (for debugging) instead of tearing it down.")
def launch(task_file, overrides, cluster, dryrun, yes, as_json, detach, retry_until_up, keep_on_failure):
    """Plan TASK_FILE on the cheapest feasible cloud, provision it and run the task."""
    from .. import api

    task = api.load_task(task_file, overrides)
    existing = cluster is not None and not dryrun and api.cluster_exists(cluster)
    plan = None
    if not existing:
        plan = api.plan(task)
        if as_json:
            render.print_json(render.plan_json(plan, task.name))
        else:
            render.print_plan(plan, task.name)
        if dryrun:
            return 0
        api.preflight(task)  # bad input is reported before the question, and nothing is created
        if not confirm("Launch?", yes):
            raise click.Abort()
    progress = render.Progress(quiet=as_json)
    res = api.launch(task, cluster=cluster, plan=plan, detach=detach, retry_until_up=retry_until_up,
                     keep_on_failure=keep_on_failure, on_event=progress.event, on_line=render.LinePrinter().line)
    progress.done()
    render.attempts(res.attempts, res.cluster)
    if detach:
        render.info(f"job {res.job_id} submitted to cluster {res.cluster}; follow it with "
                    f"`broker logs {res.cluster} {res.job_id} --follow`")
        return 0
    code = _job_exit(res.status, res.cluster)
    render.info(f"cluster {res.cluster} stays up: `broker exec {res.cluster} -- CMD` runs more, "
                f"`broker down {res.cluster}` removes it")
    return code


@click.command("exec")
@click.argument("cluster")
@click.argument("task_or_cmd", nargs=-1, required=True)
@task_options
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
def exec_(cluster, task_or_cmd, overrides, detach):
    """Run a task file, or a command after --, on an existing cluster (setup is not re-run).

    \b
      broker exec mycluster task.yaml
      broker exec mycluster -- 'python train.py --epochs 1'
    """
    from .. import api

    task = api.exec_task(task_or_cmd, overrides)
    progress = render.Progress()
    res = api.exec_(cluster, task, detach=detach, on_event=progress.event, on_line=render.LinePrinter().line)
    progress.done()
    if detach:
        render.info(f"job {res.job_id} submitted to cluster {res.cluster}")
        return 0
    return _job_exit(res.status, res.cluster)


@click.command()
@click.argument("clusters", nargs=-1)
@click.option("--refresh", "-r", is_flag=True, help="Reconcile with the clouds (their tags are the truth).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(clusters, refresh, as_json):
    """List clusters: name, infra, resources, nodes, status, launched, $/h, autostop."""
    from .. import api

    recs = api.status(refresh=refresh, names=list(clusters) or None)
    if as_json:
        render.print_json([render.cluster_json(r) for r in recs])
    else:
        render.print_clusters(recs)


@click.command()
@click.argument("clusters", nargs=-1)
@click.option("--all", "-a", "all_", is_flag=True, help="Tear down every cluster.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def down(clusters, all_, yes):
    """Tear down clusters (terminate their instances). Safe to repeat."""
    from .. import api
    from ..errors import UsageError

    names = list(clusters)
    if all_:
        names = [r.name for r in api.status()]
        if not names:
            render.info("no clusters")
            return 0
    if not names:
        raise UsageError("name the cluster(s) to tear down, or pass --all", "see `broker status`")
    if not confirm(f"Tear down {', '.join(names)}?", yes):
        raise click.Abort()
    progress = render.Progress()
    done = api.down(names, on_event=progress.event)
    progress.done()
    for n in done:
        render.info(f"cluster {n} terminated")


@click.command()
@click.argument("cluster")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def stop(cluster, yes):
    """Stop a cluster's instances (disks are kept; restart with `broker start`)."""
    from .. import api

    if not confirm(f"Stop {cluster}?", yes):
        raise click.Abort()
    api.stop(cluster)
    render.info(f"cluster {cluster} stopped")


@click.command()
@click.argument("cluster")
def start(cluster):
    """Start a stopped cluster."""
    from .. import api

    api.start(cluster)
    render.info(f"cluster {cluster} is up")


@click.command()
@click.argument("cluster")
@click.option("--idle-minutes", "-i", type=int, help="Stop after this many idle minutes.")
@click.option("--down", "down_", is_flag=True, help="Tear down instead of stopping.")
@click.option("--cancel", "cancel_", is_flag=True, help="Cancel autostop.")
def autostop(cluster, idle_minutes, down_, cancel_):
    """Stop (or tear down, with --down) CLUSTER after it has been idle for --idle-minutes.

    Idle means no pending or running job. Enforced by a small watcher process on this machine."""
    from .. import api
    from ..errors import UsageError

    if cancel_:
        api.set_autostop(cluster, None, False)
        render.info(f"autostop cancelled for {cluster}")
        return 0
    if idle_minutes is None or idle_minutes < 0:
        raise UsageError("give --idle-minutes N (N ≥ 0), or --cancel")
    api.set_autostop(cluster, idle_minutes, down_)
    render.info(f"cluster {cluster} will be {'torn down' if down_ else 'stopped'} after {idle_minutes} idle minute(s)")


@click.command()
@click.argument("cluster")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue(cluster, as_json):
    """Show a cluster's jobs."""
    from .. import api

    jobs = api.queue(cluster)
    if as_json:
        render.print_json([render.job_json(j) for j in jobs])
    else:
        render.print_jobs(jobs, cluster)


@click.command()
@click.argument("cluster")
@click.argument("job_id", type=int, required=False)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep streaming until the job ends.")
def logs(cluster, job_id, follow):
    """Show a job's logs (default: the latest job) from every node."""
    from .. import api

    st = api.logs(cluster, job_id, follow=follow, on_line=render.LinePrinter().line)
    if follow:
        return _job_exit(st, cluster)
    return 0


@click.command()
@click.argument("cluster")
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--all", "-a", "all_", is_flag=True, help="Cancel every job on the cluster.")
def cancel(cluster, job_ids, all_):
    """Cancel jobs on a cluster (kills their whole process tree on every node)."""
    from .. import api

    done = api.cancel(cluster, list(job_ids), all_)
    render.info(f"cancelled: {', '.join(map(str, done)) if done else 'nothing (already finished?)'}")


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Terminate what is found without asking.")
@click.option("--cloud", "clouds", multiple=True, help="Only these clouds (default: every cloud with credentials).")
@click.option("--region", "regions", multiple=True, help="Only these regions (default: every region).")
def gc(yes, clouds, regions):
    """Find resources tagged by skybroker that the local state does not know (instances, security groups,
    firewall rules, resource groups, local node directories) and clusters whose launch was interrupted,
    and remove them."""
    from .. import gc as gc_mod
    from ..errors import BrokerError

    progress = render.Progress()
    regs = {c: list(regions) for c in clouds} if regions and clouds else None
    if regions and not clouds:
        from ..clouds import registry

        regs = {c: list(regions) for c in registry.names()}
    res = gc_mod.scan(tuple(clouds) or None, regs, on_event=progress.event)
    progress.done()
    for where, why in res.skipped:
        render.info(f"not scanned: {where}: {why}")
    if not res.scanned:
        raise BrokerError("nothing was scanned: " + "; ".join(f"{w}: {y}" for w, y in res.skipped),
                          "give a cloud with credentials (`broker check`), e.g. `broker gc --cloud aws`", exit_code=4)
    render.info("scanned: " + ", ".join(f"{c} ({n} region{'s' if n != 1 else ''})" for c, n in res.scanned.items()))
    if not res.orphans:
        render.info("nothing to remove: no untracked resources and no interrupted launches found")
        return 0
    for o in res.orphans:
        where = "/".join(p for p in (o.cloud, o.region) if p)
        what = "interrupted launch" if o.interrupted else "orphan"
        render.info(f"{what}: cluster {o.cluster} on {where}: {gc_mod.describe(o)}")
    if not yes:
        from .options import can_prompt

        if not can_prompt():
            render.info("run `broker gc --yes` to remove them")
            return 1
        if not click.confirm("Remove them?", default=False):
            return 1
    warnings = gc_mod.remove(res.orphans, on_event=progress.event)
    progress.done()
    n_inst = sum(len(o.instance_ids) for o in res.orphans)
    n_other = sum(len(o.resources) for o in res.orphans) - n_inst
    render.info(f"terminated {n_inst} instance(s)" + (f" and removed {n_other} other resource(s)" if n_other else "")
                + (f" ({len(warnings)} warning(s))" if warnings else ""))
    return 0


@click.group()
def hostkeys():
    """Pinned SSH host keys of cluster nodes (trust on first use, per instance)."""


@hostkeys.command("forget")
@click.argument("cluster")
@click.option("--node", "rank", type=int, help="Only this node rank (default: every node).")
def hostkeys_forget(cluster, rank):
    """Forget the pinned host key(s) of CLUSTER's nodes, after you checked that the host really changed
    (re-imaged, replaced). The next connection pins the key it is shown.

    \b
      broker hostkeys forget mycluster --node 1
    """
    from .. import clusters

    done = clusters.forget_host_keys(cluster, rank)
    render.info(f"forgot {len(done)} pinned host key(s) of {cluster}" + (f": {', '.join(done)}" if done else ""))
