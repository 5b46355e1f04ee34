"""/dashboard: server-rendered HTML pages (no JavaScript, no frontend build): the team's clusters with
their cost so far, managed jobs with their recoveries timeline, each launch's attempts with the clouds'
error codes (history.py) and recent lifecycle events; /dashboard/plan: a pasted task's plan, computed
by the server (the optimizer on the server's catalogs and credentials), nothing launched.
The token comes as the `broker_token` cookie (set by the login form: HttpOnly, SameSite=Strict) or the
Authorization header. Everything shown is escaped."""
from __future__ import annotations

import time
from html import escape

_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 2em}
th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.UP,.SUCCEEDED,.RUNNING{color:#080}.STOPPED,.RECOVERING,.PENDING{color:#a60}.FAILED,.INTERRUPTED{color:#b00}
small{color:#666}ol{margin:0;padding-left:1.2em}.up{color:#080}.failed,.refused{color:#b00}.interrupted{color:#a60}
textarea{width:100%;max-width:60em;font:13px monospace}.error{color:#b00}nav a{margin-right:1em}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<link rel=icon href='data:,'><style>{_CSS}</style></head><body>{body}</body></html>")


def login_page(message: str) -> str:
    return _page("skybroker: sign in", f"<h1>skybroker</h1><p>{escape(message)}</p>"
                 "<form method=post action=/dashboard/login><label>Token <input type=password name=token "
                 "autocomplete=off></label> <button type=submit>Sign in</button></form>")


def error_page(exc, user=None) -> str:
    """A BrokerError the page could not be made past (a corrupt state database, …): its message and hint, as
    the CLI says them, instead of a bare 500."""
    hint = f"<p><small>{escape(exc.hint)}</small></p>" if exc.hint else ""
    head = _header(user, time.time()) if user is not None else "<h1>skybroker</h1>"
    return _page("skybroker: error", f"{head}<p id=error class=error>Error: {escape(exc.message)}</p>{hint}")


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
    recs, jobs = state.list_clusters(), store.all_jobs()
    if not user.admin:  # a user's own, as `status`, `jobs queue`, `events` and `cost-report` show them
        recs = [r for r in recs if r.user_name == user.name]
        jobs = [j for j in jobs if j.user_name == user.name]
    rows = "".join("<tr>" + _cell(r.name) + _cell(r.user_name or "-") + _cell(r.infra) + _cell(r.status, r.status)
                   + _cell(r.num_nodes) + _cell(f"{r.hourly_price:.3f}") + _cell(f"{cluster_cost(r, now):.4f}")
                   + _cell(_t(r.launched_at)) + "</tr>" for r in recs)
    clusters = ("<table id=clusters><tr><th>Cluster<th>User<th>Infra<th>Status<th>Nodes<th>$/h<th>Cost so far ($)"
                f"<th>Launched</tr>{rows}</table>") if recs else "<p id=clusters>No clusters.</p>"
    jobs = jobs[-200:]
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
    evs = _events(user, recs, 30)
    erows = "".join("<tr>" + _cell(_t(e["ts"])) + _cell(e["cluster"]) + _cell(e["kind"]) + _cell(e["message"]) + "</tr>"
                    for e in reversed(evs))
    events = (f"<table id=events><tr><th>Time<th>Cluster<th>Kind<th>Message</tr>{erows}</table>" if evs
              else "<p id=events>No events.</p>")
    return _page("skybroker dashboard", _header(user, now) + f"<h2>Clusters</h2>{clusters}<h2>Managed jobs</h2>"
                 f"{mjobs}<h2>Launches and their attempts (failover)</h2>{_launches(user, recs)}"
                 f"<h2>Recent events (failover, lifecycle, autostop)</h2>{events}")


def _header(user, now: float) -> str:
    who = f"{user.name}{' (admin)' if user.admin else ''}"
    return (f"<h1>skybroker</h1><nav><a href=/dashboard>Overview</a><a href=/dashboard/plan>Plan a task</a></nav>"
            f"<p><small>signed in as {escape(who)} · {escape(_t(now))}</small></p>")


def _events(user, recs, limit: int) -> list[dict]:
    """The latest events an admin sees (all), or a user's: recorded for them, or for no user (the broker's
    own watchers) on a cluster that is theirs now (the rule of `broker events`, server/calls.py)."""
    from .. import state

    if user.admin:
        return state.recent_events(limit)
    mine = {r.name for r in recs}
    evs = state.recent_events(max(limit, 2000))
    return [e for e in evs if e.get("user_name") == user.name
            or (e.get("user_name") is None and e["cluster"] in mine)][-limit:]


def _launches(user, recs, limit: int = 30) -> str:
    from .. import state
    from .history import launches

    busy = {r.name for r in recs if r.status == state.INIT}
    ls = launches(_events(user, recs, 2000), busy)[-limit:]
    if not ls:
        return "<p id=launches>No launches recorded.</p>"
    rows = []
    for ln in reversed(ls):
        steps = [f"<li class=refused>{escape(a['place'])} {escape(a['instance_type'])}: {escape(a['error'])}"
                 f"{' <code>' + escape(a['code']) + '</code>' if a['code'] else ''} — {escape(a['message'])}</li>"
                 for a in ln.attempts]
        if ln.outcome == "up":
            steps.append(f"<li class=up>up on {escape(ln.where or '?')}</li>")
        outcome = ln.outcome + (f" on {ln.where}" if ln.where else "")
        rows.append("<tr>" + _cell(_t(ln.started)) + _cell(ln.cluster) + _cell(outcome, ln.outcome.split()[0])
                    + _cell(len(ln.attempts) + (ln.outcome == "up")) + f"<td><ol>{''.join(steps)}</ol></td></tr>")
    return ("<table id=launches><tr><th>Started<th>Cluster<th>Outcome<th>Attempts<th>Attempts in order "
            f"(the cloud's error code)</tr>{''.join(rows)}</table>")


MAX_PASTE = 256 << 10


def plan_page(user, yaml_text: str | None = None) -> str:
    """The form, and with `yaml_text` the plan of each task in it (or the error, as the CLI would say it)."""
    result, shown = "", yaml_text or ""
    if yaml_text is not None:
        result, has_secrets = _plan_html(yaml_text)
        if has_secrets:  # secrets are never sent back, not even to whoever pasted them
            shown = ""
            result += "<p><small>The task has secrets: it is not shown again.</small></p>"
    form = ("<form method=post action=/dashboard/plan><p><label for=task>Task YAML (SkyPilot format)</label></p>"
            f"<textarea id=task name=task rows=16>{escape(shown)}</textarea><p><button type=submit>Plan</button> "
            "<small>nothing is launched; local paths are not read</small></p></form>")
    return _page("skybroker: plan a task", _header(user, time.time()) + "<h2>Plan a task</h2>" + form + result)


def _plan_html(text: str) -> tuple[str, bool]:
    from .. import api, spec
    from ..errors import BrokerError
    from ..render.plan_views import plan_rows
    from ..spec_fields import local_paths_unread
    from ..taskfile import parse_yaml_docs

    has_secrets = "secrets" in text
    try:
        if len(text.encode()) > MAX_PASTE:
            raise BrokerError("the task is too large to plan here (over 256 KiB)")
        docs = parse_yaml_docs(text.encode(), "pasted task")
        _, docs = spec._pipeline_header(docs)
        if not docs:
            raise BrokerError("no task in the text", "paste a task YAML, e.g. `resources: {accelerators: V100:1}`")
        with local_paths_unread():  # "local paths are not read": the server's files are not looked at
            tasks = [spec.task_from_dict(d, source="pasted task" + (f" (task {i + 1})" if len(docs) > 1 else ""),
                                         node=n) for i, (d, n) in enumerate(docs)]
        has_secrets = any(t.secrets for t in tasks)
        out = []
        for i, task in enumerate(tasks):
            plan = api.plan(task)
            c = plan.chosen
            rows = "".join("<tr>" + _cell(r.infra) + _cell(r.instance_type) + _cell(r.accelerators() or "-")
                           + _cell("spot" if r.use_spot else "on-demand") + _cell(f"{r.price:.4f}")
                           + _cell(f"{r.total:.4f}") + _cell("✔" if r is c else "") + "</tr>" for r in plan_rows(plan))
            notes = "".join(f"<li>{escape(n)}</li>" for n in ((plan.clouds_note,) if plan.clouds_note else ())
                            + tuple(plan.notes) + tuple(task.warnings))
            title = f"Task {i + 1}: {task.name or '(unnamed)'}" if len(tasks) > 1 else f"Task {task.name or '(unnamed)'}"
            out.append(f"<h3>{escape(title)} · {plan.num_nodes} node(s)</h3><p class=chosen>Chosen: "
                       f"<b>{escape(c.instance_type)}{escape(' + ' + c.accelerators() if c.accelerator_name else '')}"
                       f"</b> on <b>{escape(c.infra)}</b> ({'spot' if c.use_spot else 'on-demand'}) — "
                       f"${c.price:.4f}/h per node, <b>${c.total:.4f}/h</b> in all</p>"
                       "<table class=plan><tr><th>Infra<th>Instance<th>GPUs<th>Market<th>$/h/node<th>$/h total"
                       f"<th>Chosen</tr>{rows}</table>" + (f"<ul>{notes}</ul>" if notes else ""))
        return "<div id=plan>" + "".join(out) + "</div>", has_secrets
    except BrokerError as exc:
        hint = f"<br><small>{escape(exc.hint)}</small>" if exc.hint else ""
        return f"<p id=plan class=error>{escape(exc.message)}{hint}</p>", has_secrets
