"""/dashboard: one server-rendered HTML page (no JavaScript, no frontend build): the team's clusters with
their cost so far, managed jobs with their recoveries timeline, and recent failover/lifecycle events.
The token comes as the `broker_token` cookie (set by the login form: HttpOnly, SameSite=Strict) or the
Authorization header. Everything shown is escaped."""
from __future__ import annotations

import time
from html import escape

_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 2em}
th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.UP,.SUCCEEDED,.RUNNING{color:#080}.STOPPED,.RECOVERING,.PENDING{color:#a60}.FAILED,.INTERRUPTED{color:#b00}
small{color:#666}ol{margin:0;padding-left:1.2em}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<link rel=icon href='data:,'><style>{_CSS}</style></head><body>{body}</body></html>")


def login_page(message: str) -> str:
    return _page("skybroker: sign in", f"<h1>skybroker</h1><p>{escape(message)}</p>"
                 "<form method=post action=/dashboard/login><label>Token <input type=password name=token "
                 "autocomplete=off></label> <button type=submit>Sign in</button></form>")


def _t(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _cell(v, cls: str | None = None) -> str:
    return f"<td class='{escape(cls)}'>{escape(str(v))}</td>" if cls else f"<td>{escape(str(v))}</td>"


def cluster_cost(rec, now: float) -> float:
    """Cost since launch at the recorded price (a stopped cluster's time is not counted after it stopped)."""
    end = now if rec.status != "STOPPED" else (rec.updated_at or now)
    return max(0.0, end - rec.launched_at) / 3600 * rec.hourly_price


def page(user) -> str:
    from .. import state
    from ..jobs import store

    now = time.time()
    recs = state.list_clusters()
    rows = "".join("<tr>" + _cell(r.name) + _cell(r.user_name or "-") + _cell(r.infra) + _cell(r.status, r.status)
                   + _cell(r.num_nodes) + _cell(f"{r.hourly_price:.3f}") + _cell(f"{cluster_cost(r, now):.4f}")
                   + _cell(_t(r.launched_at)) + "</tr>" for r in recs)
    clusters = ("<table id=clusters><tr><th>Cluster<th>User<th>Infra<th>Status<th>Nodes<th>$/h<th>Cost so far ($)"
                f"<th>Launched</tr>{rows}</table>") if recs else "<p id=clusters>No clusters.</p>"
    jobs = store.all_jobs()[-200:]
    jrows = []
    for j in reversed(jobs):
        evs = [e for e in store.events(j.id) if e["kind"] in ("recovery", "notice", "running", "bring-up")]
        timeline = "<ol>" + "".join(f"<li>{escape(_t(e['ts']))} {escape(e['kind'])}: {escape(e['message'])}</li>"
                                    for e in evs) + "</ol>" if evs else "-"
        jrows.append("<tr>" + _cell(j.id) + _cell(j.name or "-") + _cell(j.user_name or "-") + _cell(j.status, j.status)
                     + _cell(j.recoveries) + _cell(f"{j.cost_so_far:.4f}") + _cell(j.place or "-")
                     + f"<td>{timeline}</td></tr>")
    mjobs = ("<table id=jobs><tr><th>Job<th>Name<th>User<th>Status<th>Recoveries<th>Cost ($)<th>Where"
             f"<th>Recoveries timeline</tr>{''.join(jrows)}</table>") if jobs else "<p id=jobs>No managed jobs.</p>"
    evs = state.recent_events(30)
    erows = "".join("<tr>" + _cell(_t(e["ts"])) + _cell(e["cluster"]) + _cell(e["kind"]) + _cell(e["message"]) + "</tr>"
                    for e in reversed(evs))
    events = (f"<table id=events><tr><th>Time<th>Cluster<th>Kind<th>Message</tr>{erows}</table>" if evs
              else "<p id=events>No events.</p>")
    who = f"{user.name}{' (admin)' if user.admin else ''}"
    return _page("skybroker dashboard", f"<h1>skybroker</h1><p><small>signed in as {escape(who)} · "
                 f"{escape(_t(now))}</small></p><h2>Clusters</h2>{clusters}<h2>Managed jobs</h2>{mjobs}"
                 f"<h2>Recent events (failover, lifecycle, autostop)</h2>{events}")
