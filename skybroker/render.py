"""All terminal output: tables and progress for people, JSON for scripts. The only module that prints (with
the command modules that call it).

Two paths:
- a terminal (stdout a tty): rich tables laid out to the terminal's width. A value is never cropped: when
  the table is too wide, columns are dropped in each table's declared order (the table says which, in a
  footer line), then long names are shortened with an ellipsis; numbers always keep their digits.
- a pipe: plain aligned columns with every column and every value in full (cheap to produce and to parse;
  rich is not even imported).

Progress (`Progress.event(kind, message)`, called by the core) is a spinner with the elapsed time per step
on a terminal, and one plain line per step otherwise.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

_console = None
_err_console = None
_forced = False  # set_consoles() was called (tests, or an embedding program)


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


def set_consoles(out=None, err=None) -> None:
    """Render to these rich consoles (a terminal when `console.is_terminal`); None restores the defaults.
    For tests: `Console(file=io.StringIO(), width=80, force_terminal=True)` renders what an 80-column
    terminal shows."""
    global _console, _err_console, _forced
    _console, _err_console = out, (err if err is not None else out)
    _forced = out is not None


def _tty() -> bool:
    return console().is_terminal if _forced else sys.stdout.isatty()


def _err_tty() -> bool:
    return err_console().is_terminal if _forced else sys.stderr.isatty()


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _m(style: str, text: str) -> str:
    """`text` in a rich style on a terminal; plain text in a pipe (no markup, nothing to escape)."""
    if not _tty():
        return text
    return f"[{style}]{_esc(text)}[/]" if style else _esc(text)


def _say(markup: str) -> None:
    """A line on stdout: rich markup on a terminal; `markup` must be built with _m so pipes get plain text."""
    if _tty():
        console().print(markup)
    else:
        sys.stdout.write(markup + "\n")


def _err_line(style: str | None, text: str) -> None:
    """A line on stderr: styled on a terminal (above any spinner), plain otherwise (never wrapped)."""
    if _err_tty():
        live = _Live.current
        target = live.console if live is not None else err_console()
        target.print(f"[{style}]{_esc(text)}[/]" if style else _esc(text), soft_wrap=False)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------------------------
# Tables

@dataclass(frozen=True)
class Col:
    """A table column. Text columns with `soft`/`min` may be shortened with an ellipsis: down to `soft`
    characters before any column is dropped, down to `min` once every droppable column is gone. A column
    without them (numbers, statuses, GPU names) is never shortened."""

    name: str
    justify: str = "left"  # left | right | center
    soft: int | None = None
    min: int | None = None
    squeeze: int = 0  # shortenable columns give way in this order (lowest first; equal: the widest first)


GAP = 2  # spaces between columns


def _text(cell) -> str:
    return cell[0] if isinstance(cell, tuple) else cell


def _shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters: the middle gives way to an ellipsis, so both the start and the
    end survive (`my-experiment-run-1` and `-2` stay apart; `a2-highgpu-8g (A100:8)` keeps its GPUs)."""
    if len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    tail = (width - 1) // 2
    head = width - 1 - tail
    return text[:head] + "…" + (text[-tail:] if tail else "")


@dataclass
class Layout:
    keep: list[int]  # column indexes shown, in order
    widths: dict[int, int]
    hidden: list[str]  # column names dropped, in drop order


def fit(cols: Sequence[Col], rows: Sequence[Sequence], width: int, drop: Sequence[str] = ()) -> Layout | None:
    """Choose columns and widths so the table fits in `width`; None when even the kept columns at their
    minimum widths do not fit (the caller then prints one block per row)."""
    nat = [max([len(c.name)] + [len(_text(r[i])) for r in rows]) for i, c in enumerate(cols)]
    keep = list(range(len(cols)))

    def floor(i: int, level: int) -> int:
        c = cols[i]
        f = c.soft if level == 0 else (c.min if c.min is not None else c.soft)
        return nat[i] if f is None else min(nat[i], max(f, len(c.name)))

    def need(level: int | None) -> int:
        ws = [nat[i] if level is None else floor(i, level) for i in keep]
        return sum(ws) + GAP * (len(ws) - 1)

    hidden: list[str] = []
    names = [c.name for c in cols]
    for name in drop:
        if need(0) <= width:
            break
        if name in names and names.index(name) in keep:
            keep.remove(names.index(name))
            hidden.append(name)
    level = 0 if need(0) <= width else 1
    if need(level) > width:
        return None
    widths = {i: nat[i] for i in keep}
    excess = need(None) - width
    # down to the soft widths in squeeze order (the widest first among equals), then below them evenly
    for lvl, key in ((0, lambda k: (cols[k].squeeze, -(widths[k] - floor(k, 0)), -widths[k])),
                     (1, lambda k: (-(widths[k] - floor(k, 1)), -widths[k]))):
        while excess > 0:
            cand = [i for i in keep if widths[i] > floor(i, lvl)]
            if not cand:
                break
            i = min(cand, key=key)
            widths[i] -= 1
            excess -= 1
    return Layout(keep, widths, hidden)


def _table(title: str | None, cols: Sequence[Col], rows: Sequence[Sequence], drop: Sequence[str] = (),
           footer: str | None = None) -> None:
    """A table: fitted rich table on a terminal; plain aligned columns (every column, full values) in a
    pipe. Cells are plain text or (text, style)."""
    if not _tty():
        _plain_table(title, cols, rows, footer)
        return
    con = console()
    width = con.width
    lay = fit(cols, rows, width, drop)
    if lay is None:
        _stacked(title, cols, rows, footer)
        return
    from rich import box
    from rich.table import Table

    t = Table(title=_esc(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, padding=(0, GAP - 1, 0, 0), title_style="bold")
    for i in lay.keep:
        c = cols[i]
        t.add_column(c.name, justify=c.justify, width=lay.widths[i], no_wrap=True, overflow="ellipsis")
    for r in rows:
        cells = []
        for i in lay.keep:
            cell = r[i]
            text = _esc(_shorten(_text(cell), lay.widths[i]))
            style = cell[1] if isinstance(cell, tuple) else None
            cells.append(f"[{style}]{text}[/]" if style else text)
        t.add_row(*cells)
    con.print(t)
    if lay.hidden:
        con.print(f"[dim]hidden at {width} columns: {_esc(', '.join(lay.hidden))}; "
                  "a wider terminal or --json shows them[/]")
    if footer:
        con.print(f"[dim]{_esc(footer)}[/]")


def _plain_table(title, cols, rows, footer) -> None:
    widths = [max([len(c.name)] + [len(_text(r[i])) for r in rows]) for i, c in enumerate(cols)]

    def line(cells):
        out = []
        for c, w, cell in zip(cols, widths, cells):
            s = _text(cell)
            out.append(s.rjust(w) if c.justify == "right" else s.center(w) if c.justify == "center" else s.ljust(w))
        return (" " * GAP).join(out).rstrip()

    text = ([title] if title else []) + [line([c.name for c in cols])] + [line(r) for r in rows]
    if footer:
        text.append(footer)
    sys.stdout.write("\n".join(text) + "\n")


def _stacked(title, cols, rows, footer) -> None:
    """Narrower than the table's essential columns: one block per row, `NAME: value`, values in full."""
    con = console()
    if title:
        con.print(f"[bold]{_esc(title)}[/]")
    for r in rows:
        for c, cell in zip(cols, r):
            con.print(f"[dim]{_esc(c.name)}:[/] {_esc(_text(cell))}")
        con.print("")
    if footer:
        con.print(f"[dim]{_esc(footer)}[/]")


def raw(text: str) -> None:
    """Text on stdout exactly as given (e.g. a shell completion script)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    stop_progress()
    if _err_tty():
        c = err_console()
        c.print(f"[bold red]Error:[/] {_esc(message)}")
        if hint:
            c.print(f"[yellow]Hint:[/] {_esc(hint)}")
        return
    sys.stderr.write(f"Error: {message}\n" + (f"Hint: {hint}\n" if hint else ""))
    sys.stderr.flush()


def info(message: str) -> None:
    _err_line(None, message)


# ----------------------------------------------------------------------------------------------
# Plans

def _money(x: float | None) -> str:
    """$/h and $ amounts: always 4 decimals, so a column's values share one format and align."""
    return "-" if x is None else f"{x:.4f}"


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


def _cloud_region(c) -> str:
    """`aws (us-east-1)`: the plan's INFRA column (the zone has a column of its own)."""
    return f"{c.cloud} ({c.region})" if c.region and c.region != c.cloud else c.cloud


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


PLAN_DROP = ("ZONE", "MEM(GB)", "vCPUs", "MARKET", "$/h/node")  # the header line says the chosen $/h per node


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
    cols = [Col("INFRA", soft=18, min=9, squeeze=1), Col("ZONE", soft=10, min=6),
            Col("INSTANCE", soft=16, min=10, squeeze=2),
            Col("vCPUs", "right"), Col("MEM(GB)", "right"), Col("GPUs"), Col("MARKET"),
            Col("$/h/node" if multi else "$/h", "right")] + ([Col("$/h total", "right")] if multi else [])
    cols.append(Col("CHOSEN", "center"))
    rows = []
    for r in plan_rows(plan):
        sus = "*" if r.offer is not None and r.offer.suspicious else ""
        rows.append([_cloud_region(r), r.zone or "-", r.instance_type, f"{r.vcpus:g}", f"{r.memory_gib:g}",
                     r.accelerators() or "-", "spot" if r.use_spot else "on-demand", _money(r.price) + sus]
                    + ([_money(r.total) + sus] if multi else []) + [("✔", "bold green") if r is c else ""])
    if all(r[1] == "-" for r in rows):  # no zone anywhere (Azure, local, ssh): no ZONE column to hide
        cols.pop(1)
        rows = [r[:1] + r[2:] for r in rows]
    _table("Considered resources", cols, rows, drop=PLAN_DROP)
    if c.offer is not None and c.offer.suspicious:
        _say(f"{_m('yellow', 'Warning:')} the chosen price is far below this instance's price in other regions "
             "(a likely catalog anomaly, kept as published); check it before relying on it.")


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
            sys.stdout.write(f"{'✔' if ok else '✘'} {cloud:<6} {detail}\n")
            if hint:
                sys.stdout.write(f"         hint: {hint}\n")
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


def catalog_summary(meta: dict) -> None:
    rows = []
    for cloud, m in meta.get("clouds", {}).items():
        c = m.get("counts", {})
        rows.append([cloud, str(c.get("specs", "-")), str(c.get("offers", "-")), str(c.get("suspicious_offers", "-")),
                     (m.get("commit") or "")[:12], f"{m.get('repo', '')} {m.get('path', '')}".strip()])
    _say(f"Catalogs built {_m('bold', str(meta.get('build_date', '?')))} "
         f"(format {meta.get('format_version', meta.get('version', '?'))}), read from {_m('', str(meta.get('dir', '?')))}")
    _table(None, [Col("CLOUD"), Col("SPECS", "right"), Col("OFFERS", "right"), Col("SUSPICIOUS", "right"),
                  Col("COMMIT"), Col("SOURCE", soft=20, min=10)], rows, drop=("COMMIT", "SUSPICIOUS"))


# ----------------------------------------------------------------------------------------------
# Progress

STEP_KINDS = frozenset({"provision", "wait", "agent", "sync", "setup", "start", "down", "stop", "scan",
                        "install", "launch", "run", "simulate", "restore", "checkpoint"})
NOTE_STYLES = {"failover": "yellow", "warning": "yellow", "cleanup": "yellow", "retry": "yellow", "skip": "dim"}
FAILED_STEP = frozenset({"failover", "cleanup", "retry"})  # the step in progress did not succeed


class _Live:
    """The one spinner line on stderr (rich Live, transient), with the elapsed time of the current step."""

    current: "_Live | None" = None

    def __init__(self, text: str, total: int | None = None):
        from rich.live import Live
        from rich.spinner import Spinner

        self.text, self.t0 = text, time.monotonic()
        self.done_n, self.total = 0, total
        self._spinner = Spinner("dots", style="cyan")
        self._live = Live(get_renderable=self._render, console=err_console(), refresh_per_second=8,
                          transient=True, redirect_stdout=False, redirect_stderr=False)
        self.console = self._live.console
        self._live.start()
        _Live.current = self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        t = Table.grid(padding=(0, 1))
        t.add_column(no_wrap=True)
        t.add_column(overflow="ellipsis", no_wrap=True, ratio=1)
        t.add_column(no_wrap=True, justify="right")
        right = f"{self.elapsed():.0f}s"
        if self.total:
            frac = min(self.done_n / self.total, 1.0)
            bar_w = 20
            full = int(frac * bar_w)
            right = f"{'━' * full}{'╺' if full < bar_w else ''}{' ' * max(bar_w - full - 1, 0)} " \
                    f"{self.done_n}/{self.total} {right}"
        t.add_row(self._spinner, Text(self.text), Text(right, style="dim"))
        return t

    def stop(self) -> None:
        self._live.stop()
        if _Live.current is self:
            _Live.current = None


def stop_progress() -> None:
    """Take the spinner off the screen (before an error message, job output, a prompt)."""
    live = _Live.current
    if live is not None:
        live.stop()


class Progress:
    """Stage messages from the core, on stderr; quiet with --json.

    `event(kind, message)`: kinds in STEP_KINDS start a step (spinner + elapsed time on a terminal; the
    previous step is marked done with its duration); any other kind is a note printed as a plain line
    (failover, cleanup, retry mark the running step failed first). Not a terminal: one line per step."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._lock = threading.RLock()
        self._step: str | None = None
        self._live: _Live | None = None
        self._tty = None

    def _is_tty(self) -> bool:
        if self._tty is None:
            self._tty = _err_tty()
        return self._tty

    def event(self, kind: str, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if not self._is_tty():
                sys.stderr.write(f"› {message}\n")
                sys.stderr.flush()
                return
            if kind in STEP_KINDS:
                self._finish(ok=True)
                self._start(message)
            else:
                if kind in FAILED_STEP:
                    self._finish(ok=False)
                elif kind == "submitted":
                    self._finish(ok=True)
                style = NOTE_STYLES.get(kind, "cyan")
                target = self._live.console if self._live is not None else err_console()
                target.print(f"[{style}]›[/] {_esc(message)}", soft_wrap=False)

    def _start(self, message: str, total: int | None = None) -> None:
        stop_progress()  # one spinner at a time
        self._step = message
        self._live = _Live(message, total)

    def _finish(self, ok: bool) -> None:
        live, step = self._live, self._step
        self._live, self._step = None, None
        if live is None:
            return
        live.stop()
        mark = "[green]✔[/]" if ok else "[red]✘[/]"
        err_console().print(f"{mark} {_esc(step or '')} [dim]({live.elapsed():.1f}s)[/]", soft_wrap=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.done()
        else:
            self.fail()
        return False

    def update(self, done: int, total: int | None = None) -> None:
        """Progress of the current step as a bar (e.g. a simulation's samples): `done` of `total`."""
        with self._lock:
            if self._live is not None:
                self._live.done_n = done
                if total is not None:
                    self._live.total = total

    def done(self) -> None:
        with self._lock:
            self._finish(ok=True)

    def fail(self) -> None:
        with self._lock:
            self._finish(ok=False)


class LinePrinter:
    """Job output on stdout, each line prefixed with its node (or one JSON object per line)."""

    def __init__(self, as_json: bool = False, progress: Progress | None = None):
        self._lock = threading.Lock()
        self.as_json = as_json
        self.progress = progress

    def line(self, rank: int, text: str) -> None:
        with self._lock:
            if self.progress is not None:  # the job's output starts: the last step is over
                self.progress.done()
                self.progress = None
            elif _Live.current is not None:
                stop_progress()
            if self.as_json:
                sys.stdout.write(json.dumps({"node": rank, "line": text}) + "\n")
            else:
                sys.stdout.write(f"(node-{rank}) {text}\n")
            sys.stdout.flush()

    def raw(self, text: str) -> None:
        """A managed job's log line (already prefixed by the controller)."""
        with self._lock:
            if _Live.current is not None:
                stop_progress()
            sys.stdout.write((json.dumps({"line": text}) if self.as_json else text) + "\n")
            sys.stdout.flush()


def job_summary(st, cluster: str) -> None:
    ok = st.status == "SUCCEEDED"
    codes = ", ".join(f"node-{n.rank}: {n.status}" + (f" ({n.exit_code})" if n.exit_code not in (None, 0) else "")
                      for n in st.nodes)
    _err_line("green" if ok else "red", f"Job {st.job_id} {st.status} on {cluster}" + ("" if ok else f" — {codes}"))


def attempts(attempts, cluster: str) -> None:
    if not attempts:
        return
    _err_line("yellow", f"Failover report for {cluster}:")
    for i, a in enumerate(attempts, 1):
        _err_line(None, f"  {i}. {a.place} {a.instance_type}{' spot' if a.use_spot else ''}: "
                        f"{a.error}{(' ' + a.code) if a.code else ''} — {a.message}")
    _err_line(None, "  then launched on the next cheapest place that had capacity.")


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


def cluster_json(r) -> dict:
    return {"name": r.name, "cloud": r.cloud, "region": r.region, "zone": r.zone, "infra": r.infra,
            "instance_type": r.instance_type, "accelerators": r.accelerators, "use_spot": r.use_spot,
            "num_nodes": r.num_nodes, "status": r.status, "launched_at": r.launched_at,
            "hourly_price": r.hourly_price, "autostop_minutes": r.autostop_minutes, "autostop_down": r.autostop_down,
            "head_ip": r.head.ip if r.head else None}


STATUS_STYLE = {"UP": "green", "STOPPED": "yellow", "INIT": "cyan"}


def print_settings(rows) -> None:
    _table(None, [Col("SETTING"), Col("VALUE", soft=8, min=4), Col("DEFAULT", soft=8, min=4),
                  Col("MEANING", soft=30, min=12)], [list(r) for r in rows], drop=("DEFAULT",))


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
        rows.append([r.name, r.infra, res, str(r.num_nodes), (r.status, STATUS_STYLE.get(r.status, "red")),
                     _ago(r.launched_at), _money(r.hourly_price), auto])
    cols = [Col("NAME", soft=14, min=8, squeeze=3), Col("INFRA", soft=14, min=8, squeeze=1),
            Col("RESOURCES", soft=16, min=10, squeeze=2), Col("NODES", "right"), Col("STATUS"), Col("LAUNCHED"),
            Col("$/h", "right"), Col("AUTOSTOP")]
    _table(None, cols, rows, drop=("LAUNCHED", "NODES", "AUTOSTOP", "$/h"))


def job_json(j) -> dict:
    return {"job_id": j.job_id, "name": j.name, "status": j.status, "exit_code": j.exit_code,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            "nodes": [{"rank": n.rank, "status": n.status, "exit_code": n.exit_code} for n in j.nodes]}


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
    _table(f"Jobs on {cluster}", cols, rows, drop=("SUBMITTED",))


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
    rows = [[str(j.id), j.name or "-", j.resources or "-", (j.status, JOB_STYLE.get(j.status, "red")),
             _ago(j.submitted_at), _dur(j.duration), str(j.recoveries), _money(j.cost_so_far), j.place or "-"]
            for j in jobs]
    cols = [Col("ID", "right"), Col("NAME", soft=14, min=8, squeeze=3), Col("RESOURCES", soft=16, min=10, squeeze=2),
            Col("STATUS"),
            Col("SUBMITTED"), Col("DURATION", "right"), Col("RECOVERIES", "right"), Col("COST ($)", "right"),
            Col("WHERE", soft=14, min=8, squeeze=1)]
    _table("Managed jobs", cols, rows, drop=("WHERE", "SUBMITTED", "RECOVERIES"))


def managed_summary(j) -> None:
    ok = j.status == "SUCCEEDED"
    extra = f" after {j.recoveries} recovery(ies)" if j.recoveries else ""
    reason = f" — {j.failure}" if (j.failure and not ok) else ""
    _err_line("green" if ok else "red", f"Managed job {j.id} {j.status}{extra}, cost ${_money(j.cost_so_far)}{reason}")


def orphan_json(o) -> dict:
    return {"cluster": o.cluster, "cloud": o.cloud, "region": o.region, "instance_ids": list(o.instance_ids),
            "resources": [{"kind": k, "id": i} for k, i in o.resources], "interrupted_launch": o.interrupted}


def gc_json(scan, removed, warnings=()) -> dict:
    return {"scanned": scan.scanned, "not_scanned": [{"where": w, "why": y} for w, y in scan.skipped],
            "orphans": [orphan_json(o) for o in scan.orphans],
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
    for where, why in scan.skipped:
        info(f"not scanned: {where}: {why}")
    info("scanned: " + ", ".join(f"{c} ({n} region{'s' if n != 1 else ''})" for c, n in scan.scanned.items()))
    if not scan.orphans:
        info("nothing to remove: no untracked resources and no interrupted launches found")
    for o in scan.orphans:
        where = "/".join(p for p in (o.cloud, o.region) if p)
        what = "interrupted launch" if o.interrupted else "orphan"
        info(f"{what}: cluster {o.cluster} on {where}: {_orphan_resources(o)}")


def print_gc_removed(orphans, warnings) -> None:
    n_inst = sum(len(o.instance_ids) for o in orphans)
    n_other = sum(len(o.resources) for o in orphans) - n_inst
    info(f"terminated {n_inst} instance(s)" + (f" and removed {n_other} other resource(s)" if n_other else "")
         + (f" ({len(warnings)} warning(s))" if warnings else ""))


# ----------------------------------------------------------------------------------------------
# Simulation (`broker simulate`)

SIM_DROP = ("gap p25", "gap p75", "p25", "p75", "OD h")


def print_simulation(res, meta: dict) -> None:
    n = sum(res.samples_per_trace.values())
    _say(f"{n} samples over {len(res.samples_per_trace) - len(res.skipped)} trace(s); "
         f"C = {meta['task_hours']:g} h, deadline {meta['deadline_hours']:g} h, "
         f"d = {meta['overhead_hours']:g} h; on-demand ${meta['on_demand_price']:.4f}/h, "
         f"spot ${meta['spot_price']:.4f}/h ({meta['prices_from']})")
    for name, why in res.skipped.items():
        _say(_m("yellow", f"skipped {name}: {why}"))
    cols = [Col("policy", soft=None, min=10)] + [Col(c, "right") for c in (
        "cost", "p25", "p75", "spot h", "OD h", "met", "gap", "gap p25", "gap p75")]
    rows = [[s["policy"], f"{s['mean_norm_cost']:.4f}", f"{s['p25_norm_cost']:.4f}", f"{s['p75_norm_cost']:.4f}",
             f"{s['spot_hours']:.1f}", f"{s['od_hours']:.1f}", f"{100 * s['deadline_met']:.0f}%",
             f"{s['mean_gap']:.4f}", f"{s['p25_gap']:.4f}", f"{s['p75_gap']:.4f}"] for s in res.summary]
    _say(_m("dim", "cost normalised to always-on-demand; gap = (cost - omniscient) / on-demand"))
    _table(None, cols, rows, drop=SIM_DROP)
    _say(f"omniscient DP: {meta['omniscient_cpu_seconds']:.1f} s CPU")


# ----------------------------------------------------------------------------------------------
# Small helpers for commands

def confirm_prompt(question: str, default: bool) -> bool:
    stop_progress()
    import click

    return click.confirm(question, default=default)


def lines(items: Iterable[str]) -> None:
    for s in items:
        info(s)


OnEvent = Callable[[str, str], None]
