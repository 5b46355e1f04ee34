"""Tables that never crop a value (see the package docstring)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from .console import _esc, _tty, console

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
    from .ansi import style, terminal

    out, width, color = terminal()
    lay = fit(cols, rows, width, drop)
    if lay is None:
        _stacked(title, cols, rows, footer)
        return

    def pad(text: str, i: int) -> str:
        w, j = lay.widths[i], cols[i].justify
        return text.rjust(w) if j == "right" else text.center(w) if j == "center" else text.ljust(w)

    sep = " " * GAP
    lines = [style(title, "bold", color)] if title else []
    lines.append(style(sep.join(pad(cols[i].name, i) for i in lay.keep).rstrip(), "bold", color))
    lines.append(style(sep.join("─" * lay.widths[i] for i in lay.keep), "dim", color))
    for r in rows:
        cells = []
        for i in lay.keep:
            cell = r[i]
            text = pad(_shorten(_text(cell), lay.widths[i]), i)
            cells.append(style(text, cell[1], color) if isinstance(cell, tuple) else text)
        lines.append(sep.join(cells).rstrip())
    import textwrap

    notes = ([f"hidden at {width} columns: {', '.join(lay.hidden)}; a wider terminal or --json shows them"]
             if lay.hidden else []) + ([footer] if footer else [])
    for note in notes:
        lines += [style(x, "dim", color) for x in textwrap.wrap(note, max(20, width), break_on_hyphens=False)]
    out.write("\n".join(lines) + "\n")
    out.flush()


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


