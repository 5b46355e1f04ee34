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
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..spot.policies import NONE, ON_DEMAND, SPOT, Decision, Job, Observation, make_policy

SPOT_RETRY_TICKS = 5  # after a failed spot launch, spot counts as unavailable for this many ticks


@dataclass
class DeadlineState:
    progress_s: float = 0.0
    held: str = NONE.value  # market of the cluster we hold: "spot", "on_demand" or "none"
    last_at: float | None = None  # when progress was last accounted
    spot_retry_at: float = 0.0  # spot counts as unavailable until then
    last_tick: int = -1  # the last tick the policy was asked about
    want: str | None = None  # the market the last decision asked for

    @classmethod
    def load(cls, text: str | None) -> "DeadlineState":
        return cls(**json.loads(text)) if text else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self))


class DeadlinePolicy:
    def __init__(self, task, submitted_at: float):
        self.tick_s = max(1, round(task.decision_tick_hours * 3600))
        self.job = Job.from_hours(task.expected_hours, task.deadline_hours, task.restart_overhead_hours, self.tick_s)
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
        spot_available = held is SPOT or now >= st.spot_retry_at
        obs = Observation(elapsed_s=now - self.submitted_at, progress_s=st.progress_s,
                          spot_available=spot_available, held=held)
        d = self.policy.decide(obs)
        st.want = d.value
        return d

    def spot_failed(self, st: DeadlineState, now: float) -> None:
        st.spot_retry_at = now + SPOT_RETRY_TICKS * self.tick_s

    @property
    def done_s(self) -> float:
        return self.job.task_s


def market_name(d: Decision) -> str:
    return {SPOT: "spot", ON_DEMAND: "on-demand", NONE: "waiting"}[d]
