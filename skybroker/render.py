"""All terminal output: rich tables for people, JSON for scripts. The only module that prints (with the
command modules that call it)."""
from __future__ import annotations

import json
import sys
from typing import Any

_console = None
_err_console = None


def console():
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(width=None if sys.stdout.isatty() else 120, highlight=False)
    return _console


def err_console():
    global _err_console
    if _err_console is None:
        from rich.console import Console

        _err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120, highlight=False)
    return _err_console


def _tty() -> bool:
    return sys.stdout.isatty()


def _m(style: str, text: str) -> str:
    """`text` in a rich style on a terminal; plain text in a pipe (no markup, nothing to escape)."""
    if not _tty():
        return text
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/]" if style else escape(text)


def _say(markup: str) -> None:
    """A line on stdout: rich markup on a terminal; `markup` must be built with _m so pipes get plain text."""
    if _tty():
        console().print(markup)
    else:
        sys.stdout.write(markup + "\n")


def _table(title: str | None, columns: list[tuple[str, str]], rows: list[list[str]], wrap: tuple[str, ...] = ()) -> None:
    """A table: rich on a terminal; plain aligned columns in a pipe (cheap to produce and to parse, and
    rich is not even imported). `columns` are (name, "left"|"right"|"center"); cells built with _m."""
    if _tty():
        from rich import box
        from rich.table import Table

        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for name, just in columns:  # numbers never wrap; the named text columns fold when narrow
            t.add_column(name, justify=just, no_wrap=name not in wrap, overflow="fold",
                         min_width=max(len(name), 10 if name in wrap else len(name)))
        for r in rows:
            t.add_row(*r)
        console().print(t)
        return
    widths = [max([len(name)] + [len(r[i]) for r in rows]) for i, (name, _) in enumerate(columns)]

    def line(cells):
        out = []
        for (name, just), w, cell in zip(columns, widths, cells):
            out.append(cell.rjust(w) if just == "right" else cell.center(w) if just == "center" else cell.ljust(w))
        return "  ".join(out).rstrip()

    text = ([title] if title else []) + [line([n for n, _ in columns])] + [line(r) for r in rows]
    sys.stdout.write("\n".join(text) + "\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    from rich.markup import escape

    c = err_console()
    c.print(f"[bold red]Error:[/] {escape(message)}")
    if hint:
        c.print(f"[yellow]Hint:[/] {escape(hint)}")


def info(message: str) -> None:
    from rich.markup import escape

    err_console().print(escape(message))


# ----------------------------------------------------------------------------------------------
# Plans

def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if x < 10 else f"{x:.2f}"


def candidate_json(c, chosen: bool = False) -> dict:
    return {
        "cloud": c.cloud,
        "region": c.region,
        "zone": c.zone,
        "instance_type": c.instance_type,
        "use_spot": c.use_spot,
        "accelerators": {c.accelerator_name: c.accelerator_count} if c.accelerator_name else None,
        "vcpus": c.vcpus,
        "memory_gib": c.memory_gib,
        "hourly_price_per_node": round(c.price, 6),
        "hourly_price_total": round(c.total, 6),
        "suspicious_price": bool(c.offer is not None and c.offer.suspicious),
        "chosen": chosen,
    }


def short_infra(c) -> str:
    """`gcp (us-central1-a)`, `aws (us-east-1, use1-az1)`, `azure (eastus)`."""
    if c.zone and c.region and c.zone.startswith(c.region):
        where = c.zone
    else:
        where = ", ".join(p for p in (c.region, c.zone) if p)
    return f"{c.cloud} ({where})" if where and where != c.cloud else c.cloud


def plan_rows(plan, limit: int = 8) -> list:
    """Chosen first, then the best of each other cloud, then other cheap options."""
    chosen = plan.chosen
    rows = [chosen]
    for c in plan.best_per_cloud():
        if c is not chosen:
            rows.append(c)
    for c in plan.candidates:
        if len(rows) >= limit:
            break
        if c not in rows:
            rows.append(c)
    head, rest = rows[:1], sorted(rows[1:], key=lambda c: c.sort_key())
    return head + rest


def plan_json(plan, task_name: str | None) -> dict:
    rows = plan_rows(plan)
    return {
        "target": "cost",
        "task": task_name,
        "num_nodes": plan.num_nodes,
        "clouds_considered": list(plan.clouds),
        "note": plan.clouds_note,
        "chosen": candidate_json(plan.chosen, True),
        "alternatives": [candidate_json(c, c is plan.chosen) for c in rows],
    }


def print_plan(plan, task_name: str | None) -> None:
    c = plan.chosen
    if plan.clouds_note:
        _say(f"{_m('yellow', 'Note:')} {_m('', plan.clouds_note)}")
    nodes = f"{plan.num_nodes} node" + ("s" if plan.num_nodes != 1 else "")
    _say(f"Target: {_m('bold', 'minimizing cost')} · task {_m('bold', task_name or '(unnamed)')} · {nodes}")
    acc = f" + {c.accelerators()}" if c.accelerator_name else ""
    market = "spot" if c.use_spot else "on-demand"
    _say(f"Chosen: {_m('bold green', c.instance_type + acc)} on {_m('bold', c.infra)} ({market}) "
         f"— ${_money(c.price)}/h per node, {_m('bold', '$' + _money(c.total) + '/h')} for {nodes}")
    multi = plan.num_nodes > 1  # the total column only says something for several nodes
    cols = [("INFRA", "left"), ("INSTANCE", "left"), ("vCPUs", "right"), ("MEM(GB)", "right"), ("GPUs", "left"),
            ("MARKET", "left"), ("$/h/node" if multi else "$/h", "right")] + ([("$/h total", "right")] if multi else [])
    cols.append(("CHOSEN", "center"))
    rows = [[_m("", short_infra(r)), _m("", r.instance_type), f"{r.vcpus:g}", f"{r.memory_gib:g}",
             _m("", r.accelerators() or "-"), "spot" if r.use_spot else "on-demand",
             _money(r.price) + ("*" if r.offer is not None and r.offer.suspicious else "")]
            + ([_money(r.total)] if multi else []) + ["✔" if r is c else ""] for r in plan_rows(plan)]
    _table("Considered resources", cols, rows, wrap=("INFRA", "INSTANCE"))
    if c.offer is not None and c.offer.suspicious:
        _say(f"{_m('yellow', 'Warning:')} the chosen price is far below this instance's price in other regions "
             "(a likely catalog anomaly, kept as published); check it before relying on it.")


def print_gpus(rows, name: str | None) -> None:
    cols = [("GPU", "left"), ("COUNT", "right"), ("CLOUD", "left"), ("INSTANCE", "left"), ("ON-DEMAND", "right"),
            ("WHERE", "left"), ("SPOT", "right"), ("WHERE (spot)", "left")]
    _table("Accelerators (cheapest machine per cloud, $/h)", cols,
           [[_m("", r.name), f"{r.count:g}", r.cloud, _m("", r.instance_type or "-"), _money(r.price),
             _m("", r.price_where or "-"), _money(r.spot_price), _m("", r.spot_where or "-")] for r in rows])


def print_checks(checks) -> None:
    for c in checks:
        mark = _m("green", "✔") if c.ok else _m("red", "✘")
        _say(f"{mark} {_m('bold', f'{c.cloud:<6}')} {_m('', c.detail)}")
        if not c.ok and c.hint:
            _say(f"         {_m('yellow', 'hint:')} {_m('', c.hint)}")
    _say(f"{_m('green', '✔')} {_m('bold', 'local ')} always available (runs on this machine; `--infra local`)")


# ----------------------------------------------------------------------------------------------
# Progress, job output, clusters, jobs

class Progress:
    """Stage messages (provision, sync, setup, run) on stderr; quiet with --json."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def event(self, kind: str, message: str) -> None:
        if self.quiet:
            return
        from rich.markup import escape

        style = {"failover": "yellow", "warning": "yellow", "cleanup": "yellow", "retry": "yellow"}.get(kind, "cyan")
        err_console().print(f"[{style}]›[/] {escape(message)}")

    def done(self) -> None:
        return None


class LinePrinter:
    """Job output on stdout, each line prefixed with its node."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()

    def line(self, rank: int, text: str) -> None:
        with self._lock:
            sys.stdout.write(f"(node-{rank}) {text}\n")
            sys.stdout.flush()


def job_summary(st, cluster: str) -> None:
    ok = st.status == "SUCCEEDED"
    codes = ", ".join(f"node-{n.rank}: {n.status}" + (f" ({n.exit_code})" if n.exit_code not in (None, 0) else "")
                      for n in st.nodes)
    style = "green" if ok else "red"
    err_console().print(f"[{style}]Job {st.job_id} {st.status}[/] on {cluster}"
                        + ("" if ok else f" — {codes}"))


def attempts(attempts, cluster: str) -> None:
    if not attempts:
        return
    from rich.markup import escape

    c = err_console()
    c.print(f"[yellow]Failover report for {escape(cluster)}:[/]")
    for i, a in enumerate(attempts, 1):
        c.print(f"  {i}. {escape(a.place)} {escape(a.instance_type)}{' spot' if a.use_spot else ''}: "
                f"{a.error}{(' ' + escape(a.code)) if a.code else ''} — {escape(a.message)}")
    c.print("  then launched on the next cheapest place that had capacity.")


def _ago(ts: float | None) -> str:
    import time

    if not ts:
        return "-"
    d = time.time() - ts
    for unit, sec in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= sec:
            return f"{int(d // sec)}{unit} ago"
    return f"{int(d)}s ago"


def cluster_json(r) -> dict:
    return {"name": r.name, "cloud": r.cloud, "region": r.region, "zone": r.zone, "infra": r.infra,
            "instance_type": r.instance_type, "accelerators": r.accelerators, "use_spot": r.use_spot,
            "num_nodes": r.num_nodes, "status": r.status, "launched_at": r.launched_at,
            "hourly_price": r.hourly_price, "autostop_minutes": r.autostop_minutes, "autostop_down": r.autostop_down,
            "head_ip": r.head.ip if r.head else None}


def print_clusters(recs) -> None:
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
        auto = "-" if r.autostop_minutes is None else f"{r.autostop_minutes}m{' (down)' if r.autostop_down else ''}"
        color = {"UP": "green", "STOPPED": "yellow", "INIT": "cyan"}.get(r.status, "red")
        rows.append([_m("", r.name), _m("", r.infra), _m("", res), str(r.num_nodes), _m(color, r.status),
                     _ago(r.launched_at), _money(r.hourly_price), auto])
    cols = [(c, "left") for c in ("NAME", "INFRA", "RESOURCES", "NODES", "STATUS", "LAUNCHED", "$/h", "AUTOSTOP")]
    _table(None, cols, rows, wrap=("INFRA", "RESOURCES"))


def job_json(j) -> dict:
    return {"job_id": j.job_id, "name": j.name, "status": j.status, "exit_code": j.exit_code,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            "nodes": [{"rank": n.rank, "status": n.status, "exit_code": n.exit_code} for n in j.nodes]}


def print_jobs(jobs, cluster: str) -> None:
    if not jobs:
        _say(f"No jobs on {_m('', cluster)}.")
        return
    rows = [[str(j.job_id), _m("", j.name or "-"), _ago(j.submitted_at), j.status,
             "-" if j.exit_code is None else str(j.exit_code),
             " ".join(f"{n.rank}:{n.status[:4]}" for n in j.nodes) if len(j.nodes) > 1 else ""] for j in jobs]
    cols = [(c, "left") for c in ("ID", "NAME", "SUBMITTED", "STATUS", "EXIT", "NODES")]
    _table(f"Jobs on {_m('', cluster)}", cols, rows)


def _dur(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def managed_json(j) -> dict:
    return {"id": j.id, "name": j.name, "resources": j.resources, "status": j.status,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            "duration": j.duration, "recoveries": j.recoveries, "restarts_on_errors": j.restarts_on_errors,
            "cost": round(j.cost_so_far, 6), "cluster": j.cluster, "place": j.place, "exit_code": j.exit_code,
            "task_id": j.task_id, "failure": j.failure}


def print_managed(jobs) -> None:
    if not jobs:
        _say("No managed jobs. Submit one with `broker jobs launch task.yaml`.")
        return
    rows = [[str(j.id), _m("", j.name or "-"), _m("", j.resources or "-"), j.status, _ago(j.submitted_at),
             _dur(j.duration), str(j.recoveries), f"{j.cost_so_far:.4f}", _m("", j.place or "-")] for j in jobs]
    cols = [(c, "left") for c in ("ID", "NAME", "RESOURCES", "STATUS", "SUBMITTED", "DURATION", "RECOVERIES",
                                  "COST ($)", "WHERE")]
    _table("Managed jobs", cols, rows, wrap=("RESOURCES",))


def managed_summary(j) -> None:
    ok = j.status == "SUCCEEDED"
    style = "green" if ok else "red"
    extra = f" after {j.recoveries} recovery(ies)" if j.recoveries else ""
    reason = f" — {j.failure}" if (j.failure and not ok) else ""
    err_console().print(f"[{style}]Managed job {j.id} {j.status}[/]{extra}, cost ${j.cost_so_far:.4f}{reason}")
