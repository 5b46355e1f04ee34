"""Local state: the records of what we launched (clusters, their nodes), intents and events, and their queries.

The clouds' tags stay the source of truth; this is a cache of what we launched plus what we are about to
create (intents), so cleanup always knows what may exist. `status --refresh` reconciles it with the clouds.
The database itself (SQLite under BROKER_HOME with WAL, or PostgreSQL) is opened by state_db.py, its
schema and migrations are state_schema.py; JSON columns, no pickles.
"""
from __future__ import annotations

import contextvars
import os
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field

from .state_db import db, db_path, db_url, is_postgres, rollback

__all__ = [  # with the database accessors of state_db.py, which its callers reach as state.db() etc.
    "db", "db_path", "db_url", "is_postgres", "rollback", "INIT", "UP", "STOPPED", "INTERRUPTED", "DEGRADED",
    "AUTOSTOP_NODE", "AUTOSTOP_LOCAL", "NodeRecord", "ClusterRecord", "current_user", "save_cluster",
    "get_cluster", "list_clusters", "delete_cluster", "finished_node_jobs", "add_finished_node_jobs", "set_status",
    "set_autostop", "INTENT_OPEN", "add_intent", "set_intent", "open_intents", "close_intents", "add_event",
    "events", "recent_events", "home_id", "home_suffix", "cloud_name_for", "legacy_names", "get_cluster_on_cloud",
]

# Cluster statuses. INIT: a launch is bringing it up (the launching command holds the cluster's lock);
# INTERRUPTED: that launch died (SIGKILL, crash) and left it half-made; `down` removes it, `launch -c`
# resumes it, `gc` offers to remove it. DEGRADED: `status --refresh` found fewer running instances.
INIT, UP, STOPPED, INTERRUPTED, DEGRADED = "INIT", "UP", "STOPPED", "INTERRUPTED", "DEGRADED"
# Who enforces a cluster's autostop: its own nodes (no broker process needed), or the watcher on this machine.
AUTOSTOP_NODE, AUTOSTOP_LOCAL = "node", "local"


@dataclass
class NodeRecord:
    instance_id: str
    rank: int
    ip: str  # the address we connect to (public IP, or private for ssh pools / local)
    private_ip: str | None = None
    ssh_user: str | None = None
    ssh_port: int = 22
    home: str | None = None  # local cloud: the node's sandbox directory
    identity_file: str | None = None


@dataclass
class ClusterRecord:
    name: str
    cloud: str
    region: str | None
    zone: str | None
    instance_type: str | None
    accelerators: str | None
    use_spot: bool
    num_nodes: int
    hourly_price: float
    status: str
    launched_at: float
    updated_at: float = 0.0
    autostop_minutes: int | None = None
    autostop_down: bool = False
    nodes: list[NodeRecord] = field(default_factory=list)
    resources: str | None = None
    setup_key: str | None = None  # unused: the nodes' agents record a successful setup (kept: state and wire)
    task_id_seed: str | None = None
    owner: str | None = None  # "managed:<job id>" for a managed job's cluster (its controller owns it)
    autostop_where: str | None = None  # AUTOSTOP_NODE or AUTOSTOP_LOCAL while autostop is set
    user_name: str | None = None  # server mode: the user who launched it (None in local mode)
    ports: str | None = None  # the ports its task opened, "8888,9000-9010" (`broker status --endpoints`)
    # its name on the cloud (tags, instance/pod/security-group names): `name` plus this home's suffix
    # (cloud_name_for); None for a cluster recorded before schema v19, whose resources carry `name`
    name_on_cloud: str | None = None
    # `status --refresh` only, never stored: why its cloud could not be asked ({message, hint, exit_code})
    refresh_error: dict | None = None

    @property
    def cloud_name(self) -> str:
        """The name every provider call gets: what its resources are tagged and named with."""
        return self.name_on_cloud or self.name

    @property
    def head(self) -> NodeRecord | None:
        return min(self.nodes, key=lambda n: n.rank) if self.nodes else None

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


# Server mode: the user a request (or a managed job's controller step) acts for; new clusters record it.
current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("broker_user", default=None)
# Server mode: the caller of a request, (name, admin), set by the server around each call (None in local mode
# and in the controller's threads); a launch checks it again under the cluster's lock (cluster_ops.check_user).
current_caller: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("broker_caller",
                                                                                          default=None)


# ----------------------------------------------------------------------------------------------
# clusters

_COLS = ("name", "cloud", "region", "zone", "instance_type", "accelerators", "use_spot", "num_nodes",
         "hourly_price", "status", "launched_at", "updated_at", "autostop_minutes", "autostop_down", "nodes",
         "resources", "setup_key", "task_id_seed", "owner", "autostop_where", "user_name", "ports",
         "name_on_cloud")


def _row_to_cluster(row: sqlite3.Row) -> ClusterRecord:
    d = dict(row)
    d["nodes"] = [NodeRecord(**n) for n in json.loads(d["nodes"] or "[]")]
    d["use_spot"] = bool(d["use_spot"])
    d["autostop_down"] = bool(d["autostop_down"])
    return ClusterRecord(**d)


def save_cluster(rec: ClusterRecord) -> None:
    rec.updated_at = time.time()
    if rec.user_name is None:
        rec.user_name = current_user.get()
    values = asdict(rec)
    values["nodes"] = json.dumps([asdict(n) for n in rec.nodes])
    values["use_spot"] = int(rec.use_spot)
    values["autostop_down"] = int(rec.autostop_down)
    cols = ", ".join(_COLS)
    marks = ", ".join(f":{c}" for c in _COLS)
    updates = ", ".join(f"{c}=excluded.{c}" for c in _COLS if c not in ("name", "user_name", "name_on_cloud"))
    updates += ", user_name=COALESCE(excluded.user_name, clusters.user_name)"  # a cluster keeps its user
    updates += ", name_on_cloud=COALESCE(clusters.name_on_cloud, excluded.name_on_cloud)"  # and its cloud name
    db().execute(f"INSERT INTO clusters ({cols}) VALUES ({marks}) ON CONFLICT(name) DO UPDATE SET {updates}",
                 values)


def get_cluster(name: str) -> ClusterRecord | None:
    row = db().execute("SELECT * FROM clusters WHERE name = ?", (name,)).fetchone()
    return _row_to_cluster(row) if row else None


def get_cluster_on_cloud(name_on_cloud: str) -> ClusterRecord | None:
    """The cluster whose name on the cloud is `name_on_cloud` (providers that keep no state of their own)."""
    row = db().execute("SELECT * FROM clusters WHERE COALESCE(name_on_cloud, name) = ? ORDER BY name = ? DESC",
                       (name_on_cloud, name_on_cloud)).fetchone()
    return _row_to_cluster(row) if row else None


def list_clusters() -> list[ClusterRecord]:
    return [_row_to_cluster(r) for r in db().execute("SELECT * FROM clusters ORDER BY launched_at, name")]


def delete_cluster(name: str) -> None:
    db().execute("DELETE FROM clusters WHERE name = ?", (name,))
    db().execute("DELETE FROM node_jobs WHERE cluster = ?", (name,))


def finished_node_jobs(cluster: str) -> dict[tuple[str, int], tuple[str, int | None, str | None]]:
    """(instance id, job id) → (status, exit code, reason): the jobs seen finished on the cluster's nodes."""
    rows = db().execute("SELECT instance_id, job_id, status, exit_code, reason FROM node_jobs WHERE cluster = ?",
                        (cluster,)).fetchall()
    return {(r["instance_id"], r["job_id"]): (r["status"], r["exit_code"], r["reason"]) for r in rows}


def add_finished_node_jobs(cluster: str, rows: list[tuple[str, int, str, int | None, str | None]]) -> None:
    """Record jobs seen finished on nodes: (instance id, job id, status, exit code, reason) each."""
    now, conn = time.time(), db()
    conn.execute("BEGIN IMMEDIATE")  # one commit for them all (a first `queue` of a long-lived cluster)
    try:
        for iid, job_id, status, code, reason in rows:
            conn.execute("INSERT OR IGNORE INTO node_jobs (instance_id, job_id, cluster, status, exit_code, reason,"
                         " seen_at) VALUES (?,?,?,?,?,?,?)", (iid, job_id, cluster, status, code, reason, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def set_status(name: str, status: str) -> None:
    db().execute("UPDATE clusters SET status = ?, updated_at = ? WHERE name = ?", (status, time.time(), name))


def set_autostop(name: str, minutes: int | None, down: bool, where: str | None = AUTOSTOP_LOCAL) -> None:
    where = None if minutes is None else where
    db().execute("UPDATE clusters SET autostop_minutes = ?, autostop_down = ?, autostop_where = ?, updated_at = ? "
                 "WHERE name = ?", (minutes, int(down), where, time.time(), name))


# ----------------------------------------------------------------------------------------------
# intents: recorded before a create call, so cleanup knows what may exist even after a crash (see
# intents.py for the ledger's rules and its reconciliation)

INTENT_OPEN = ("creating", "created")  # "adopted" (the cluster is in the state), "cleaned" and "refused" (the
# create call was refused before any instance was made, and the cloud could not be asked after) are closed


def add_intent(cluster: str, cloud: str, region: str | None, zone: str | None,
               cluster_on_cloud: str | None = None) -> int:
    now = time.time()
    cur = db().execute("INSERT INTO intents (cluster, cloud, region, zone, created_at, state, updated_at,"
                       " cluster_on_cloud) VALUES (?,?,?,?,?,?,?,?)",
                       (cluster, cloud, region, zone, now, "creating", now, cluster_on_cloud or cluster))
    return int(cur.lastrowid)


def set_intent(intent_id: int, state: str, instance_ids: list[str] | None = None) -> None:
    if instance_ids is None:
        db().execute("UPDATE intents SET state = ?, updated_at = ? WHERE id = ?", (state, time.time(), intent_id))
    else:
        db().execute("UPDATE intents SET state = ?, instance_ids = ?, updated_at = ? WHERE id = ?",
                     (state, json.dumps(list(instance_ids)), time.time(), intent_id))


def _intent_row(r) -> dict:
    d = dict(r)
    d["instance_ids"] = json.loads(d.get("instance_ids") or "[]")
    d["cluster_on_cloud"] = d.get("cluster_on_cloud") or d["cluster"]
    return d


def open_intents(cluster: str | None = None) -> list[dict]:
    q = "SELECT * FROM intents WHERE state IN ('creating', 'created')"
    args: tuple = ()
    if cluster:
        q += " AND cluster = ?"
        args = (cluster,)
    return [_intent_row(r) for r in db().execute(q + " ORDER BY id", args)]


def close_intents(cluster: str, cloud: str | None = None, region: str | None = None,
                  state: str = "cleaned") -> None:
    q = "UPDATE intents SET state = ?, updated_at = ? WHERE cluster = ? AND state IN ('creating', 'created')"
    args: list = [state, time.time(), cluster]
    if cloud:
        q += " AND cloud = ?"
        args.append(cloud)
    if region:
        q += " AND region IS ?"
        args.append(region)
    db().execute(q, args)


# ----------------------------------------------------------------------------------------------
# events (what happened to a cluster: provisioning attempts, failover, autostop...)

def add_event(cluster: str, kind: str, message: str) -> None:
    row = db().execute("SELECT user_name FROM clusters WHERE name = ?", (cluster,)).fetchone()
    user = row["user_name"] if row is not None else current_user.get()  # the cluster's user, whoever acts on it
    db().execute("INSERT INTO events (cluster, ts, kind, message, user_name) VALUES (?,?,?,?,?)",
                 (cluster, time.time(), kind, message, user))


def events(cluster: str) -> list[dict]:
    return [dict(r) for r in db().execute("SELECT * FROM events WHERE cluster = ? ORDER BY id", (cluster,))]


def recent_events(limit: int = 50) -> list[dict]:
    rows = db().execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
    return [dict(r) for r in reversed(rows)]


# ----------------------------------------------------------------------------------------------
# this home's identity on the clouds: a random id kept in the state (one per BROKER_HOME, or per server
# database), created on first use. Every resource a provider creates is tagged with it (clouds.base.TAG_HOME)
# and every new cluster's name on the cloud ends with a suffix derived from it, so two homes on one cloud
# account, Kubernetes namespace or SSH node pool never take each other's clusters for their own.

_HOME_FILE = "home.id"  # a copy beside a SQLite state: a database rebuilt after a loss keeps the home's id
_home_ids: dict = {}
_home_id_lock = threading.Lock()  # the threads of one process (the controller's jobs and workers) make it once
HOME_SUFFIX_LEN = 6


def home_id() -> str:
    """This home's id (32 hex digits)."""
    from .state_db import db_path

    key = db_url() or str(db_path())
    hid = _home_ids.get(key)
    if hid is None:
        with _home_id_lock:  # two first uses at once wrote home.id through one temporary file: one rename failed
            hid = _home_ids.get(key)
            if hid is None:
                hid = _home_ids[key] = _load_home_id()
    return hid


def _load_home_id() -> str:
    import uuid

    conn = db()
    row = conn.execute("SELECT v FROM meta WHERE k = 'home_id'").fetchone()
    path = None if is_postgres() else db_path().parent / _HOME_FILE
    kept, kept_legacy = (None, False) if path is None else (_read_home_file(path) or (None, False))
    if row is not None and kept is not None and kept != row[0]:
        from .state_db import StateError

        raise StateError(f"{path} holds home id {kept} but the state database {db_path()} has {row[0]}: one of them "
                         "was restored or copied from another BROKER_HOME",
                         f"this home's clusters' names on the cloud end with the first {HOME_SUFFIX_LEN} digits of "
                         "its id, its resources' `skybroker-home` tag is the whole id: put that id in "
                         f"{path}, or move the state database aside if it is the other home's", exit_code=2)
    if row is None:
        conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('home_id', ?)",
                     (kept or uuid.uuid4().hex,))
    hid = row[0] if row is not None else conn.execute("SELECT v FROM meta WHERE k = 'home_id'").fetchone()[0]
    if kept_legacy and hid == kept:  # a database rebuilt for a home from before schema v19: it stays one
        conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('legacy_names', '1')")
    legacy = _legacy_in_db(conn)
    if path is not None and (kept != hid or kept_legacy != legacy):  # made here, or the copy was lost: written
        from .paths import touch_private

        tmp = path.with_name(f".{_HOME_FILE}.{os.getpid()}")
        touch_private(tmp)
        tmp.write_text(hid + "\n" + ("legacy\n" if legacy else ""))
        tmp.replace(path)
    return hid


def _read_home_file(path) -> tuple[str, bool] | None:
    """(id, legacy) from BROKER_HOME/home.id (the id, then `legacy` for a home from before schema v19: see
    legacy_names); None only when there is no such file. One that cannot be read or holds no id is refused: a
    new id would make every cluster, tag and SSH claim of this home look like another home's (never downed by
    gc, never adopted), silently."""
    from .state_db import StateError

    try:
        words = path.read_text().lower().split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path} (this broker home's id): {exc.strerror or exc}",
                         "fix its owner or mode; it holds the 32 hex digits of the `skybroker-home` tag on "
                         "this home's cloud resources", exit_code=2) from None
    kept = words[0] if words else ""
    if len(kept) != 32 or any(c not in "0123456789abcdef" for c in kept):
        raise StateError(f"{path} does not hold a broker home id (32 hex digits)",
                         "write back this home's id: the `skybroker-home` tag (or label) on its cloud resources "
                         "shows it; remove the file only for a home that has no clusters left", exit_code=2)
    return kept, "legacy" in words[1:]


def home_suffix() -> str:
    """The suffix of this home's clusters' names on the cloud."""
    return home_id()[:HOME_SUFFIX_LEN]


def legacy_names() -> bool:
    """This home launched clusters before names on the cloud carried a home suffix (schema < v19): it may
    own resources without a home tag. Kept in home.id too, so a database rebuilt after a loss keeps it."""
    home_id()  # a rebuilt database learns it from home.id
    return _legacy_in_db(db())


def _legacy_in_db(conn) -> bool:
    return conn.execute("SELECT v FROM meta WHERE k = 'legacy_names'").fetchone() is not None


_CLOUD_NAME_MAX = 40  # as a user's cluster name (locks.validate_name): every provider's limits hold for it


def cloud_name_for(name: str, suffix: str | None = None) -> str:
    """A new cluster's name on the cloud: `name-<home suffix>`; a name too long for that keeps its first
    characters and a hash of the whole (`<head>-<hash>-<home suffix>`), so it stays unique in the home.
    `suffix`: another home's (tests, tools); this home's by default."""
    import hashlib

    suffix = suffix or home_suffix()
    if len(name) + 1 + len(suffix) <= _CLOUD_NAME_MAX:
        return f"{name}-{suffix}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:4]
    head = name[:_CLOUD_NAME_MAX - len(suffix) - len(digest) - 2].rstrip("-")
    return f"{head}-{digest}-{suffix}"
