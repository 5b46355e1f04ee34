"""Use cases behind the CLI, also the Python API. Nothing here prints or reads the terminal."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import UsageError


def load_task(path: str, overrides: Mapping[str, Any] | None = None):
    from . import spec

    return spec.load_task(path, overrides)


def plan(task, blocklist: Iterable = (), clouds: Iterable[str] | None = None):
    """The optimizer's ranked plan for a task, across the clouds that have credentials (or all catalog
    clouds when none do, with a note saying so)."""
    from . import optimizer
    from .check import enabled_clouds

    note = None
    if clouds is None:
        clouds, note = enabled_clouds()
        if all(r.cloud and _named_only(r.cloud) for r in task.candidates):
            note = None  # the task names where it runs; credentials do not matter
    return optimizer.optimize(task, tuple(clouds), blocklist, clouds_note=note)


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
    instance_type: str | None


def show_gpus(name: str | None = None, cloud: str | None = None) -> list[GpuRow]:
    """Accelerators with their counts and the cheapest on-demand and spot machine per cloud."""
    from . import catalog, optimizer
    from .catalog.model import CLOUDS
    from .clouds import registry
    from .resources import Resources, normalize_cloud

    clouds = (normalize_cloud(cloud, "--cloud"),) if cloud else CLOUDS
    if any(c not in CLOUDS for c in clouds):
        raise UsageError(f"{cloud} has no price catalog", f"pick one of {', '.join(CLOUDS)}")
    pairs: set[tuple[str, float, str]] = set()
    for c in clouds:
        for s in catalog.specs(c):
            if s.accelerator_name and (name is None or s.accelerator_name.lower() == name.lower()):
                pairs.add((s.accelerator_name, s.accelerator_count, c))
    if name and not pairs:
        from difflib import get_close_matches

        names = sorted({s.accelerator_name for c in clouds for s in catalog.specs(c) if s.accelerator_name})
        close = get_close_matches(name, names, n=3, cutoff=0.5)
        raise UsageError(f"no accelerator named {name!r} in the catalogs",
                         f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(names)}")
    rows = []
    for acc, count, c in sorted(pairs, key=lambda p: (p[0].lower(), p[1], registry.order(p[2]))):
        best = {}
        for spot in (False, True):
            res = Resources(cloud=c, accelerator=acc, accelerator_count=count, use_spot=spot,
                            instance_type=None)
            found = optimizer._search(res, 0, c, 1, (), catalog.specs, catalog.offers)
            found.sort(key=optimizer.Candidate.sort_key)
            best[spot] = found[0] if found else None
        od, sp = best[False], best[True]
        rows.append(GpuRow(acc, count, c, od.price if od else None, od.infra if od else None,
                           sp.price if sp else None, sp.infra if sp else None,
                           (od or sp).instance_type if (od or sp) else None))
    return rows


# ----------------------------------------------------------------------------------------------
# Clusters (see clusters.py for the use cases themselves)

def cluster_exists(name: str) -> bool:
    from . import clusters

    return clusters.exists(clusters.validate_name(name))


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
        return _plan_task(task, blocks, clouds=plan.clouds if plan is not None else None)

    return clusters.launch(task, cluster=cluster, plan_fn=plan_fn, detach=detach, retry_until_up=retry_until_up,
                           keep_on_failure=keep_on_failure, on_event=on_event or (lambda k, m: None),
                           on_line=on_line or (lambda r, l: None))


def preflight(task) -> None:
    """What can be checked before the user is asked to confirm a launch (sources exist, rsync, ...)."""
    from . import lifecycle

    lifecycle.preflight(task)


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


def status(refresh: bool = False, names=None):
    from . import clusters

    return clusters.status(refresh=refresh, names=names)


def down(names, on_event=None):
    from . import clusters

    return clusters.down(list(names), on_event=on_event or (lambda k, m: None))


def stop(name: str):
    from . import clusters

    return clusters.stop(name)


def start(name: str):
    from . import clusters

    return clusters.start(name)


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
    from . import clusters

    return clusters.cancel(name, job_ids, all_jobs)
