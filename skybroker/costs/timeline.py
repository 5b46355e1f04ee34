"""A managed job's market over time, from the cost ledger: one segment per run of its instances (the
market, the place, when it ran, what it cost) and the gaps between them (recovering, waiting for spot),
with a one-line picture: `S` spot, `O` on-demand, `·` nothing held (a preemption, a relaunch, a wait).

Pure: `segments(runs, at)` and `bar(segments, start, end, width)`; api.job_timeline reads the ledger.
"""
from __future__ import annotations

MARK = {"spot": "S", "on-demand": "O"}
NONE_MARK = "·"


def segments(runs, at: float) -> list[dict]:
    """The job's runs in order, as dicts: market, place, instance type, start, end (None: running), hours,
    cost so far."""
    out = []
    for r in sorted(runs, key=lambda r: r.started_at):
        end = r.ended_at
        out.append({"market": r.market, "place": "/".join(p for p in (r.cloud, r.region, r.zone) if p),
                    "instance_type": r.instance_type, "start": r.started_at, "end": end,
                    "hours": max(0.0, ((end if end is not None else at) - r.started_at) / 3600),
                    "cost": round(r.cost(at), 6)})
    return out


def bar(segs: list[dict], start: float, end: float, width: int) -> str:
    """`width` characters over [start, end]: each shows the market held for most of its time slice."""
    if width <= 0 or end <= start:
        return ""
    step = (end - start) / width
    out = []
    for i in range(width):
        a, b = start + i * step, start + (i + 1) * step
        held = {}
        for s in segs:
            s_end = s["end"] if s["end"] is not None else end
            overlap = min(b, s_end) - max(a, s["start"])
            if overlap > 0:
                held[s["market"]] = held.get(s["market"], 0.0) + overlap
        best = max(held.items(), key=lambda kv: kv[1]) if held else None
        out.append(MARK.get(best[0], "?") if best and best[1] >= step / 2 else NONE_MARK)
    return "".join(out)
