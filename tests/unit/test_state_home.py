"""BROKER_HOME and the files under it as a place (paths.py, state_db.py, locks.py, config.py): a home, a
state.db, a state.id or a lock file that cannot be used is said as such, naming the path, never as a
corrupt database or a traceback; a full disk is the error, not a failed ROLLBACK; a relative BROKER_HOME
is resolved once. (What needs another user or a read-only mount is in tests/integration/test_state_place.py.)"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from skybroker import config, locks, paths, sshconfig, state, state_db
from skybroker.errors import BrokerError


def _fill_up(conn) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL, as on a full disk): no page more."""
    n = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {n}")


def _big_event(conn) -> None:
    conn.execute("INSERT INTO events (cluster, ts, kind, message) VALUES ('x', 0, 'k', ?)", ("m" * 200_000,))


def test_a_full_disk_inside_a_transaction_is_the_error_not_a_failed_rollback():
    from skybroker.costs import ledger

    conn = state.db()
    _fill_up(conn)
    with pytest.raises(state_db.StateError) as ei:
        ledger._tx(_big_event)  # SQLite rolled back by itself: a second ROLLBACK would fail and hide it
    assert "database or disk is full" in ei.value.message and str(paths.broker_home()) in ei.value.message
    assert "free space" in ei.value.hint
    assert not conn.in_transaction
    with pytest.raises(state_db.StateError, match="disk is full"):
        _big_event(state.db())  # outside a transaction too


def test_a_state_id_that_is_a_directory_is_named():
    state.db()
    state_db._local.conn = None
    idf = paths.broker_home() / state_db.ID_FILE
    idf.unlink()
    idf.mkdir()
    with pytest.raises(state_db.StateError) as ei:
        state.list_clusters()
    assert str(idf) in ei.value.message and "state.db:" not in ei.value.message
    assert ei.value.exit_code == 2 and f"rm -r {idf}" in ei.value.hint


def test_a_broker_home_that_is_a_file_is_named(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("BROKER_HOME", str(f))
    for call in (paths.broker_home, config.load, state.list_clusters):
        with pytest.raises(paths.HomeError) as ei:
            call()
        assert ei.value.message == f"BROKER_HOME {f} is not a directory" and ei.value.exit_code == 2


def test_a_broker_home_under_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BROKER_HOME", str(tmp_path / "afile" / "home"))
    with pytest.raises(paths.HomeError, match="BROKER_HOME .*afile/home cannot be reached: Not a directory"):
        paths.ensure_home()


def test_a_relative_broker_home_is_resolved_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("BROKER_HOME", "s1")
    home = paths.broker_home()
    assert home == tmp_path / "a" / "s1"
    assert os.environ["BROKER_HOME"] == str(home)  # so the processes it starts use the same one
    monkeypatch.chdir(tmp_path / "b")
    assert paths.broker_home() == home and sshconfig.config_dir() == home / "ssh"
    assert sshconfig.config_dir().is_absolute()  # ~/.ssh/config's Include would be relative to ~/.ssh


def test_a_removed_working_directory(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert config.paths() == [paths.broker_home() / "config.yaml"]  # no project config there
    assert config.load() == {}
    monkeypatch.setenv("BROKER_HOME", "rel")
    with pytest.raises(paths.HomeError, match="relative path and the current directory no longer exists"):
        paths.broker_home()


def test_lock_paths_that_are_not_files_are_named():
    home = paths.ensure_home()
    (home / "locks").mkdir()
    (home / "locks" / "dev.lock").mkdir()
    with pytest.raises(BrokerError) as ei:
        with locks.cluster_lock("dev"):
            pass
    assert ei.value.message == f"cannot use the lock file {home / 'locks' / 'dev.lock'}: Is a directory"
    assert ei.value.exit_code == 2
    (home / "locks" / "dev.lock").rmdir()
    (home / "locks").rmdir()
    (home / "locks").write_text("")
    with pytest.raises(BrokerError) as ei:
        with locks.cluster_lock("dev"):
            pass
    assert f"({home / 'locks'} is not a directory)" in ei.value.message and f"rm -r {home / 'locks'}" in ei.value.hint


def test_the_corrupt_database_hint_moves_the_files_that_exist_to_a_new_folder(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    for name in ("state.db", "state.db-wal", "state.id"):
        (home / name).write_text("")
    (home / "state.bad").mkdir()
    hint = state_db._recovery_hint(home / "state.db")
    assert f"cd {home} && mkdir state.bad.2 && mv state.db* state.id state.bad.2/" in hint
    (home / "state.id").unlink()
    assert "mv state.db* state.bad.2/" in state_db._recovery_hint(home / "state.db")


def test_an_unknown_sqlite_error_is_not_called_corruption(tmp_path):
    err = state_db._place_error(sqlite3.OperationalError("attempt to write a readonly database"), Path("/x/state.db"))
    assert "corrupt" not in err.message and "/x" in err.hint
    assert state_db._place_error(sqlite3.OperationalError("no such table: foo"), Path("/x/state.db")) is None
