"""Consoles, plain lines, JSON, errors and prompts: the primitives every view uses."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable

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
        from .progress import _Live

        live = _Live.current
        if live is not None:  # above the spinner
            live.console.print(f"[{style}]{_esc(text)}[/]" if style else _esc(text), soft_wrap=False)
            return
        from .ansi import style as styled, terminal

        out, _, color = terminal(stderr=True)
        out.write(styled(text, style, color) + "\n")
        out.flush()
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()



def raw(text: str) -> None:
    """Text on stdout exactly as given (e.g. a shell completion script)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def json_safe(o: Any) -> Any:
    """NaN and ±Infinity are not JSON (json.dumps would write them bare): null instead, at any depth."""
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    from .progress import stop_progress

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


def warning(message: str) -> None:
    """`Warning: ...` on stderr (stdout stays the command's output, e.g. a plan's JSON)."""
    _err_line("yellow", f"Warning: {message}")


def task_warnings(task) -> None:
    """The fields a task file sets that skybroker accepts but does not (fully) honour."""
    for w in getattr(task, "warnings", ()) or ():
        warning(w)



# ----------------------------------------------------------------------------------------------
# Small helpers for commands

def confirm_prompt(question: str, default: bool) -> bool:
    from .progress import stop_progress

    stop_progress()
    import click

    return click.confirm(question, default=default)


def lines(items: Iterable[str]) -> None:
    for s in items:
        info(s)


OnEvent = Callable[[str, str], None]
