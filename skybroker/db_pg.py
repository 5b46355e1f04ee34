"""The state database on PostgreSQL (server mode, `broker server start --db postgresql://…`).

state.py and jobs/store.py speak SQLite's dialect through a DB-API connection. This module gives them a
connection with the same surface (`execute` → cursor with fetchone/fetchall/iteration/rowcount/lastrowid,
rows readable by name and by position) on psycopg 3, translating the few SQLite-isms they use:

  ?            → %s            :name → %(name)s            (a literal % is doubled)
  BEGIN IMMEDIATE → BEGIN      INSERT OR IGNORE → INSERT … ON CONFLICT DO NOTHING
  x IS ?       → x IS NOT DISTINCT FROM %s
  INSERT into a table with an id column → … RETURNING id (cursor.lastrowid)
  DDL: INTEGER PRIMARY KEY AUTOINCREMENT → BIGSERIAL PRIMARY KEY, INTEGER → BIGINT, REAL → DOUBLE
       PRECISION, BLOB → BYTEA

The schema version (SQLite's PRAGMA user_version) lives in a one-row table, and migrations run under a
transaction-scoped advisory lock, so replicas starting together migrate once. Imported only when a
PostgreSQL URL is configured: local mode never loads psycopg.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache

import psycopg

MIGRATION_LOCK = 0x6272_6F6B  # pg_advisory_xact_lock key for schema migrations ("brok")
_ID_TABLES = ("intents", "events", "managed_jobs", "job_events", "cost_runs", "cost_intervals")


class Row(dict):
    """A row readable as row["col"], row[0] and dict(row) (like sqlite3.Row)."""

    __slots__ = ("_values",)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._values[key]
        return dict.__getitem__(self, key)

    def __iter__(self):  # like sqlite3.Row: the values, so `(a, b) = row` works (dict(row) uses keys())
        return iter(self._values)

    def __len__(self):
        return len(self._values)


def _row_factory(cursor):
    names = [c.name for c in cursor.description or ()]

    def make(values):
        r = Row(zip(names, values))
        r._values = tuple(values)
        return r

    return make


@lru_cache(maxsize=512)
def translate(sql: str, named: bool) -> tuple[str, bool]:
    """SQLite statement → (PostgreSQL statement, whether it returns the new row's id)."""
    s = sql.strip()
    if s.upper() == "BEGIN IMMEDIATE":
        return "BEGIN", False
    s = s.replace("%", "%%")
    s = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", s)
    if named:
        s = re.sub(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", r"%(\1)s", s)
    s = s.replace("?", "%s")
    ignore = False
    if re.match(r"INSERT OR IGNORE\b", s, re.I):
        s = "INSERT" + s[len("INSERT OR IGNORE"):]
        ignore = True
    returning = False
    m = re.match(r"INSERT INTO (\w+)", s, re.I)
    if m and m.group(1).lower() in _ID_TABLES and "RETURNING" not in s.upper():
        s += " RETURNING id"
        returning = True
    if ignore:
        s = s.replace(" RETURNING id", "") + " ON CONFLICT DO NOTHING" + (" RETURNING id" if returning else "")
    return s, returning


_WRITE = re.compile(r"^\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE|DELETE\s+FROM|REPLACE\s+INTO)\s+(\w+)", re.I)


@lru_cache(maxsize=512)
def written_table(sql: str) -> str | None:
    """The table a write statement changes (None for anything else)."""
    m = _WRITE.match(sql)
    return m.group(1).lower() if m else None


# Called with a table's name after this process changed it (a write outside a transaction, or at the
# COMMIT of one): the server's read cache (server/cache.py) drops what it read from that table.
on_write = None


def translate_ddl(sql: str) -> str:
    s = re.sub(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY", sql, flags=re.I)
    s = re.sub(r"\bINTEGER\b", "BIGINT", s)
    s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
    return re.sub(r"\bBLOB\b", "BYTEA", s)


class Cursor:
    def __init__(self, cur, lastrowid=None, rows=None):
        self._cur = cur
        self.lastrowid = lastrowid
        self.rowcount = cur.rowcount
        self._rows = rows

    def fetchone(self):
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self):
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self):
        return iter(self.fetchall())


class Connection:
    """One psycopg connection in autocommit mode (like the SQLite one: isolation_level=None); explicit
    BEGIN/COMMIT/ROLLBACK statements make transactions. Reconnects once when the server went away
    between two statements outside a transaction (a PostgreSQL restart)."""

    backend = "postgresql"

    def __init__(self, url: str):
        self.url = url
        self._conn = self._connect()
        self._in_tx = False
        self._written: set[str] = set()
        self.lock = threading.Lock()

    def _connect(self):
        return psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, connect_timeout=10)

    def execute(self, sql: str, params=()):
        named = isinstance(params, dict)
        q, returning = translate(sql, named)
        word = q.split(None, 1)[0].upper() if q else ""
        try:
            try:
                cur = self._conn.execute(q, params or None)
            except psycopg.OperationalError:
                if self._in_tx or not self._conn.closed and self._conn.info.transaction_status != 0:
                    raise
                self._conn = self._connect()
                cur = self._conn.execute(q, params or None)
        except psycopg.OperationalError as exc:
            if not (self._conn.closed or self._conn.broken):  # e.g. a deadlock: the caller's to handle
                raise
            self._in_tx = False  # PostgreSQL down, restarting or out of reach: said as at connect, not as a
            raise lost(self.url, exc) from None  # bug (the next statement connects again)
        if word == "BEGIN":
            self._in_tx = True
        elif word in ("COMMIT", "ROLLBACK"):
            self._in_tx = False
            written, self._written = self._written, set()
            if word == "COMMIT" and on_write is not None:
                for t in written:
                    on_write(t)
        elif on_write is not None:
            t = written_table(sql)
            if t is not None:
                if self._in_tx:
                    self._written.add(t)
                else:
                    on_write(t)
        if returning:
            rows = cur.fetchall()
            return Cursor(cur, lastrowid=rows[0][0] if rows else None, rows=[])
        return Cursor(cur)

    def executescript_ddl(self, sql: str) -> None:
        self._conn.execute(translate_ddl(sql))

    def close(self) -> None:
        self._conn.close()


def lost(url: str, exc: BaseException):
    """The StateError of a statement PostgreSQL could not run for want of a connection."""
    from .state_db import StateError

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StateError(f"cannot use the state database {redact_url(url)}: {redact_url(msg)}",
                      "check that PostgreSQL runs and is reachable from here, then retry")


def connect(url: str, migrations: list[str]) -> Connection:
    conn = Connection(url)
    migrate(conn, migrations)
    return conn


def schema_version(conn: Connection) -> int:
    try:
        row = conn._conn.execute("SELECT version FROM broker_schema WHERE id = 1").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def migrate(conn: Connection, migrations: list[str]) -> None:
    from .state_schema import refuse_newer

    version = schema_version(conn)
    refuse_newer(version, redact_url(conn.url), len(migrations))
    if version == len(migrations):
        return
    conn.execute("BEGIN")
    try:
        conn._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))  # one migrator at a time
        conn._conn.execute("CREATE TABLE IF NOT EXISTS broker_schema (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)")
        version = schema_version(conn)  # re-read under the lock
        refuse_newer(version, redact_url(conn.url), len(migrations))  # never write an older version over it
        for i in range(version, len(migrations)):
            for stmt in (s.strip() for s in migrations[i].split(";")):
                if stmt:
                    conn.executescript_ddl(stmt)
        conn._conn.execute("INSERT INTO broker_schema (id, version) VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                           "SET version = excluded.version", (len(migrations),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def redact_url(text: str) -> str:
    """The text with any URL's password replaced by *** (for messages and logs)."""
    def one(m):
        scheme, rest = m.group(1), m.group(2)
        auth, at, host = rest.rpartition("@")
        if not at or ":" not in auth:
            return m.group(0)
        return f"{scheme}{auth.split(':', 1)[0]}:***@{host}"

    return re.sub(r"([a-z][a-z0-9+.-]*://)([^\s/?#]*)", one, text)
