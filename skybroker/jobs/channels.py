"""The managed-jobs controller's connections to its jobs' clusters (issue 16): one ClusterRuntime per
cluster, kept open across polls while a job is on it, so a poll of a job on SSH nodes is one more session
on a connection already up (no TCP connect, handshake, auth per look), shared by every job on the cluster.

`use(rec)` hands the cluster's runtime out for one step (made on first use, or again when the cluster's
nodes changed); `drop(name)` retires it (the job left the cluster, it was torn down, a poll failed): it is
closed once the last step using it is done, and the next `use` makes a new one. `sweep(keep)` drops the
runtimes of clusters no active job is on. Thread-safe: steps run in the controller's pool.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

from ..backend import ClusterRuntime


def _identity(rec) -> tuple:
    return (rec.cloud, tuple(sorted((n.rank, n.instance_id, n.ip, n.ssh_port) for n in rec.nodes)))


class _Entry:
    def __init__(self, rec):
        self.ident, self.rt, self.users, self.retired = _identity(rec), ClusterRuntime(rec), 0, False


class Runtimes:
    def __init__(self):
        self._by_name: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, rec) -> tuple[_Entry, _Entry | None]:
        """(the cluster's current entry, the one it replaced, if any: to be retired). Under the lock."""
        e = self._by_name.get(rec.name)
        if e is not None and e.ident == _identity(rec):
            return e, None
        new = self._by_name[rec.name] = _Entry(rec)
        return new, e

    def get(self, rec) -> ClusterRuntime:
        """The cluster's open runtime, for a caller that does not hold it across a drop (a stream dies with
        the runtime's connections when it is closed, which is what a stream reader wants)."""
        with self._lock:
            e, old = self._entry(rec)
        self._retire(old)
        return e.rt

    @contextmanager
    def use(self, rec) -> Iterator[ClusterRuntime]:
        with self._lock:
            e, old = self._entry(rec)
            e.users += 1
        self._retire(old)
        try:
            yield e.rt
        finally:
            with self._lock:
                e.users -= 1
                close = e.retired and e.users == 0
            if close:
                e.rt.close()

    def drop(self, name: str) -> None:
        with self._lock:
            e = self._by_name.pop(name, None)
        self._retire(e)

    def sweep(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        with self._lock:
            gone = [self._by_name.pop(n) for n in [n for n in self._by_name if n not in keep]]
        for e in gone:
            self._retire(e)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def _retire(self, e: _Entry | None) -> None:
        if e is None:
            return
        with self._lock:
            e.retired = True
            close = e.users == 0
        if close:
            e.rt.close()
