"""Per-cluster file locks: two commands on one cluster wait for each other (with a visible message)
instead of corrupting anything. A launch holds its cluster's lock from the first intent to the end of
bring-up, so a free lock on a cluster that is still INIT means its launch died (intents.py).

Cluster names are validated here, before any path is built from them."""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

from .errors import BrokerError, UsageError
from .paths import ensure_home, private_dir

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")


class ClusterBusy(BrokerError):
    """Another broker command holds the cluster's lock."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"invalid cluster name {name!r}",
                         "use 1-40 lowercase letters, digits and '-', starting with a letter (clouds restrict names)")
    return name


@contextlib.contextmanager
def cluster_lock(name: str, on_wait: Callable[[str], None] | None = None,
                 timeout: float = -1) -> Iterator[None]:
    """flock(2) on locks/<name>.lock (what filelock does on Unix, without its ~10 ms of imports, which every
    `exec` would pay): held per open file, so another command, thread or second call in this process
    waits; released when the holder exits, however it dies."""
    import fcntl
    import os
    import time

    validate_name(name)
    d = private_dir(ensure_home() / "locks")
    fd = os.open(str(d / f"{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
                raise ClusterBusy(f"cluster {name} is busy with another broker command",
                                  "wait for it to finish, then retry")
            if on_wait and not told and now >= first:
                on_wait(f"waiting for another broker command on cluster {name} to finish…")
                told = True
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
