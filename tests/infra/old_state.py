"""A BROKER_HOME whose state database stops at an older schema version, for migration tests."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def state_db_at(home: Path, version: int) -> sqlite3.Connection:
    """Make `home` and its state.db with the first `version` migrations applied, as that skybroker left it;
    returns the open connection (the caller inserts its rows, commits and closes)."""
    from skybroker.state_schema import MIGRATIONS

    home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(home / "state.db"))
    for i, m in enumerate(MIGRATIONS[:version]):
        for stmt in (s.strip() for s in m.split(";")):
            if stmt:
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {i + 1}")
    return conn
