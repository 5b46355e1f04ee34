"""The server's read cache: token → user, and the answers of the frequent reads (`status`, `jobs queue`),
each valid until the tables it was read from change — by this process, another worker, another replica
or a local `broker` command on the same database.

How a change is seen:
- PostgreSQL: statement-level triggers on the cached tables `pg_notify('broker_state', <table>)` on
  every INSERT/UPDATE/DELETE; a thread of each server process LISTENs and bumps that table's generation
  (PostgreSQL delivers a notification within milliseconds of the commit). This process's own writes bump
  it at once too (db_pg.on_write), so a client always reads its own writes. While the listening
  connection is down the cache is off, and it is emptied when listening resumes.
- SQLite: `PRAGMA data_version` on a connection of the cache's own, read before every cached answer: it
  changes whenever any other connection (any thread or process) committed.

So a revoked token is refused at the next request (PostgreSQL: within the delivery time of a
notification), and a cached answer is only ever served while no write to its tables has been seen since
it was computed (its generations are taken *before* the read runs). Answers that depend on something
other than the database are not cached: `status` with INIT clusters (a launch's lock decides whether it
is INTERRUPTED) or `--refresh`; the daemons' part of `status` is recomputed on hit unless this process
leads (then it is constant until leadership changes).
"""
from __future__ import annotations

import threading
import time

TABLES = ("clusters", "managed_jobs", "users")
CHANNEL = "broker_state"
MAX_ANSWERS = 2048

CACHE: "ReadCache | None" = None  # the server process's cache (app.create_app starts it)

_TRIGGERS = """
CREATE OR REPLACE FUNCTION broker_state_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('broker_state', TG_TABLE_NAME); RETURN NULL; END $$;
""" + "".join(f"""
CREATE OR REPLACE TRIGGER broker_state_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}
FOR EACH STATEMENT EXECUTE FUNCTION broker_state_notify();
""" for t in TABLES)


class ReadCache:
    def __init__(self, pg_url: str | None, sqlite_path: str | None = None):
        self._lock = threading.Lock()
        self._gen = dict.fromkeys(TABLES, 0)
        self._answers: dict[tuple, tuple] = {}
        self._users: dict[str, tuple] = {}
        self._flights: dict[tuple, threading.Lock] = {}
        self._stop = threading.Event()
        self.on = False
        self._sqlite = None
        if pg_url:
            self._url = pg_url
            threading.Thread(target=self._listen, name="cache-listen", daemon=True).start()
        elif sqlite_path:
            import sqlite3

            self._sqlite = sqlite3.connect(sqlite_path, check_same_thread=False, isolation_level=None)
            self._version = self._sqlite.execute("PRAGMA data_version").fetchone()[0]
            self.on = True

    # -- invalidation ------------------------------------------------------------------------

    def bump(self, *tables: str) -> None:
        with self._lock:
            for t in tables or TABLES:
                if t in self._gen:
                    self._gen[t] += 1

    def _poll_sqlite(self) -> None:
        if self._sqlite is None:
            return
        with self._lock:
            v = self._sqlite.execute("PRAGMA data_version").fetchone()[0]
            if v != self._version:
                self._version = v
                for t in self._gen:
                    self._gen[t] += 1

    def _listen(self) -> None:
        import psycopg

        from .. import db_pg

        failed = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    with conn.transaction():  # replicas starting together: one CREATE OR REPLACE at a time
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (db_pg.MIGRATION_LOCK,))
                        conn.execute(_TRIGGERS)
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.bump()  # whatever changed while nobody listened
                    self.on, failed = True, False
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            self.bump(n.payload)
            except Exception as exc:  # noqa: BLE001 - the database restarting: the cache is off meanwhile
                was_on, self.on = self.on, False
                self.bump()
                if was_on or not failed:  # said once per outage, not every second
                    from ..db_pg import redact_url
                    from .app import log

                    log(f"read cache off until it can listen on PostgreSQL again (needs PostgreSQL 14+ and "
                        f"owning the tables): {type(exc).__name__}: {redact_url(str(exc))}")
                failed = True
                self._stop.wait(1.0)
        self.on = False

    def close(self) -> None:
        self._stop.set()
        self.on = False

    # -- lookups -------------------------------------------------------------------------------

    def snapshot(self, tables) -> tuple:
        self._poll_sqlite()
        with self._lock:
            return tuple(self._gen[t] for t in tables)

    def user(self, digest: str):
        """The cached user of a token digest, or None (not cached, or the users table changed)."""
        if not self.on:
            return None
        hit = self._users.get(digest)
        if hit is None or hit[0] != self.snapshot(("users",)):
            return None
        return hit[1]

    def put_user(self, digest: str, snap: tuple, user) -> None:
        if self.on:
            if len(self._users) > MAX_ANSWERS:
                self._users.clear()
            self._users[digest] = (snap, user)

    def answer(self, key: tuple, tables, leader: bool) -> bytes | None:
        if not self.on:
            return None
        hit = self._answers.get(key)
        if hit is None:
            return None
        snap, body, was_leader, at = hit
        if snap != self.snapshot(tables) or was_leader != leader or (not leader and time.monotonic() - at > 1.0):
            return None
        return body

    def flight(self, key: tuple) -> threading.Lock:
        """One lock per answer: after a change, one request recomputes it while the same reads wait for
        that answer instead of all running the query at once."""
        with self._lock:
            lk = self._flights.get(key)
            if lk is None:
                if len(self._flights) > MAX_ANSWERS:
                    self._flights.clear()
                lk = self._flights[key] = threading.Lock()
            return lk

    def put_answer(self, key: tuple, snap: tuple, body: bytes, leader: bool) -> None:
        if self.on:
            if len(self._answers) > MAX_ANSWERS:
                self._answers.clear()
            self._answers[key] = (snap, body, leader, time.monotonic())
