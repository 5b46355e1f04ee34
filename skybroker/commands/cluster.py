"""launch, exec, status, down, stop, start, autostop, queue, logs, cancel, gc."""
from __future__ import annotations

import click

from .. import render
from ..errors import Declined, names_or_all
from .options import (JOB_ID, complete_cluster, complete_job_id, confirm, confirm_destructive, examples,
                      task_options, use_api)


def _job_code(st) -> int:
    if st is None or st.status == "SUCCEEDED":
        return 0
    if st.status == "CANCELLED":
        return 130
    return st.exit_code if st.exit_code not in (None, 0) else 1


def _job_exit(st, cluster: str, after: str | None = "UP") -> int:
    """The job's exit code carries through (for CI); a lost node is an error with a clear message. `after`:
    the cluster's status once the job ended (None: gone), so a node lost to a stop or down is said as such."""
    if st is None:
        return 0
    render.job_summary(st, cluster)
    if any(n.status == "UNREACHABLE" for n in st.nodes) and after in ("STOPPED", "STOPPING"):
        return _job_code(st)  # the user stopped it: render.launch_end says so
    if any(n.status == "UNREACHABLE" for n in st.nodes):
        from ..errors import BrokerError

        if after is None:
            raise BrokerError(f"cluster {cluster} was torn down during the job", "nothing of it is left")
        lost = [str(n.rank) for n in st.nodes if n.status == "UNREACHABLE"]
        raise BrokerError(f"node(s) {', '.join(lost)} of cluster {cluster} became unreachable during the job "
                          "(preempted, stopped or network lost)", f"`broker status --refresh` shows what remains; "
                          f"`broker down {cluster}` cleans up")
    return _job_code(st)


@click.command(epilog=examples(
    "broker launch -y examples/hello.yaml                 # 2 local nodes, no account needed",
    "broker launch --dryrun examples/v100.yaml            # the plan only",
    "broker launch --dryrun --json task.yaml --use-spot   # the plan for scripts",
    "broker launch -c dev -d -y task.yaml --gpus A100:8   # named cluster, detached",
    "broker launch -y --infra aws/us-east-1 task.yaml"))
@click.argument("task_file", type=click.Path(dir_okay=True))
@task_options
@click.option("--cluster", "-c", "cluster", help="Cluster name (reused if it exists).",
              shell_complete=complete_cluster)
@click.option("--dryrun", is_flag=True, help="Only print the plan; provision nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True,
              help="The plan as JSON (with --dryrun); otherwise JSON lines on stdout: plan, events, output, result.")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
@click.option("--retry-until-up", is_flag=True,
              help="Keep retrying with backoff when every place fails for capacity or quota (not credentials).")
@click.option("--keep-on-failure", is_flag=True,
              help="If bring-up fails after provisioning, keep the new cluster (for debugging) instead of tearing it down.")
@click.option("--allow-suspicious-prices", "allow_suspicious", is_flag=True, default=None,
              help="Let the plan choose a price the catalog flags as a likely anomaly (shown with * in the plan).")
@click.option("--idle-minutes-to-autostop", "-i", "idle_minutes", type=click.IntRange(min=0), metavar="N",
              help="Stop the cluster after N idle minutes (overrides resources.autostop).")
@click.option("--down", "autodown", is_flag=True,
              help="Tear the cluster down once idle (after its jobs end, or after -i N idle minutes).")
@click.option("--no-setup", is_flag=True, help="Skip the task's setup (run only `run`).")
def launch(task_file, overrides, cluster, dryrun, yes, as_json, detach, retry_until_up, keep_on_failure,
           allow_suspicious, idle_minutes, autodown, no_setup):
    """Plan TASK_FILE on the cheapest feasible cloud, provision it and run the task."""
    api = use_api()
    if no_setup:  # SkyPilot's `sky launch --no-setup`
        overrides = {**overrides, "no_setup": True}
    if idle_minutes is not None or autodown:  # SkyPilot's `sky launch -i N --down`
        overrides = {**overrides, "autostop": {"idle_minutes": idle_minutes or 0, "down": autodown}}

    pipeline = None
    if dryrun:
        pipeline = api.load_pipeline(task_file, overrides)
        if len(pipeline) > 1:  # the plan of every stage; running a pipeline is `jobs launch`
            return _pipeline_dryrun(api, pipeline, as_json)
    if pipeline is not None and (pipeline[0].name or not pipeline.name):
        task = pipeline[0]  # already parsed (load_task would read and validate the file a second time)
    else:
        task = api.load_task(task_file, overrides)
    render.task_warnings(task)
    if task.pool_workers is not None and not dryrun:
        from ..errors import UsageError

        raise UsageError("this is a pool's task (`pool:`): its workers run other jobs, it is not launched itself",
                         f"`broker jobs pool apply -p NAME {task_file}`, then `broker jobs launch --pool NAME "
                         "job.yaml`")
    existing = cluster is not None and not dryrun and api.cluster_exists(cluster)
    plan = None
    stream = render.JsonEvents() if as_json and not dryrun else None  # --json launch: JSON lines only
    if not existing:
        plan = api.plan(task, allow_suspicious=allow_suspicious)
        if stream is not None:
            stream.emit({"type": "plan", **render.plan_json(plan, task.name)})
        elif as_json:
            render.print_json(render.plan_json(plan, task.name))
        else:
            render.print_plan(plan, task.name)
            render.pool_note(task, task_file)
        if dryrun:
            return 0
        api.preflight(task, plan)  # bad input or an unusable cloud: said before the question, nothing created
        if not confirm("Launch?", yes or as_json):
            raise Declined()
    if stream is not None:
        res = api.launch(task, cluster=cluster, plan=plan, detach=detach, retry_until_up=retry_until_up,
                         keep_on_failure=keep_on_failure, on_event=stream.event, on_line=stream.line)
        _autostop_reused(api, res, overrides)
        st = res.status
        stream.emit({"type": "result", "cluster": res.cluster, "job_id": res.job_id,
                     "status": st.status if st else "SUBMITTED", "exit_code": st.exit_code if st else None,
                     "attempts": [a.__dict__ for a in res.attempts],
                     "cluster_status": res.cluster_status if st else None})
        return _job_code(st)
    progress = render.Progress()
    with progress:
        res = api.launch(task, cluster=cluster, plan=plan, detach=detach, retry_until_up=retry_until_up,
                         keep_on_failure=keep_on_failure, on_event=progress.event,
                         on_line=render.LinePrinter(progress=progress).line)
    render.attempts(res.attempts, res.cluster)
    _autostop_reused(api, res, overrides)
    if detach:
        render.info(f"job {res.job_id} submitted to cluster {res.cluster}; follow it with "
                    f"`broker logs {res.cluster} {res.job_id} --follow`")
        return 0
    code = _job_exit(res.status, res.cluster, res.cluster_status)
    render.launch_end(res.cluster, res.cluster_status)
    return code


def _pipeline_dryrun(api, pipeline, as_json: bool) -> int:
    plans = [api.plan(t) for t in pipeline]
    if as_json:
        render.print_json({"pipeline": pipeline.name, "stages": [render.plan_json(p, t.name)
                                                                  for p, t in zip(plans, pipeline)]})
        return 0
    for i, (p, t) in enumerate(zip(plans, pipeline)):
        render.stage_title(i, len(pipeline), t.name)
        render.print_plan(p, t.name)
    render.info(f"a pipeline of {len(pipeline)} stages runs with `broker jobs launch FILE` (each stage on its own "
                "cluster, in order); `broker launch` runs one task")
    return 0


@click.command("exec", epilog=examples(
    "broker exec dev task.yaml",
    "broker exec dev -- 'python train.py --epochs 1'",
    "broker exec -d dev -- nvidia-smi                     # detached: prints the job id"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.argument("task_or_cmd", nargs=-1, required=True)
@task_options
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")
def exec_(cluster, task_or_cmd, overrides, detach):
    """Run a task file, or a command after --, on an existing cluster (setup is not re-run)."""
    api = use_api()

    task = api.exec_task(task_or_cmd, overrides)
    render.task_warnings(task)
    progress = render.Progress()
    with progress:
        res = api.exec_(cluster, task, detach=detach, on_event=progress.event,
                        on_line=render.LinePrinter(progress=progress).line)
    if detach:
        render.info(f"job {res.job_id} submitted to cluster {res.cluster}")
        return 0
    return _job_exit(res.status, res.cluster)


@click.command(epilog=examples(
    "broker status",
    "broker status dev --refresh                          # ask the cloud (its tags are the truth)",
    "broker status --json | jq '.[].name'",
    "ssh ubuntu@$(broker status --ip dev)                 # the head node's address",
    "curl http://$(broker status --endpoint 8080 dev)/    # a port the task opened (resources.ports)"))
@click.argument("clusters", nargs=-1, shell_complete=complete_cluster)
@click.option("--refresh", "-r", is_flag=True, help="Reconcile with the clouds (their tags are the truth).")
@click.option("--adopt", is_flag=True,
              help="With --refresh: also record clusters the clouds have (by tag) that the state does not know, "
                   "e.g. after a lost or corrupt state database.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all-users", "-u", is_flag=True, help="Server mode: every user's clusters (default: yours).")
@click.option("--ip", is_flag=True, help="Print only the head node's IP (one cluster).")
@click.option("--endpoints", is_flag=True, help="Print the endpoint of every port the cluster's task opened.")
@click.option("--endpoint", type=click.IntRange(1, 65535), metavar="PORT", help="Print only this port's endpoint.")
def status(clusters, refresh, adopt, as_json, all_users, ip, endpoints, endpoint):
    """List clusters: name, infra, resources, nodes, status, launched, $/h, cost so far, autostop.

    A cluster whose launch was interrupted shows as INTERRUPTED (`broker down NAME` removes it). Naming a
    cluster that does not exist is an error (exit 5)."""
    api = use_api()
    from ..errors import UsageError

    if ip or endpoints or endpoint is not None:
        from .addresses import address

        return address(api, clusters, refresh, as_json, ip, endpoints, endpoint)
    if adopt:
        if not refresh:
            raise UsageError("--adopt needs --refresh", "broker status --refresh --adopt")
        progress = render.Progress(quiet=as_json)
        with progress:
            progress.event("scan", "looking for clusters the clouds know and the state does not")
            adopted = api.adopt(on_event=progress.event)
        for name in adopted:
            render.info(f"adopted cluster {name} from the cloud's tags")
    recs = api.status(refresh=refresh, names=list(clusters) or None, all_users=all_users)
    costs = api.cluster_costs()  # cost so far of each cluster's current run, from the ledger
    if as_json:
        render.print_json([render.cluster_json(r, costs.get(r.name)) for r in recs])
    else:
        render.print_clusters(recs, costs, show_user=all_users,
                              stopped_hourly=api.stopped_hourly() if any(r.status == "STOPPED" for r in recs) else {})
        render.print_daemons(api.daemons(), recs)
    render.refresh_warnings(recs)  # a cloud that could not be asked: its clusters as recorded (exit 0)


def _autostop_reused(api, res, overrides) -> None:
    """`launch -i N / --down` on an existing cluster sets its autostop now (a new one got it from its task)."""
    if res.reused and "autostop" in overrides:
        auto = overrides["autostop"]
        api.set_autostop(res.cluster, auto["idle_minutes"], auto["down"])


@click.command(epilog=examples(
    "broker down dev                                      # asks first (default: no)",
    "broker down dev other -y                             # in scripts: -y is required",
    "broker down --all -y"))
@click.argument("clusters", nargs=-1, shell_complete=complete_cluster)
@click.option("--all", "-a", "all_", is_flag=True, help="Tear down every cluster.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
def down(clusters, all_, yes):
    """Tear down clusters (terminate their instances). Safe to repeat: a cluster that is already gone
    is reported, not an error."""
    api = use_api()
    from ..errors import UsageError

    names = list(clusters)
    names_or_all(names, all_)
    if all_:
        names = [r.name for r in api.status()]
        if not names:
            render.info("no clusters")
            return 0
    if not names:
        raise UsageError("name the cluster(s) to tear down, or pass --all", "see `broker status`")
    existing = [n for n in names if api.cluster_exists(n)]
    if existing:
        confirm_destructive(f"Tear down {', '.join(existing)}?", yes)
    progress = render.Progress()
    with progress:
        done = api.down(names, on_event=progress.event)
    for n in done:
        render.info(f"cluster {n} terminated")
    spared = [n for n in existing if n not in done and api.cluster_exists(n)]  # gone meanwhile: another down
    if spared and not all_:  # named, and left up: a managed job's or pool's (the note above says which)
        raise UsageError(f"not torn down: {', '.join(spared)}", "a cluster of an active managed job or pool ends "
                         "with it: `broker jobs cancel` / `broker jobs pool down`")


@click.command(epilog=examples("broker stop dev", "broker stop dev -y && broker start dev"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
def stop(cluster, yes):
    """Stop a cluster's instances (disks are kept; restart with `broker start`)."""
    api = use_api()

    rec = api.get_cluster(cluster)  # unknown: exit 5 before asking anything
    if rec.status == "STOPPED":  # idempotent, as `start` and `down` are
        render.info(f"cluster {cluster} is already stopped")
        return 0
    confirm_destructive(f"Stop {cluster}?", yes)
    progress = render.Progress()
    with progress:
        progress.event("stop", f"stopping {cluster}")
        stopped = api.stop(cluster, on_event=progress.event)
    render.info(f"cluster {cluster} {'stopped' if stopped is not False else 'is already stopped'}")


@click.command(epilog=examples("broker start dev"))
@click.argument("cluster", shell_complete=complete_cluster)
def start(cluster):
    """Start a stopped cluster (waits for SSH and reinstalls the node agent)."""
    api = use_api()

    api.get_cluster(cluster)
    progress = render.Progress()
    with progress:
        progress.event("start", f"starting {cluster}")
        api.start(cluster, on_event=progress.event)
    render.info(f"cluster {cluster} is up")


@click.command(epilog=examples(
    "broker autostop dev -i 30                            # stop after 30 idle minutes",
    "broker autostop dev -i 60 --down                     # tear down instead",
    "broker autostop dev --cancel"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.option("--idle-minutes", "-i", type=int, help="Stop after this many idle minutes.")
@click.option("--down", "down_", is_flag=True, help="Tear down instead of stopping.")
@click.option("--cancel", "cancel_", is_flag=True, help="Cancel autostop.")
def autostop(cluster, idle_minutes, down_, cancel_):
    """Stop (or tear down, with --down) CLUSTER after it has been idle for --idle-minutes.

    Idle means no pending or running job. Where the cloud allows it (AWS, the local cloud) the cluster
    enforces it itself: its head node's agent stops or terminates the cluster, with no broker process
    needed (your laptop may be closed). Elsewhere a small watcher process on this machine does it.
    `broker status` shows which (AUTOSTOP `10m (node)` or `10m (local)`)."""
    api = use_api()
    from ..errors import UsageError

    if cancel_:
        api.set_autostop(cluster, None, False)
        render.info(f"autostop cancelled for {cluster}")
        return 0
    if idle_minutes is None or idle_minutes < 0:
        raise UsageError("give --idle-minutes N (N ≥ 0), or --cancel")
    rec = api.set_autostop(cluster, idle_minutes, down_)
    how = ("enforced on the cluster itself" if rec.autostop_where == "node"
           else "enforced by the watcher on this machine")
    render.info(f"cluster {cluster} will be {'torn down' if rec.autostop_down else 'stopped'} after {idle_minutes} "
                f"idle minute(s), {how}")


@click.command(epilog=examples("broker queue dev", "broker queue dev --json"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue(cluster, as_json):
    """Show a cluster's jobs."""
    api = use_api()

    jobs = api.queue(cluster, on_event=_warn)
    if as_json:
        render.print_json([render.job_json(j) for j in jobs])
    else:
        render.print_jobs(jobs, cluster)


def _warn(kind: str, message: str) -> None:
    """The warnings of queue/logs/cancel (a node that could not be reached) on stderr."""
    (render.warning if kind == "warning" else render.info)(message)


@click.command(epilog=examples(
    "broker logs dev                                      # the latest job, what exists now",
    "broker logs dev 2 --follow                           # stream until job 2 ends (exits with its code)",
    "broker logs dev 2 --json                             # one JSON object per line: {\"node\", \"line\"}"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.argument("job_id", type=JOB_ID, required=False, shell_complete=complete_job_id)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep streaming until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per output line.")
def logs(cluster, job_id, follow, as_json):
    """Show a job's logs (default: the latest job) from every node."""
    api = use_api()

    st = api.logs(cluster, job_id, follow=follow, on_line=render.LinePrinter(as_json=as_json).line, on_event=_warn)
    if follow:
        return _job_exit(st, cluster)
    if st is not None and st.done and getattr(st, "crash", None):  # a crashed runner wrote no log: say why
        render.job_summary(st, cluster)
    return 0


@click.command(epilog=examples(
    "broker cancel dev 3 4",
    "broker cancel dev --all -y                           # every job; -y required in scripts"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.argument("job_ids", type=JOB_ID, nargs=-1, shell_complete=complete_job_id)
@click.option("--all", "-a", "all_", is_flag=True, help="Cancel every job on the cluster.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --all).")
def cancel(cluster, job_ids, all_, yes):
    """Cancel jobs on a cluster (kills their whole process tree on every node). An id the cluster never
    had is an error (exit 5)."""
    api = use_api()

    names_or_all(job_ids, all_, "job ids")
    if all_:
        api.get_cluster(cluster)
        confirm_destructive(f"Cancel every job on {cluster}?", yes)
    done = api.cancel(cluster, list(job_ids), all_, on_event=_warn)
    render.info(f"cancelled: {', '.join(map(str, done)) if done else 'nothing (already finished?)'}")


@click.command(epilog=examples(
    "broker gc                                            # list orphans (asks before terminating)",
    "broker gc --json                                     # list only, for scripts",
    "broker gc --yes --cloud aws --region us-east-1"))
@click.option("--yes", "-y", is_flag=True, help="Terminate what is found without asking.")
@click.option("--cloud", "clouds", multiple=True, help="Only these clouds (default: those ready in `broker check`).")
@click.option("--region", "regions", multiple=True, help="Only these regions (default: every catalog region).")
@click.option("--json", "as_json", is_flag=True, help="Print what was found (and, with --yes, removed) as JSON.")
def gc(yes, clouds, regions, as_json):
    """Find resources tagged by skybroker that the local state does not know (instances, security groups,
    firewall rules, resource groups, local node directories) and clusters whose launch was interrupted,
    and remove them. Clouds that cannot be scanned are named, never skipped silently."""
    from .options import can_prompt

    api = use_api()  # in client mode: the server's state and clouds (admins only)
    from ..errors import BrokerError, UsageError

    progress = render.Progress(quiet=as_json)
    regs = {c: list(regions) for c in clouds} if regions and clouds else None
    if regions and not clouds:
        from ..clouds import registry

        regs = {c: list(regions) for c in registry.names()}
    with progress:
        progress.event("scan", "looking for resources tagged by skybroker and interrupted launches")
        res = api.gc_scan(tuple(clouds) or None, regs, on_event=progress.event)
    if not res.scanned:
        raise BrokerError("nothing was scanned: " + "; ".join(f"{w}: {y}" for w, y in res.skipped),
                          "give a cloud that is ready in `broker check`, e.g. `broker gc --cloud aws`", exit_code=4)
    if as_json and not yes:
        render.print_json(render.gc_json(res, []))
        return 0
    if not as_json:
        render.print_gc_scan(res)
    if not res.orphans:
        if as_json:
            render.print_json(render.gc_json(res, []))
        return 0
    if not yes:
        if not can_prompt():
            raise UsageError(f"{len(res.orphans)} cluster(s) with leftovers found; not removing them without --yes "
                             "(stdin is not a terminal)", "run `broker gc --yes` to remove them")
        if not render.confirm_prompt("Remove them?", default=False):
            raise Declined()
    with progress:
        warnings = api.gc_remove(res.orphans, on_event=progress.event)
    if as_json:
        render.print_json(render.gc_json(res, res.orphans, warnings))
    else:
        render.print_gc_removed(res.orphans, warnings)
    return 0


@click.group(epilog=examples("broker hostkeys forget mycluster            # every node's pin",
                             "broker hostkeys forget mycluster --node 1   # one node"))
def hostkeys():
    """Pinned SSH host keys of cluster nodes (trust on first use, per instance)."""


@hostkeys.command("forget", epilog=examples("broker hostkeys forget mycluster --node 1"))
@click.argument("cluster")
@click.option("--node", "rank", type=int, help="Only this node rank (default: every node).")
def hostkeys_forget(cluster, rank):
    """Forget the pinned host key(s) of CLUSTER's nodes, after you checked that the host really changed
    (re-imaged, replaced). The next connection pins the key it is shown."""
    done = use_api().forget_host_keys(cluster, rank)  # in client mode: the keys the server pinned
    render.info(f"forgot {len(done)} pinned host key(s) of {cluster}" + (f": {', '.join(done)}" if done else ""))


@click.command(epilog=examples("broker events                        # the latest events of every cluster",
                               "broker events mycluster              # one cluster: launch, failover, autostop, down",
                               "broker events --job 3 --json         # a managed job: recoveries, policy decisions"))
@click.argument("cluster", required=False, shell_complete=complete_cluster)
@click.option("--job", "job_id", type=click.IntRange(1, 2**31), help="A managed job's events instead.")
@click.option("-n", "limit", type=click.IntRange(1, 100000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def events(cluster, job_id, limit, as_json):
    """Stored events: provisioning attempts and failover (with the clouds' error codes), bring-up stages,
    recoveries, autostop, teardown."""
    api = use_api()

    evs = api.events(cluster, job_id, limit)
    if as_json:
        render.print_json(evs)
    else:
        render.print_events(evs, show_cluster=not cluster and job_id is None)


@click.command("ssh", context_settings={"ignore_unknown_options": True}, epilog=examples(
    "broker ssh mycluster                     # a shell on the head node",
    "broker ssh mycluster --node 1 -- nvidia-smi",
    "ssh mycluster                            # the same, with your own ssh (VS Code Remote too)"))
@click.argument("cluster", shell_complete=complete_cluster)
@click.option("--node", "rank", type=click.IntRange(0, 10000), default=0, help="Node rank (0 = head).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(cluster, rank, command):
    """Open a shell on a node of CLUSTER (or run COMMAND there), with the host key skybroker pinned.
    After a launch, plain `ssh CLUSTER` and `ssh CLUSTER-worker1` work too (an Include in ~/.ssh/config)."""
    import os

    api = use_api()

    t = api.ssh_target(cluster, rank)
    render.stop_progress()
    if t["kind"] == "local":
        env = dict(os.environ, HOME=t["home"])
        argv = ["bash", "-c", " ".join(command)] if command else ["bash", "-l"]
        os.chdir(t["home"])
        os.execvpe(argv[0], argv, env)
    os.execvp("ssh", t["argv"] + list(command))
