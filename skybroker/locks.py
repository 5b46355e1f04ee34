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
    from filelock import FileLock, Timeout

    validate_name(name)
    d = private_dir(ensure_home() / "locks")
    lock = FileLock(str(d / f"{name}.lock"), mode=0o600)
    try:
        lock.acquire(timeout=0 if timeout == 0 else 0.3)
    except Timeout:
        if timeout == 0:
            raise ClusterBusy(f"cluster {name} is busy with another broker command",
                              "wait for it to finish, then retry") from None
        if on_wait:
            on_wait(f"waiting for another broker command on cluster {name} to finish…")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise ClusterBusy(f"cluster {name} is busy with another broker command",
                              "wait for it to finish, then retry") from None
    try:
        yield
    finally:
        lock.release()
