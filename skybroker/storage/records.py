"""The `storage` table: named buckets of file_mounts (what `broker storage ls` lists). A record says
which store, whether skybroker created the bucket (`managed`: only those are ever deleted, and only
when the bucket's own tag agrees), whether it outlives its clusters (`persistent`), and its users:
`cluster:NAME` for a cluster that mounts or copies it, `owner:managed:ID` for a managed job (its
bucket stays across recoveries and goes when the job ends)."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import state


@dataclass
class StorageRecord:
    name: str
    kind: str
    uri: str
    sources: list[str] = field(default_factory=list)
    persistent: bool = True
    managed: bool = False
    mode: str | None = None
    users: list[str] = field(default_factory=list)
    created_at: float | None = None
    updated_at: float | None = None


def _row(r) -> StorageRecord:
    d = dict(r)
    d["sources"] = json.loads(d["sources"] or "[]")
    d["users"] = json.loads(d["users"] or "[]")
    d["persistent"], d["managed"] = bool(d["persistent"]), bool(d["managed"])
    return StorageRecord(**d)


def get(name: str) -> StorageRecord | None:
    r = state.db().execute("SELECT * FROM storage WHERE name = ?", (name,)).fetchone()
    return None if r is None else _row(r)


def all_records() -> list[StorageRecord]:
    return [_row(r) for r in state.db().execute("SELECT * FROM storage ORDER BY name")]


def save(rec: StorageRecord) -> None:
    rec.updated_at = time.time()
    rec.created_at = rec.created_at or rec.updated_at
    state.db().execute(
        "INSERT INTO storage (name, kind, uri, sources, persistent, managed, mode, users, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, uri=excluded.uri, "
        "sources=excluded.sources, persistent=excluded.persistent, managed=excluded.managed, mode=excluded.mode, "
        "users=excluded.users, updated_at=excluded.updated_at",
        (rec.name, rec.kind, rec.uri, json.dumps(rec.sources), int(rec.persistent), int(rec.managed), rec.mode,
         json.dumps(sorted(set(rec.users))), rec.created_at, rec.updated_at))


def delete(name: str) -> None:
    state.db().execute("DELETE FROM storage WHERE name = ?", (name,))


def used_by(user: str) -> list[StorageRecord]:
    return [r for r in all_records() if user in r.users]


@contextmanager
def locked():
    """One read-modify-write of the table at a time (two launches sharing a storage, or a launch and a
    `down`, never lose each other's user entry)."""
    conn = state.db()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        state.rollback(conn)
        raise
    conn.execute("COMMIT")


def in_use_by_clusters(recs) -> list[tuple[str, list[str]]]:
    """[(storage name, [live clusters using it])] for those of `recs` a cluster still in the state uses (a
    cluster forgotten meanwhile does not hold its buckets)."""
    from .. import state

    out = []
    for r in recs:
        live = sorted(u.split(":", 1)[1] for u in r.users
                      if u.startswith("cluster:") and state.get_cluster(u.split(":", 1)[1]) is not None)
        if live:
            out.append((r.name, live))
    return out
