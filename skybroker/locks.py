"""Per-cluster file locks: two commands on one cluster wait for each other (with a visible message)
instead of corrupting anything."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from .paths import ensure_home


@contextlib.contextmanager
def cluster_lock(name: str, on_wait: Callable[[str], None] | None = None,
                 timeout: float = -1) -> Iterator[None]:
    from filelock import FileLock, Timeout

    d = ensure_home() / "locks"
    d.mkdir(exist_ok=True)
    lock = FileLock(str(d / f"{name}.lock"))
    try:
        lock.acquire(timeout=0.3)
    except Timeout:
        if on_wait:
            on_wait(f"waiting for another broker command on cluster {name} to finish…")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            from .errors import BrokerError

            raise BrokerError(f"cluster {name} is busy with another broker command",
                              "wait for it to finish, then retry") from None
    try:
        yield
    finally:
        lock.release()
