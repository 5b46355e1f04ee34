"""The agent's files on the node: the SQLite state (jobs, setup markers, meta, tokens, claims) and the job
directories."""
import fcntl
import os
import time

from . import NODE_DIR, PENDING


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER UNIQUE NOT NULL, name TEXT, rank INTEGER, num_nodes INTEGER,
    spec TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER, reason TEXT,
    submitted_at REAL, started_at REAL, ended_at REAL,
    runner_pid INTEGER, runner_start TEXT, boot_id TEXT, pid INTEGER, pgid INTEGER,
    token TEXT, held_until REAL, notice TEXT);
CREATE TABLE IF NOT EXISTS setup_done (key TEXT PRIMARY KEY, done_at REAL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, job_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (path TEXT PRIMARY KEY, claimed_at REAL, top TEXT);
"""


def base():
    return os.path.join(os.path.expanduser("~"), NODE_DIR)


def job_dir(job_id):
    return os.path.join(base(), "jobs", str(job_id))


def log_path(job_id):
    return os.path.join(job_dir(job_id), "run.log")


SCHEMA_VERSION = 3  # PRAGMA user_version once SCHEMA (with the columns added since) is in place


def _sqlite():
    """The C module the sqlite3 package wraps: the package's Python layer imports datetime, collections
    and more for adapters the agent never uses (a third of a call's start-up). The package if it is missing."""
    try:
        import _sqlite3 as m

        m.connect, m.Row
    except (ImportError, AttributeError):  # pragma: no cover - a Python built differently
        import sqlite3 as m
    return m


def db():
    home = base()
    sq = _sqlite()
    path = os.path.join(home, "agent.db")
    if not os.path.exists(path):
        os.makedirs(os.path.join(home, "jobs"), mode=0o700, exist_ok=True)
    conn = sq.connect(path, timeout=60, isolation_level=None)
    conn.row_factory = sq.Row
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per commit, and still never corrupt
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return conn
    os.makedirs(os.path.join(home, "jobs"), mode=0o700, exist_ok=True)
    with open(os.path.join(home, "db.lock"), "a") as lock:  # serialise first-time creation only
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)").fetchall()]
        if "notice" not in cols:  # a node directory made by an earlier agent
            conn.execute("ALTER TABLE jobs ADD COLUMN notice TEXT")
        if "top" not in [r[1] for r in conn.execute("PRAGMA table_info(claims)").fetchall()]:
            conn.execute("ALTER TABLE claims ADD COLUMN top TEXT")
        if conn.execute("SELECT 1 FROM meta WHERE k='created_at'").fetchone() is None:
            conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (repr(time.time()),))
        conn.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
    return conn


class txn(object):
    """`with txn(conn):` one IMMEDIATE transaction (a class, not contextlib: imports cost every call)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        return False


def get(conn, job_id):
    return conn.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()


def job_out(row):
    keys = ("job_id", "name", "status", "exit_code", "submitted_at", "started_at", "ended_at", "rank",
            "num_nodes", "reason", "token")
    out = {k: row[k] for k in keys}
    out["held"] = row["held_until"] is not None and row["status"] == PENDING
    out["notice"] = row["notice"]
    return out


def read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except OSError:
        return b""


def stat(path):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


def meta(conn, key):
    row = conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
    return row[0] if row else None
