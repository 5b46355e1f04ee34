"""Multi-zone spot policies: pick the market and the zone each tick (simulated by zones.simulate_zones).

`decide(ZoneObs) -> (Decision, zone)`; zone is ignored unless the decision is SPOT.

- `mz_mdp` (ours): where to run and when to pay for on-demand, from what the job can observe.
  Zones are known only through the job's own instance (a preemption) and launch attempts; a failed
  attempt is free and, on on-demand or on spot, the job keeps running, so trying a zone is cheap
  except when idle. Rules:
  * when/which market: the `mdp` table (single-zone MDP, solved with the availability model of
    "spot up in some zone", fitted on the 2-week zone pairs, first 13 days): idle, waiting for spot,
    or on-demand by the table's "spot down" row with the age of the outage (since we lost spot);
    while waiting, try a zone each tick; on on-demand, try a zone when the table would leave
    on-demand for spot of unknown age (a run found up at a random time: `typical_up_age`);
  * where: the cheapest zone that has not refused a launch in the last `retry` ticks (default:
    the number of zones, so that every zone gets tried in turn);
  * on spot: stay until preempted, except to move to a zone whose spot is at least
    `move_ratio` cheaper (tried for free every `retry` ticks while there is work left for it to pay
    off); a move costs d like any switch;
  * the deadline rule of `mdp` (exact), with a launch attempt counted as idle if it may fail.
- `mz_failover` (idealised baseline, sees every zone for free, prices ignored): spot until
  preempted, then the zone whose spot has been up longest; idle when no zone is up; the exact
  deadline rule (then on-demand to the end).
- `mz_single` (baseline): the `mdp` policy in the cheapest zone only.
"""
from __future__ import annotations

import numpy as np

from .availmodel import default_model
from .mdp import R_N0, R_O0, R_O1, R_S, MDPPolicy, _guard
from .policies import NONE, ON_DEMAND, SPOT, Job
from .simulator import Prices


class MZPolicy:
    name = "abstract"
    observes_all = False

    def __init__(self, job: Job, od_price: float, spot_prices, nodes: int = 1):
        self.job, self.od, self.spot = job, float(od_price), [float(p) for p in spot_prices]
        self.Z = len(self.spot)


def typical_up_age(p: MDPPolicy) -> int:
    """Age (steps) whose hazard is the mean hazard of an up run found at a random time (ages
    weighted by the survival curve): a zone found up by a launch has run for an unknown while."""
    hu, _ = p.model.hazards(p.grid.G, p.grid.ages)
    surv = np.concatenate([[1.0], np.cumprod(1 - hu)[:-1]])
    surv[-1] /= hu[-1]  # the tail bucket holds all later ages
    mean_h = float((surv * hu).sum() / surv.sum())
    return int(np.argmin(np.abs(hu - mean_h))) + 1


class MZMDP(MZPolicy):
    name = "mz_mdp"

    def __init__(self, job, od_price, spot_prices, nodes=1, retry_ticks: int | None = None,
                 move_ratio: float = 0.75):
        super().__init__(job, od_price, spot_prices, nodes)
        srt = sorted(self.spot)
        self.mdp = MDPPolicy(job, Prices(od_price, srt[len(srt) // 2], nodes),
                             model=default_model(union=True))
        self.order = sorted(range(self.Z), key=lambda z: (self.spot[z], z))
        self.retry = self.Z if retry_ticks is None else retry_ticks  # each zone tried in turn
        self.move_ratio = move_ratio
        self.refused = [-10 ** 9] * self.Z  # last tick a zone refused us (launch or preemption)
        self.spot_since = 0  # tick we got the held spot instance
        self.held_zone = -1
        self.down_since: int | None = None
        self.found_age_s = typical_up_age(self.mdp) * job.tick_s
        self.up_since: list = [None] * self.Z


    def _candidate(self, i, exclude=-1, cheaper_than=None):
        for z in self.order:
            if z == exclude or i - self.refused[z] < self.retry:
                continue
            if cheaper_than is not None and self.spot[z] > cheaper_than:
                return None
            return z
        return None

    def _see_all(self, i, all_avail):
        """Full view (MZMDPView): every zone's state is known; refused = down now."""
        for z, a in enumerate(all_avail):
            if a:
                self.up_since[z] = i if self.up_since[z] is None else self.up_since[z]
                self.refused[z] = -10 ** 9
            else:
                self.up_since[z] = None
                self.refused[z] = i

    def decide(self, obs):
        j, g = self.job, self.job.tick_s
        i = obs.elapsed_s // g
        if obs.all_avail is not None:
            self._see_all(i, obs.all_avail)
        if obs.preempted >= 0:
            self.refused[obs.preempted] = i
        if obs.failed >= 0:
            self.refused[obs.failed] = i - 1
        e, p, left, held = obs.elapsed_s, obs.progress_s, obs.overhead_left_s, obs.held
        slack = self.mdp.slack(e, p, left)
        d = j.overhead_s
        launch_ok = slack + left - d >= d  # a new spot instance leaves d for the fallback
        if held is SPOT:
            if obs.zone != self.held_zone:
                self.held_zone, self.spot_since = obs.zone, i
            self.down_since = None
            if left > 0:
                return SPOT, obs.zone
            want = self.mdp.table_action(e, p, left, R_S, self.found_age_s + (i - self.spot_since) * g)
            if want is not SPOT:
                return _guard(want, held, True, slack, left, j), -1
            c = self._candidate(i, obs.zone, self.move_ratio * self.spot[obs.zone])
            if c is not None and (j.task_s - p) > 2 * 3600 and launch_ok:
                return SPOT, c  # a free try: if it fails we keep this one
            return SPOT, obs.zone
        self.held_zone = -1
        if held is not NONE and left > 0:
            return held, -1
        if self.down_since is None:
            self.down_since = i
        down_age = (i - self.down_since + 1) * g
        c = self._candidate(i)
        if held is NONE:
            want = self.mdp.table_action(e, p, left, R_N0, down_age)
            if want is NONE and c is not None and launch_ok:
                return SPOT, c  # we would wait anyway: look for spot meanwhile
            return _guard(want, held, False, slack, left, j), -1
        if c is not None and launch_ok:  # on on-demand: a failed try costs nothing
            age = self.found_age_s if self.up_since[c] is None else (i - self.up_since[c] + 1) * g
            if self.mdp.table_action(e, p, left, R_O1, age) is SPOT:
                return SPOT, c
        want = self.mdp.table_action(e, p, left, R_O0, down_age)
        return _guard(want, held, False, slack, left, j), -1


class MZMDPView(MZMDP):
    """`mz_mdp` with every zone observable for free (idealised): what probing costs."""

    name = "mz_mdp_view"
    observes_all = True

    def _candidate(self, i, exclude=-1, cheaper_than=None):
        self.retry = 1
        return super()._candidate(i, exclude, cheaper_than)


class MZFailover(MZPolicy):
    name = "mz_failover"
    observes_all = True

    def __init__(self, job, od_price, spot_prices, nodes=1):
        super().__init__(job, od_price, spot_prices, nodes)
        self.up_since = [None] * self.Z
        self.committed = False
        self.s0 = job.ticks * job.tick_s - job.task_s

    def decide(self, obs):
        i = obs.elapsed_s // self.job.tick_s
        for z, a in enumerate(obs.all_avail):
            self.up_since[z] = (self.up_since[z] if self.up_since[z] is not None else i) if a else None
        if self.committed:
            return ON_DEMAND, -1
        slack = self.s0 - (obs.elapsed_s - obs.progress_s + obs.overhead_left_s)
        if obs.held is SPOT:
            want, z = SPOT, obs.zone
        else:
            up = [z for z in range(self.Z) if obs.all_avail[z]]
            z = min(up, key=lambda q: (self.up_since[q], q)) if up else -1
            want = SPOT if up else NONE
        x = _guard(want, obs.held, z >= 0, slack, obs.overhead_left_s, self.job)
        if x is ON_DEMAND:
            self.committed = True
            return ON_DEMAND, -1
        return x, z


class MZSingle(MZPolicy):
    """The single-zone `mdp` policy run in the cheapest zone only."""

    name = "mz_single"
    observes_all = True

    def __init__(self, job, od_price, spot_prices, nodes=1):
        super().__init__(job, od_price, spot_prices, nodes)
        self.z = min(range(self.Z), key=lambda q: (self.spot[q], q))
        self.p = MDPPolicy(job, Prices(od_price, self.spot[self.z], nodes))

    def decide(self, obs):
        from .policies import Observation

        held = obs.held if obs.held is not SPOT or obs.zone == self.z else NONE
        x = self.p.decide(Observation(obs.elapsed_s, obs.progress_s, bool(obs.all_avail[self.z]), held,
                                      obs.overhead_left_s))
        return x, self.z


MZ_POLICIES = {c.name: c for c in (MZMDP, MZMDPView, MZFailover, MZSingle)}


def _register_more():
    from .mz_patient import MZAge, MZPatient, MZPatientView, MZUnion, MZUnionView

    MZ_POLICIES.update({c.name: c for c in (MZPatient, MZPatientView, MZUnion, MZUnionView, MZAge)})


_register_more()
