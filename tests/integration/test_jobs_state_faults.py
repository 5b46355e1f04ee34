"""Managed jobs when the broker's own state misbehaves, on the `local` cloud with real node agents: the
state database locked by another process for longer than the busy timeout never ends (nor tears down) a
healthy job, and a CLI write that meets such a lock is an error naming the database, not a traceback."""
from __future__ import annotations

import shutil
import sqlite3
import time

import pytest

from tests.integration.local_helpers import wait_for, write_task
from tests.integration.test_managed_jobs import (TERMINAL, _inprocess_controller, _submit_inprocess,  # noqa: F401
                                                 assert_clean, diag, events, fast_controller, ledger,
                                                 wait_status)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")


def _locked(path, seconds: float) -> None:
    """Hold the database's write lock from another connection, as a slow command or an sqlite3 shell would."""
    c = sqlite3.connect(str(path), isolation_level=None)
    try:
        c.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        c.execute("ROLLBACK")
    finally:
        c.close()


def test_a_locked_state_database_leaves_a_running_job_running(tmp_path, monkeypatch):
    from skybroker import state, state_db

    led = tmp_path / "ledger"
    task = write_task(tmp_path / "t.yaml", name="locked", envs={"LEDGER": str(led)},
                      run='echo "run" >> "$LEDGER"; for i in $(seq 1 25); do echo "line $i"; sleep 0.2; done')
    jid = _submit_inprocess(task)
    monkeypatch.setattr(state_db, "BUSY_TIMEOUT_S", 0.3)  # the controller's threads open their connections after this
    monkeypatch.setattr("skybroker.jobs.controller.STATE_RETRY_S", 0.5)
    ctl, t = _inprocess_controller(monkeypatch)
    t.start()
    try:
        wait_status(jid, "RUNNING", 30)
        wait_for(lambda: ledger(led) == ["run"], 10, 0.05, "the job started")
        _locked(state.db_path(), 3.0)  # ten busy timeouts while the job writes output
        j = wait_status(jid, TERMINAL, 60)
    finally:
        t.join(30)
        ctl.pool.shutdown(wait=True)
    assert j.status == "SUCCEEDED", diag(jid)  # not FAILED_CONTROLLER, its cluster not torn down under it
    assert ledger(led) == ["run"], ledger(led)  # and not run a second time
    assert not any(e["kind"] in ("recovery", "failed_controller") for e in events(jid)), diag(jid)
    log = (state.db_path().parent / "managed" / str(jid) / "run.log").read_text()
    assert "line 25" in log
    assert_clean(jid)


def test_a_write_that_meets_a_locked_database_is_an_error_naming_it(monkeypatch):
    import threading

    from skybroker import state, state_db
    from skybroker.jobs import store

    state.db()  # the database exists (created with this connection's 30 s timeout, not used below)
    monkeypatch.setattr(state_db, "BUSY_TIMEOUT_S", 0.2)
    out = {}

    def insert():  # a thread of its own: a new connection, with the short timeout
        try:
            store.insert("x", "{}", {}, "r")
        except Exception as exc:  # noqa: BLE001 - the test looks at what it is
            out["exc"] = exc
        finally:
            state_db.close_thread_db()

    c = sqlite3.connect(str(state.db_path()), isolation_level=None)
    c.execute("BEGIN EXCLUSIVE")
    try:
        th = threading.Thread(target=insert)
        th.start()
        th.join(20)
    finally:
        c.execute("ROLLBACK")
        c.close()
    exc = out.get("exc")
    assert isinstance(exc, state_db.StateBusyError), repr(exc)
    assert str(state.db_path()) in exc.message and "locked" in exc.message and exc.hint and exc.exit_code == 1
