"""When nothing fits: say why, and what would (the optimizer's error path, kept apart from the search)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace


def explain_infeasible(task, clouds, blocks, specs, offers, virtual, excluded=()) -> tuple[str, str | None]:
    """(message, hint). `blocks`: places earlier failures ruled out; `excluded`: places the configuration
    rules out (allowed_regions), never relaxed by a suggestion."""
    from .optimizer import (
        Candidate,
        _clouds_for,
        _holds,
        _max_nodes,
        _priced,
        _provider,
        _providers,
        _search_full,
        _view,
    )
    from .resources import Resources

    res0 = task.candidates[0]
    what = res0.describe()
    if len(task.candidates) > 1:
        what = " / ".join(r.describe() for r in task.candidates)
    searched = sorted({c for r in task.candidates for c in _clouds_for(r, tuple(clouds))})
    msg = f"no offer fits {what} on {', '.join(searched) or 'any cloud'}"
    excluded = tuple(excluded)
    notes = []
    if excluded:
        notes.append(f"{len(excluded)} region(s) of {', '.join(sorted({b.cloud for b in excluded}))} excluded by the "
                     "config's allowed_regions")
    if blocks:
        notes.append(f"{len(blocks)} place(s) blocked by earlier failures")
    if notes:
        msg += f" (with {'; '.join(notes)})"
    failed, blocks = tuple(blocks), tuple(blocks) + excluded
    views: dict = {}
    for c in searched:
        why = None if _priced(c) or not _providers().known(c) else _provider(c).unavailable_reason()
        if why and len(searched) == 1:
            if len(why) > 2 and why[2]:  # no credentials at all: said as such, not as "nothing fits"
                from .errors import MissingCredentialsError

                raise MissingCredentialsError(f"{c} cannot be used: {why[0]}", why[1])
            return f"{msg}: {why[0]}", why[1]
    too_many = [c for c in searched if not _holds(c, task.num_nodes)]
    if too_many and len(too_many) == len(searched):
        limits = ", ".join(f"{c} at most {_max_nodes(c)}" for c in too_many)
        return (f"{msg}: num_nodes {task.num_nodes} is more than one cluster can have there ({limits})",
                f"use `num_nodes: {min(_max_nodes(c) for c in too_many)}` or fewer, or another cloud")

    def feasible(mod: Callable[[Resources], Resources], nb=blocks, burstable_only=False) -> list[Candidate]:
        out = []
        for r in task.candidates:
            r2 = mod(r)
            for c in _clouds_for(r2, tuple(clouds)):
                if not _holds(c, task.num_nodes):
                    continue
                if not _priced(c):
                    out.extend(virtual(c, r2))
                    continue
                got, skipped = _search_full(r2, 0, c, task.num_nodes, tuple(nb), _view(c, specs, views), offers,
                                            False)
                if burstable_only:
                    out.extend(s.candidate for s in skipped if s.reason == "burstable")
                else:
                    out.extend(x for x in got if not x.suspicious)
        return sorted(out, key=Candidate.sort_key)

    for r in task.candidates:
        if r.accelerator and r.cloud and _providers().known(r.cloud) \
                and not _provider(r.cloud).capabilities.accelerators and len(task.candidates) == 1:
            return msg, f"the {r.cloud} cloud offers no accelerators; drop `accelerators` or pick a cloud"
        if r.accelerator and not r.instance_type:
            hint = _accelerator_hint(r, clouds if not r.cloud else (r.cloud,), specs, views)
            if hint:
                return msg, hint
    r = task.candidates[-1]
    if r.cloud and _providers().known(r.cloud) and not _provider(r.cloud).capabilities.accelerators \
            and any(x.accelerator for x in task.candidates):
        return msg, f"the {r.cloud} cloud offers no accelerators; drop `accelerators` or pick a cloud"
    burst = feasible(lambda x: x, burstable_only=True)
    if burst:
        c = burst[0]
        return msg, (f"only burstable machines fit (cheapest {c.instance_type} on {c.infra} at ${c.price:.4g}/h); "
                     f"they are used only when named: `instance_type: {c.instance_type}`")
    relaxations: list[tuple[str, Callable[[Resources], Resources] | None]] = [
        ("without the blocked places", None),
        ("anywhere in that cloud", lambda x: replace(x, region=None, zone=None)),
        ("on any cloud", lambda x: replace(x, cloud=None, region=None, zone=None)),
        ("with on-demand instead of spot", lambda x: replace(x, use_spot=False)),
        ("without the cpus/memory constraint", lambda x: replace(x, cpus=None, memory=None)),
        ("without max_hourly_cost", lambda x: replace(x, max_hourly_cost=None)),
    ]
    for label, mod in relaxations:
        if mod is None:
            if not failed:
                continue
            got = feasible(lambda x: x, nb=excluded)
        else:
            got = feasible(mod)
        if got:
            c = got[0]
            return msg, (f"{label} it would fit: cheapest is {c.instance_type}"
                         f"{' + ' + c.accelerators() if c.accelerator_name else ''}"
                         f" on {c.infra} at ${c.price:.4g}/h"
                         f"{' spot' if c.use_spot else ''}")
    return msg, "check the resources against `broker show-gpus` and the catalog"


def _accelerator_hint(res, clouds, specs, views) -> str | None:
    from .optimizer import _priced, _view

    name = res.accelerator.lower()
    counts: dict[str, set[float]] = {}
    all_names: set[str] = set()
    for c in clouds:
        if not _priced(c):
            continue
        view = _view(c, specs, views)
        for g in view.groups:
            if g.accelerator:
                all_names.add(g.accelerator)
                if g.accelerator.lower() == name and (g.min_price or g.min_spot):
                    counts.setdefault(c, set()).add(g.count)
    if not counts:
        from difflib import get_close_matches

        close = get_close_matches(res.accelerator, sorted(all_names), n=3, cutoff=0.5)
        if not close:
            close = [n for n in sorted(all_names) if n.lower().startswith(name[:2])][:3]
        where = ", ".join(c for c in clouds if _priced(c)) or ", ".join(clouds) or "any cloud"
        return (f"no accelerator named {res.accelerator!r} on {where}"
                + (f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else
                   "; see `broker show-gpus`"))
    available = sorted({n for s in counts.values() for n in s})
    if res.accelerator_count not in available:
        largest = max(available)
        if res.accelerator_count > largest:
            nodes = math.ceil(res.accelerator_count / largest)
            return (f"largest {res.accelerator} offer is {largest:g} per node; use "
                    f"`accelerators: {res.accelerator}:{largest:g}` with `num_nodes: {nodes}`")
        return (f"{res.accelerator} comes in {', '.join(f'{n:g}' for n in available)} per node; "
                f"pick one of those counts")
    return None
