"""Failover history: each launch with its attempts, rebuilt from the cluster events the broker stores
(state.add_event): `launch` starts one (lifecycle.py), each `failover` is a refused attempt with the
cloud's error class and code (provision.failover_event), `up` is the attempt that worked, `interrupted`
ends one that was cut short. A managed job's launches and recoveries are launches of its cluster."""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("launch", "failover", "up", "interrupted")


@dataclass
class Launch:
    cluster: str
    started: float
    attempts: list[dict] = field(default_factory=list)  # {place, instance_type, error, code, message, ts}
    outcome: str = "failed"  # up | failed | interrupted | in progress
    where: str | None = None  # where it came up
    ended: float | None = None


def launches(events: list[dict], in_progress: set[str] = frozenset()) -> list[Launch]:
    """Launches in the order they started. `events`: stored events (oldest first) of any kinds;
    `in_progress`: clusters being launched now (their last launch has no outcome yet)."""
    from ..provision import parse_failover_event

    out: list[Launch] = []
    open_: dict[str, Launch] = {}
    for e in events:
        kind, name = e["kind"], e["cluster"]
        if kind not in KINDS:
            continue
        cur = open_.get(name)
        if kind == "launch" or cur is None:
            cur = open_[name] = Launch(name, e["ts"])
            out.append(cur)
            if kind == "launch":
                continue
        if kind == "failover":
            a = parse_failover_event(e["message"]) or {"place": "?", "instance_type": "?", "error": "?",
                                                        "code": None, "message": e["message"]}
            cur.attempts.append({**a, "ts": e["ts"]})
            continue
        cur.outcome, cur.ended = ("up" if kind == "up" else "interrupted"), e["ts"]
        if kind == "up":
            cur.where = e["message"][len("up on "):] if e["message"].startswith("up on ") else e["message"]
        del open_[name]
    for name, cur in open_.items():
        if name in in_progress:
            cur.outcome = "in progress"
    return out
