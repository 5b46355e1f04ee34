"""Server mode's small parts: the wire codec, the SQLite → PostgreSQL translation, the login file, and
`broker server start` refusing plain HTTP on a non-loopback address."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from skybroker import wire
from skybroker.errors import BrokerError


def test_wire_roundtrips_api_objects():
    from skybroker import api
    from skybroker.spec import Secret

    task = api.load_task("examples/hello.yaml", {"secrets": {"TOKEN": "s3cr3t-value"}, "envs": {}})
    plan = api.plan(task)
    for obj in (task, plan, {"a": (1, 2.5, None), 3: [b"\x00\xff", frozenset({"x"})]}):
        assert wire.loads(wire.dumps(obj)) == obj
    back = wire.loads(wire.dumps(task))
    assert isinstance(dict(back.secrets)["TOKEN"], Secret) and "s3cr3t" not in repr(back)


@pytest.mark.parametrize("evil", [
    {"__c": "os:system", "f": {}},
    {"__c": "subprocess:Popen", "f": {"args": "id"}},
    {"__c": "skybroker.state_db:connect", "f": {}},  # ours, but a function, not a dataclass
    {"__e": "skybroker.spec:Task", "v": 1},  # a dataclass where an enum is expected
    {"__c": "skybroker.nosuchmodule:X", "f": {}},
    {"weird": 1},
])
def test_wire_rebuilds_only_skybroker_dataclasses_and_enums(evil):
    with pytest.raises(BrokerError):
        wire.load(evil)


def test_wire_errors_keep_message_hint_and_exit_code():
    from skybroker.errors import NotFoundError

    e = wire.error_from(json.loads(json.dumps(wire.error_dict(NotFoundError("cluster 'x' not found", "see status")))))
    assert (e.message, e.hint, e.exit_code) == ("cluster 'x' not found", "see status", 5)


def test_postgres_translation():
    psycopg = pytest.importorskip("psycopg")  # noqa: F841 - db_pg imports it
    from skybroker.db_pg import redact_url, translate, translate_ddl

    assert translate("SELECT * FROM clusters WHERE name = ?", False) == (
        "SELECT * FROM clusters WHERE name = %s", False)
    assert translate("INSERT INTO events (cluster, ts) VALUES (?,?)", False) == (
        "INSERT INTO events (cluster, ts) VALUES (%s,%s) RETURNING id", True)
    assert translate("INSERT OR IGNORE INTO meta (k, v) VALUES ('db_id', ?)", False)[0] == \
        "INSERT INTO meta (k, v) VALUES ('db_id', %s) ON CONFLICT DO NOTHING"
    assert translate("UPDATE t SET a = ? WHERE region IS ? AND m LIKE '5%'", False)[0] == \
        "UPDATE t SET a = %s WHERE region IS NOT DISTINCT FROM %s AND m LIKE '5%%'"
    assert translate("INSERT INTO clusters (name) VALUES (:name) ON CONFLICT(name) DO UPDATE SET x=excluded.x",
                     True)[0] == "INSERT INTO clusters (name) VALUES (%(name)s) ON CONFLICT(name) DO UPDATE SET x=excluded.x"
    assert translate("BEGIN IMMEDIATE", False) == ("BEGIN", False)
    assert translate_ddl("id INTEGER PRIMARY KEY AUTOINCREMENT, p REAL, s BLOB, n INTEGER NOT NULL") == \
        "id BIGSERIAL PRIMARY KEY, p DOUBLE PRECISION, s BYTEA, n BIGINT NOT NULL"
    assert redact_url("postgresql://u:pa@ss@h/db") == "postgresql://u:***@h/db"


def test_postgresql_gone_under_a_running_server_is_a_state_error(postgres):
    """Found by exploratory testing: with PostgreSQL stopped under a running server, every call answered
    "server error: OperationalError: connection failed ... Hint: see the server's log; this is a bug" and
    the dashboard a bare "Internal Server Error". A statement that finds the connection gone (and cannot
    make a new one) is now the StateError a failed connect is (the URL redacted); once PostgreSQL answers
    again the next statement reconnects."""
    import psycopg

    from skybroker import db_pg, state_db

    conn = db_pg.Connection(postgres.fresh_url())
    good = conn.url
    conn.execute("CREATE TABLE t (x BIGINT)")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(postgres.url, autocommit=True) as admin:  # PostgreSQL ends our session ...
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    dead = socket_free_port()
    conn.url = f"postgresql://broker:pw@127.0.0.1:{dead}/x"  # ... and cannot be reached to reconnect
    with pytest.raises(state_db.StateError) as e:
        conn.execute("SELECT count(*) FROM t")
    assert "cannot use the state database postgresql://broker:***@127.0.0.1" in e.value.message, e.value.message
    assert "pw" not in e.value.message and "PostgreSQL runs" in e.value.hint
    conn.url = good  # back: the next statement connects again
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    conn.close()


def socket_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_database_url_is_a_clear_error(monkeypatch):
    from skybroker import state, state_db

    monkeypatch.setenv("BROKER_DB", "mysql://x")
    monkeypatch.setattr(state_db._local, "conn", None, raising=False)
    with pytest.raises(state_db.StateError, match="postgresql://"):
        state.db()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "skybroker.cli", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def test_server_refuses_plain_http_off_loopback():
    r = _cli("server", "start", "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2 and "refusing plain HTTP on 0.0.0.0" in r.stderr and "--insecure" in r.stderr
    r = _cli("server", "start", "--host", "10.1.2.3", "--certfile", __file__)
    assert r.returncode == 2 and "go together" in r.stderr


def test_server_start_checks_its_port_host_and_certificate_before_starting(tmp_path):
    """Found by exploratory testing: `broker server start` on a port in use printed "broker server on ...",
    became the leader (the controller and the watcher started), then uvicorn logged the bind error and the
    command exited 3 ("nothing in the catalogs fits"); a host that does not resolve did the same, and a
    certificate that is not one was an ssl traceback. Each is now exit 2 before anything is said or started."""
    import socket

    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("server", "start", "--port", str(port))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    runs = [(r, f"port {port} on 127.0.0.1 is in use")]
    for args, said in [(["--host", "nosuchhost.invalid", "--insecure"], "--host nosuchhost.invalid: not an address"),
                       (["--certfile", str(bad), "--keyfile", str(bad)], f"--certfile {bad} / --keyfile {bad}: not a")]:
        runs.append((_cli("server", "start", "--port", str(port), *args), said))
    for r, said in runs:
        out = r.stdout + r.stderr
        assert r.returncode == 2 and said in r.stderr, (said, r.returncode, out)
        assert "Traceback" not in out and "broker server on" not in out and "leader" not in out, out


def test_login_file_is_private_and_client_mode_follows_it(tmp_path):
    from skybroker.client import endpoint, remove_login, save_login

    assert endpoint() is None  # local mode by default
    path = save_login("http://127.0.0.1:1/", "brk_x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert endpoint() == ("http://127.0.0.1:1", "brk_x")
    r = _cli("status")  # a server that is not there: a readable error, not a traceback
    assert r.returncode == 1 and "cannot reach the broker server at http://127.0.0.1:1" in r.stderr
    assert "broker logout" in r.stderr and "Traceback" not in r.stderr
    assert _cli("status", env={"BROKER_API_SERVER": "local"}).returncode == 0
    r = _cli("gc")  # gc too goes to the server (an admin's: the server's clouds and state)
    assert r.returncode == 1 and "cannot reach the broker server at http://127.0.0.1:1" in r.stderr
    assert remove_login() and endpoint() is None


@pytest.mark.parametrize("call", ["cancel", "jobs_cancel"])
def test_ids_together_with_all_are_refused_by_the_api_too(call):
    """The CLI refuses `cancel c 1 --all`; a server's client that sends both got everything cancelled."""
    from skybroker import api
    from skybroker.errors import UsageError
    from skybroker.server import calls
    from skybroker.users import User

    with pytest.raises(UsageError, match="job ids or --all, not both"):
        api.cancel("c", [1], True) if call == "cancel" else api.jobs_cancel([1], True)
    if call == "jobs_cancel":
        with pytest.raises(UsageError, match="not both"):
            calls.run_jobs_cancel(User("alice", False), [1], True)


def test_the_way_back_to_local_mode_follows_where_the_server_url_comes_from(tmp_path, monkeypatch):
    """With `api_server:` in a config file, the hint said `broker logout`, which changes nothing."""
    from skybroker.client import leave_hint, save_login

    monkeypatch.setenv("BROKER_HOME", str(tmp_path / "h"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BROKER_API_SERVER", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api_server: https://b.example:46580\n")
    monkeypatch.setenv("BROKER_CONFIG", str(cfg))
    assert "remove api_server from " + str(cfg) in leave_hint()
    save_login("https://b.example:46580", "brk_x")
    assert "`broker logout`" in leave_hint()
    monkeypatch.setenv("BROKER_API_SERVER", "https://other:46580")
    assert "unset BROKER_API_SERVER" in leave_hint()


def test_a_token_with_a_line_end_or_a_bad_url_is_no_traceback(tmp_path):
    """Found by exploratory testing: a token copied with a line end (BROKER_API_TOKEN from a file saved on
    Windows: `...\\r`) made http.client refuse the header with a traceback that quoted the whole token on
    stderr (a CI log); a URL like `http://[::1` was a traceback too. Blanks around a token are dropped
    (also in the login file); a bad character inside it is exit 7, naming no token."""
    from skybroker.client.http import Client

    assert Client("http://127.0.0.1:1", "brk_abc\r\n").token == "brk_abc"
    secret = "brk_s3cr3t-token-value"
    for bad in (secret[:8] + "\n" + secret[8:], secret + "\ttail", secret + "é"):
        r = _cli("status", env={"BROKER_API_SERVER": "http://127.0.0.1:1", "BROKER_API_TOKEN": bad})
        assert r.returncode == 7 and "character no token has" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "s3cr3t" not in r.stdout + r.stderr, r.stderr
    r = _cli("status", env={"BROKER_API_SERVER": "http://127.0.0.1:1", "BROKER_API_TOKEN": secret + "\r"})
    assert r.returncode == 1 and "cannot reach the broker server" in r.stderr, r.stderr  # sent, without the \r
    for url in ("http://[::1", "http://127.0.0.1:abc"):
        r = _cli("status", env={"BROKER_API_SERVER": url, "BROKER_API_TOKEN": secret})
        assert r.returncode == 1 and "is not http(s)://HOST[:PORT]" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_upload_keeps_links_inside_its_workdir_and_names_the_ones_out_of_it(tmp_path):
    """Found by exploratory testing: a workdir with `sub/l -> ../a.txt` (a relative link that stays inside
    it) ran locally but the server refused it ("upload: refusing the link 'w/sub/l' → '../a.txt'", exit 2,
    no hint). A link inside its source now travels (the tarfile data filter still keeps every extracted path
    inside the upload); one out of it (absolute, or up and out) is refused naming it, with what to do."""
    from skybroker.client.remote import _tarball
    from skybroker.errors import UsageError
    from skybroker.server import calls
    from skybroker.users import User

    wd = tmp_path / "wd"
    (wd / "sub").mkdir(parents=True)
    (wd / "a.txt").write_text("hi\n")
    (wd / "sub" / "l").symlink_to("../a.txt")
    alice = User("alice", False)
    uid = calls.extract_upload(alice, _tarball(str(wd), []))
    link = calls.upload_root("alice") / uid / "w" / "sub" / "l"
    assert os.readlink(link) == "../a.txt" and link.read_text() == "hi\n"
    for name, target in (("up", "../../etc"), ("abs", "/etc/passwd")):
        (wd / name).symlink_to(target)
        with pytest.raises(UsageError) as e:
            calls.extract_upload(alice, _tarball(str(wd), []))
        assert f"the link {name} → {target} points out of the workdir" in e.value.message, e.value.message
        assert ".brokerignore" in e.value.hint
        (wd / name).unlink()


@pytest.mark.parametrize("group", [["volumes", "ls"], ["storage", "ls"], ["storage", "delete", "-a", "-y"]])
def test_volumes_and_storage_are_refused_in_client_mode_not_done_locally(group):
    """Found by exploratory testing: in client mode `broker volumes apply/ls/delete` and `broker storage
    ls/delete` silently acted on the laptop's own state and cloud credentials (a volume made there is one no
    task sent to the server can mount; `ls` said "No volumes" while the server had some). They have no
    server call: refused (exit 2) saying so; BROKER_API_SERVER=local runs them on this machine."""
    client = {"BROKER_API_SERVER": "http://127.0.0.1:1", "BROKER_API_TOKEN": "brk_x"}
    r = _cli(*group, env=client)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"`broker {group[0]}` does not go through the broker server (http://127.0.0.1:1)" in r.stderr, r.stderr
    assert "BROKER_API_SERVER=local" in r.stderr
    assert _cli(*group, env={**client, "BROKER_API_SERVER": "local"}).returncode == 0


def test_an_https_url_to_a_plain_http_server_says_to_use_http():
    """A TLS client hello to a plain-HTTP server fails with SSL's WRONG_VERSION_NUMBER: the error says the
    server does not speak TLS and gives the http:// URL (it said only 'is it running?')."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    srv = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        r = _cli("status", env={"BROKER_API_SERVER": f"https://127.0.0.1:{port}", "BROKER_API_TOKEN": "brk_x"})
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert "does not speak TLS" in r.stderr and f"use http://127.0.0.1:{port}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "brk_x" not in r.stderr
    finally:
        srv.shutdown()


def test_an_upload_is_built_in_a_temp_file_and_one_over_the_limit_is_refused_before_it_is_sent(tmp_path,
                                                                                             monkeypatch):
    """The client built the whole tar.gz in memory (a 1.15 GB workdir: 1.2 GB RSS) and sent it, only for the
    server to answer 'over 1 GiB'. Now it is an unnamed temp file, and over the limit it is refused at once,
    naming what to do; the server reads a file as well as bytes."""
    from skybroker import wire
    from skybroker.client.remote import _tarball
    from skybroker.errors import UsageError
    from skybroker.server import calls
    from skybroker.users import User

    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.bin").write_bytes(os.urandom(64 << 10))
    with _tarball(str(wd), []) as tgz:
        assert not isinstance(tgz, (bytes, bytearray)) and tgz.tell() == 0
        uid = calls.extract_upload(User("alice", False), tgz)
    assert (calls.upload_root("alice") / uid / "w" / "data.bin").read_bytes() == (wd / "data.bin").read_bytes()
    monkeypatch.setattr(wire, "MAX_UPLOAD", 32 << 10)  # random bytes do not compress: 64 KiB is over it
    with pytest.raises(UsageError) as e:
        _tarball(str(wd), [])
    assert "more than a broker server accepts" in e.value.message and "bucket" in e.value.hint
