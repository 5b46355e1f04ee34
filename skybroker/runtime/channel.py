"""The broker's channel to jobs on nodes that are directories on this machine (the local cloud): no process
per look. The node agent (runtime/agent/) keeps a node's state in ``<home>/.skybroker-node/agent.db`` and each
job's output in ``jobs/<id>/run.log``; both are read here directly, the way the agent reads them itself.

- `read_job(home, job_id, offset)`: one look at a job (its row, log bytes from `offset`) with no
  subprocess. A non-terminal job whose runner process is gone is not judged here: the caller asks the
  agent itself (which reconciles it), so there is one definition of "the runner died".
- `ChangeFeed`: which watched jobs changed since they were last looked at: a job's signature is the stat of
  its nodes' agent database log (agent.db-wal: every status change is a write), its log (new output) and
  the node's own file (stopped/terminated); a preempted node's files are gone, which changes it too. One
  stat per file, no read, so a thousand sleeping jobs cost a few thousand stats per round and nothing else.

Used by the agent client (poll, status of one job) and the managed-jobs controller (when to look).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable

from . import agent as agent_mod
from .agent import procs, store

READ_LIMIT = 1 << 20  # as the agent's `logs --b64`


class NeedsAgent(Exception):
    """The files cannot answer alone (a runner died unseen, the database is busy): ask the agent."""


def node_dir(home: Path | str) -> Path:
    return Path(home) / agent_mod.NODE_DIR


def read_job(home: Path | str, job_id: int, offset: int = 0) -> tuple[bytes, int, dict | None]:
    """(log bytes from `offset`, next offset, the job's row as the agent reports it, or None if the node
    has no such job). Raises NeedsAgent when only the agent can tell (see the module docstring)."""
    base = node_dir(home)
    db = base / "agent.db"
    if not db.exists():
        return b"", offset, None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        raise NeedsAgent(str(exc)) from None
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM jobs WHERE job_id=?", (int(job_id),)).fetchone()
    except sqlite3.Error as exc:
        raise NeedsAgent(str(exc)) from None
    finally:
        conn.close()
    if row is None:
        return b"", offset, None
    if row["status"] not in agent_mod.TERMINAL_STATUSES and not (
            row["boot_id"] == procs.boot_id() and procs.alive(row["runner_pid"], row["runner_start"])):
        raise NeedsAgent("the job's runner is gone")
    data = b""  # read after the row: a terminal row means the log is complete
    try:
        with open(base / "jobs" / str(int(job_id)) / "run.log", "rb") as f:
            f.seek(offset)
            data = f.read(READ_LIMIT)
    except OSError:
        pass
    return data, offset + len(data), store.job_out(row)


def gated_change(seen, now_sig, told: list, now: float, min_gap: float, also_gap: float):
    """The rule both feeds tell the controller by, on a (state, output, also) signature: (moved, seen, told).
    A state change at once (and output/also taken as seen); output moved and `min_gap` seconds since the last
    output told; `also` moved and `also_gap` seconds since the last also told. What is held back stays
    unseen, so it is told later. `told` is [when output, when also was last told]."""
    if seen is None or seen[0] != now_sig[0]:
        return True, now_sig, [now, now]
    out = seen[1] != now_sig[1] and now - told[0] >= min_gap
    also = seen[2] != now_sig[2] and now - told[1] >= also_gap
    if not (out or also):
        return False, seen, told
    return (True, (now_sig[0], now_sig[1] if out else seen[1], now_sig[2] if also else seen[2]),
            [now if out else told[0], now if also else told[1]])


class ChangeFeed:
    """`changed(key, job_id, homes)`: True the first time a key is seen, then whenever its signature moved
    (looked at every `every` seconds at most). `homes()` gives the job's node directories (None: not local,
    so the feed cannot watch it: False, and the caller keeps polling it on its interval); it is called once
    per (key, job_id). `also`: more paths under each home to watch, reported at most every `also_gap` s (a
    directory's mtime moves when an entry is created, renamed or removed in it: a checkpoint written
    write-then-rename, which the controller copies at most every checkpoint interval)."""

    def __init__(self, every: float = 0.5, clock: Callable[[], float] = time.monotonic, also: Iterable[str] = (),
                 also_gap: float = 0.0):
        self.every = every
        self.clock = clock
        self.also, self.also_gap = tuple(also), also_gap
        self._paths: dict[object, tuple[int | None, list | None]] = {}
        self._sig: dict[object, tuple[list, list]] = {}
        self._next: dict[object, float] = {}
        self._told: dict[object, list[float]] = {}
        self._forget_at = 0.0

    def watching(self, key) -> bool:
        return self._paths.get(key, (None, None))[1] is not None

    def _lookup(self, key, job_id, homes) -> list[tuple[str, ...]] | None:
        hs = homes() if job_id is not None else None
        paths = None
        if hs is not None:  # per node: (what says the job's state changed, what says it has new output)
            paths = [(str(Path(h) / "node.json"), str(node_dir(h) / "agent.db-wal"),
                      str(node_dir(h) / "jobs" / str(job_id) / "run.log"),
                      *(str(Path(h) / a) for a in self.also)) for h in hs]
        self._paths[key] = (job_id, paths)
        for d in (self._sig, self._next, self._told):
            d.pop(key, None)
        return paths

    def changed(self, key, job_id: int | None, homes: Callable[[], Iterable[Path | str] | None],
                min_gap: float = 0.0) -> bool:
        """True if the job's state moved (the node's file or the agent's database: a status change, a node
        stopped or gone) — at once; if its output moved and the last such True was `min_gap` seconds ago
        or more (a chatty job is not looked at more often than a polled one); if an `also` path moved and
        `also_gap` seconds passed since the last such True. A change held back is reported later."""
        known = self._paths.get(key)
        paths = self._lookup(key, job_id, homes) if known is None or known[0] != job_id else known[1]
        if paths is None:
            return False
        now = self.clock()
        if self._next.get(key, 0) > now:
            return False
        self._next[key] = now + self.every
        sig: tuple[list, list, list] = ([], [], [])  # state, output, also
        for node in paths:
            for i, p in enumerate(node):
                try:
                    st = os.stat(p)
                    v = (st.st_mtime_ns, st.st_size)
                except OSError:
                    v = None
                sig[min(i // 2, 1) if i < 3 else 2].append(v)
        moved, self._sig[key], self._told[key] = gated_change(self._sig.get(key), sig, self._told.get(key, [now, now]),
                                                              now, min_gap, self.also_gap)
        return moved

    def forget(self, keep: Iterable) -> None:
        """Drop every key not in `keep` (jobs that ended); at most every 5 s (`keep` is not read between)."""
        now = self.clock()
        if now < self._forget_at:
            return
        self._forget_at = now + 5.0
        keep = set(keep)
        for d in (self._paths, self._sig, self._next, self._told):
            for k in [k for k in d if k not in keep]:
                del d[k]
