"""The optimizer: a pure function from (task, offers, enabled clouds, blocklist) to ranked candidates.

Exact: for each (resources candidate, cloud) it merges the catalog's shape groups whose shape can fit the
request, each already sorted by its specs' catalog-wide minimum price (a valid lower bound), and stops only
when the next spec's bound exceeds the K-th best price already found, so no cheaper feasible offer is ever
missed. The work grows with the number of fitting shape groups and the specs cheaper than the answer, not
with the catalog: groups of other shapes (or other accelerators) are never parsed.

What is chosen (SkyPilot's semantics; the first two rules are offer_fit.py's):
  - A CPU-only task (no accelerator, no instance type) gets at least 4 GiB per vCPU whenever `memory` is
    not given (`memory: 4x`), and `cpus: 8+` when neither `cpus` nor `memory` is given.
  - Burstable machines (catalog flag: AWS t2/t3/t3a/t4g, Azure B-series, GCP shared-core e2/f1/g1),
    confidential-computing sizes (Azure DC/EC/NCC) and Arm machines are used only when the task names the
    instance type. When a burstable machine would have
    been cheaper than the chosen one, the plan records it (`Plan.skipped`).
  - Prices the catalog flags as suspicious (far below the same machine elsewhere) are shown but never
    chosen unless `allow_suspicious=True`; a skipped cheaper flagged offer is recorded on the plan.

Ranking (deterministic, documented in the README):
  1. preference group (`ordered` / accelerator lists: earlier first),
  2. hourly price per node,
  3. provider in the registry's order (clouds/registry.py),
  4. newer machine generation first (catalog column: r6i before r5, a3-highgpu before a3-edgegpu, as
     SkyPilot prefers the current generation at equal price),
  5. region name, 6. zone name, 7. instance type, 8. accelerator name.

Pricing: on-demand per region, spot per zone (Azure spot per region). GCP GPU machines are host + GPU
(already combined in the catalog); a TPU VM costs its TPU slice. A cluster of N nodes is placed in one
zone; its price is N × node.

No cloud is named here: each provider (clouds/base.py) says whether its offers come from a catalog or are
virtual (this machine, SSH pools), whether it is only used when named, and any default machine shape of
its own (GCP sizes N1 GPU hosts); `providers` is the registry unless a test passes another.
"""
from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from . import catalog as _catalog
from .catalog.model import InstanceSpec, Offer
from .errors import NoFeasibleError
from .offer_fit import _groups_for, spec_admits  # which specs and shape groups can hold a request
from .offer_views import _view  # the catalog index, or an in-memory one for a specs function
from .resources import Resources

PER_CLOUD = 4  # distinct instance specs kept per (resources, cloud) for the alternatives table
SUSPECTS = "suspects"  # head of the stream of specs with a suspicious offer (see _streams)
_EPS = 1e-12


def _providers():
    from .clouds import registry

    return registry


def _provider(name: str):
    return _providers().get(name, sdk=False)


def _priced(name: str) -> bool:
    return _providers().known(name) and _provider(name).capabilities.priced


def _named_only(name: str) -> bool:
    return _providers().known(name) and _provider(name).capabilities.named_only


def _max_nodes(name: str) -> int | None:
    """The most nodes one cluster may have on that provider (its declared capabilities), None: no limit."""
    return _provider(name).capabilities.max_nodes if _providers().known(name) else None


def _holds(name: str, num_nodes: int) -> bool:
    limit = _max_nodes(name)
    return limit is None or num_nodes <= limit


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
    expected: float | None = field(default=None, compare=False)  # risk-ranked plans: $/useful hour per node

    @property
    def rank_price(self) -> float:
        """What the ranking compares: the expected cost when the plan is risk-aware, else the price."""
        return self.price if self.expected is None else self.expected

    @property
    def total(self) -> float:
        return self.price * self.num_nodes

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)

    @property
    def suspicious(self) -> bool:
        return self.offer is not None and self.offer.suspicious

    @property
    def is_tpu(self) -> bool:
        """A GCP TPU VM (instance type `TPU-VM`, accelerator `tpu-…`)."""
        return self.offer is not None and self.offer.spec.is_tpu

    def sort_key(self) -> tuple:
        gen = self.offer.spec.generation if self.offer is not None else 0
        return (self.group, round(self.rank_price, 9), _providers().order(self.cloud), -gen,
                self.region or "", self.zone or "", self.instance_type, self.accelerator_name or "")

    def accelerators(self) -> str | None:
        return f"{self.accelerator_name}:{self.accelerator_count:g}" if self.accelerator_name else None


@dataclass(frozen=True)
class Skipped:
    """A cheaper offer the plan did not choose: `reason` is "burstable" (used only when named by
    `instance_type`) or "suspicious" (a price flagged as a likely catalog anomaly; `allow_suspicious`)."""

    reason: str
    candidate: Candidate

    def sentence(self) -> str:
        c = self.candidate
        what = f"{c.instance_type} on {c.infra} at ${c.price:.4g}/h"
        if self.reason == "burstable":
            return (f"burstable machines are not used unless named by `instance_type` (the cheapest, {what}, "
                    "was skipped)")
        return (f"a cheaper price flagged as a likely catalog anomaly was skipped ({what}); "
                "allow it with --allow-suspicious-prices")


@dataclass(frozen=True)
class Plan:
    num_nodes: int
    candidates: tuple[Candidate, ...]  # ranked, best first; a few distinct specs per cloud
    clouds: tuple[str, ...]
    clouds_note: str | None = None
    blocked: tuple[Block, ...] = ()
    skipped: tuple[Skipped, ...] = ()  # cheaper than the chosen one, in its preference group; one per reason
    allow_suspicious: bool = False
    prices: tuple = ()  # price age and source per cloud in the plan (filled by api.plan from the catalogs)
    extra_notes: tuple[str, ...] = ()  # said with the plan (e.g. a volume that does not exist yet)

    @property
    def chosen(self) -> Candidate:
        """The best candidate that may be chosen (flagged prices only with allow_suspicious)."""
        for c in self.candidates:
            if self.allow_suspicious or not c.suspicious:
                return c
        raise NoFeasibleError("every candidate has a suspicious price")  # optimize() never builds this

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(s.sentence() for s in self.skipped) + self.extra_notes

    def best_per_cloud(self) -> list[Candidate]:
        seen: dict[str, Candidate] = {}
        for c in self.candidates:
            seen.setdefault(c.cloud, c)
        return list(seen.values())


OfferSource = Callable[[str], Sequence[InstanceSpec]]


# ----------------------------------------------------------------------------------------------

def optimize(task, clouds: Iterable[str], blocklist: Iterable[Block] = (), *, clouds_note: str | None = None,
             specs: OfferSource | None = None, offers: Callable[[InstanceSpec], Sequence[Offer]] | None = None,
             virtual: Callable[[str, Resources], Sequence[Candidate]] | None = None,
             allow_suspicious: bool = False, risk: Callable | None = None, excluded: Iterable[Block] = ()) -> Plan:
    """Rank every feasible candidate place for `task`. Raises NoFeasibleError (with a suggestion) when
    nothing fits. `specs`/`offers` default to the committed catalogs; `virtual` (default: the
    providers' own `virtual_offers`) supplies the zero-price providers without a catalog, and is only
    consulted for providers the task names explicitly. Offers with a suspicious price are kept in the
    ranking (for display) but chosen only with `allow_suspicious`. With `risk(cloud, region, zone,
    instance_type, spot) -> factor ≥ 1` (managed spot jobs, jobs/risk.py), offers are ranked by
    price × factor, the expected cost per useful hour (`Candidate.expected`). `excluded` are places ruled
    out by configuration rather than by failures (the config's `allowed_regions`): searched like the
    blocklist, told apart when nothing fits."""
    offers = offers or _catalog.offers
    virtual = virtual or (lambda cloud, res: _provider(cloud).virtual_offers(res))
    clouds = tuple(clouds)
    failed = tuple(blocklist)
    excluded = tuple(excluded)
    blocks = failed + excluded
    views: dict = {}
    found: list[Candidate] = []
    skipped: list[Skipped] = []
    for gi, group in enumerate(task.groups):
        for res in group:
            for cloud in _clouds_for(res, clouds):
                if not _holds(cloud, task.num_nodes):
                    continue  # more nodes than the provider runs in one cluster (explain_infeasible says so)
                if not _priced(cloud):
                    found.extend(replace(c, group=gi, num_nodes=task.num_nodes) for c in virtual(cloud, res)
                                 if not _blocked(blocks, c))
                    continue
                view = _view(cloud, specs, views)
                got, skip = _search_full(res, gi, cloud, task.num_nodes, blocks, view, offers, allow_suspicious,
                                         risk)
                found.extend(got)
                skipped.extend(skip)
    found.sort(key=Candidate.sort_key)
    ranked = tuple(_dedupe(found))
    if not any(allow_suspicious or not c.suspicious for c in ranked):
        if ranked:
            c = ranked[0]
            raise NoFeasibleError(f"only offers with a suspicious price fit (cheapest: {c.instance_type} on "
                                  f"{c.infra} at ${c.price:.4g}/h, far below its price elsewhere)",
                                  "check the price, then pass --allow-suspicious-prices to use it")
        raise NoFeasibleError(*explain_infeasible(task, clouds, failed, specs, offers, virtual, excluded))
    plan = Plan(task.num_nodes, ranked, clouds, clouds_note, blocks, allow_suspicious=allow_suspicious)
    best = plan.chosen
    kept: dict[str, Skipped] = {}
    for s in sorted(skipped, key=lambda s: s.candidate.sort_key()):
        if s.candidate.group == best.group and s.candidate.price < best.price - _EPS:
            kept.setdefault(s.reason, s)
    return replace(plan, skipped=tuple(kept.values()))


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


# ----------------------------------------------------------------------------------------------
# Search

def _search(res: Resources, group: int, cloud: str, num_nodes: int, blocks: tuple[Block, ...],
            specs: OfferSource | None, offers, allow_suspicious: bool = False) -> list[Candidate]:
    """The best choosable candidates of one (resources, cloud) pair (at most PER_CLOUD distinct specs, plus
    ties)."""
    got, _ = _search_full(res, group, cloud, num_nodes, blocks, _view(cloud, specs, {}),
                          offers or _catalog.offers, allow_suspicious)
    return [c for c in got if allow_suspicious or not c.suspicious]


def _search_full(res, group, cloud, num_nodes, blocks, view, offers, allow_suspicious, risk=None):
    """(candidates, skipped). Candidates include, for display, flagged offers cheaper than their spec's best
    choosable one (never counted towards the K best)."""
    spot = res.use_spot
    if offers is _catalog.offers and isinstance(view, _catalog.index.Index):
        offers = functools.partial(_catalog.offers_in, view)  # no per-spec catalog lookup
    if res.instance_type:
        named = sorted((s for s in view.named(res.instance_type) if spec_admits(res, s)),
                       key=lambda s: _bound_key(s, spot))
        streams = [(None, iter([((s.min_spot_price if spot else s.min_price), s) for s in named]))]
    else:
        streams = _streams(res, view, spot, burstable=False)
    found, shown = _merge(res, group, streams, spot, num_nodes, blocks, offers, allow_suspicious, PER_CLOUD,
                          risk=risk)
    skipped = [Skipped("suspicious", c) for c in shown]
    if not res.instance_type and not res.accelerator:
        # what the burstable rule skipped: the cheapest burstable offer, if cheaper than what was found
        streams = _streams(res, view, spot, burstable=True)
        if streams:
            b, _ = _merge(res, group, streams, spot, num_nodes, blocks, offers, allow_suspicious, 1, burstable=True)
            cheapest = min((c.price for c in found if allow_suspicious or not c.suspicious), default=None)
            skipped.extend(Skipped("burstable", c) for c in b[:1] if cheapest is None or c.price < cheapest)
    return found + shown, skipped


def _streams(res, view, spot, burstable):
    """(head bound, iterator of (bound, spec)) per fitting group. A search bound to a region (or to a zone,
    whose region the catalog knows) walks the catalog's per-region order: exact bounds there."""
    groups = _groups_for(res, view, burstable)
    region = res.region
    if region is None and res.zone and hasattr(view, "zones"):
        region = view.zones.get(res.zone)
    if region and hasattr(view, "region_groups"):
        where = view.region_groups(region)
        out = []
        for g in groups:
            rg = where.get(g.i)
            if rg is not None:
                out.append((rg.min_spot if spot else rg.min_price, rg.ordered(spot)))
        return out
    out = [(g.min_spot if spot else g.min_price, g.bounded(spot)) for g in groups]
    # groups are ordered by clean bounds (no Local Zone, no suspicious offer): the few specs with a suspicious
    # offer are a stream of their own, by their full bound, so a flagged price is shown (or, allowed, chosen)
    suspects = sorted((s for g in groups for s in g.suspect_specs()), key=lambda s: _bound_key(s, spot))
    if suspects:
        out.append((SUSPECTS, iter([((s.min_spot_price if spot else s.min_price), s) for s in suspects])))
    return out


def _bound_key(s: InstanceSpec, spot: bool) -> tuple:
    b = s.min_spot_price if spot else s.min_price
    return (float("inf") if b is None else b, -s.generation, s.instance_type)


def _merge(res, group, streams, spot, num_nodes, blocks, offers, allow_suspicious, k, burstable=False, risk=None):
    """Best-first over several bound-sorted (bound, spec) streams. Returns (choosable candidates, flagged
    ones). A price bound is also a bound on the risk-ranked cost (factor ≥ 1): the search stays exact."""
    heap: list = []
    suspects = None
    for i, (head, it) in enumerate(streams):
        if head == SUSPECTS:
            suspects, head = it, None
        heap.append((-1.0 if head is None else head, i, it, None))  # None: pull at once
    heapq.heapify(heap)
    best: list[float] = []  # max-heap (negated) of the k best choosable prices
    best_shown: list[float] = []  # the same for flagged prices (shown, not chosen)
    out: list[Candidate] = []
    shown: list[Candidate] = []
    seq = len(heap)
    cap = res.max_hourly_cost
    while heap:
        bound, _, it, spec = heapq.heappop(heap)
        if (it is suspects and spec is not None and not allow_suspicious and len(best_shown) >= k
                and bound > -best_shown[0] + _EPS):
            continue  # enough flagged prices to show; these specs' clean offers come through their groups
        if spec is None:  # the stream's first spec, parsed only now
            b, spec = next(it, (None, None))
            if spec is None or b is None:
                continue  # bound-sorted: None = nothing priced in this market
            if b > bound + _EPS:  # head bound not known (-1) or not the first spec's: queue it where it belongs
                seq += 1
                heapq.heappush(heap, (b, seq, it, spec))
                continue
            bound = b
        if len(best) >= k and bound > -best[0] + _EPS:
            break
        if cap is not None and bound > cap + _EPS:
            break
        nb, nxt = next(it, (None, None))
        if nxt is not None and nb is not None:
            seq += 1
            heapq.heappush(heap, (nb, seq, it, nxt))
        if not spec_admits(res, spec, burstable=burstable):
            continue
        cand, flagged = _cheapest_offer(res, group, spec, offers(spec), spot, num_nodes, blocks, allow_suspicious,
                                        risk if spot else None)
        if flagged is not None:
            shown.append(flagged)
            heapq.heappush(best_shown, -flagged.price)
            if len(best_shown) > k:
                heapq.heappop(best_shown)
        if cand is None:
            continue
        out.append(cand)
        heapq.heappush(best, -cand.rank_price)
        if len(best) > k:
            heapq.heappop(best)
    if len(best) >= k:
        cutoff = -best[0] + _EPS
        out = [c for c in out if c.rank_price <= cutoff]
        shown = [c for c in shown if c.rank_price <= cutoff]
    return out, shown


def _cheapest_offer(res, group, spec, spec_offers, spot, num_nodes, blocks, allow_suspicious, risk=None):
    """(the cheapest choosable offer of the spec, the cheapest flagged one if cheaper and not allowed);
    with `risk` (spot only), cheapest by expected cost."""
    best = flagged = None
    region, zone, cap = res.region, res.zone, res.max_hourly_cost
    for o in spec_offers:  # sorted by (on-demand price, region, zone)
        price = o.spot_price if spot else o.price
        if price is None:
            if spot:
                continue
            break  # on-demand: the rest has no on-demand price either
        if region and o.region != region or (o.zone != zone if zone else o.local_zone):
            continue
        if cap is not None and price > cap + _EPS:
            if spot:
                continue
            break
        if blocks and any(b.matches(spec.cloud, o.region, o.zone, spec.instance_type) for b in blocks):
            continue
        key = (price * risk(spec.cloud, o.region, o.zone, spec.instance_type, True) if risk else price,
               o.region, o.zone or "")
        if o.suspicious and not allow_suspicious:
            if flagged is None or key < flagged[0]:
                flagged = (key, o, price)
        elif best is None or key < best[0]:
            best = (key, o, price)
            if not spot:
                break  # on-demand offers come sorted: this is the spec's best; a flagged one came first

    def cand(t):
        key, o, price = t
        return Candidate(res, group, spec.cloud, o.region, o.zone, spec.instance_type, spec.vcpus,
                         spec.memory_gib, spec.accelerator_name, spec.accelerator_count, spot, price, num_nodes, o,
                         key[0] if risk else None)

    if flagged is not None and (best is None or flagged[0] < best[0]):
        return (cand(best) if best else None), cand(flagged)
    return (cand(best) if best else None), None


from .plan_explain import explain_infeasible
