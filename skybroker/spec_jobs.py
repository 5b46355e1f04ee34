"""skybroker's own task fields, additive to SkyPilot's format (used by spec.py): `deadline:` /
`expected_hours:` (a deadline-aware managed job: its deadline, compute time, restart overhead and spot policy,
checked to be feasible) and `budget:` (max cost, optionally per hours).
"""
from __future__ import annotations

from .errors import SpecError

def deadline(data: dict, source: str):
    """skybroker's `deadline:` / `expected_hours:` → (deadline h, expected h, Task extras)."""
    from . import resources as R

    deadline = expected = None
    dl_extra: dict = {}
    raw_dl = data.get("deadline")
    try:
        if isinstance(raw_dl, dict):
            deadline = R.parse_hours(raw_dl["by"], "deadline.by")
            if raw_dl.get("compute") is not None:
                expected = R.parse_hours(raw_dl["compute"], "deadline.compute")
            if raw_dl.get("policy"):
                dl_extra["deadline_policy"] = _policy_name(raw_dl["policy"], source)
            if raw_dl.get("overhead") is not None:
                dl_extra["restart_overhead_hours"] = R.parse_hours(raw_dl["overhead"], "deadline.overhead")
            if raw_dl.get("tick") is not None:
                dl_extra["decision_tick_hours"] = R.parse_hours(raw_dl["tick"], "deadline.tick")
        elif raw_dl is not None:
            deadline = R.parse_hours(raw_dl, "deadline")
        if data.get("expected_hours") is not None:
            expected = R.parse_hours(data["expected_hours"], "expected_hours")
    except SpecError as exc:
        if exc.source is None:
            raise SpecError(exc.message, exc.hint, source=source) from None
        raise
    if deadline is not None and expected is None:
        raise SpecError("a deadline needs the expected compute time", "add `expected_hours: 48` (or "
                        "`deadline: {by: 60h, compute: 48h}`)", source=source, field="deadline")
    if deadline is not None and expected is not None and expected > deadline:
        raise SpecError(f"the expected compute time ({expected:g} h) exceeds the deadline ({deadline:g} h)",
                        "no schedule can meet it: move the deadline or shorten the job", source=source,
                        field="deadline")
    if deadline is not None and expected is not None:
        # the first start pays the restart overhead too: even on-demand from the start needs compute + overhead
        import dataclasses

        from .spec import Task
        from .spot.policies import deadline_room

        default = {f.name: f.default for f in dataclasses.fields(Task)}
        overhead = dl_extra.get("restart_overhead_hours", default["restart_overhead_hours"])
        tick_s = max(1, round(dl_extra.get("decision_tick_hours", default["decision_tick_hours"]) * 3600))
        have, need = deadline_room(expected, deadline, overhead, tick_s)  # as jobs/deadline.py will hold it
        if have < need:
            given = "deadline.overhead" if "restart_overhead_hours" in dl_extra else "the default overhead"
            ticks = "" if need == round(expected * 3600) + round(overhead * 3600) and have == round(deadline * 3600) \
                else f", in whole {tick_s} s ticks (deadline.tick)"
            raise SpecError(f"the deadline ({deadline:g} h) is less than the expected compute time ({expected:g} h) "
                            f"+ {given} ({overhead:g} h){ticks} = {need / 3600:g} h: a first start pays the "
                            "restart overhead too, no schedule can meet it",
                            f"give `deadline.by` of at least {need / 3600:g}h, or a smaller "
                            "`deadline.compute` / `deadline.overhead`", source=source,
                            field="deadline.by" if isinstance(raw_dl, dict) else "deadline")
    return deadline, expected, dl_extra


def budget(data: dict, source: str) -> dict:
    """skybroker's `budget: {max_cost: 50, hours: 10h}` → Task fields (max cost in $, hours or None)."""
    from . import resources as R

    raw = data.get("budget")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or isinstance(raw.get("max_cost"), bool) or \
            not isinstance(raw.get("max_cost"), (int, float)) or raw["max_cost"] <= 0:
        raise SpecError("expected `budget: {max_cost: DOLLARS, hours: H}` with max_cost > 0",
                        "e.g. `budget: {max_cost: 50}` or `budget: {max_cost: 50, hours: 10h}`", source=source,
                        field="budget.max_cost" if isinstance(raw, dict) else "budget")
    hours = None
    if raw.get("hours") is not None:
        try:
            hours = R.parse_hours(raw["hours"], "budget.hours")
        except SpecError as exc:
            raise SpecError(exc.message, exc.hint, source=source) from None
    return {"budget_max_cost": float(raw["max_cost"]), "budget_hours": hours}


def _policy_name(name: str, source: str) -> str:
    from difflib import get_close_matches

    from . import resources as R

    known = ("mdp", "slack_aware", "uniform_progress", "greedy", "on_demand")
    if name not in known:
        close = get_close_matches(name, known, n=1)
        raise SpecError(f"unknown deadline policy {R._clip(name)!r}", f"did you mean {close[0]!r}?" if close else
                        f"one of {', '.join(known)}", source=source, field="deadline.policy")
    return name
