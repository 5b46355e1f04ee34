"""The long-lived parts of the broker, inside the server process: the managed-jobs controller and the
autostop watcher (locally they are background processes started on demand; see jobs/ops.py and
autostop.py). Exactly one server runs them at a time, the leader:

- SQLite: the leader holds the same lock files as the local controller and watcher (so a local
  `broker jobs …` on the server machine never starts a second controller);
- PostgreSQL (replicas sharing one database): the leader holds a session-level advisory lock on a
  connection of its own. When its process dies the connection closes and PostgreSQL releases the lock;
  the others try every LEASE_POLL seconds, so one takes over within a few seconds. The leader checks its
  lock connection every LEASE_POLL too and stops stepping jobs the moment it is lost, so two
  controllers never step the same job (recovery is also idempotent: deterministic cluster names, submit
  tokens).
"""
from __future__ import annotations

import threading
import time

from .. import settings, state

CONTROLLER_LOCK = 0x6272_6F6C  # pg_try_advisory_lock key of the controller ("brol")
LEASE_POLL = 1.0
UPLOAD_SWEEP_EVERY = 300.0  # the leader removes stale uploads (calls.sweep_uploads) this often

_leader = threading.Event()
_stop = threading.Event()


def is_leader() -> bool:
    """Whether this process is the leader."""
    return _leader.is_set()


def leader_alive() -> bool:
    """Whether some server (this process, another worker or another replica) runs the controller and
    the watcher now: the advisory lock is held (PostgreSQL) or the lock files are (SQLite)."""
    if is_leader():
        return True
    if state.db_url():
        row = state.db().execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "((classid::bigint << 32) | objid::bigint) = ?", (CONTROLLER_LOCK,)).fetchone()
        return row is not None
    from .. import api

    d = api.daemons()
    return d["jobs_controller"] and d["autostop_watcher"]


def log(msg: str) -> None:
    print(f"{time.strftime('%F %T')} {msg}", flush=True)


class _FileLease:
    def __init__(self):
        from filelock import FileLock

        from ..paths import ensure_home, private_dir

        d = private_dir(ensure_home() / "managed")
        self.locks = [FileLock(str(d / "controller.lock"), mode=0o600),
                      FileLock(str(ensure_home() / "autostop.lock"), mode=0o600)]

    def acquire(self) -> bool:
        from filelock import Timeout

        got = []
        try:
            for lk in self.locks:
                lk.acquire(timeout=0)
                got.append(lk)
        except Timeout:
            for lk in got:
                lk.release()
            return False
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        for lk in self.locks:
            if lk.is_locked:
                lk.release()


class _PgLease:
    def __init__(self, url: str):
        self.url = url
        self.conn = None
        self.checked = 0.0

    def acquire(self) -> bool:
        import psycopg

        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (CONTROLLER_LOCK,)).fetchone()[0]
        except psycopg.Error:
            self._drop()
            return False
        return bool(got)

    def held(self) -> bool:
        import psycopg

        if time.monotonic() - self.checked < LEASE_POLL:
            return self.conn is not None
        self.checked = time.monotonic()
        try:
            self.conn.execute("SELECT 1")
            return True
        except (psycopg.Error, AttributeError):
            self._drop()
            return False

    def _drop(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self.conn = None

    def release(self) -> None:
        self._drop()  # closing the session releases its advisory locks


def _lease():
    url = state.db_url()
    return _PgLease(url) if url else _FileLease()


def _serve(lease) -> None:
    """Leader: the controller loop and the autostop watcher until stopped or the lease is lost."""
    from .. import autostop
    from ..jobs.controller import Controller

    def keep_going() -> bool:
        return not _stop.is_set() and lease.held()

    def watcher():
        swept = 0.0
        while keep_going():
            try:
                for name, action in autostop.check_once():
                    log(f"autostop: {action} {name}")
                if time.monotonic() - swept > UPLOAD_SWEEP_EVERY:
                    from .calls import sweep_uploads

                    swept = time.monotonic()
                    gone = sweep_uploads()
                    if gone:
                        log(f"removed {len(gone)} upload(s) no launch or active job uses")
            except Exception as exc:  # noqa: BLE001 - e.g. the database restarting: try again
                log(f"autostop: error: {exc}")
            deadline = time.monotonic() + settings.get("autostop_poll")
            while keep_going() and time.monotonic() < deadline:
                time.sleep(0.2)

    w = threading.Thread(target=watcher, name="autostop", daemon=True)
    w.start()
    try:
        Controller().run(keep_going=keep_going)
    finally:
        w.join(timeout=5)


def run_forever() -> None:
    lease = _lease()
    while not _stop.is_set():
        if not lease.acquire():
            _stop.wait(LEASE_POLL)
            continue
        _leader.set()
        log("this server is the leader: it runs the managed-jobs controller and the autostop watcher")
        try:
            _serve(lease)
        except Exception as exc:  # noqa: BLE001 - logged; leadership is given up and taken again
            log(f"controller error: {exc}")
        finally:
            _leader.clear()
            lease.release()
        if not _stop.is_set():
            log("leadership lost or given up; trying again")
            _stop.wait(LEASE_POLL)


def start() -> threading.Thread:
    from .. import autostop
    from ..jobs import ops

    ops.IN_PROCESS = autostop.IN_PROCESS = True  # the server runs them: never spawn background processes
    _stop.clear()
    t = threading.Thread(target=run_forever, name="leader", daemon=True)
    t.start()
    return t


def stop() -> None:
    _stop.set()
