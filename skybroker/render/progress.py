"""Progress: a spinner with elapsed time per step on a terminal, one line per step otherwise; job output."""
from __future__ import annotations

import json
import sys
import threading
import time

from .console import _err_line, _esc, _err_tty, err_console, info

# ----------------------------------------------------------------------------------------------
# Progress

STEP_KINDS = frozenset({"provision", "wait", "agent", "sync", "setup", "start", "down", "stop", "scan",
                        "install", "launch", "run", "simulate", "restore", "checkpoint", "fetch", "build"})
NOTE_STYLES = {"failover": "yellow", "warning": "yellow", "cleanup": "yellow", "retry": "yellow", "skip": "dim",
               "failed": "red"}
FAILED_STEP = frozenset({"failover", "cleanup", "retry", "failed"})  # the step in progress did not succeed


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


class JsonEvents:
    """`launch --json` (not a dry run): everything on stdout is one JSON object per line — the plan,
    each progress event, each job output line, and the result — never mixed with text."""

    def __init__(self):
        self._lock = threading.Lock()

    def emit(self, obj: dict) -> None:
        with self._lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def event(self, kind: str, message: str) -> None:
        self.emit({"type": "event", "kind": kind, "message": message})

    def line(self, rank: int, text: str) -> None:
        self.emit({"type": "line", "node": rank, "line": text})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


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
    codes = ", ".join(f"node-{n.rank}: {n.status}" + (f" ({n.exit_code})" if n.exit_code not in (None, 0) else
                                                       " (no exit code)" if _ended_without_code(n) else "")
                      for n in st.nodes)
    crash = getattr(st, "crash", None)  # the node's reason when it says more than the exit code
    _err_line("green" if ok else "red", f"Job {st.job_id} {st.status} on {cluster}" + ("" if ok else f" — {codes}")
              + (f": {crash}" if crash and not ok else ""))


def _ended_without_code(n) -> bool:
    """A node's job failed with no exit code of its own: its runner crashed (or the node rebooted under it)."""
    return n.status in ("FAILED", "FAILED_SETUP") and n.exit_code is None and bool(getattr(n, "reason", None))


def launch_end(cluster: str, status: str | None) -> None:
    """A followed launch's last words: what is left of the cluster (a stop or down during the job counts)."""
    if status is None:
        info(f"cluster {cluster} was torn down during the job")
    elif status in ("STOPPED", "STOPPING"):
        info(f"cluster {cluster} was stopped during the job: `broker start {cluster}` brings it back, "
             f"`broker down {cluster}` removes it")
    else:
        info(f"cluster {cluster} stays up: `broker exec {cluster} -- CMD` runs more, `broker down {cluster}` removes it")


def attempts(attempts, cluster: str) -> None:
    if not attempts:
        return
    _err_line("yellow", f"Failover report for {cluster}:")
    for i, a in enumerate(attempts, 1):
        _err_line(None, f"  {i}. {a.place} {a.instance_type}{' spot' if a.use_spot else ''}: "
                        f"{a.error}{(' ' + a.code) if a.code else ''} — {a.message}")
    _err_line(None, "  then launched on the next cheapest place that had capacity.")


