"""What each command shows: GPUs, checks, clusters, jobs, managed jobs, gc, simulations, settings (plans:
plan_views.py)."""
from __future__ import annotations

import sys
import time

from .console import _err_line, _esc, _m, _say, _tty, console, info, warning
from .table import Col, _table

# ----------------------------------------------------------------------------------------------
# GPUs and checks

def _money(x: float | None) -> str:
    """$/h and $ amounts: always 4 decimals, so a column's values share one format and align."""
    return "-" if x is None else f"{x:.4f}"


def gpu_json(r) -> dict:
    return dict(r.__dict__)


def print_gpus(rows, name: str | None, spot_only: bool = False, note: str | None = None) -> None:
    if not rows:
        _say("No accelerator matches these filters.")
        return
    if spot_only:
        cols = [Col("GPU"), Col("COUNT", "right"), Col("CLOUD"), Col("INSTANCE", soft=16, min=10),
                Col("SPOT", "right"), Col("WHERE", soft=14, min=8)]
        data = [[r.name, f"{r.count:g}", r.cloud, r.spot_instance_type or "-", _money(r.spot_price),
                 r.spot_where or "-"] for r in rows]
        _table("Accelerators (cheapest spot machine per cloud, $/h)", cols, data, drop=("WHERE",), footer=note)
        return
    cols = [Col("GPU"), Col("COUNT", "right"), Col("CLOUD"), Col("INSTANCE", soft=16, min=10),
            Col("ON-DEMAND", "right"), Col("WHERE", soft=14, min=8), Col("SPOT", "right"),
            Col("WHERE (spot)", soft=14, min=8)]
    data = [[r.name, f"{r.count:g}", r.cloud, r.instance_type or "-", _money(r.price), r.price_where or "-",
             _money(r.spot_price), r.spot_where or "-"] for r in rows]
    _table("Accelerators (cheapest machine per cloud, $/h)", cols, data, drop=("WHERE (spot)", "WHERE"),
           footer=note)


def check_json(c) -> dict:
    return {"cloud": c.cloud, "ok": c.ok, "credentials": c.credentials, "sdk": c.sdk, "extra": c.extra,
            "detail": c.detail, "hint": c.hint}


def print_checks(checks) -> None:
    rows = [(c.ok, c.cloud, c.detail, c.hint if not c.ok else None) for c in checks]
    rows.append((True, "local", "always available (runs on this machine; `--infra local`)", None))
    if not _tty():
        for ok, cloud, detail, hint in rows:
            sys.stdout.write(f"{'✔' if ok else '✘'} {cloud:<10} {detail}\n")
            if hint:
                sys.stdout.write(f"             hint: {hint}\n")
        return
    from rich.table import Table

    t = Table.grid(padding=(0, 1))  # the text column wraps at word boundaries (nothing is cropped)
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True, min_width=6)
    t.add_column(overflow="fold")
    for ok, cloud, detail, hint in rows:
        t.add_row("[green]✔[/]" if ok else "[red]✘[/]", f"[bold]{cloud}[/]", _esc(detail))
        if hint:
            t.add_row("", "", f"[yellow]hint:[/] {_esc(hint)}")
    console().print(t)


# ----------------------------------------------------------------------------------------------
# Clusters, jobs, orphans

def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = time.time() - ts
    for unit, sec in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= sec:
            return f"{int(d // sec)}{unit} ago"
    return f"{int(d)}s ago"


def cluster_json(r, cost: float | None = None) -> dict:
    """`cost`: the cluster's cost so far, from the ledger (None: not in the ledger)."""
    return {"name": r.name, "name_on_cloud": getattr(r, "name_on_cloud", None) or r.name, "cloud": r.cloud,
            "region": r.region, "zone": r.zone, "infra": r.infra,
            "instance_type": r.instance_type, "accelerators": r.accelerators, "use_spot": r.use_spot,
            "num_nodes": r.num_nodes, "status": r.status, "launched_at": r.launched_at,
            "hourly_price": r.hourly_price, "autostop_minutes": r.autostop_minutes, "autostop_down": r.autostop_down,
            "autostop_where": r.autostop_where, "head_ip": r.head.ip if r.head else None,
            "ports": r.ports.split(",") if getattr(r, "ports", None) else [],
            "cost": None if cost is None else round(cost, 6), "user": getattr(r, "user_name", None),
            "refresh_error": getattr(r, "refresh_error", None)}


def storage_json(r) -> dict:
    return {"name": r.name, "store": r.kind, "uri": r.uri, "sources": r.sources, "mode": r.mode,
            "persistent": r.persistent, "managed": r.managed,
            "clusters": [u.split(":", 1)[1] for u in r.users if u.startswith("cluster:")],
            "owners": [u.split(":", 1)[1] for u in r.users if u.startswith("owner:")],
            "created_at": r.created_at, "updated_at": r.updated_at}


def print_storage(recs) -> None:
    if not recs:
        _say("No storage. A file_mounts entry with `name:` creates one (see README \"Buckets\").")
        return
    rows = []
    for r in recs:
        users = ", ".join(u.split(":", 1)[1] for u in r.users) or "-"
        src = ", ".join(r.sources) or "-"
        rows.append([r.name, r.uri, r.mode or "-", "yes" if r.persistent else "no",
                     "skybroker" if r.managed else "existing", users, src, _ago(r.updated_at)])
    _table(None, [Col("NAME", soft=14, min=8, squeeze=3), Col("URI", soft=20, min=10, squeeze=2), Col("MODE"),
                  Col("PERSISTENT"), Col("CREATED BY"), Col("USED BY", soft=14, min=6, squeeze=1),
                  Col("SOURCE", soft=20, min=6, squeeze=1), Col("UPDATED")], rows,
           drop=("SOURCE", "UPDATED", "CREATED BY", "USED BY"))


STATUS_STYLE = {"UP": "green", "STOPPED": "yellow", "INIT": "cyan"}


def print_settings(rows) -> None:
    _table(None, [Col("SETTING"), Col("VALUE", soft=8, min=4), Col("DEFAULT", soft=8, min=4),
                  Col("MEANING", soft=30, min=12)], [list(r) for r in rows], drop=("DEFAULT",))


def examples_copied(dest: str, copied: list[str], kept: list[str], parent: str = ".") -> None:
    """What `broker examples` wrote, what it left alone, and the command to run next."""
    import os
    import shlex

    if copied:
        _say(_m("", f"copied {len(copied)} file(s) into {dest}: {', '.join(copied)}"))
    if kept:
        _say(_m("", f"kept {len(kept)} file(s) already in {dest} (not overwritten): {', '.join(kept)}"))
    cd = "" if os.path.abspath(parent) == os.getcwd() else f"cd {shlex.quote(parent)} && "
    _say(_m("", f"next: {cd}broker launch -y examples/hello.yaml   (2 nodes on this machine, no cloud account needed)"))


def print_clusters(recs, costs: dict | None = None, show_user: bool = False,
                   stopped_hourly: dict | None = None) -> None:
    """`costs`: cluster name → cost so far, from the ledger (`-` for a cluster it has no run of);
    `stopped_hourly`: what a stopped cluster is billed per hour (its disks), shown as its $/h."""
    costs, stopped_hourly = costs or {}, stopped_hourly or {}
    if not recs:
        _say("No clusters. Launch one with `broker launch examples/hello.yaml`.")
        return
    rows = []
    for r in recs:
        res = r.instance_type or "-"
        if r.accelerators:
            res += f" ({r.accelerators})"
        if r.use_spot:
            res += " spot"
        auto = _autostop_cell(r)
        rows.append([r.name, r.infra, res, str(r.num_nodes), (r.status, STATUS_STYLE.get(r.status, "red")),
                     _ago(r.launched_at),
                     _money(stopped_hourly.get(r.name)) if r.status == "STOPPED" else _money(r.hourly_price),
                     _money(costs.get(r.name)), auto])
    cols = [Col("NAME", soft=14, min=8, squeeze=3), Col("INFRA", soft=14, min=8, squeeze=1),
            Col("RESOURCES", soft=16, min=10, squeeze=2), Col("NODES", "right"), Col("STATUS"), Col("LAUNCHED"),
            Col("$/h", "right"), Col("COST ($)", "right"), Col("AUTOSTOP")]
    if show_user:
        cols.insert(1, Col("USER", soft=10, min=4))
        for row, r in zip(rows, recs):
            row.insert(1, getattr(r, "user_name", None) or "-")
    _table(None, cols, rows, drop=("LAUNCHED", "NODES", "AUTOSTOP", "$/h", "COST ($)"))  # cost stays longest


def refresh_warnings(recs) -> None:
    """Under `status --refresh` (on stderr, also with --json): each cluster whose cloud could not be asked,
    shown as last recorded, and why."""
    for r in recs:
        e = getattr(r, "refresh_error", None)
        if e:
            warning(f"could not refresh {r.name} ({r.infra}): {e.get('message')}; shown as last recorded"
                    + (f" (hint: {e['hint']})" if e.get("hint") else ""))


def _autostop_cell(r) -> str:
    """`10m node`: the cluster stops itself; `10m down, local`: the watcher on this machine tears it down."""
    if r.autostop_minutes is None:
        return "-"
    return f"{r.autostop_minutes}m {'down, ' if r.autostop_down else ''}{r.autostop_where or 'local'}"


def print_daemons(d: dict, recs) -> None:
    """A line under `status` when a background process something depends on is not running."""
    up = [r for r in recs if r.autostop_minutes is not None and r.status == "UP"]
    on_node = [r.name for r in up if r.autostop_where == "node"]
    guarded = [r.name for r in up if r.autostop_where != "node"]

    def few(xs):
        return ", ".join(xs[:5]) + (f" and {len(xs) - 5} more" if len(xs) > 5 else "")

    names = few(guarded)
    if on_node:
        info(f"autostop: enforced on the cluster itself, no broker process needed ({few(on_node)})")
    if guarded and not d.get("autostop_watcher"):
        info(f"note: the autostop watcher is not running, so {names} will not be stopped when idle; "
             "`broker autostop NAME -i MINUTES` starts it again")
    elif guarded:
        where = "the broker server" if d.get("where") == "server" else "this machine"
        info(f"autostop: guarded by the watcher on {where} ({names})")


def print_events(evs, show_cluster: bool) -> None:
    import time as _time

    if not evs:
        info("no events")
        return
    rows = []
    for e in evs:
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(e["ts"]))
        who = e.get("cluster") or (f"job {e['job_id']}" if e.get("job_id") is not None else "")
        rows.append(([when, who] if show_cluster else [when]) + [e["kind"], e["message"]])
    cols = ([Col("TIME"), Col("CLUSTER", soft=12, min=6)] if show_cluster else [Col("TIME")]) + \
        [Col("KIND"), Col("MESSAGE", soft=40, min=20)]
    _table(None, cols, rows)


def job_json(j) -> dict:
    return {"job_id": j.job_id, "name": j.name, "status": j.status, "exit_code": j.exit_code,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            "reason": j.reason, "nodes": [{"rank": n.rank, "status": n.status, "exit_code": n.exit_code, "reason": n.reason}
                      for n in j.nodes]}


JOB_STYLE = {"SUCCEEDED": "green", "RUNNING": "cyan", "PENDING": "dim", "CANCELLED": "yellow"}


def print_jobs(jobs, cluster: str) -> None:
    if not jobs:
        _say(f"No jobs on {_m('', cluster)}.")
        return
    rows = [[str(j.job_id), j.name or "-", _ago(j.submitted_at), (j.status, JOB_STYLE.get(j.status, "red")),
             "-" if j.exit_code is None else str(j.exit_code),
             " ".join(f"{n.rank}:{n.status[:4]}" for n in j.nodes) if len(j.nodes) > 1 else ""] for j in jobs]
    cols = [Col("ID", "right"), Col("NAME", soft=14, min=8), Col("SUBMITTED"), Col("STATUS"), Col("EXIT", "right"),
            Col("NODES", soft=16, min=8)]
    if any(j.reason for j in jobs):  # why a job failed (its node's runner crashed, ...): only when one did
        rows = [r + [j.reason or ""] for r, j in zip(rows, jobs)]
        cols.append(Col("REASON", soft=40, min=12))
    _table(f"Jobs on {cluster}", cols, rows, drop=("SUBMITTED",))


def _dur(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _job_cost(j, costs: dict | None) -> float:
    """A managed job's cost from the ledger (`costs`: job id → $), else the job row's own account (a pool
    job's: its worker's price for the time it held the worker; the workers' bill is their clusters')."""
    if getattr(j, "pool", None):
        return j.cost_so_far
    return costs.get(j.id, 0.0) if costs is not None else j.cost_so_far


def managed_json(j, costs: dict | None = None) -> dict:
    out = {"id": j.id, "name": j.name, "resources": j.resources, "status": j.status,
           "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
           "duration": j.duration, "recoveries": j.recoveries, "restarts_on_errors": j.restarts_on_errors,
           "cost": round(_job_cost(j, costs), 6), "cluster": j.cluster, "place": j.place, "exit_code": j.exit_code,
           "task_id": j.task_id, "failure": j.failure, "user": getattr(j, "user_name", None)}
    if getattr(j, "pool", None):  # runs on a pool's worker: which pool, its rank among --num-jobs
        out.update(pool=j.pool, job_rank=j.job_rank, num_jobs=j.num_jobs)
    if getattr(j, "stages", None):  # a pipeline: its stages, as `jobs queue` shows them
        out.update(stage=j.stage + 1, num_stages=j.num_stages, stages=[
            {"stage": i + 1, "name": e.get("name"), "resources": e.get("resources"), "status": _stage_status(j, i, e),
             "started_at": e.get("started_at"), "ended_at": e.get("ended_at"), "place": e.get("place"),
             "cost": e.get("cost"), "exit_code": e.get("exit_code")} for i, e in enumerate(j.stage_list)])
    return out


_ENDED = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED", "FAILED_CONTROLLER")


def _stage_status(j, i: int, e: dict) -> str:
    status = e.get("status") or "PENDING"
    return j.status if i == j.stage and status not in _ENDED else status  # the current stage: the job's status


def stage_title(i: int, n: int, name: str | None) -> None:
    """The heading above one stage's plan (pipelines)."""
    _say(f"{_m('bold', f'Stage {i + 1}/{n}')}: {name or '(unnamed)'}")


def _stage_rows(j) -> list[list]:
    """A pipeline's stages under its row: `↳ i/n name`, each with its own status, duration, cost, place."""
    st = j.stage_list
    rows = []
    for i, e in enumerate(st):
        status = _stage_status(j, i, e)
        dur = None
        if e.get("started_at"):
            dur = (e.get("ended_at") or (j.ended_at if i == j.stage and j.ended_at else None) or time.time()) \
                - e["started_at"]
        cost = e.get("cost")
        if cost is None and i == j.stage and e.get("started_at"):
            cost = j.cost_so_far - e.get("cost_before", 0.0)
        rows.append(["", f"↳ {i + 1}/{len(st)} {e.get('name') or '-'}", e.get("resources") or "-",
                     (status, JOB_STYLE.get(status, "red")), "", _dur(dur), "",
                     _money(cost) if cost is not None else "-", e.get("place") or "-"])
    return rows


def print_managed(jobs, costs: dict | None = None, show_user: bool = False) -> None:
    if not jobs:
        _say("No managed jobs. Submit one with `broker jobs launch task.yaml`.")
        return
    rows = []
    for j in jobs:
        rows.append([str(j.id)] + ([getattr(j, "user_name", None) or "-"] if show_user else []) +
                    [j.name or "-", j.resources or "-", (j.status, JOB_STYLE.get(j.status, "red")),
                     _ago(j.submitted_at), _dur(j.duration), str(j.recoveries), _money(_job_cost(j, costs)),
                     j.place or "-"])
        if getattr(j, "stages", None):
            rows.extend(r[:1] + [""] + r[1:] if show_user else r for r in _stage_rows(j))
    cols = [Col("ID", "right"), Col("NAME", soft=14, min=8, squeeze=3), Col("RESOURCES", soft=16, min=10, squeeze=2),
            Col("STATUS"),
            Col("SUBMITTED"), Col("DURATION", "right"), Col("RECOVERIES", "right"), Col("COST ($)", "right"),
            Col("WHERE", soft=14, min=8, squeeze=1)]
    if show_user:
        cols.insert(1, Col("USER", soft=10, min=4))
    _table("Managed jobs", cols, rows, drop=("WHERE", "SUBMITTED", "RECOVERIES"))


def managed_summary(j, costs: dict | None = None) -> None:
    ok = j.status == "SUCCEEDED"
    extra = f" after {j.recoveries} recovery(ies)" if j.recoveries else ""
    if getattr(j, "stages", None):
        at = "" if (j.failure or "").startswith("stage ") else f" at stage {j.stage + 1}/{j.num_stages}"
        extra = (f" ({j.num_stages} stages)" if ok else at) + extra
    reason = f" — {j.failure}" if (j.failure and not ok) else ""
    _err_line("green" if ok else "red", f"Managed job {j.id} {j.status}{extra}, cost ${_money(_job_cost(j, costs))}{reason}")


def orphan_json(o) -> dict:
    return {"cluster": o.cluster, "name_on_cloud": o.cloud_name, "cloud": o.cloud, "region": o.region,
            "instance_ids": list(o.instance_ids),
            "resources": [{"kind": k, "id": i} for k, i in o.resources], "interrupted_launch": o.interrupted}


def gc_json(scan, removed, warnings=()) -> dict:
    return {"scanned": scan.scanned, "not_scanned": [{"where": w, "why": y} for w, y in scan.skipped],
            "orphans": [orphan_json(o) for o in scan.orphans],
            "other_homes": dict(getattr(scan, "foreign", {}) or {}), "untagged": dict(getattr(scan, "untagged", {}) or {}),
            "terminated": [i for o in removed for i in o.instance_ids], "warnings": list(warnings)}


def _orphan_resources(o) -> str:
    by_kind: dict[str, list[str]] = {}
    for kind, rid in o.resources:
        by_kind.setdefault(kind, []).append(rid)
    parts = []
    for kind, ids in sorted(by_kind.items()):
        shown = ", ".join(ids[:8]) + (f", … ({len(ids) - 8} more)" if len(ids) > 8 else "")
        parts.append(f"{len(ids)} {kind}{'s' if len(ids) > 1 else ''} ({shown})")
    return "; ".join(parts) or "nothing listed"


def print_gc_scan(scan) -> None:
    by_why: dict[str, list[str]] = {}  # one cloud's auth failure is the same reason in each of its regions
    for where, why in scan.skipped:
        by_why.setdefault(why, []).append(where)
    for why, wheres in by_why.items():
        shown = ", ".join(wheres) if len(wheres) <= 3 else f"{wheres[0]} and {len(wheres) - 1} more"
        info(f"not scanned: {shown}: {why}")
    info("scanned: " + ", ".join(f"{c} ({n} region{'s' if n != 1 else ''})" for c, n in scan.scanned.items()))
    for c, n in sorted((getattr(scan, "foreign", None) or {}).items()):
        info(f"left alone: {n} resource(s) on {c} of another broker home (another BROKER_HOME or server on the "
             "same account): never touched by this one")
    for c, n in sorted((getattr(scan, "untagged", None) or {}).items()):
        info(f"left alone: {n} resource(s) on {c} without a home tag (made before resources carried "
             "one, so whose they are cannot be told): the home that made them removes them with its `broker gc`")
    if not scan.orphans:
        info("nothing to remove: no untracked resources and no interrupted launches found")
    for o in scan.orphans:
        where = "/".join(p for p in (o.cloud, o.region) if p)
        what = "interrupted launch" if o.interrupted else "orphan"
        named = f" ({o.cloud_name} on the cloud)" if o.cloud_name != o.cluster else ""
        info(f"{what}: cluster {o.cluster}{named} on {where}: {_orphan_resources(o)}")


def print_gc_removed(orphans, warnings) -> None:
    n_inst = sum(len(o.instance_ids) for o in orphans)
    n_other = sum(len(o.resources) for o in orphans) - n_inst
    info(f"terminated {n_inst} instance(s)" + (f" and removed {n_other} other resource(s)" if n_other else "")
         + (f" ({len(warnings)} warning(s))" if warnings else ""))


# ----------------------------------------------------------------------------------------------
# Simulation (`broker simulate`)

SIM_DROP = ("gap p25", "gap p75", "p25", "p75", "OD h")


def print_simulation(res, meta: dict, multi: bool = False) -> None:
    if multi:
        _say(f"{res.samples} samples, {len(meta['zones'])} zones as one ({meta['zones_text']}; "
             f"on-demand ${meta['on_demand_price']:.4f}/h; {meta['prices_from']}); C = {meta['task_hours']:g} h, "
             f"deadline {meta['deadline_hours']:g} h, d = {meta['overhead_hours']:g} h")
        _say("single-zone omniscient, each zone alone: "
             + ", ".join(f"{z} {c:.4f}" for z, c in zip(meta["zones"], meta["single_zone_omniscient"])))
    else:
        n = sum(res.samples_per_trace.values())
        _say(f"{n} samples over {len(res.samples_per_trace) - len(res.skipped)} trace(s); "
             f"C = {meta['task_hours']:g} h, deadline {meta['deadline_hours']:g} h, "
             f"d = {meta['overhead_hours']:g} h; on-demand ${meta['on_demand_price']:.4f}/h, "
             f"spot ${meta['spot_price']:.4f}/h ({meta['prices_from']})")
        for name, why in res.skipped.items():
            _say(_m("yellow", f"skipped {name}: {why}"))
    names = ["cost", "p25", "p75", "spot h", "OD h", "met", "gap", "gap p25", "gap p75"] + (["vs omni"] if multi else [])
    cols = [Col("policy", soft=None, min=10)] + [Col(c, "right") for c in names]
    rows = []
    for s in res.summary:
        row = [s["policy"], f"{s['mean_norm_cost']:.4f}", f"{s['p25_norm_cost']:.4f}", f"{s['p75_norm_cost']:.4f}",
               f"{s['spot_hours']:.1f}", f"{s['od_hours']:.1f}", f"{100 * s['deadline_met']:.0f}%",
               f"{s['mean_gap']:.4f}", f"{s['p25_gap']:.4f}", f"{s['p75_gap']:.4f}"]
        if multi:
            row.append(f"{100 * s['vs_omniscient']:+.1f}%")
        rows.append(row)
    _say(_m("dim", "cost normalised to always-on-demand; gap = (cost - omniscient) / on-demand"))
    _table(None, cols, rows, drop=SIM_DROP)
    _say(f"omniscient DP: {meta['omniscient_cpu_seconds']:.1f} s CPU")




def print_users(us) -> None:
    if not us:
        _say("No users. Create one with `broker server token create NAME`.")
        return
    rows = [[u.name, "admin" if u.admin else "user", _ago(u.created_at),
             ("revoked " + _ago(u.revoked_at), "red") if u.revoked_at else ("active", "green")] for u in us]
    _table(None, [Col("NAME", soft=14, min=6), Col("ROLE"), Col("CREATED"), Col("TOKEN")], rows)
