"""Direct terminal writes for the hot paths (tables, stderr lines): ANSI styles without rich.

rich lays out a 500-row table at several times the cost of the whole `status` command in a pipe (and
importing it costs more than the rest of the command), so tables are laid out by table.fit and written
here. Only a small style vocabulary is understood (the one the views use); other words are ignored.
NO_COLOR and TERM=dumb turn styles off, as does a test console without a color system.
"""
from __future__ import annotations

import os
import shutil
import sys

_CODES = {"bold": "1", "dim": "2", "italic": "3", "underline": "4", "red": "31", "green": "32", "yellow": "33",
          "blue": "34", "magenta": "35", "cyan": "36", "white": "37"}


def style(text: str, words: str | None, color: bool) -> str:
    if not words or not color:
        return text
    codes = [_CODES[w] for w in words.split() if w in _CODES]
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


def terminal(stderr: bool = False):
    """(file, width, color) to write a terminal's output to: the console a test or an embedding program
    set (render.set_consoles), else the process's own stream."""
    c = sys.modules["skybroker.render.console"]  # (the package re-exports a function named `console`)
    if c._forced:
        con = c.err_console() if stderr else c.console()
        return con.file, con.width, con.color_system is not None and not con.no_color
    stream = sys.stderr if stderr else sys.stdout
    width = shutil.get_terminal_size((100, 24)).columns
    color = "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return stream, width, color
