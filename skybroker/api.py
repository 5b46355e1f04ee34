"""Use cases behind the CLI, also the Python API. Nothing here prints or reads the terminal."""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import UsageError


def load_task(path: str, overrides: Mapping[str, Any] | None = None):
    from . import spec

    return spec.load_task(path, overrides)


def load_pipeline(path: str, overrides: Mapping[str, Any] | None = None):
    """Every task of a task file, in order (a file of one task is a pipeline of one)."""
    from . import spec

    return spec.load_pipeline(path, overrides)


def plan(task, blocklist: Iterable = (), clouds: Iterable[str] | None = None, allow_suspicious: bool | None = None,
         managed: bool = False, check_budget: bool = True):
    """The optimizer's ranked plan for a task, across the clouds that have credentials (or all catalog
    clouds when none do, with a note saying so). Offers whose price the catalog flags as a likely anomaly
    are chosen only with `allow_suspicious` (default: the config's `allow_suspicious_prices`). A `managed`
    job's spot offers are ranked by expected cost (`managed_risk`: what preemptions observed there cost). A task with a `budget:`
    whose estimated cost exceeds it is refused (BudgetError, costs/budget.py); the managed-jobs
    controller, which enforces the budget on what was really spent, plans without that check."""
    from . import optimizer
    from .check import enabled_clouds

    from . import config

    note = None
    if clouds is None:
        clouds, note = enabled_clouds()
        if all(r.cloud and _named_only(r.cloud) for r in task.candidates):
            note = None  # the task names where it runs; credentials do not matter
    allowed = config.get("allowed_clouds")
    blocklist = list(blocklist)
    if allowed:
        kept = tuple(c for c in clouds if c in allowed)
        if not kept:
            raise UsageError(f"the config allows only {', '.join(allowed)}, and none of them is ready",
                             "see `broker check`, or change allowed_clouds in the config file")
        if kept != tuple(clouds):
            note = (note + "; " if note else "") + f"config: only {', '.join(kept)}"
        clouds = kept
    for cloud, regions in (config.get("allowed_regions") or {}).items():
        from . import catalog

        try:
            all_regions = catalog.regions(cloud)
        except Exception:  # noqa: BLE001 - a provider without a catalog: nothing to restrict here
            continue
        blocklist += [optimizer.Block(cloud, r) for r in all_regions if r not in regions]
    if allow_suspicious is None:
        allow_suspicious = bool(config.get("allow_suspicious_prices"))
    vnotes: list[str] = []
    if task.volumes:  # where the task's volumes are: a placement constraint on its Resources
        from .volumes import ops as volumes

        task, vnotes = volumes.constrain(task, tuple(clouds))
    result = optimizer.optimize(task, tuple(clouds), blocklist, clouds_note=note, allow_suspicious=allow_suspicious,
                                risk=managed_risk(task) if managed else None)
    result = dataclasses.replace(result, prices=price_ages(c.cloud for c in result.candidates),
                                 extra_notes=tuple(vnotes))
    if check_budget:
        from .costs import budget

        budget.check_plan(task, result)
    return result


def price_ages(clouds) -> tuple[dict, ...]:
    """catalog.price_age() of each cloud with a catalog, plus `stale` (older than BROKER_CATALOG_MAX_AGE_DAYS;
    0 turns the warning off) and `max_age_days`."""
    from . import catalog, settings

    limit = float(settings.get("catalog_max_age_days"))
    out = []
    for cloud in sorted(set(clouds)):
        if cloud not in catalog.CLOUDS:
            continue
        age = catalog.price_age(cloud)
        out.append({**age, "stale": bool(limit) and age["age_days"] > limit, "max_age_days": limit})
    return tuple(out)


def managed_risk(task):
    """For a managed job with spot options: the risk factors from the preemptions the broker observed
    (jobs/risk.py); None otherwise (plain price ranking)."""
    if not any(r.use_spot for r in task.candidates):
        return None
    from . import settings
    from .jobs import risk

    lost = risk.lost_hours_per_preemption(task.restart_overhead_hours, settings.get("checkpoint_interval"))
    return risk.risk_for(risk.history(), lost)


_plan_task = plan  # `launch` takes a `plan=` argument that shadows the function


def _named_only(cloud: str) -> bool:
    from .clouds import registry

    return registry.known(cloud) and registry.get(cloud, sdk=False).capabilities.named_only


@dataclass(frozen=True)
class GpuRow:
    name: str
    count: float
    cloud: str
    price: float | None  # cheapest on-demand $/h (whole machine), None = no offer
    price_where: str | None
    spot_price: float | None
    spot_where: str | None
    instance_type: str | None  # of the on-demand offer (else of the spot offer)
    spot_instance_type: str | None = None


# Shown by `broker show-gpus` without a name or --all (as `sky show-gpus` shows its common GPUs).
COMMON_GPUS = ("V100", "V100-32GB", "T4", "L4", "L40S", "A10", "A10G", "A100", "A100-80GB", "H100", "H200",
               "B200", "MI300X")


def show_gpus(name: str | None = None, cloud: str | None = None, *, region: str | None = None,
              count: float | None = None, spot: bool = False, all_gpus: bool = False) -> list[GpuRow]:
    """Accelerators with their counts and the cheapest on-demand and spot machine per cloud.

    `name` may carry a count (`A100:8`); without a name only COMMON_GPUS unless `all_gpus`. `region`
    keeps offers in that region (and the clouds that have it), `count` one count, `spot` rows with a spot
    offer. An unknown accelerator is NoFeasibleError (exit 3), as in `launch --gpus`."""
    from . import catalog, optimizer
    from .catalog.model import CLOUDS
    from .clouds import registry
    from .errors import NoFeasibleError
    from .resources import Resources, normalize_cloud

    if name and ":" in name:
        name, _, n = name.partition(":")
        try:
            count = float(n)
        except ValueError:
            raise UsageError(f"{name}:{n}: the count must be a number", "e.g. `broker show-gpus A100:8`") from None
    if count is not None and count <= 0:
        raise UsageError(f"--count {count:g}: must be positive")
    clouds = (normalize_cloud(cloud, "--cloud"),) if cloud else CLOUDS
    if cloud and clouds[0] not in CLOUDS:
        prov = registry.get(clouds[0], sdk=False)
        if not prov.capabilities.accelerators:
            raise UsageError(f"the {clouds[0]} cloud offers no accelerators", f"pick one of {', '.join(CLOUDS)}")
        return [GpuRow(acc, n, prov.name, price, where, None, None, itype)  # what the provider has now
                for acc, n, where, itype, price in registry.get(clouds[0]).accelerator_inventory(region)
                if (name is None or acc.lower() == name.lower()) and (count is None or n >= count)]
    if region:
        with_region = tuple(c for c in clouds if region in catalog.regions(c))
        if not with_region:
            from difflib import get_close_matches

            known = sorted({r for c in clouds for r in catalog.regions(c)})
            close = get_close_matches(region, known, n=3, cutoff=0.6)
            raise UsageError(f"no region {region!r} in the {', '.join(clouds)} catalog(s)",
                             f"did you mean {' or '.join(close)}?" if close else "see `broker show-gpus --help`")
        clouds = with_region
    common = {g.lower() for g in COMMON_GPUS}
    pairs: set[tuple[str, float, str]] = set()
    for c in clouds:
        for s in catalog.specs(c):
            acc = s.accelerator_name
            if not acc:
                continue
            if name is not None:
                if acc.lower() != name.lower():
                    continue
            elif not all_gpus and acc.lower() not in common:
                continue
            if count is not None and s.accelerator_count != count:
                continue
            pairs.add((acc, s.accelerator_count, c))
    if name and not pairs:
        names = sorted({s.accelerator_name for c in CLOUDS for s in catalog.specs(c) if s.accelerator_name})
        if any(n.lower() == name.lower() for n in names):
            where = f"{name}" + (f":{count:g}" if count is not None else "")
            raise NoFeasibleError(f"no {where} offer on {', '.join(clouds)}" + (f" in {region}" if region else ""),
                                  f"`broker show-gpus {name}` lists every count and cloud")
        from difflib import get_close_matches

        close = get_close_matches(name, names, n=3, cutoff=0.5)
        raise NoFeasibleError(f"no accelerator named {name!r} in the catalogs",
                              f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(names)}")
    rows = []
    for acc, n, c in sorted(pairs, key=lambda p: (p[0].lower(), p[1], registry.order(p[2]))):
        best = {}
        for use_spot in (False, True):
            res = Resources(cloud=c, region=region, accelerator=acc, accelerator_count=n, use_spot=use_spot,
                            instance_type=None)
            found = optimizer._search(res, 0, c, 1, (), catalog.specs, catalog.offers)
            found.sort(key=optimizer.Candidate.sort_key)
            best[use_spot] = found[0] if found else None
        od, sp = best[False], best[True]
        if od is None and sp is None:
            continue
        if spot and sp is None:
            continue
        rows.append(GpuRow(acc, n, c, od.price if od else None, od.infra if od else None,
                           sp.price if sp else None, sp.infra if sp else None,
                           (od or sp).instance_type, sp.instance_type if sp else None))
    return rows


# ----------------------------------------------------------------------------------------------
# Clusters (see clusters.py for the use cases themselves)

def cluster_exists(name: str) -> bool:
    from . import clusters

    return clusters.exists(clusters.validate_name(name))


def get_cluster(name: str):
    """The cluster's record (local state only; no cloud call). NotFoundError (exit 5) when unknown."""
    from . import state
    from .errors import NotFoundError

    rec = state.get_cluster(name)
    if rec is None:
        raise NotFoundError(f"cluster {name!r} not found", "see `broker status` for your clusters")
    return rec


def cluster_names() -> list[str]:
    """Names of the known clusters (local state; for shell completion)."""
    from . import state

    return [r.name for r in state.list_clusters()]


def launch(task, *, cluster: str | None = None, plan=None, detach: bool = False, retry_until_up: bool = False,
           keep_on_failure: bool = False, on_event=None, on_line=None):
    """Provision (failing over zone → region → cloud) or reuse a cluster, then run the task on it."""
    from . import clusters

    first = plan

    def plan_fn(blocks):
        nonlocal first
        if first is not None and not blocks:
            p, first = first, None
            return p
        return _plan_task(task, blocks, clouds=plan.clouds if plan is not None else None,
                          allow_suspicious=plan.allow_suspicious if plan is not None else None)

    return clusters.launch(task, cluster=cluster, plan_fn=plan_fn, detach=detach, retry_until_up=retry_until_up,
                           keep_on_failure=keep_on_failure, on_event=on_event or (lambda k, m: None),
                           on_line=on_line or (lambda r, l: None))


def preflight(task, plan=None) -> None:
    """What can be checked before the user is asked to confirm a launch: the task's sources exist, rsync
    is there for remote nodes, and the chosen cloud can be used (credentials found, SDK installed) — so
    nobody is asked to confirm a launch that cannot happen."""
    from . import lifecycle

    lifecycle.preflight(task)
    if plan is not None:
        from .clouds import registry
        from .errors import CredentialsError

        prov = registry.get(plan.chosen.cloud, sdk=False)
        missing = registry.missing_sdk(prov)
        if missing:
            raise CredentialsError(f"the plan chose {plan.chosen.cloud}, but its SDK is not installed ({missing})",
                                   hint=f"pip install 'skybroker[{prov.sdk_extra or prov.name}]', or name another "
                                        "cloud with --infra")
        from .runtime import identity

        identity.preflight(task, plan.chosen.cloud)  # LOCAL_CREDENTIALS: the files exist, before the question
        check = prov.check()
        if not check.ok:
            raise CredentialsError(f"the plan chose {plan.chosen.cloud}, which has no usable credentials: "
                                   f"{check.detail}", hint=check.hint or "see `broker check`")


def exec_task(args: tuple[str, ...] | list[str], overrides: Mapping[str, Any] | None = None):
    """`broker exec C task.yaml` or `broker exec C -- cmd args`."""
    import os

    if len(args) == 1 and (args[0].endswith((".yaml", ".yml")) or os.path.isfile(args[0])):
        return load_task(args[0], overrides)
    from . import spec

    data = {"name": "cmd", "run": " ".join(args)}
    return spec.task_from_dict(data, source="<command line>", overrides=overrides)


def exec_(name: str, task, *, detach: bool = False, on_event=None, on_line=None):
    from . import clusters

    return clusters.exec_(name, task, detach=detach, on_event=on_event or (lambda k, m: None),
                          on_line=on_line or (lambda r, l: None))


def status(refresh: bool = False, names=None, all_users: bool = False):
    """Clusters in the state (with refresh: reconciled with the clouds). `all_users` matters in server
    mode only (a server shows each user theirs by default); locally every cluster is the user's."""
    from . import clusters

    recs = clusters.status(refresh=refresh, names=names)
    if names:
        missing = [n for n in names if n not in {r.name for r in recs}]
        if missing:
            from .errors import NotFoundError

            raise NotFoundError(f"cluster{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found",
                                "see `broker status` for your clusters")
    return recs


def ssh_target(name: str, rank: int = 0) -> dict:
    from . import clusters

    return clusters.ssh_target(name, rank)


def gc_scan(clouds=None, regions=None, on_event=None):
    """Resources tagged by skybroker that the state does not know, and interrupted launches (gc.py)."""
    from . import gc

    return gc.scan(tuple(clouds) if clouds else None, regions, on_event=on_event or (lambda k, m: None))


def gc_remove(orphans, on_event=None) -> list[str]:
    """Remove what gc_scan found; returns warnings."""
    from . import gc

    return gc.remove(list(orphans), on_event=on_event or (lambda k, m: None))


def ssh_grant(name: str, rank: int, public_key: str) -> dict:
    """(A server's) authorize a client's own public key on a node; how to reach it (clusters.ssh_grant)."""
    from . import clusters

    return clusters.ssh_grant(name, rank, public_key)


def forget_host_keys(cluster: str, rank: int | None = None) -> list[str]:
    from . import clusters

    return clusters.forget_host_keys(cluster, rank)


def adopt(on_event=None) -> list[str]:
    """Record in the state every cluster the ready clouds have by tag and the state does not know."""
    from . import clusters

    return clusters.adopt(on_event=on_event or (lambda k, m: None))


def down(names, on_event=None):
    from . import clusters

    return clusters.down(list(names), on_event=on_event or (lambda k, m: None))


def stop(name: str, on_event=None):
    from . import clusters

    return clusters.stop(name, on_event=on_event or (lambda k, m: None))


def start(name: str, on_event=None):
    from . import clusters

    return clusters.start(name, on_event=on_event or (lambda k, m: None))


def set_autostop(name: str, minutes, down: bool):
    from . import clusters

    return clusters.set_autostop(name, minutes, down)


def queue(name: str):
    from . import clusters

    return clusters.queue(name)


def logs(name: str, job_id, *, follow: bool, on_line):
    from . import clusters

    return clusters.logs(name, job_id, follow=follow, on_line=on_line)


def cancel(name: str, job_ids, all_jobs: bool = False):
    """Cancel jobs on a cluster. An id the cluster never had is NotFoundError (exit 5), checked before
    anything is cancelled; a job that already finished is simply not in the returned list."""
    from . import clusters

    if job_ids and not all_jobs:
        get_cluster(name)
        known = {j.job_id for j in clusters.queue(name)}
        unknown = [j for j in job_ids if j not in known]
        if unknown:
            from .errors import NotFoundError

            raise NotFoundError(f"no job {', '.join(map(str, unknown))} on cluster {name}",
                                f"see `broker queue {name}`")
    return clusters.cancel(name, job_ids, all_jobs)


def daemons() -> dict:
    """Whether the background processes on this machine are running: the autostop watcher and the
    managed-jobs controller (each holds a lock file while it runs). No process is started."""
    from .paths import broker_home

    def held(path) -> bool:
        from filelock import FileLock, Timeout

        if not path.exists():
            return False
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    home = broker_home()
    return {"autostop_watcher": held(home / "autostop.lock"),
            "jobs_controller": held(home / "managed" / "controller.lock")}


def events(cluster: str | None = None, job_id: int | None = None, limit: int = 50) -> list[dict]:
    """Stored lifecycle, failover, recovery and autostop events: of a cluster, of a managed job, or the
    most recent of all clusters."""
    from . import state
    from .errors import NotFoundError, UsageError

    if cluster and job_id is not None:
        raise UsageError("give a cluster or --job, not both")
    if job_id is not None:
        from .jobs import ops, store

        ops.get(job_id)
        return [dict(e, job_id=job_id) for e in store.events(job_id)][-limit:]
    if cluster:
        from .locks import validate_name

        ev = state.events(validate_name(cluster))
        if not ev and state.get_cluster(cluster) is None:
            raise NotFoundError(f"cluster {cluster!r} has no events and does not exist", "see `broker status`")
        return ev[-limit:]
    return state.recent_events(limit)


def cost_report(since_s: float | None = None, everything: bool = False, only_user: str | None = None) -> dict:
    """Every cluster run and managed job in the cost ledger, with costs (costs/report.py); a server's
    non-admin gets `only_user`'s."""
    from .costs import ledger, report

    at = ledger.now()
    return report.build(None if since_s is None else at - since_s, everything, at, only_user)


def cluster_costs() -> dict:
    """Cost so far of each live cluster (its current run in the ledger)."""
    from .costs import ledger

    return ledger.cluster_costs()


def job_timeline(job_id: int) -> dict:
    """A managed job's market over time (costs/timeline.py): its runs from the ledger and its recoveries."""
    from .costs import ledger, timeline
    from .errors import NotFoundError
    from .jobs import store

    j = store.get(job_id)
    if j is None:
        raise NotFoundError(f"no managed job {job_id}", "see `broker jobs queue`")
    at = ledger.now()
    segs = timeline.segments(ledger.runs(job_id=job_id), at)
    recoveries = [e["ts"] for e in store.events(job_id) if e["kind"] in ("recovery", "switch")]
    return {"id": j.id, "name": j.name, "status": j.status, "submitted_at": j.submitted_at,
            "ended_at": j.ended_at, "now": at, "segments": segs, "recoveries": recoveries}


def stopped_hourly() -> dict:
    """$/h each stopped cluster is billed (its disks), from the ledger."""
    from .costs import ledger

    return ledger.stopped_hourly()


def job_costs() -> dict:
    """Cost so far (or total) of each managed job across its recoveries, from the ledger."""
    from .costs import ledger

    return ledger.job_costs()


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
    from .jobs import ops

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
