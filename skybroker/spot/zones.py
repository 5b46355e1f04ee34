"""Several traces as simultaneous zones: alignment, per-zone prices, and the multi-zone simulator.

Zones: the traces of one `--multi-zone` run are taken as the same instance type in different zones
over the same period, aligned by index (the files carry no timestamps; sample 0 of each is the start
date in its folder name) and cut to the shortest. They must share the tick.

Prices (`zone_prices`): on-demand is one market (any zone; the instance's on-demand price), spot has a
price per zone. From the project's catalogs (`skybroker.catalog`) when the instance type is there:
the trace's zone name (us-west-2a) is mapped to the catalog's AZ IDs (usw2-az1 ...) of its region by
letter order (a -> the first AZ ID in sorted order, b -> the second, modulo the number of AZ IDs);
AWS assigns names to IDs per account, so this mapping is a documented assumption, not a fact. The
instance type comes from the file name (v100_1 -> p3.2xlarge, v100_8 -> p3.16xlarge, intel_64 ->
r5.16xlarge, c3-88 -> c3-highcpu-88; K80 types are not in the catalogs: use --zone-prices).

Simulator model (the single-zone one of simulator.py, plus zones): held is NONE, ON_DEMAND or SPOT in
zone z; changing market or zone costs the overhead d. A zone's spot availability is known only
where the job runs (a preemption shows it went down) or by a launch attempt: choosing SPOT in a zone
that is down is a failed launch (free; the job keeps what it held, idle if nothing) and the policy
is told at the next tick. Policies flagged `observes_all` (idealised baselines) are also shown every
zone's availability. Pure: returns data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from skybroker.errors import BrokerError, UsageError

from .policies import NONE, ON_DEMAND, SPOT, Decision, Job
from .simulator import Outcome, PolicyError

INSTANCE_OF = {"v100_1": "p3.2xlarge", "v100_8": "p3.16xlarge", "intel_64": "r5.16xlarge",
               "c3-88": "c3-highcpu-88"}
_NAME = re.compile(r"^(?P<zone>[a-z]+-[a-z]+-?\d+-?[a-z])_(?P<kind>.+)\.json$")


@dataclass(frozen=True)
class ZoneSet:
    names: tuple[str, ...]  # zone names (from the file names)
    avail: np.ndarray  # (zones, ticks) bool
    tick_s: int
    instance: str | None  # instance type implied by the file names, if known

    @property
    def ticks(self) -> int:
        return int(self.avail.shape[1])


def zone_of(path_name: str) -> tuple[str, str | None]:
    m = _NAME.match(path_name)
    if not m:
        return path_name.rsplit(".", 1)[0], None
    return m.group("zone"), INSTANCE_OF.get(m.group("kind"))


def align(traces, nodes: int) -> ZoneSet:
    """Traces (traces.Trace) as zones: same tick required, cut to the shortest."""
    if len(traces) < 2:
        raise UsageError("--multi-zone needs at least two traces (one per zone)")
    gaps = {t.gap_seconds for t in traces}
    if len(gaps) != 1:
        raise UsageError(f"--multi-zone traces must share the tick, got {sorted(gaps)} s",
                         "pass the files of one set (one folder)")
    n = min(len(t) for t in traces)
    zi = [zone_of(t.path.replace("\\", "/").rsplit("/", 1)[-1]) for t in traces]
    names = tuple(z for z, _ in zi)
    if len(set(names)) != len(names):
        raise UsageError(f"--multi-zone traces name the same zone twice: {names}")
    kinds = {k for _, k in zi}
    inst = kinds.pop() if len(kinds) == 1 else None
    return ZoneSet(names, np.stack([t.availability(nodes)[:n] for t in traces]), gaps.pop(), inst)


def zone_prices(names, instance: str) -> tuple[float, list[float], str]:
    """(on-demand $/h, spot $/h per zone, source) from the catalogs."""
    from skybroker import catalog

    cloud = "gcp" if instance.startswith(("c3-", "c2-", "n1-", "n2-", "e2-", "a2-", "g2-")) else "aws"
    try:
        specs = [s for s in catalog.specs(cloud) if s.instance_type == instance]
    except BrokerError as e:
        raise UsageError(f"no {cloud} catalog for per-zone prices: {e.message}",
                         "pass --zone-prices P1,P2,... ($/h spot per zone)") from None
    if not specs:
        raise UsageError(f"{instance} is not in the {cloud} catalog", "pass --zone-prices")
    specs.sort(key=lambda s: (s.accelerator_count, s.accelerator_name or ""))
    offers = [o for o in catalog.offers(specs[0]) if not o.local_zone and o.spot_price is not None]
    od, spot, used = [], [], []
    for z in names:
        if cloud == "gcp":
            cands = [o for o in offers if o.zone == z]
        else:
            region, letter = z[:-1], z[-1]
            ids = sorted({o.zone for o in offers if o.region == region})
            if not ids:
                raise UsageError(f"no {instance} offer in {region} in the catalog", "pass --zone-prices")
            az = ids[(ord(letter) - ord("a")) % len(ids)]
            cands = [o for o in offers if o.zone == az]
        if not cands:
            raise UsageError(f"no {instance} offer for zone {z} in the catalog", "pass --zone-prices")
        od.append(cands[0].price)
        spot.append(cands[0].spot_price)
        used.append(cands[0].zone)
    return min(od), spot, f"{instance} {cloud} catalog ({', '.join(f'{a}={b}' for a, b in zip(names, used))})"


@dataclass(frozen=True, slots=True)
class ZoneObs:
    elapsed_s: int
    progress_s: int
    held: Decision
    zone: int  # zone of the held spot instance, -1 otherwise
    overhead_left_s: int
    preempted: int  # zone that preempted us at the start of this tick, -1 if none
    failed: int  # zone of last tick's failed launch, -1 if none
    all_avail: tuple | None = None  # every zone's availability now, for `observes_all` policies


def simulate_zones(policy, avail: np.ndarray, job: Job, od_price: float, spot_prices, nodes: int = 1
                   ) -> Outcome:
    """One multi-zone policy over one window ((zones, >= job.ticks) bool); prices in $/h."""
    g, d, c, T = job.tick_s, job.overhead_s, job.task_s, job.ticks
    f = g / 3600.0 * nodes
    od_tick = od_price * f
    sp_tick = [p * f for p in spot_prices]
    av = np.asarray(avail, bool)[:, :T].T.tolist()  # per tick, per zone
    if len(av) < T:
        raise ValueError(f"availability window has {len(av)} ticks, the job needs {T}")
    held, zone, left, done, cost = NONE, -1, 0, 0, 0.0
    w_spot = w_od = pre = sw = 0
    failed = -1
    full = getattr(policy, "observes_all", False)
    i = 0
    while i < T and done < c:
        a = av[i]
        lost = -1
        if held is SPOT and not a[zone]:
            lost, held, zone, left = zone, NONE, -1, 0
            pre += 1
        x, z = policy.decide(ZoneObs(i * g, done, held, zone, left, lost, failed,
                                     tuple(a) if full else None))
        failed = -1
        if x is SPOT:
            if not 0 <= z < len(a):
                raise PolicyError(f"{policy.name} chose spot in zone {z}")
            if not a[z]:  # a failed launch: keep what is held
                failed = z
                x, z = held, zone
        elif x is not NONE and x is not ON_DEMAND:
            raise PolicyError(f"{policy.name} returned {x!r}")
        if x is NONE:
            held, zone, left = NONE, -1, 0
            i += 1
            continue
        if x is ON_DEMAND:
            z = -1
        if x is not held or z != zone:
            held, zone, left = x, z, d
            sw += 1
        w = max(g - left, 0)
        left -= g - w
        w = min(w, c - done)
        done += w
        if x is SPOT:
            w_spot += w
            cost += sp_tick[z]
        else:
            w_od += w
            cost += od_tick
        i += 1
    return Outcome(cost, w_spot / 3600.0, w_od / 3600.0, done >= c, i * g / 3600.0, pre, sw)
