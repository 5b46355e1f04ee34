"""Use cases behind the CLI, also the Python API. Nothing here prints or reads the terminal."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import spec as _spec
from .errors import UsageError


def load_task(path: str, overrides: Mapping[str, Any] | None = None):
    return _spec.load_task(path, overrides)


def plan(task, blocklist: Iterable = (), clouds: Iterable[str] | None = None):
    """The optimizer's ranked plan for a task, across the clouds that have credentials (or all catalog
    clouds when none do, with a note saying so)."""
    from . import optimizer
    from .check import enabled_clouds

    note = None
    if clouds is None:
        clouds, note = enabled_clouds()
    return optimizer.optimize(task, tuple(clouds), blocklist, clouds_note=note, virtual=_virtual_offers)


def _virtual_offers(cloud: str, res):
    from .clouds import registry

    return registry.virtual_candidates(cloud, res)


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
    for acc, count, c in sorted(pairs, key=lambda p: (p[0].lower(), p[1], optimizer.CLOUD_ORDER.index(p[2]))):
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
