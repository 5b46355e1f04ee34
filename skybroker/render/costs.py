"""`broker cost-report`: clusters and managed jobs with what they cost, and a total line."""
from __future__ import annotations

from .console import _m, _say
from .table import Col, _table
from .views import JOB_STYLE, STATUS_STYLE, _dur, _money

__all__ = ["print_cost_report", "print_timeline"]


def _res(c: dict) -> str:
    res = f"{c['num_nodes']}x {c['instance_type'] or '-'}"
    if c.get("accelerators"):
        res += f" ({c['accelerators']})"
    return res + (" spot" if c["market"] == "spot" else "")


def _saved(x: float | None) -> str:
    return "?" if x is None else _money(x)


def _status(c: dict):
    """DOWN (rolled back) / UP (interrupted): a run of a launch that failed says so."""
    text = c["status"] + (f" ({c['outcome']})" if c.get("outcome") in ("rolled back", "interrupted") else "")
    return (text, STATUS_STYLE.get(c["status"], "dim"))


def print_cost_report(rep: dict) -> None:
    clusters, jobs, total = rep["clusters"], rep["managed_jobs"], rep["total"]
    if not clusters and not jobs:
        _say("Nothing in the cost ledger for this period (`--all` shows the whole history).")
        return
    if clusters:
        cols = [Col("NAME", soft=14, min=8, squeeze=3), Col("INFRA", soft=14, min=8, squeeze=1),
                Col("RESOURCES", soft=16, min=10, squeeze=2), Col("STATUS"), Col("UP FOR", "right"),
                Col("STOPPED FOR", "right"), Col("UP $/h", "right"), Col("COST ($)", "right"),
                Col("SAVED ($)", "right")]
        rows = [[c["cluster"], "/".join(p for p in (c["cloud"], c["region"], c["zone"]) if p), _res(c),
                 _status(c), _dur(c["up_hours"] * 3600), _dur(c["stopped_hours"] * 3600),
                 "-" if c.get("up_hourly") is None else _money(c["up_hourly"]), _money(c["cost"]),
                 _saved(c["savings"]) if c["market"] == "spot" else "-"] for c in clusters]
        _table("Clusters", cols, rows, drop=("INFRA", "UP $/h", "STOPPED FOR", "SAVED ($)"),
               footer="UP $/h: nodes × (price + disk), what an hour up adds to COST (stopped: the disks only)")
    if jobs:
        cols = [Col("ID", "right"), Col("NAME", soft=12, min=6, squeeze=2), Col("STATUS"), Col("RUNS", "right"),
                Col("SPOT h", "right"), Col("OD h", "right"), Col("COST ($)", "right"), Col("SAVED ($)", "right"),
                Col("VS ALWAYS-OD", "right")]
        rows = []
        for j in jobs:
            dl = j.get("deadline")
            vs = "-" if not dl or dl.get("normalised_cost") is None else f"{dl['normalised_cost']:.4f}"
            rows.append([str(j["job_id"]), j["name"] or "-", (j["status"], JOB_STYLE.get(j["status"], "red")),
                         str(len(j["runs"])), f"{j['spot_hours']:.2f}", f"{j['on_demand_hours']:.2f}",
                         _money(j["cost"]), _saved(j["savings"]), vs])
        _table("Managed jobs", cols, rows, drop=("VS ALWAYS-OD", "RUNS", "SAVED ($)"),
               footer="VS ALWAYS-OD: cost / (expected compute on demand), as `broker simulate` normalises")
    saved = "" if total["savings"] is None else f", spot saved ${_money(total['savings'])}"
    _say(f"{_m('bold', 'Total')}: ${_money(total['cost'])} (clusters ${_money(total['clusters_cost'])}, "
         f"managed jobs ${_money(total['managed_jobs_cost'])}){saved}")


def print_timeline(t: dict) -> None:
    """`broker jobs timeline`: the job's runs (market, place, times, cost) and its market as one line."""
    import time as _time

    from ..costs.timeline import bar
    from .ansi import terminal

    segs = t["segments"]
    head = f"Managed job {t['id']} ({t['name'] or 'unnamed'}) · {t['status']}"
    _say(_m("bold", head))
    if not segs:
        _say("no run of its instances is recorded yet (the ledger starts when instances are created)")
        return
    start = min(t["submitted_at"], segs[0]["start"])
    end = t["ended_at"] or t["now"]
    _, width, _ = terminal()
    line = bar(segs, start, end, max(20, min(100, width) - 2))
    _say(f"[{line}]" if line else "")
    _say(_m("dim", f"S spot · O on-demand · · nothing held; {_dur(end - start)} from submission"
                   f"{' to the end' if t['ended_at'] else ' so far'}, {len(t['recoveries'])} recovery/switch(es)"))

    def when(x):
        return "-" if x is None else _time.strftime("%m-%d %H:%M:%S", _time.localtime(x))

    rows = [[str(i + 1), s["market"], s["place"] or "-", s["instance_type"] or "-", when(s["start"]),
             when(s["end"]) if s["end"] else "running", _dur(s["hours"] * 3600), _money(s["cost"])]
            for i, s in enumerate(segs)]
    cols = [Col("#", "right"), Col("MARKET"), Col("WHERE", soft=16, min=8, squeeze=1),
            Col("INSTANCE", soft=14, min=8, squeeze=2), Col("FROM"), Col("TO"), Col("FOR", "right"),
            Col("COST ($)", "right")]
    _table(None, cols, rows, drop=("FROM", "INSTANCE"))
