"""This machine's staging cache of COPY buckets (BROKER_STORAGE_CACHE, default BROKER_HOME/storage-cache) and
its pruning, so it does not grow for ever.

An entry is `<cache>/<kind>/<bucket>-<key>/` (the objects, rsynced to the nodes as they are), with two files
beside it, never inside it (the directory is what the nodes get):
  `<entry>.use`   JSON: when the entry was last used and the clusters that copied from it;
  `<entry>.lock`  flock: shared while a copy is in progress (download, then rsync to the nodes), exclusive
                  while the entry is pruned.

The rule (`prune`, run after every COPY and every `down`, best effort): an entry is removed when no cluster
this home still records copied from it (UP, STOPPED or any other state: a restart, a recovery or a
`launch -c` copies again) and no copy holds it, and either it was last used more than
BROKER_STORAGE_CACHE_MAX_AGE_DAYS ago, or the cache is over BROKER_STORAGE_CACHE_MAX_GB (then the least
recently used go first, until it is under). 0 turns either limit off.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import settings
from .base import BucketRef


def base() -> Path:
    from ..paths import broker_home

    return Path(settings.get("storage_cache") or os.path.join(broker_home(), "storage-cache"))


def entry_dir(ref: BucketRef) -> Path:
    key = hashlib.sha256(ref.uri.encode()).hexdigest()[:16]
    return base() / ref.kind / f"{ref.bucket}-{key}"


def _side(d: Path, what: str) -> Path:
    return d.with_name(d.name + what)


def _private(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for p in (base(), d.parent, d):
        os.chmod(p, 0o700)


def _open_lock(d: Path, how: int, block: bool = True):
    """The entry's lock file, locked `how` (LOCK_SH/LOCK_EX); None when not blocking and it is held. The file
    is removed by a prune that removes the entry: a lock taken on a removed file is taken again on the new one."""
    path = _side(d, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, how | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def use(ref: BucketRef, cluster: str | None):
    """The entry of `ref`, held (no prune removes it) until the block ends; recorded as used now by `cluster`."""
    d = entry_dir(ref)
    _private(d.parent)
    fd = _open_lock(d, fcntl.LOCK_SH)
    try:
        _private(d)
        _record_use(d, cluster)
        yield d
    finally:
        os.close(fd)


def _record_use(d: Path, cluster: str | None) -> None:
    info = _read_use(d)
    clusters = sorted(set(info.get("clusters") or []) | ({cluster} if cluster else set()))
    tmp = _side(d, f".use.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"used": time.time(), "clusters": clusters}))
    os.replace(tmp, _side(d, ".use"))


def _read_use(d: Path) -> dict:
    try:
        info = json.loads(_side(d, ".use").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _size(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def entries() -> list[Path]:
    b = base()
    if not b.is_dir():
        return []
    return sorted(d for kind in b.iterdir() if kind.is_dir() for d in kind.iterdir() if d.is_dir())


def prune(now: float | None = None, gone: str | None = None) -> list[Path]:
    """Remove the entries the rule above allows; returns the removed ones. `gone`: a cluster being torn down
    (still recorded) that holds no entry any more."""
    from .. import state

    now = time.time() if now is None else now
    max_age = float(settings.get("storage_cache_max_age_days")) * 86400
    cap = float(settings.get("storage_cache_max_gb")) * 1024 ** 3
    live = {c.name for c in state.list_clusters()} - {gone}
    rows = []
    for d in entries():
        info = _read_use(d)
        try:
            used = float(info.get("used") or d.stat().st_mtime)
        except (OSError, TypeError, ValueError):
            continue
        rows.append((used, d, bool(live & set(info.get("clusters") or [])), _size(d)))
    total = sum(r[3] for r in rows)
    removed = []
    for used, d, kept, size in sorted(rows, key=lambda r: r[0]):  # least recently used first
        old = max_age > 0 and now - used > max_age
        over = cap > 0 and total > cap
        if kept or not (old or over):
            continue
        if _remove(d, used):
            removed.append(d)
            total -= size
    return removed


def _remove(d: Path, used: float) -> bool:
    fd = _open_lock(d, fcntl.LOCK_EX, block=False)
    if fd is None:  # a copy in progress holds it
        return False
    try:
        if _read_use(d).get("used", used) != used:  # a copy used it since it was looked at: kept
            return False
        shutil.rmtree(d, ignore_errors=True)
        for what in (".use", ".lock"):
            with contextlib.suppress(OSError):
                _side(d, what).unlink()
        return not d.exists()
    finally:
        os.close(fd)


def prune_quietly(gone: str | None = None) -> None:
    """`prune` where a command must not fail on it (after a COPY, at `down`)."""
    with contextlib.suppress(Exception):
        prune(gone=gone)
