"""Deadline-aware managed jobs: every decision tick the controller asks a spot policy — the same pure
objects the simulator measures (skybroker.spot.policies) — whether the job should run on spot, on
on-demand, or wait, given the time elapsed, the progress made and whether spot is available.

What the controller knows, and how it maps onto the policy's Observation:
  elapsed   wall time since the job was submitted;
  progress  compute time accumulated while the job's `run` was RUNNING on its nodes (the task's
            `expected_hours` / `deadline.compute` is the total it needs);
  spot      available if we hold a live spot cluster; when we do not, spot counts as available unless a
            spot launch failed within the last few ticks (a failed launch is the only probe a broker has);
  held      the market of the cluster we hold (none after a preemption).
The policy's own state (e.g. "committed to on-demand") lives in the controller process; after a
controller restart it is rebuilt by the next decisions, and the safety net does not depend on it.

Several zones (issue 17): when the job's resources allow spot in several places (`zone_places`: the
catalog offers of the plan's best spec that its region/zone constraints allow, cheapest spot first, at
most MAX_ZONES) and its policy is the default `mdp` (or a multi-zone one by name), the controller
asks the multi-zone policy `mz_union` (skybroker.spot.mz_patient, measured with `broker simulate
--multi-zone`) instead: it picks the market *and* the zone. What it is told maps onto `ZoneObs`: the
zone it holds spot in, the zone that preempted it and the zone whose spot launch was refused (each told
once, at the next decision). A spot decision pins the launch to that zone; a move to a cheaper zone
while on spot is a switch like a change of market.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..spot.policies import NONE, ON_DEMAND, SPOT, Decision, Job, Observation, make_policy

SPOT_RETRY_TICKS = 5  # after a failed spot launch, spot counts as unavailable for this many ticks
MAX_ZONES = 4  # zones a multi-zone deadline job probes in turn
MULTI_ZONE_POLICY = "mz_union"


@dataclass
class DeadlineState:
    progress_s: float = 0.0
    held: str = NONE.value  # market of the cluster we hold: "spot", "on_demand" or "none"
    last_at: float | None = None  # when progress was last accounted
    spot_retry_at: float = 0.0  # spot counts as unavailable until then
    last_tick: int = -1  # the last tick the policy was asked about
    want: str | None = None  # the market the last decision asked for
    zone: int = -1  # multi-zone: index (in DeadlinePolicy.places) of the zone we hold spot in
    want_zone: int = -1  # the zone the last spot decision asked for
    lost_zone: int = -1  # the zone that preempted us, not yet told to the policy
    failed_zone: int = -1  # the zone whose spot launch was refused, not yet told to the policy

    @classmethod
    def load(cls, text: str | None) -> "DeadlineState":
        return cls(**json.loads(text)) if text else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self))

    def lost(self) -> None:
        """The instances are gone (a preemption): nothing is held, the policy decides afresh."""
        if self.held == SPOT.value and self.zone >= 0:
            self.lost_zone = self.zone
        self.held, self.want, self.last_at, self.zone = NONE.value, None, None, -1


def wants_zones(task) -> bool:
    return task.deadline_policy == "mdp" or task.deadline_policy.startswith("mz_")


def zone_places(task, limit: int = MAX_ZONES) -> tuple[list[dict], float] | None:
    """([{cloud, region, zone, spot_price}, ...], on-demand $/h) of the plan's best spot spec, or
    None when the task's spot can run in fewer than two places."""
    from .. import api, catalog
    from ..errors import BrokerError

    try:
        plan = api.plan(_all_spot(task), managed=True, check_budget=False)
    except BrokerError:
        return None
    c = next((c for c in plan.candidates if c.use_spot and c.offer is not None), None)
    if c is None:
        return None
    r = c.resources
    offers = [o for o in catalog.offers(c.offer.spec) if o.spot_price is not None and not o.local_zone
              and not o.suspicious and (r.region is None or o.region == r.region)
              and (r.zone is None or o.zone == r.zone)]
    offers.sort(key=lambda o: (o.spot_price, o.region, o.zone or ""))
    places = [{"cloud": c.cloud, "region": o.region, "zone": o.zone, "spot_price": o.spot_price}
              for o in offers[:limit]]
    ods = [o.price for o in offers[:limit] if o.price is not None]
    if len(places) < 2 or not ods:
        return None
    return places, min(ods)


def _all_spot(task):
    from dataclasses import replace

    return replace(task, groups=tuple(tuple(replace(r, use_spot=True) for r in g) for g in task.groups))


class DeadlinePolicy:
    def __init__(self, task, submitted_at: float, zones: tuple[list[dict], float] | None = None):
        self.tick_s = max(1, round(task.decision_tick_hours * 3600))
        self.job = Job.from_hours(task.expected_hours, task.deadline_hours, task.restart_overhead_hours, self.tick_s)
        self.places = zones[0] if zones else None
        if self.places:
            from ..spot.mz_policies import MZ_POLICIES

            name = task.deadline_policy if task.deadline_policy in MZ_POLICIES else MULTI_ZONE_POLICY
            self.policy = MZ_POLICIES[name](self.job, zones[1], [p["spot_price"] for p in self.places], task.num_nodes)
        else:
            self.policy = make_policy(task.deadline_policy, self.job)
        self.submitted_at = submitted_at

    def tick_of(self, now: float) -> int:
        return int((now - self.submitted_at) // self.tick_s)

    def account(self, st: DeadlineState, now: float, running: bool, reported_fraction: float | None = None) -> None:
        if running and st.last_at is not None:
            st.progress_s += max(0.0, now - st.last_at)
        st.last_at = now if running else None
        if reported_fraction is not None:
            st.progress_s = max(st.progress_s, min(1.0, reported_fraction) * self.job.task_s)

    def decide(self, st: DeadlineState, now: float, *, force: bool = False) -> Decision:
        """Ask the policy (once per tick, or now when forced by an event such as a preemption)."""
        tick = self.tick_of(now)
        if not force and tick == st.last_tick and st.want is not None:
            return Decision(st.want)
        st.last_tick = tick
        held = Decision(st.held)
        if self.places:
            return self._decide_zone(st, now, held)
        spot_available = held is SPOT or now >= st.spot_retry_at
        obs = Observation(elapsed_s=now - self.submitted_at, progress_s=st.progress_s,
                          spot_available=spot_available, held=held)
        d = self.policy.decide(obs)
        st.want = d.value
        return d

    def _decide_zone(self, st: DeadlineState, now: float, held: Decision) -> Decision:
        from ..spot.zones import ZoneObs

        zone = st.zone if held is SPOT else -1
        obs = ZoneObs(elapsed_s=int(now - self.submitted_at), progress_s=int(st.progress_s), held=held, zone=zone,
                      overhead_left_s=0, preempted=st.lost_zone, failed=st.failed_zone)
        st.lost_zone = st.failed_zone = -1
        d, z = self.policy.decide(obs)
        if d is SPOT and not 0 <= z < len(self.places):
            d, z = (ON_DEMAND if held is ON_DEMAND else NONE), -1
        st.want, st.want_zone = d.value, (z if d is SPOT else -1)
        return d

    def place(self, st: DeadlineState) -> dict | None:
        """Where the last spot decision asked to launch (multi-zone), as a pin for the launch."""
        if not self.places or st.want != SPOT.value or st.want_zone < 0:
            return None
        p = self.places[st.want_zone]
        return {"cloud": p["cloud"], "region": p["region"], "zone": p["zone"]}

    def moves(self, st: DeadlineState) -> bool:
        """The last decision keeps the market but changes the zone (a move to a cheaper zone)."""
        return bool(self.places) and st.want == SPOT.value == st.held and st.want_zone != st.zone

    def launched(self, st: DeadlineState, market: Decision) -> None:
        st.held, st.last_at = market.value, None
        st.zone = st.want_zone if market is SPOT and self.places else -1

    def spot_failed(self, st: DeadlineState, now: float) -> str:
        """A spot launch was refused; returns what happens next, for the job's events."""
        if self.places:
            st.failed_zone = st.want_zone  # the multi-zone policy tries another zone next
            p = self.places[st.want_zone] if 0 <= st.want_zone < len(self.places) else {}
            where = "/".join(str(p[k]) for k in ("cloud", "region", "zone") if p.get(k)) or "that zone"
            return f"spot in {where} refused; the policy tries another zone"
        st.spot_retry_at = now + SPOT_RETRY_TICKS * self.tick_s
        return "spot counts as unavailable for a while"

    @property
    def done_s(self) -> float:
        return self.job.task_s


def market_name(d: Decision) -> str:
    return {SPOT: "spot", ON_DEMAND: "on-demand", NONE: "waiting"}[d]
