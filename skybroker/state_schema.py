"""The state database's schema, as its history: one migration per version (SQLite's PRAGMA user_version).

`MIGRATIONS` is the only definition of the tables of the state (clusters, intents, events, managed jobs,
the cost ledger, users, storage, pools, volumes, keys, the jobs seen finished on nodes); `migrate` applies
the missing ones to a SQLite connection under the write lock, and db_pg.py applies the same list on
PostgreSQL (translating the DDL).
A released entry is never edited: a change is a new entry. Opening the database is state_db.py; the
records and their queries are state.py.
"""
from __future__ import annotations

import sqlite3

from .errors import BrokerError

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
    # v16: the user each cluster event was recorded for (server mode), so a cluster's history is shown only to
    # its user, also once the cluster is gone or its name taken by another user (events before have none)
    """
    ALTER TABLE events ADD COLUMN user_name TEXT
    """,
    # v17: the ports a cluster's task opened ("8888,9000-9010"), for `broker status --endpoints`
    """
    ALTER TABLE clusters ADD COLUMN ports TEXT
    """,
    # v18: a job's finished status on a node, as the client last read it from that node's agent (keyed by
    # the node's instance): a node unreachable later cannot change it (backend_jobs.JobQueries)
    """
    CREATE TABLE node_jobs (
        instance_id TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT,
        seen_at REAL NOT NULL,
        PRIMARY KEY (instance_id, job_id)
    );
    CREATE INDEX node_jobs_cluster ON node_jobs (cluster)
    """,
    # v19: a cluster's name on the cloud (its user's name plus this home's suffix, state.cloud_name_for), so two
    # homes on one account never find each other's clusters; the clusters and intents recorded before keep
    # their name (their resources exist under it). A home that had launched before is marked `legacy_names`:
    # only such a home removes resources without a home tag in `broker gc` (gc.py)
    """
    ALTER TABLE clusters ADD COLUMN name_on_cloud TEXT;
    UPDATE clusters SET name_on_cloud = name;
    ALTER TABLE intents ADD COLUMN cluster_on_cloud TEXT;
    UPDATE intents SET cluster_on_cloud = cluster;
    INSERT INTO meta (k, v) SELECT 'legacy_names', '1' WHERE EXISTS (SELECT 1 FROM events) OR EXISTS
        (SELECT 1 FROM clusters) OR EXISTS (SELECT 1 FROM intents) OR EXISTS (SELECT 1 FROM managed_jobs)
    """,
    # v20: a managed job's end as decided ({status, exit_code, reason}), recorded before its cluster is torn
    # down: a controller stopped during the teardown finishes it, and never takes the gone cluster for a
    # preemption (which ran the job again)
    """
    ALTER TABLE managed_jobs ADD COLUMN outcome TEXT
    """,
    # v21: how many of a run's nodes an interval bills (NULL: all of them): a cluster that lost nodes (DEGRADED)
    # is billed for the nodes it still has (costs/ledger.py)
    """
    ALTER TABLE cost_intervals ADD COLUMN nodes INTEGER
    """,
    # v22: a run opens when a provisioning attempt is about to create instances (`intent_id`: its intent), not once
    # the launch succeeded, and `outcome` says what became of it (NULL: the launch brought the cluster up, or a run
    # from before): 'launching'/'created' while the attempt goes on, 'rolled back' (the attempt failed and its
    # instances were torn down), 'interrupted' (the launch died; its instances were found by reconcile): the
    # instances of failed attempts were paid for and are costed (costs/ledger.py)
    """
    ALTER TABLE cost_runs ADD COLUMN intent_id INTEGER;
    ALTER TABLE cost_runs ADD COLUMN outcome TEXT
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchemaError(BrokerError):
    """The database was written by a newer skybroker: this one does not know its tables (exit 2)."""

    exit_code = 2


def refuse_newer(version: int, where: str, known: int | None = None) -> None:
    known = SCHEMA_VERSION if known is None else known
    if version > known:
        raise NewerSchemaError(f"the state database {where} was written by a newer skybroker (schema v{version} > "
                               f"v{known}, the newest this one knows)",
                               "upgrade skybroker to the version that wrote it, or a newer one; nothing was changed")


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    refuse_newer(version, conn.execute("PRAGMA database_list").fetchone()[2] or "(in memory)")
    if version == SCHEMA_VERSION:
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
        if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
            conn.execute("ROLLBACK")
        raise
