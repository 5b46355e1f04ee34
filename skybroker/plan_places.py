"""Where a task's options may run, checked before the optimizer (by api_plan.plan): the config file's
`allowed_clouds` and `allowed_regions` (SkyPilot's semantic: only those clouds, and those regions of them,
are enabled) and the regions (SSH node pools) a task names against those its provider knows.

An option (`any_of`/`ordered` entry, or the task's one `resources:`) on a cloud or region the config leaves
out is skipped with a note, as options on unsupported clouds are (spec_groups.py); a task whose every
option is left out is refused (SpecError, exit 2) naming the field, the cloud and the config's list. An
option naming a region its provider does not have could never fit: skipped with a note, and refused (exit 2,
with some of the valid names) when no option remains; so is an unknown zone, after the provider maps the
user's spelling to its catalog's (`Provider.zone_alias`: AWS AZ names to AZ IDs). Every provider counts,
`local` and `ssh` too: a config without `allowed_clouds` allows all. Nothing here names a cloud; providers declare their regions
(`Provider.known_regions`).
"""
from __future__ import annotations

from dataclasses import replace
from difflib import get_close_matches

from .errors import SpecError


def confine(task, allowed: list[str] | None, allowed_regions: dict | None, where: str = "the config file"):
    """(task with only the options that may run, notes about the skipped ones). Raises SpecError when none
    remains."""
    allowed_regions = allowed_regions or {}
    kept_groups, dropped, notes = [], [], []
    for group in task.groups:
        kept = []
        for r in group:
            r, why = _left_out(r, allowed, allowed_regions, where)
            if why is None:
                kept.append(r)
                continue
            dropped.append(why)
            notes.append(f"{r.describe()}: {why[0]}; this option is skipped"
                         + ("" if why[3] else f" ({why[1]})"))  # a typo'd place too: said, with the valid names
        if kept:
            kept_groups.append(tuple(kept))
    if not dropped and kept_groups == list(task.groups):
        return task, []
    if not kept_groups:
        msg, hint, field, _ = dropped[0]
        if len(task.candidates) > 1:
            field = "resources"
            msg = "no option may run: " + "; ".join(dict.fromkeys(d[0] for d in dropped))
        raise SpecError(msg, hint, source=task.source, field=field)
    return replace(task, groups=tuple(kept_groups)), notes


def _left_out(r, allowed, allowed_regions, where):
    """(r, why): `r` with its zone in the catalog's spelling, and why it may not run ((message, hint, field,
    by config)) or None."""
    if not r.cloud:
        return r, None
    field = "resources.infra (or --infra)"
    if allowed and r.cloud not in allowed:
        return r, (f"{r.cloud} is not among the config's allowed_clouds ({', '.join(allowed)})",
                   f"name one of {', '.join(allowed)}, or add {r.cloud} to allowed_clouds in {where}", field, True)
    from .clouds import registry

    prov = registry.get(r.cloud, sdk=False) if registry.known(r.cloud) else None
    if r.zone and prov is not None:
        r, why = _zone(prov, r, field)
        if why:
            return r, why
    if not r.region:
        return r, None
    regions = allowed_regions.get(r.cloud)
    if regions and r.region not in regions:
        return r, (f"{r.cloud}/{r.region} is not among the config's allowed_regions for {r.cloud} "
                   f"({', '.join(regions)})",
                   f"name one of those regions, or add {r.region} to allowed_regions.{r.cloud} in {where}", field,
                   True)
    if prov is None:
        return r, None
    return r, _unknown(prov, r.cloud, r.region, prov.known_regions, prov.region_word, field)


def _zone(prov, r, field):
    """(r with the zone as the catalog spells it, why a zone is unknown or None)."""
    from .clouds.base import ZoneUnresolved

    try:
        alias = prov.zone_alias(r.region, r.zone)
    except ZoneUnresolved as e:
        return r, (f"{r.cloud} zone {r.zone!r}: {e.args[0]}", e.args[1], field, False)
    if alias:
        r = replace(r, region=alias[0], zone=alias[1])
    why = _unknown(prov, r.cloud, r.region, prov.known_regions, prov.region_word, field) if r.region else None
    if why:
        return r, why
    where = f"{r.cloud}/{r.region}" if r.region else r.cloud
    try:
        known = prov.known_zones(r.region)
    except Exception:  # noqa: BLE001 - not listable now: its offers decide
        return r, None
    if known == [] and not prov.known_zones(None):
        return r, (f"{r.cloud} offers have no zones (zone {r.zone!r} given)",
                   f"drop the zone: {r.cloud} picks one in the region", field, False)
    return r, _unknown(prov, where, r.zone, lambda: known, "zone", field)


def _unknown(prov, where, name, list_known, word, field):
    """Why `name` (a region or zone of `where`) is unknown, or None (also when not checkable)."""
    try:
        known = list_known()
    except Exception:  # noqa: BLE001 - a provider that cannot list them now: its offers decide
        return None
    if known is None or name in known:
        return None
    if not known:
        why = prov.unavailable_reason()
        if why and len(why) > 2 and why[2]:  # no credentials at all (no kubeconfig): that, not a bad name
            from .errors import MissingCredentialsError

            raise MissingCredentialsError(f"{where} cannot be used: {why[0]}", why[1])
        return (f"no {word} {name!r} on {where}" + (f": {why[0]}" if why else ""),
                why[1] if why else f"see `broker check` for {where}", field, False)
    close = get_close_matches(name, known, n=3, cutoff=0.6)
    shown = ", ".join(sorted(known)[:30]) + (f", … ({len(known)} in all)" if len(known) > 30 else "")
    return (f"no {word} {name!r} on {where}",
            (f"did you mean {' or '.join(close)}? " if close else "") + f"{where} has: {shown}", field, False)
