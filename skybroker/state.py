"""Local state: SQLite under BROKER_HOME (WAL, schema version + migrations, JSON columns, no pickles).

The clouds' tags stay the source of truth; this is a cache of what we launched plus what we are about to
create (intents), so cleanup always knows what may exist. `status --refresh` reconciles it with the clouds.
"""
from __future__ import annotations

import contextvars
import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BrokerError
from .paths import ensure_home, touch_private

# Each entry upgrades the schema by one version (PRAGMA user_version). Never edit a released entry.
MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        cloud TEXT NOT NULL,
        region TEXT,
        zone TEXT,
        instance_type TEXT,
        accelerators TEXT,
        use_spot INTEGER NOT NULL DEFAULT 0,
        num_nodes INTEGER NOT NULL,
        hourly_price REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        launched_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        autostop_minutes INTEGER,
        autostop_down INTEGER NOT NULL DEFAULT 0,
        nodes TEXT NOT NULL DEFAULT '[]',
        resources TEXT,
        setup_key TEXT,
        task_id_seed TEXT
    );
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster TEXT NOT NULL,
        cloud TEXT NOT NULL,
        region TEXT,
        zone TEXT,
        created_at REAL NOT NULL,
        state TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster TEXT NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_cluster ON events(cluster, id);
    """,
    # v2: managed jobs
    """
    CREATE TABLE managed_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        task TEXT NOT NULL,
        secrets BLOB,
        resources TEXT,
        status TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        cluster TEXT,
        cluster_job_id INTEGER,
        task_id TEXT NOT NULL,
        recoveries INTEGER NOT NULL DEFAULT 0,
        restarts_on_errors INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        segment_start REAL,
        segment_price REAL,
        place TEXT,
        blocked TEXT NOT NULL DEFAULT '[]',
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        failure TEXT,
        log_offsets TEXT NOT NULL DEFAULT '{}',
        updated_at REAL
    );
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX job_events_job ON job_events(job_id, id);
    """,
    # v3: deadline-aware managed jobs (JSON: progress, held market, policy bookkeeping)
    """
    ALTER TABLE managed_jobs ADD COLUMN deadline_state TEXT
    """,
    # v4: the intents ledger records instance ids and who launched; clusters know their owner (a managed
    # job's controller); managed jobs record the submit token before submitting (runs once); the
    # database's identity (a truncated or replaced file is detected, see connect()).
    """
    ALTER TABLE intents ADD COLUMN instance_ids TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE intents ADD COLUMN updated_at REAL;
    ALTER TABLE clusters ADD COLUMN owner TEXT;
    ALTER TABLE managed_jobs ADD COLUMN submit_token TEXT;
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)
    """,
    # v5: the cost ledger (costs/ledger.py): a run per life of a cluster's instances, with the prices
    # frozen at launch, and its billing intervals (up / stopped). Never deleted by `down`.
    """
    CREATE TABLE cost_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster TEXT NOT NULL,
        job_id INTEGER,
        cloud TEXT,
        region TEXT,
        zone TEXT,
        instance_type TEXT,
        accelerators TEXT,
        resources TEXT,
        num_nodes INTEGER NOT NULL,
        market TEXT NOT NULL,
        price REAL NOT NULL,
        od_price REAL,
        disk_gb REAL NOT NULL DEFAULT 0,
        disk_price REAL NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE INDEX cost_runs_cluster ON cost_runs(cluster, ended_at);
    CREATE INDEX cost_runs_job ON cost_runs(job_id);
    CREATE TABLE cost_intervals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        start_at REAL NOT NULL,
        end_at REAL
    );
    CREATE INDEX cost_intervals_run ON cost_intervals(run_id, id)
    """,
    # v6: spot hours and preemptions managed jobs observed per place (risk-aware placement, jobs/risk.py)
    """
    CREATE TABLE spot_exposure (
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        hours REAL NOT NULL DEFAULT 0,
        preemptions INTEGER NOT NULL DEFAULT 0,
        updated_at REAL,
        PRIMARY KEY (cloud, region, zone, instance_type)
    )
    """,
    # v7: managed pipelines (one row per pipeline: its stages as JSON, the index of the current one)
    """
    ALTER TABLE managed_jobs ADD COLUMN stages TEXT;
    ALTER TABLE managed_jobs ADD COLUMN stage INTEGER NOT NULL DEFAULT 0
    """,
    # v8: which mechanism enforces a cluster's autostop: "node" (its own nodes stop it, autostop on the
    # cluster itself) or "local" (the watcher on this machine); NULL when no autostop is set
    """
    ALTER TABLE clusters ADD COLUMN autostop_where TEXT
    """,
    # v9: server mode: users (API tokens stored hashed, see users.py); every cluster and managed job
    # records the user who made it (NULL in local mode: the machine's one user)
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    ALTER TABLE clusters ADD COLUMN user_name TEXT;
    ALTER TABLE managed_jobs ADD COLUMN user_name TEXT
    """,
    # v10: buckets of `file_mounts` storages with a `name` (SkyPilot's `sky storage`): which store, whether
    # skybroker created it, whether it outlives its clusters, and who uses it (storage/records.py)
    """
    CREATE TABLE storage (
        name TEXT PRIMARY KEY, kind TEXT NOT NULL, uri TEXT NOT NULL, sources TEXT NOT NULL DEFAULT '[]',
        persistent INTEGER NOT NULL DEFAULT 1, managed INTEGER NOT NULL DEFAULT 0, mode TEXT,
        users TEXT NOT NULL DEFAULT '[]', created_at REAL, updated_at REAL)
    """,
    # v11: job pools (jobs/pools.py): a pool's task and size, its workers (each a cluster, with the managed
    # job it runs), and which pool a managed job runs in, with its rank among the jobs launched together
    """
    CREATE TABLE pools (
        name TEXT PRIMARY KEY, task TEXT NOT NULL, secrets BLOB, resources TEXT, workers INTEGER NOT NULL,
        down_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL, user_name TEXT);
    CREATE TABLE pool_workers (
        pool TEXT NOT NULL, idx INTEGER NOT NULL, cluster TEXT NOT NULL, status TEXT NOT NULL, job_id INTEGER,
        setup_job INTEGER, recoveries INTEGER NOT NULL DEFAULT 0, blocked TEXT, message TEXT, updated_at REAL,
        PRIMARY KEY (pool, idx));
    ALTER TABLE managed_jobs ADD COLUMN pool TEXT;
    ALTER TABLE managed_jobs ADD COLUMN job_rank INTEGER;
    ALTER TABLE managed_jobs ADD COLUMN num_jobs INTEGER
    """,
    # v12: volumes (`broker volumes apply`, and the ephemeral ones of a task's `volumes:`): where each is,
    # its id at the cloud, and the cluster it is attached to (volumes/records.py)
    """
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY, type TEXT NOT NULL, cloud TEXT NOT NULL, region TEXT, zone TEXT,
        size_gb INTEGER NOT NULL, labels TEXT NOT NULL DEFAULT '{}', cloud_id TEXT NOT NULL,
        ephemeral INTEGER NOT NULL DEFAULT 0, cluster TEXT, mount_path TEXT, user_name TEXT,
        created_at REAL, updated_at REAL)
    """,
    # v13: the user of each cost-ledger run (server mode), so a non-admin's `cost-report` is their own
    # clusters' and jobs' runs only (runs recorded before have no user: admins see them)
    """
    ALTER TABLE cost_runs ADD COLUMN user_name TEXT
    """,
    # v14: the SSH key pair the broker reaches its nodes with, on PostgreSQL only (runtime/keys.py), so
    # server replicas with different BROKER_HOMEs reach the same clusters; the private key encrypted with
    # the secrets key (BROKER_SECRETS_KEY, the same on every replica)
    """
    CREATE TABLE ssh_keys (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, private BLOB NOT NULL, public TEXT NOT NULL, created_at REAL)
    """,
    # v15: pinned host keys, on PostgreSQL only (runtime/keys.py HostKeyStore), so every replica checks a
    # node against the key the first one pinned (each home keeps a copy for the system ssh)
    """
    CREATE TABLE host_keys (
        instance_id TEXT PRIMARY KEY, type TEXT NOT NULL, key TEXT NOT NULL, host TEXT, pinned_at REAL)
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

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
    setup_key: str | None = None
    task_id_seed: str | None = None
    owner: str | None = None  # "managed:<job id>" for a managed job's cluster (its controller owns it)
    autostop_where: str | None = None  # AUTOSTOP_NODE or AUTOSTOP_LOCAL while autostop is set
    user_name: str | None = None  # server mode: the user who launched it (None in local mode)

    @property
    def head(self) -> NodeRecord | None:
        return min(self.nodes, key=lambda n: n.rank) if self.nodes else None

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


def db_path() -> Path:
    return ensure_home() / "state.db"


class StateError(BrokerError):
    """The state database cannot be used as it is (corrupt, truncated, replaced, unreadable)."""


def _recovery_hint(path: Path) -> str:
    return (f"move it aside (`mv {path} {path}.bad`; if you reset it on purpose, also remove "
            f"{path.parent / ID_FILE}), then `broker status --refresh --adopt` rebuilds the clusters the clouds' "
            "tags still know (`broker gc` lists what is left)")


ID_FILE = "state.id"  # the database's identity, outside it: a truncated or replaced database is noticed


def connect(path: Path | None = None) -> sqlite3.Connection:
    path = Path(path or db_path())
    existed = path.exists()
    try:
        if not existed:
            touch_private(path)  # 0600 before SQLite creates it with the umask's mode (WAL/SHM copy it)
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        for attempt in range(40):  # switching to WAL ignores the busy timeout: first opens racing retry
            if mode.lower() == "wal":
                break
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 39:
                    raise
                time.sleep(0.01 * (attempt + 1))
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn)
        _check_identity(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"the state database {path} is corrupt or unreadable ({exc})",
                         _recovery_hint(path)) from None
    except OSError as exc:
        raise StateError(f"cannot open the state database {path}: {exc.strerror or exc}",
                         "check the permissions of BROKER_HOME (it must be yours, mode 0700)") from None
    return conn


def _check_identity(conn: sqlite3.Connection, path: Path) -> None:
    """A database knows its id and BROKER_HOME/state.id repeats it. A database without an id next to an
    id file was truncated or replaced (a 0-byte state.db would otherwise silently show "no clusters"
    while instances still run)."""
    import uuid

    id_file = path.parent / ID_FILE

    def expected_id():
        try:
            return id_file.read_text().strip()
        except FileNotFoundError:
            return None

    row = conn.execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()
    if row is None:
        # A new database, or one truncated or replaced: decided under the write lock, where the first
        # connection of a new home gives it its id. The id file is written after the commit (below), so
        # that another connection opening it at the same moment (a thread, a process) never sees the file
        # without the row, and a crash in between leaves a row without a file (rewritten at the next open).
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone() is None:
                if expected_id():
                    raise StateError(f"the state database {path} was truncated or replaced: it does not carry "
                                     f"the id recorded in {id_file}", _recovery_hint(path))
                conn.execute("INSERT INTO meta (k, v) VALUES ('db_id', ?)", (uuid.uuid4().hex,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        row = conn.execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()
    expected = expected_id()
    if expected is None:
        _write_id(id_file, row[0])
    elif expected != row[0]:
        raise StateError(f"the state database {path} is not the one this BROKER_HOME had (id mismatch with "
                         f"{id_file})", _recovery_hint(path))


def _write_id(id_file: Path, db_id: str) -> None:
    import os

    tmp = id_file.with_name(f".{id_file.name}.{os.getpid()}.{threading.get_ident()}")  # threads too (server)
    touch_private(tmp)
    tmp.write_text(db_id + "\n")
    os.replace(tmp, id_file)


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
        for i in range(version, SCHEMA_VERSION):
            for stmt in (s.strip() for s in MIGRATIONS[i].split(";")):
                if stmt:
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {i + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_local = threading.local()

# Server mode: the user a request (or a managed job's controller step) acts for; new clusters record it.
current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("broker_user", default=None)


def db_url() -> str:
    """BROKER_DB: a postgresql:// URL (server mode), or empty for SQLite under BROKER_HOME. Read from the
    environment only (it may carry a password; `broker server start --db` sets it for its process)."""
    return os.environ.get("BROKER_DB", "")


def db():
    """A connection for the current BROKER_HOME (or BROKER_DB), one per thread (sqlite3 objects are
    per-thread; one psycopg connection per thread keeps transactions apart)."""
    url = db_url()
    key = url or db_path()
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "key", None) != key:
        conn = connect_pg(url) if url else connect(key)
        _local.conn, _local.key = conn, key
    return conn


def close_thread_db() -> None:
    """Close this thread's connection (a thread that is about to end: the server's stream threads)."""
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def is_postgres() -> bool:
    return bool(db_url())


def connect_pg(url: str):
    if not url.startswith(("postgresql://", "postgres://")):
        raise StateError(f"BROKER_DB must be a postgresql:// URL (got {url.split('://')[0]}://…)",
                         "e.g. postgresql://broker@dbhost/broker, or unset it for SQLite under BROKER_HOME")
    try:
        from . import db_pg
    except ImportError:
        raise StateError("a PostgreSQL state database needs psycopg, which is not installed",
                         "pip install 'skybroker[server]'") from None
    try:
        return db_pg.connect(url, MIGRATIONS)
    except db_pg.psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StateError(f"cannot use the state database {db_pg.redact_url(url)}: {db_pg.redact_url(msg)}",
                         "check the URL, that PostgreSQL runs, and the user's rights on the database") from None


# ----------------------------------------------------------------------------------------------
# clusters

_COLS = ("name", "cloud", "region", "zone", "instance_type", "accelerators", "use_spot", "num_nodes",
         "hourly_price", "status", "launched_at", "updated_at", "autostop_minutes", "autostop_down", "nodes",
         "resources", "setup_key", "task_id_seed", "owner", "autostop_where", "user_name")


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
    updates = ", ".join(f"{c}=excluded.{c}" for c in _COLS if c not in ("name", "user_name"))
    updates += ", user_name=COALESCE(excluded.user_name, clusters.user_name)"  # a cluster keeps its user
    db().execute(f"INSERT INTO clusters ({cols}) VALUES ({marks}) ON CONFLICT(name) DO UPDATE SET {updates}",
                 values)


def get_cluster(name: str) -> ClusterRecord | None:
    row = db().execute("SELECT * FROM clusters WHERE name = ?", (name,)).fetchone()
    return _row_to_cluster(row) if row else None


def list_clusters() -> list[ClusterRecord]:
    return [_row_to_cluster(r) for r in db().execute("SELECT * FROM clusters ORDER BY launched_at, name")]


def delete_cluster(name: str) -> None:
    db().execute("DELETE FROM clusters WHERE name = ?", (name,))


def set_status(name: str, status: str) -> None:
    db().execute("UPDATE clusters SET status = ?, updated_at = ? WHERE name = ?", (status, time.time(), name))


def set_autostop(name: str, minutes: int | None, down: bool, where: str | None = AUTOSTOP_LOCAL) -> None:
    where = None if minutes is None else where
    db().execute("UPDATE clusters SET autostop_minutes = ?, autostop_down = ?, autostop_where = ?, updated_at = ? "
                 "WHERE name = ?", (minutes, int(down), where, time.time(), name))


# ----------------------------------------------------------------------------------------------
# intents: recorded before a create call, so cleanup knows what may exist even after a crash (see
# intents.py for the ledger's rules and its reconciliation)

INTENT_OPEN = ("creating", "created")  # "adopted" (the cluster is in the state) and "cleaned" are closed


def add_intent(cluster: str, cloud: str, region: str | None, zone: str | None) -> int:
    now = time.time()
    cur = db().execute("INSERT INTO intents (cluster, cloud, region, zone, created_at, state, updated_at)"
                       " VALUES (?,?,?,?,?,?,?)", (cluster, cloud, region, zone, now, "creating", now))
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
    db().execute("INSERT INTO events (cluster, ts, kind, message) VALUES (?,?,?,?)",
                 (cluster, time.time(), kind, message))


def events(cluster: str) -> list[dict]:
    return [dict(r) for r in db().execute("SELECT * FROM events WHERE cluster = ? ORDER BY id", (cluster,))]


def recent_events(limit: int = 50) -> list[dict]:
    rows = db().execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
    return [dict(r) for r in reversed(rows)]
