"""Per-cluster locks: two commands on one cluster wait for each other (with a visible message)
instead of corrupting anything. A launch holds its cluster's lock from the first intent to the end of
bring-up, so a free lock on a cluster that is still INIT means its launch died (intents.py).

On SQLite a lock is a file under BROKER_HOME/locks. On PostgreSQL (server replicas, each with its own
BROKER_HOME, perhaps on different machines) it is a session-level advisory lock on a connection opened
for it: every process on that database sees it, and PostgreSQL releases it when the holder dies (its
connection closes), just as the kernel releases a dead process's file lock.

Cluster names are validated here, before any path is built from them."""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

from .errors import BrokerError, UsageError
from .paths import ensure_home, owner_hint, private_dir

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")


class ClusterBusy(BrokerError):
    """Another broker command holds the cluster's lock."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"invalid cluster name {name!r}",
                         "use 1-40 lowercase letters, digits and '-', starting with a letter (clouds restrict names)")
    return name


class _PgLock:
    """A cluster's advisory lock (same acquire/release surface as filelock's)."""

    def __init__(self, url: str, name: str):
        import hashlib

        self.url = url
        h = int.from_bytes(hashlib.sha256(f"broker-cluster:{name}".encode()).digest()[:8], "big", signed=True)
        self.key = h
        self.conn = None

    def acquire(self, timeout: float = -1) -> None:
        import time

        import psycopg
        from filelock import Timeout

        if self.conn is None:
            try:
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                from .db_pg import redact_url

                raise BrokerError(f"cannot reach PostgreSQL for a cluster lock: {redact_url(str(exc))}") from None
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while not self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
            if deadline is not None and time.monotonic() >= deadline:
                self.release()
                raise Timeout(self.key)
            time.sleep(0.1)

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the session's advisory locks go with it
            self.conn = None


@contextlib.contextmanager
def _pg_cluster_lock(name: str, on_wait, timeout: float, what: str) -> Iterator[None]:
    from filelock import Timeout

    from . import state

    lock = _PgLock(state.db_url(), name)
    try:
        lock.acquire(timeout=0 if timeout == 0 else 0.3)
    except Timeout:
        if timeout == 0:
            raise ClusterBusy(f"{what} is busy with another broker command",
                              "wait for it to finish, then retry") from None
        if on_wait:
            on_wait(f"waiting for another broker command on {what} to finish…")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise ClusterBusy(f"{what} is busy with another broker command",
                              "wait for it to finish, then retry") from None
    try:
        yield
    finally:
        lock.release()


def _lock_path_error(d, path, exc: OSError) -> BrokerError:
    """A lock file that cannot be opened (another user's, a directory, under a `locks` that is a file)."""
    import errno

    bad = path if d.is_dir() else d
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = owner_hint(bad, bad == d)
    else:
        what = "a directory" if bad == d else "a file"
        hint = f"it must be {what}: when no broker command is running, remove it (`rm -r {bad}`); it is made again"
    return BrokerError(f"cannot use the lock file {path}: {exc.strerror or exc}"
                       + ("" if bad == path else f" ({d} is not a directory)"), hint, exit_code=2)


@contextlib.contextmanager
def cluster_lock(name: str, on_wait: Callable[[str], None] | None = None,
                 timeout: float = -1) -> Iterator[None]:
    """On SQLite, flock(2) on locks/<name>.lock (what filelock does on Unix, without its ~10 ms of imports,
    which every `exec` would pay): held per open file, so another command, thread or second call in this
    process waits; released when the holder exits, however it dies. On PostgreSQL, the advisory lock."""
    validate_name(name)
    with _named_lock(name, f"cluster {name}", on_wait, timeout):
        yield


@contextlib.contextmanager
def account_lock(resource: str, timeout: float = -1) -> Iterator[None]:
    """For a read-modify-write of something a cloud account shares between clusters (e.g. Lambda's one
    list of firewall rules): another broker command or thread doing the same waits. Its key starts with
    '_', which no cluster name does."""
    with _named_lock("_" + resource, resource, None, timeout):
        yield


@contextlib.contextmanager
def _named_lock(name: str, what: str, on_wait, timeout: float) -> Iterator[None]:
    import fcntl
    import os
    import time

    from . import state

    if state.is_postgres():
        with _pg_cluster_lock(name, on_wait, timeout, what):
            yield
        return
    d = ensure_home() / "locks"
    path = d / f"{name}.lock"
    try:
        private_dir(d)
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _lock_path_error(d, path, exc) from None
    try:
        deadline = None if timeout < 0 else time.monotonic() + 0.3 + timeout
        first = time.monotonic() + 0.3
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            now = time.monotonic()
            if timeout == 0 or (deadline is not None and now >= deadline):
                raise ClusterBusy(f"{what} is busy with another broker command",
                                  "wait for it to finish, then retry")
            if on_wait and not told and now >= first:
                on_wait(f"waiting for another broker command on {what} to finish…")
                told = True
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
