"""The optimizer: a pure function from (task, offers, enabled clouds, blocklist) to ranked candidates.

Exact: for each (resources candidate, cloud) it walks instance specs in order of their catalog-wide
minimum price (a valid lower bound) and stops only when the next spec's bound exceeds the K-th best
price already found, so no cheaper feasible offer is ever missed.

Ranking (deterministic, documented in the README):
  1. preference group (`ordered` / accelerator lists: earlier first),
  2. hourly price per node,
  3. provider in the registry's order (clouds/registry.py),
  4. region name, 5. zone name, 6. instance type, 7. accelerator name.

Pricing: on-demand per region, spot per zone (Azure spot per region). GCP GPU machines are host + GPU
(already combined in the catalog). A cluster of N nodes is placed in one zone; its price is N × node.

No cloud is named here: each provider (clouds/base.py) says whether its offers come from a catalog or are
virtual (this machine, SSH pools), whether it is only used when named, and any default machine shape of
its own (GCP sizes N1 GPU hosts); `providers` is the registry unless a test passes another.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from . import catalog as _catalog
from .catalog.model import InstanceSpec, Offer
from .errors import NoFeasibleError
from .resources import DEFAULT_CPUS, DEFAULT_MEMORY_PER_CPU, Amount, Resources

PER_CLOUD = 4  # distinct instance specs kept per (resources, cloud) for the alternatives table


def _providers():
    from .clouds import registry

    return registry


def _provider(name: str):
    return _providers().get(name, sdk=False)


def _priced(name: str) -> bool:
    return _providers().known(name) and _provider(name).capabilities.priced


def _named_only(name: str) -> bool:
    return _providers().known(name) and _provider(name).capabilities.named_only


@dataclass(frozen=True)
class Block:
    """A place failover has ruled out; None fields are wildcards."""

    cloud: str
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None

    def matches(self, cloud: str, region: str | None, zone: str | None, instance_type: str | None) -> bool:
        return (self.cloud == cloud
                and (self.region is None or self.region == region)
                and (self.zone is None or self.zone == zone)
                and (self.instance_type is None or self.instance_type == instance_type))

    def __str__(self) -> str:
        where = "/".join(p for p in (self.cloud, self.region, self.zone) if p)
        return where + (f" ({self.instance_type})" if self.instance_type else "")


@dataclass(frozen=True)
class Candidate:
    resources: Resources
    group: int
    cloud: str
    region: str | None
    zone: str | None
    instance_type: str
    vcpus: float
    memory_gib: float
    accelerator_name: str | None
    accelerator_count: float
    use_spot: bool
    price: float  # $/h per node
    num_nodes: int
    offer: Offer | None = field(default=None, compare=False, repr=False)

    @property
    def total(self) -> float:
        return self.price * self.num_nodes

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)

    def sort_key(self) -> tuple:
        return (self.group, round(self.price, 9), _providers().order(self.cloud),
                self.region or "", self.zone or "", self.instance_type, self.accelerator_name or "")

    def accelerators(self) -> str | None:
        return f"{self.accelerator_name}:{self.accelerator_count:g}" if self.accelerator_name else None


@dataclass(frozen=True)
class Plan:
    num_nodes: int
    candidates: tuple[Candidate, ...]  # ranked, best first; a few distinct specs per cloud
    clouds: tuple[str, ...]
    clouds_note: str | None = None
    blocked: tuple[Block, ...] = ()

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]

    def best_per_cloud(self) -> list[Candidate]:
        seen: dict[str, Candidate] = {}
        for c in self.candidates:
            seen.setdefault(c.cloud, c)
        return list(seen.values())


# ----------------------------------------------------------------------------------------------

OfferSource = Callable[[str], Sequence[InstanceSpec]]


def optimize(task, clouds: Iterable[str], blocklist: Iterable[Block] = (), *, clouds_note: str | None = None,
             specs: OfferSource | None = None, offers: Callable[[InstanceSpec], Sequence[Offer]] | None = None,
             virtual: Callable[[str, Resources], Sequence[Candidate]] | None = None) -> Plan:
    """Rank every feasible candidate place for `task`. Raises NoFeasibleError (with a suggestion) when
    nothing fits. `specs`/`offers` default to the committed catalogs; `virtual` (default: the
    providers' own `virtual_offers`) supplies the zero-price providers without a catalog, and is only
    consulted for providers the task names explicitly."""
    specs = specs or _catalog.specs
    offers = offers or _catalog.offers
    virtual = virtual or (lambda cloud, res: _provider(cloud).virtual_offers(res))
    clouds = tuple(clouds)
    blocks = tuple(blocklist)
    found: list[Candidate] = []
    for gi, group in enumerate(task.groups):
        for res in group:
            for cloud in _clouds_for(res, clouds):
                if not _priced(cloud):
                    found.extend(replace(c, group=gi, num_nodes=task.num_nodes) for c in virtual(cloud, res)
                                 if not _blocked(blocks, c))
                    continue
                found.extend(_search(res, gi, cloud, task.num_nodes, blocks, specs, offers))
    if not found:
        raise NoFeasibleError(*explain_infeasible(task, clouds, blocks, specs, offers, virtual))
    found.sort(key=Candidate.sort_key)
    return Plan(task.num_nodes, tuple(_dedupe(found)), clouds, clouds_note, blocks)


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    seen, out = set(), []
    for c in cands:
        k = (c.cloud, c.region, c.zone, c.instance_type, c.accelerator_name, c.accelerator_count, c.use_spot)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _clouds_for(res: Resources, enabled: tuple[str, ...]) -> tuple[str, ...]:
    if res.cloud:
        return (res.cloud,)  # an explicitly named cloud is searched even without credentials
    return tuple(c for c in enabled if not _named_only(c))


def _blocked(blocks: tuple[Block, ...], c: Candidate) -> bool:
    return any(b.matches(c.cloud, c.region, c.zone, c.instance_type) for b in blocks)


def spec_admits(res: Resources, spec: InstanceSpec) -> bool:
    """Shape-level feasibility (no place, no price)."""
    if res.instance_type and spec.instance_type != res.instance_type:
        return False
    if res.accelerator:
        if (spec.accelerator_name or "").lower() != res.accelerator.lower():
            return False
        if abs(spec.accelerator_count - res.accelerator_count) > 1e-6:
            return False
    elif not res.instance_type and spec.accelerator_name:
        return False  # a CPU task never lands on a GPU machine unless it names the type
    if spec.arch != "x86_64" and not res.instance_type:
        return False  # Arm only when asked for by instance type (setup scripts assume x86)
    cpus, memory = _effective_amounts(res, spec)
    if cpus and not cpus.admits(spec.vcpus):
        return False
    if memory and not memory.admits(spec.memory_gib, spec.vcpus):
        return False
    return True


def _effective_amounts(res: Resources, spec: InstanceSpec) -> tuple[Amount | None, Amount | None]:
    cpus, memory = res.cpus, res.memory
    if cpus is None and memory is None and not res.instance_type:
        if not res.accelerator:
            return Amount(DEFAULT_CPUS, at_least=True), Amount(DEFAULT_MEMORY_PER_CPU, per_cpu=True)
        shape = _provider(spec.cloud).default_shape(res, spec) if _providers().known(spec.cloud) else None
        if shape is not None:
            return shape
    return cpus, memory


def _zone_ok(res: Resources, offer: Offer) -> bool:
    if res.region and offer.region != res.region:
        return False
    if res.zone:
        return offer.zone == res.zone
    return not offer.local_zone  # Local Zones need an opt-in: only when named


def _search(res: Resources, group: int, cloud: str, num_nodes: int, blocks: tuple[Block, ...],
            specs: OfferSource, offers) -> list[Candidate]:
    spot = res.use_spot
    pool = []
    for s in specs(cloud):
        bound = s.min_spot_price if spot else s.min_price
        if bound is None or not spec_admits(res, s):
            continue
        if res.max_hourly_cost is not None and bound > res.max_hourly_cost:
            continue
        pool.append((bound, s.instance_type, s.accelerator_name or "", s.accelerator_count, s))
    pool.sort(key=lambda t: t[:4])
    best: list[tuple] = []  # max-heap (negated price) of the PER_CLOUD best specs
    out: list[Candidate] = []
    for bound, *_, s in pool:
        if len(best) >= PER_CLOUD and bound > -best[0][0] + 1e-12:
            break
        cand = _cheapest_offer(res, group, s, offers(s), spot, num_nodes, blocks)
        if cand is None:
            continue
        out.append(cand)
        heapq.heappush(best, (-cand.price, len(out)))
        if len(best) > PER_CLOUD:
            heapq.heappop(best)
    if len(out) > PER_CLOUD:
        cutoff = -best[0][0]
        out = [c for c in out if c.price <= cutoff + 1e-12]
    return out


def _cheapest_offer(res, group, spec, spec_offers, spot, num_nodes, blocks) -> Candidate | None:
    best = None
    for o in spec_offers:
        price = o.spot_price if spot else o.price
        if price is None or not _zone_ok(res, o):
            continue
        if res.max_hourly_cost is not None and price > res.max_hourly_cost + 1e-12:
            continue
        if blocks and any(b.matches(spec.cloud, o.region, o.zone, spec.instance_type) for b in blocks):
            continue
        key = (price, o.region, o.zone or "")
        if best is None or key < best[0]:
            best = (key, o, price)
    if best is None:
        return None
    _, o, price = best
    return Candidate(res, group, spec.cloud, o.region, o.zone, spec.instance_type, spec.vcpus, spec.memory_gib,
                     spec.accelerator_name, spec.accelerator_count, spot, price, num_nodes, o)


# ----------------------------------------------------------------------------------------------
# When nothing fits: say why, and what would.

def explain_infeasible(task, clouds, blocks, specs, offers, virtual) -> tuple[str, str | None]:
    res0 = task.candidates[0]
    what = res0.describe()
    if len(task.candidates) > 1:
        what = " / ".join(r.describe() for r in task.candidates)
    searched = sorted({c for r in task.candidates for c in _clouds_for(r, tuple(clouds))})
    msg = f"no offer fits {what} on {', '.join(searched) or 'any cloud'}"
    if blocks:
        msg += f" (with {len(blocks)} place(s) blocked by earlier failures)"

    def feasible(mod: Callable[[Resources], Resources], nb=blocks) -> list[Candidate]:
        out = []
        for r in task.candidates:
            r2 = mod(r)
            for c in _clouds_for(r2, tuple(clouds)):
                if not _priced(c):
                    out.extend(virtual(c, r2))
                    continue
                out.extend(_search(r2, 0, c, task.num_nodes, tuple(nb), specs, offers))
        return sorted(out, key=Candidate.sort_key)

    for r in task.candidates:
        if r.accelerator and not r.instance_type:
            hint = _accelerator_hint(r, clouds if not r.cloud else (r.cloud,), specs)
            if hint:
                return msg, hint
    if r.cloud and _providers().known(r.cloud) and not _provider(r.cloud).capabilities.accelerators \
            and any(r.accelerator for r in task.candidates):
        return msg, f"the {r.cloud} cloud offers no accelerators; drop `accelerators` or pick a cloud"
    relaxations: list[tuple[str, Callable[[Resources], Resources]]] = [
        ("without the blocked places", None),
        ("anywhere in that cloud", lambda r: replace(r, region=None, zone=None)),
        ("on any cloud", lambda r: replace(r, cloud=None, region=None, zone=None)),
        ("with on-demand instead of spot", lambda r: replace(r, use_spot=False)),
        ("without the cpus/memory constraint", lambda r: replace(r, cpus=None, memory=None)),
        ("without max_hourly_cost", lambda r: replace(r, max_hourly_cost=None)),
    ]
    for label, mod in relaxations:
        if mod is None:
            if not blocks:
                continue
            got = feasible(lambda r: r, nb=())
        else:
            got = feasible(mod)
        if got:
            c = got[0]
            return msg, (f"{label} it would fit: cheapest is {c.instance_type}"
                         f"{' + ' + c.accelerators() if c.accelerator_name else ''}"
                         f" on {c.infra} at ${c.price:.4g}/h"
                         f"{' spot' if c.use_spot else ''}")
    return msg, "check the resources against `broker show-gpus` and the catalog"


def _accelerator_hint(res: Resources, clouds, specs) -> str | None:
    name = res.accelerator.lower()
    counts: dict[str, set[float]] = {}
    all_names: set[str] = set()
    for c in clouds:
        if not _priced(c):
            continue
        for s in specs(c):
            if s.accelerator_name:
                all_names.add(s.accelerator_name)
                if s.accelerator_name.lower() == name and (s.min_price or s.min_spot_price):
                    counts.setdefault(c, set()).add(s.accelerator_count)
    if not counts:
        from difflib import get_close_matches

        close = get_close_matches(res.accelerator, sorted(all_names), n=3, cutoff=0.5)
        if not close:
            close = [n for n in sorted(all_names) if n.lower().startswith(name[:2])][:3]
        where = ", ".join(c for c in clouds if _priced(c))
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
