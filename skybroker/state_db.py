"""Opening the state database: SQLite under BROKER_HOME (WAL, 0600, identity check) or PostgreSQL (BROKER_DB).

`db()` is the connection of the current thread for the current BROKER_HOME or BROKER_DB; `connect` opens
(and migrates, see state_schema.py) a SQLite file and checks it is the database this home had (a truncated
or replaced file is refused with a recovery hint, `StateError`), `connect_pg` the PostgreSQL one (db_pg.py).
The records and queries on top of it are state.py, which re-exports `db`, `db_path`, `db_url` and
`is_postgres` for its callers.
"""
from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from .errors import BrokerError
from .paths import ensure_home, owner_hint, touch_private
from .state_schema import MIGRATIONS, migrate


def db_path() -> Path:
    return ensure_home() / "state.db"


class StateError(BrokerError):
    """The state database cannot be used as it is (corrupt, truncated, replaced, unreadable)."""


class StateBusyError(StateError):
    """Another process held the state database's write lock for longer than the busy timeout: the state
    is fine, this write was not made; trying again later can succeed (the managed-jobs controller does)."""


BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's write lock before StateBusyError


def _recovery_hint(path: Path) -> str:
    """Commands that work as written: the database, its WAL files and its id go aside together (a new
    database beside the old state.id would be refused as "replaced"; a stale WAL would be replayed)."""
    import shlex

    home = path.parent
    # `state.db*`: its WAL and SHM files, which exist while a connection is open and may be gone by the time
    # the user moves them (the hint must work as written)
    files = [path.name + "*"] + ([ID_FILE] if (home / ID_FILE).exists() else [])
    bad, n = "state.bad", 1
    while (home / bad).exists():
        n += 1
        bad = f"state.bad.{n}"
    return (f"move it aside with its id and WAL files (`cd {shlex.quote(str(home))} && mkdir {bad} && mv "
            f"{' '.join(files)} {bad}/`), then `broker status --refresh --adopt` rebuilds the clusters the "
            "clouds' tags still know (`broker gc` lists what is left)")


ID_FILE = "state.id"  # the database's identity, outside it: a truncated or replaced database is noticed


class _Connection(sqlite3.Connection):
    """sqlite3's connection, with the errors of the place rather than the database said as such: a full
    disk and a file that became read-only are a StateError naming BROKER_HOME, not a traceback."""

    def execute(self, sql, params=()):
        try:
            return super().execute(sql, params)
        except sqlite3.OperationalError as exc:
            err = _place_error(exc, Path(self._broker_path)) or _damage_error(exc, Path(self._broker_path))
            if err is None:
                raise
            raise err from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # IntegrityError etc.: the caller's to handle
                raise
            raise StateError(f"the state database {self._broker_path} is corrupt or unreadable ({exc})",
                             _recovery_hint(Path(self._broker_path))) from None


_MISSING = re.compile(r"no such table: (?:main\.)?(\w+)|no such column: (?:\w+\.)?(\w+)|table (\w+) has no column named (\w+)")


def _damage_error(exc: sqlite3.OperationalError, path: Path) -> StateError | None:
    """A table or column that the schema has and this database lacks (someone dropped or altered it): the
    database is damaged, said with the recovery hint. One the schema does not have either is a bug here:
    None, the error propagates as it is."""
    m = _MISSING.search(str(exc))
    if m is None:
        return None
    want = _expected_schema()
    table, column = m.group(1) or m.group(3), m.group(2) or m.group(4)
    if table is not None and column is None:
        known = table in want
    elif table is not None:
        known = column in want.get(table, ())
    else:
        known = any(column in cols for cols in want.values())
    if not known:
        return None
    return StateError(f"the state database {path} is damaged: {exc} (the schema v{_schema_version()} has it)",
                      _recovery_hint(path))


@functools.lru_cache(maxsize=1)
def _expected_schema() -> dict[str, frozenset[str]]:
    """table → columns of a database freshly made by the migrations (in memory, once per process)."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(mem)
        tables = [r[0] for r in mem.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: frozenset(r[1] for r in mem.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        mem.close()


def _schema_version() -> int:
    return len(MIGRATIONS)


def _place_error(exc: sqlite3.OperationalError, path: Path) -> StateError | None:
    text = str(exc)
    if "database is locked" in text or "database table is locked" in text:
        return StateBusyError(f"the state database {path} stayed locked by another process for over "
                              f"{BUSY_TIMEOUT_S:g} s ({text}); nothing was changed",
                              f"retry once the other broker command (or the tool that has {path.name} open, "
                              f"`fuser {path}`) is done")
    if "disk is full" in text:
        return StateError(f"cannot write the state database {path}: {text} (BROKER_HOME {path.parent})",
                          f"free space on the file system of {path.parent} (`df -h {path.parent}`), then retry")
    if "readonly database" in text or "unable to open database file" in text or "disk I/O error" in text:
        return StateError(f"cannot use the state database {path}: {text}",
                          f"check the owner, mode and free space of BROKER_HOME {path.parent} and of the "
                          "state.db* files in it (they must be yours, writable)")
    return None


def _check_writable(path: Path) -> None:
    """The database and its WAL files must be this user's to write (one `sudo broker` leaves them root's):
    said before anything is done, not after `down` terminated the nodes and could not record it."""
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if not os.access(f, os.R_OK | os.W_OK):
            raise StateError(f"the state database file {f} is not writable by you (owner uid {st.st_uid}, mode "
                             f"{st.st_mode & 0o777:04o})", owner_hint(f), exit_code=2)


def connect(path: Path | None = None) -> sqlite3.Connection:
    path = Path(path or db_path())
    existed = path.exists()
    try:
        if not existed:
            touch_private(path)  # 0600 before SQLite creates it with the umask's mode (WAL/SHM copy it)
        _check_writable(path)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, factory=_Connection)
        conn._broker_path = str(path)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        for attempt in range(40):  # switching to WAL ignores the busy timeout: first opens racing retry
            if mode.lower() == "wal":
                break
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except (sqlite3.OperationalError, StateBusyError) as exc:
                if "locked" not in str(exc) or attempt == 39:
                    raise
                time.sleep(0.01 * (attempt + 1))
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn)
        _check_identity(conn, path)
    except sqlite3.OperationalError as exc:  # the place (permissions, space, I/O), not the file's content
        raise _place_error(exc, path) or StateError(f"cannot use the state database {path}: {exc}",
                                                    f"check BROKER_HOME {path.parent}") from None
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
        except OSError as exc:
            hint = owner_hint(id_file) if isinstance(exc, PermissionError) else (
                f"it must be a file holding the database's id: if it is not, remove it (`rm -r {id_file}`; "
                "it is written again)")
            raise StateError(f"cannot read {id_file} (the state database's id): {exc.strerror or exc}", hint,
                             exit_code=2) from None

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
            rollback(conn)
            raise
        row = conn.execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()
    expected = expected_id()
    if expected is None:
        _write_id(id_file, row[0])
    elif expected != row[0]:
        raise StateError(f"the state database {path} is not the one this BROKER_HOME had (id mismatch with "
                         f"{id_file})", _recovery_hint(path))


def rollback(conn) -> None:
    """ROLLBACK after an error, unless SQLite rolled the transaction back itself (a full disk, an I/O
    error): then a ROLLBACK would fail ("no transaction is active") and hide the error that did it."""
    if not getattr(conn, "in_transaction", True):  # PostgreSQL's Connection: always roll back
        return
    try:
        conn.execute("ROLLBACK")
    except (sqlite3.Error, StateError):
        pass  # the error being raised says what went wrong


def _write_id(id_file: Path, db_id: str) -> None:
    import os

    tmp = id_file.with_name(f".{id_file.name}.{os.getpid()}.{threading.get_ident()}")  # threads too (server)
    touch_private(tmp)
    tmp.write_text(db_id + "\n")
    os.replace(tmp, id_file)


_local = threading.local()


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

