"""Loading and validating spot traces (the Can't Be Late JSON format).

A trace file is ``{"metadata": {"gap_seconds": 600}, "data": [1, 1, 0, ...]}``: ``data[i]`` is the number
of spot instances available during ``[i*gap, (i+1)*gap)`` (1 = available for 1-node traces). A job that
needs N nodes counts spot as available at tick i iff ``data[i] >= N``.

Pure: no printing; bad input raises `UsageError` with a hint.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skybroker.errors import UsageError

_NODES_RE = re.compile(r"(?:^|[/\\])(\d+)-node(?:[/\\]|$)")
_DATE_RE = re.compile(r"(?:^|[-_/\\])(\d\d)-(\d\d)-(\d{4})(?:[/\\]|$)")  # the sets' MM-DD-YYYY
WEEK_S = 7 * 86400


def week_clock(path: str | os.PathLike) -> int | None:
    """Seconds since Monday 00:00 of the start date in a trace's path (e.g. `aws-10-26-2022/`), or
    None. The traces carry no time of day, so 00:00 of that date is assumed."""
    import datetime

    m = _DATE_RE.search(str(path))
    if not m:
        return None
    try:
        day = datetime.date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    except ValueError:
        return None
    return day.weekday() * 86400


@dataclass(frozen=True)
class Trace:
    name: str  # a short label (path relative to the traces root when known)
    path: str
    gap_seconds: int
    counts: np.ndarray  # int array, number of spot instances available per tick
    # week clock of sample 0: seconds since Monday 00:00 of the start date in the path (the files
    # carry no time of day: 00:00 assumed); None when the path has no date
    t0_s: int | None = None

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @property
    def hours(self) -> float:
        return len(self) * self.gap_seconds / 3600.0

    def availability(self, nodes: int = 1) -> np.ndarray:
        """Boolean availability per tick for a gang of `nodes` instances."""
        return self.counts >= nodes

    def head(self, days: float | None) -> Trace:
        """The first `days` days of the trace (the paper used 13 days of the '2-week' files)."""
        if days is None:
            return self
        n = round(days * 86400 / self.gap_seconds)
        return Trace(self.name, self.path, self.gap_seconds, self.counts[:n], self.t0_s)

    def slice_days(self, lo: float, hi: float) -> Trace:
        """Days [lo, hi) of the trace, with its week clock moved on."""
        a, b = (round(x * 86400 / self.gap_seconds) for x in (lo, hi))
        t0 = None if self.t0_s is None else (self.t0_s + a * self.gap_seconds) % WEEK_S
        return Trace(self.name + f"[d{lo:g}-{hi:g}]", self.path, self.gap_seconds, self.counts[a:b], t0)


def infer_nodes(path: str | os.PathLike) -> int:
    """Node count implied by a `N-node` folder in the path (the layout of the shared traces), else 1."""
    m = _NODES_RE.search(str(path))
    return int(m.group(1)) if m else 1


def default_traces_root() -> Path:
    """`$BROKER_SPOT_TRACES`, or `<repo>/../shared/spot-traces`."""
    env = os.environ.get("BROKER_SPOT_TRACES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "spot-traces"


def load_trace(path: str | os.PathLike, name: str | None = None) -> Trace:
    p = Path(path)
    hint = 'a trace is JSON like {"metadata": {"gap_seconds": 600}, "data": [1, 0, 1, ...]}'
    if not p.exists():
        raise UsageError(f"trace file not found: {p}", "check the path passed to --trace")
    if p.is_dir():
        raise UsageError(f"trace path is a directory: {p}", "pass the JSON files, e.g. DIR/*.json")
    try:
        raw = json.loads(p.read_text())
    except UnicodeDecodeError:
        raise UsageError(f"trace file is not text: {p}", hint) from None
    except json.JSONDecodeError as e:
        raise UsageError(f"trace file is not valid JSON: {p} (line {e.lineno}: {e.msg})", hint) from None
    if not isinstance(raw, dict) or "data" not in raw or "metadata" not in raw:
        raise UsageError(f"trace file has no 'metadata' and 'data' keys: {p}", hint)
    meta = raw["metadata"]
    gap = meta.get("gap_seconds") if isinstance(meta, dict) else None
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or gap <= 0 or gap != int(gap):
        raise UsageError(f"trace file {p}: metadata.gap_seconds must be a positive whole number of "
                         f"seconds, got {gap!r}", hint)
    data = raw["data"]
    if not isinstance(data, list) or not data:
        raise UsageError(f"trace file {p}: 'data' must be a non-empty list", hint)
    for i, x in enumerate(data):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 or x != int(x):
            raise UsageError(f"trace file {p}: data[{i}] = {x!r} is not a count (a whole number >= 0)",
                             hint)
    counts = np.asarray(data, dtype=np.int64)
    return Trace(name or _short_name(p), str(p), int(gap), counts, week_clock(p))


def _short_name(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(default_traces_root().resolve()))
    except ValueError:
        return p.name


def find_traces(root: str | os.PathLike, pattern: str) -> list[Path]:
    """Sorted trace files under `root` matching a glob, e.g. 'availability/1-node/aws-10-26-2022/*.json'."""
    return sorted(Path(root).glob(pattern))
