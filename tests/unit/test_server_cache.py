"""The server's read cache (skybroker/server/cache.py) on both backends, and the client's kept-alive
connection (skybroker/client/http.py): a cached answer or user is never served after a write to its
tables — by this process, at once, or by another process (SQLite's data_version; PostgreSQL's triggers
and notifications, within a few seconds at worst); a connection the server closed is replaced."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from skybroker import state, users

pytest.importorskip("fastapi")


def _rec(name="c1", user=None, **kw):
    base = dict(name=name, cloud="aws", region="us-east-1", zone=None, instance_type="m6i.large",
                accelerators=None, use_spot=False, num_nodes=1, hourly_price=0.1, status=state.UP,
                launched_at=100.0, nodes=[state.NodeRecord("i-1", 0, "10.0.0.1")], user_name=user)
    base.update(kw)
    return state.ClusterRecord(**base)


@pytest.fixture
def cache(state_backend):
    from skybroker.server import cache as cache_mod

    state.db()
    rc = cache_mod.ReadCache(state.db_url() or None, None if state.db_url() else str(state.db_path()))
    if state.db_url():
        from skybroker import db_pg

        db_pg.on_write = rc.bump
    deadline = time.monotonic() + 10
    while not rc.on and time.monotonic() < deadline:  # PostgreSQL: the listener is up
        time.sleep(0.02)
    assert rc.on
    yield rc
    rc.close()
    if state.db_url():
        from skybroker import db_pg

        db_pg.on_write = None


def _in_another_process(code: str) -> None:
    r = subprocess.run([sys.executable, "-c", "from skybroker import state, users\n" + code],
                       env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _gone(probe, timeout=5.0) -> float:
    """Seconds until probe() is None (the cache dropped the entry)."""
    t0 = time.monotonic()
    while probe() is not None:
        assert time.monotonic() - t0 < timeout, "the cache kept serving a stale entry"
        time.sleep(0.005)
    return time.monotonic() - t0


def test_an_answer_is_dropped_when_this_process_writes_its_table(cache):
    key, tables = ("status", "digest", b"{}"), ("clusters", "users")
    cache.put_answer(key, cache.snapshot(tables), b"old", True)
    other = ("jobs_queue", "digest", b"{}")
    cache.put_answer(other, cache.snapshot(("managed_jobs", "users")), b"jobs", True)
    assert cache.answer(key, tables, True) == b"old"
    state.save_cluster(_rec())
    assert cache.answer(key, tables, True) is None  # at once: no waiting for a notification
    if state.is_postgres():  # per table: the jobs answer is still good
        assert cache.answer(other, ("managed_jobs", "users"), True) == b"jobs"
    assert cache.answer(key, tables, False) is None  # and leadership is part of an answer


def test_an_answer_computed_before_a_write_is_never_stored_as_fresh(cache):
    tables = ("clusters", "users")
    snap = cache.snapshot(tables)  # taken before the read ...
    state.save_cluster(_rec())  # ... a write lands while the read runs ...
    cache.put_answer(("status", "d", b""), snap, b"maybe stale", True)
    assert cache.answer(("status", "d", b""), tables, True) is None  # ... so the answer is not served


def test_another_process_writing_or_revoking_drops_the_cache(cache):
    tables = ("clusters", "users")
    key = ("status", "d", b"{}")
    cache.put_answer(key, cache.snapshot(tables), b"old", True)
    _in_another_process("state.save_cluster(state.ClusterRecord(name='c9', cloud='aws', region='r', zone=None, "
                        "instance_type='t', accelerators=None, use_spot=False, num_nodes=1, hourly_price=0.1, "
                        "status=state.UP, launched_at=1.0, nodes=[]))")
    waited = _gone(lambda: cache.answer(key, tables, True))
    assert waited < 5.0

    tok = users.create("carol")
    d = users.digest(tok)
    # the notification of create()'s own write may land after the snapshot and drop the entry (a miss, never
    # a stale hit): cache it again until it sticks
    t0 = time.monotonic()
    while True:
        cache.put_user(d, cache.snapshot(("users",)), users.authenticate(tok))
        if cache.user(d) is not None:
            break
        assert time.monotonic() - t0 < 5.0, "a fresh token lookup never stayed cached"
        time.sleep(0.02)
    assert cache.user(d).name == "carol"
    _in_another_process("users.revoke('carol')")
    _gone(lambda: cache.user(d))
    assert users.authenticate(tok) is None


def test_postgres_writes_in_a_transaction_count_at_commit(state_backend):
    if state_backend != "postgresql":
        pytest.skip("the write hook is PostgreSQL's (SQLite is polled with data_version)")
    from skybroker import db_pg

    seen = []
    db_pg.on_write = seen.append
    try:
        conn = state.db()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO users (name, token_hash, admin, created_at) VALUES (?,?,?,?)", ("x", "h", 0, 1.0))
        assert seen == []  # not visible to anyone yet
        conn.execute("COMMIT")
        assert seen == ["users"]
        conn.execute("UPDATE users SET admin = 1 WHERE name = ?", ("x",))
        conn.execute("SELECT * FROM clusters")
        assert seen == ["users", "users"]
    finally:
        db_pg.on_write = None
    assert db_pg.written_table("INSERT OR IGNORE INTO events (a) VALUES (?)") == "events"
    assert db_pg.written_table("  DELETE FROM clusters WHERE name = ?") == "clusters"
    assert db_pg.written_table("SELECT * FROM clusters") is None


class _CountingServer:
    """An HTTP/1.1 server (http.server) answering every POST with a broker JSON answer, counting the
    connections it accepted; with `close_idle`, it drops each connection after one answer without saying
    so (what uvicorn does to a connection idle past its keep-alive timeout)."""

    def __init__(self, close_idle=False):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.connections = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                outer.connections += 1
                super().setup()

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = b'{"value": 42}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = close_idle

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("close_idle", [False, True])
def test_the_client_keeps_its_connection_and_replaces_a_closed_one(close_idle):
    from skybroker.client.http import Client

    srv = _CountingServer(close_idle)
    try:
        c = Client(srv.url, "brk_x")
        for fn in ("status", "launch", "status", "down"):  # reads and writes alike
            if close_idle:
                time.sleep(0.05)  # the server has closed the last connection by now
            assert c.call(fn) == 42
        assert srv.connections == (4 if close_idle else 1)
    finally:
        srv.stop()


def test_failover_history_groups_each_launch_with_its_attempts():
    from skybroker.provision import Attempt, failover_event, parse_failover_event
    from skybroker.server.history import launches

    a = Attempt("aws", "us-east-1", "use1-az1", "p3.2xlarge", True, "CapacityError", "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity: try again", "zone")
    b = Attempt("gcp", "us-central1", None, "n1-highmem-8", False, "QuotaError", None, "quota: 0 GPUs", "region")
    assert parse_failover_event(failover_event(a)) == {
        "place": "aws/us-east-1/use1-az1", "instance_type": "p3.2xlarge", "error": "CapacityError",
        "code": "InsufficientInstanceCapacity", "message": "We currently do not have sufficient capacity: try again"}
    assert parse_failover_event(failover_event(b))["code"] is None  # no code: the message is intact
    assert parse_failover_event(failover_event(b))["message"] == "quota: 0 GPUs"
    ev = [("x", "launch", "provisioning"), ("x", "failover", failover_event(a)), ("y", "launch", "provisioning"),
          ("x", "failover", failover_event(b)), ("x", "up", "up on azure/eastus"), ("y", "failover", failover_event(a)),
          ("z", "launch", "provisioning"), ("y", "stop", "stopped"), ("x", "launch", "provisioning"),
          ("x", "interrupted", "the launch was interrupted"), ("w", "launch", "provisioning")]
    ls = launches([{"cluster": c, "kind": k, "message": m, "ts": float(i)} for i, (c, k, m) in enumerate(ev)],
                  in_progress={"w"})
    got = [(ln.cluster, ln.outcome, ln.where, [(t["place"], t["code"]) for t in ln.attempts]) for ln in ls]
    assert got == [("x", "up", "azure/eastus", [("aws/us-east-1/use1-az1", "InsufficientInstanceCapacity"),
                                                ("gcp/us-central1", None)]),
                   ("y", "failed", None, [("aws/us-east-1/use1-az1", "InsufficientInstanceCapacity")]),
                   ("z", "failed", None, []), ("x", "interrupted", None, []), ("w", "in progress", None, [])]
