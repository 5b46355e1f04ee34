"""The api use cases of tasks and where they can run (re-exported by api.py, the facade): reading task
files and `broker exec` commands into tasks, the optimizer's ranked plan across the ready clouds (with the
config's cloud and region restrictions, the task's volumes, a managed job's preemption risk and the
budget), the catalogs' price ages, what is checked before a launch is confirmed (preflight), and
`show-gpus`' cheapest on-demand and spot offer per accelerator. Nothing here prints or reads the terminal.
"""
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


def exec_task(args: tuple[str, ...] | list[str], overrides: Mapping[str, Any] | None = None):
    """`broker exec C task.yaml` or `broker exec C -- cmd args`."""
    import os

    if len(args) == 1 and (args[0].endswith((".yaml", ".yml")) or os.path.isfile(args[0])):
        return load_task(args[0], overrides)
    from . import spec

    data = {"name": "cmd", "run": " ".join(args)}
    return spec.task_from_dict(data, source="<command line>", overrides=overrides)


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

    note = None
    if clouds is None:
        clouds, note = enabled_clouds()
        if all(r.cloud and _named_only(r.cloud) for r in task.candidates):
            note = None  # the task names where it runs; credentials do not matter
    from . import plan_places

    settings = _placement(task)
    allowed = settings.get("allowed_clouds")
    allowed_regions = settings.get("allowed_regions") or {}
    # options on clouds/regions the config leaves out are skipped (all of them: exit 2), as in SkyPilot
    task, cnotes = plan_places.confine(task, allowed, allowed_regions,
                                       _where(task, "allowed_clouds" if allowed else "allowed_regions"))
    blocklist = list(blocklist)
    if allowed:
        kept = tuple(c for c in clouds if c in allowed)
        if not kept and any(not r.cloud for r in task.candidates):
            raise UsageError(f"the config allows only {', '.join(allowed)}, and none of them is ready",
                             "see `broker check`, or change allowed_clouds in the config file")
        if kept != tuple(clouds) and any(not r.cloud for r in task.candidates):  # a named cloud: nothing to say
            note = (note + "; " if note else "") + f"config: only {', '.join(kept) or ', '.join(allowed)}"
        clouds = kept
    excluded = []
    for cloud, regions in allowed_regions.items():
        from . import catalog

        try:
            all_regions = catalog.regions(cloud)
        except Exception:  # noqa: BLE001 - a provider without a catalog: nothing to restrict here
            continue
        excluded += [optimizer.Block(cloud, r) for r in all_regions if r not in regions]
    if allow_suspicious is None:
        allow_suspicious = bool(settings.get("allow_suspicious_prices"))
    vnotes: list[str] = []
    if task.volumes:  # where the task's volumes are: a placement constraint on its Resources
        from .volumes import ops as volumes

        task, vnotes = volumes.constrain(task, tuple(clouds))
    result = optimizer.optimize(task, tuple(clouds), blocklist, clouds_note=note, allow_suspicious=allow_suspicious,
                                risk=managed_risk(task) if managed else None, excluded=excluded)
    result = dataclasses.replace(result, prices=price_ages(c.cloud for c in result.candidates),
                                 extra_notes=tuple(cnotes) + tuple(vnotes))
    if check_budget:
        from .costs import budget

        budget.check_plan(task, result)
    return result


def _placement(task) -> dict:
    """allowed_clouds, allowed_regions, allow_suspicious_prices: a managed job's own (Task.placement, what
    the config said at `jobs launch`), else the config file's."""
    import json

    from . import config

    if getattr(task, "placement", None):
        try:
            got = json.loads(task.placement)
        except ValueError:
            got = None
        if not isinstance(got, dict):
            from .errors import UsageError

            raise UsageError("the task's stored placement is not valid", "launch the job again")
        return got
    return {k: config.get(k) for k in ("allowed_clouds", "allowed_regions", "allow_suspicious_prices")}


def _where(task, key: str) -> str:
    from . import config

    return "the config file of `jobs launch`" if getattr(task, "placement", None) is not None else config.where(key)


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


def _named_only(cloud: str) -> bool:
    from .clouds import registry

    return registry.known(cloud) and registry.get(cloud, sdk=False).capabilities.named_only


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
        prov.preflight_place(plan.chosen.region)  # the SSH key(s) the nodes will be reached with load
        check = prov.check()
        if not check.ok:
            raise CredentialsError(f"the plan chose {plan.chosen.cloud}, which has no usable credentials: "
                                   f"{check.detail}", hint=check.hint or "see `broker check`")


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
            have = sorted({s.accelerator_count for c in clouds for s in catalog.specs(c)
                           if (s.accelerator_name or "").lower() == name.lower()})
            counts = f"{name} comes in {', '.join(f'{n:g}' for n in have)} per machine there; " if have else ""
            raise NoFeasibleError(f"no {where} offer on {', '.join(clouds)}" + (f" in {region}" if region else ""),
                                  f"{counts}`broker show-gpus {name}` lists every count and cloud")
        raise NoFeasibleError(f"no accelerator named {name!r} in the catalogs", _unknown_hint(name, names))
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


def _unknown_hint(name: str, names: list[str], most: int = 30) -> str:
    """Close matches of an unknown accelerator name, else a short list: the GPU names (at most `most`) and
    the TPU generations (one `tpu-v4-*` for its ~40 slice names), never every catalog name."""
    from difflib import get_close_matches

    by_lower = {n.lower(): n for n in names}
    close = [by_lower[n] for n in get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)]
    if close:
        return f"did you mean {' or '.join(close)}? (`broker show-gpus --all` lists every one)"
    gpus = [n for n in names if not n.lower().startswith("tpu-")]
    tpus = sorted({n.rsplit("-", 1)[0] + "-*" for n in names if n.lower().startswith("tpu-")})
    listed = ", ".join(gpus[:most]) + (f" and {len(gpus) - most} more" if len(gpus) > most else "")
    return (f"known GPUs: {listed}" + (f"; TPU slices: {', '.join(tpus)}" if tpus else "")
            + " (`broker show-gpus --all` lists every one)")
