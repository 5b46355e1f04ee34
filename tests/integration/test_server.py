"""The CLI in client mode against a live `broker server start` (tests/integration/server_helpers.py), on
the local cloud: the same output and exit codes as local mode, streaming, two users' isolation, a token
revoked mid-session, and the server killed and restarted in the middle of a managed job."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.local_helpers import wait_for, write_task, cluster_dir
from tests.integration.server_helpers import Server

pytestmark = [pytest.mark.skipif(shutil.which("rsync") is None, reason="the local cloud syncs with rsync"),
              pytest.mark.slow]  # each test starts a server (1-3 s) and runs real jobs
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server_home").start()
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request, tmp_path):
    """A server on SQLite, then one on a fresh PostgreSQL database."""
    db = request.getfixturevalue("postgres").fresh_url() if request.param == "postgresql" else None
    s = Server(tmp_path / "server_home", db=db).start()
    yield s
    s.stop()


def _status(c, *extra) -> list[dict]:
    r = c("status", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_launch_exec_logs_down_through_the_server(server, tmp_path):
    alice = server.client(server.token("alice"), tmp_path / "alice")
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "data.txt").write_text("from the laptop\n")
    (tmp_path / "wd" / ".gitignore").write_text("secret.txt\n")
    (tmp_path / "wd" / "secret.txt").write_text("never shipped\n")
    task = write_task(tmp_path / "t.yaml", name="hi", workdir=str(tmp_path / "wd"), num_nodes=2,
                      secrets={"API_KEY": "hunter2-secret"},
                      run='cat data.txt; ls; echo "rank $SKYPILOT_NODE_RANK key=${#API_KEY}"')
    r = alice("launch", "--dryrun", "--json", task)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chosen"]["cloud"] == "local"
    r = alice("launch", "-y", "-c", "dev", task)
    assert r.returncode == 0, r.stderr
    assert "(node-0) from the laptop" in r.stdout and "(node-1) rank 1 key=14" in r.stdout
    assert "secret.txt" not in r.stdout  # .gitignore honoured by the upload
    assert "Job 1 SUCCEEDED on dev" in r.stderr
    [c] = _status(alice)
    assert (c["name"], c["status"], c["num_nodes"], c["user"]) == ("dev", "UP", 2, "alice")
    # the secret travelled in a body, never in a URL or the server's log or state in clear
    assert "hunter2" not in server.log_text()
    assert not any(b"hunter2-secret" in p.read_bytes() for p in server.home.rglob("*.db*") if p.is_file())

    r = alice("exec", "dev", "--", "echo out; exit 3")
    assert r.returncode == 3 and "(node-0) out" in r.stdout, r.stderr  # the job's exit code, as locally
    go = tmp_path / "go"  # the job waits (up to 20 s) for this file, made once its first line arrived
    r = alice("exec", "-d", "dev", "--", f"echo tick 1; for i in $(seq 200); do [ -e {go} ] && break; sleep 0.1; "
              f"done; [ -e {go} ] && echo tick streamed || echo tick waited")
    assert r.returncode == 0 and "job 3 submitted" in r.stderr, r.stderr
    p = alice.bg("logs", "dev", "3", "-f")
    first = p.stdout.readline()  # streamed while the job runs, not all at the end
    assert first.startswith("(node-") and "tick 1" in first, first
    go.touch()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and (first + out).count("tick streamed") == 2, first + out
    r = alice("queue", "dev", "--json")
    assert [j["status"] for j in json.loads(r.stdout)] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]

    r = alice("status", "nope")  # errors render exactly as locally: message, hint, exit code
    local = subprocess.run([sys.executable, "-m", "skybroker.cli", "status", "nope"], capture_output=True,
                           text=True, env={**alice.env(), "BROKER_API_SERVER": "local"})
    assert r.returncode == local.returncode == 5 and r.stderr == local.stderr
    r = alice("down", "-y", "dev")
    assert r.returncode == 0 and "cluster dev terminated" in r.stderr, r.stderr
    assert _status(alice) == [] and not cluster_dir("dev", server.home).exists()


def test_two_users_isolation(server, tmp_path):
    alice = server.client(server.token("alice"), tmp_path / "alice")
    bob = server.client(server.token("bob"), tmp_path / "bob")
    admin = server.client(server.token("root", admin=True), tmp_path / "root")
    task = write_task(tmp_path / "t.yaml", name="a", run="echo start; sleep 60")
    r = alice("launch", "-y", "-d", "-c", "alices", task)
    assert r.returncode == 0, r.stderr
    jobs = (server.home / "managed").exists()
    before = _status(alice)
    assert [c["name"] for c in before] == ["alices"]
    assert _status(bob) == []  # bob sees his own clusters by default ...
    assert [c["user"] for c in _status(bob, "--all-users")] == ["alice"]  # ... and the team's on request
    r = bob("status", "--all-users")
    assert "USER" in r.stdout and "alice" in r.stdout

    forbidden = [("down", "-y", "alices"), ("exec", "alices", "--", "touch /tmp/pwned"), ("logs", "alices", "1"),
                 ("logs", "alices", "1", "-f"), ("cancel", "alices", "1"), ("cancel", "-a", "-y", "alices"),
                 ("stop", "-y", "alices"), ("start", "alices"), ("autostop", "alices", "-i", "1"),
                 ("queue", "alices"), ("launch", "-y", "-c", "alices", str(task)), ("events", "alices")]
    for args in forbidden:
        r = bob(*args)
        assert r.returncode == 7, (args, r.returncode, r.stderr)
        assert "belongs to user alice" in r.stderr, (args, r.stderr)
    for fn, args in [("down", [["alices"]]), ("exec_", ["alices", None]), ("logs", ["alices", 1]),
                     ("cancel", ["alices", [1]]), ("stop", ["alices"]), ("queue", ["alices"])]:
        code, body = bob.http(fn, {"args": args, "kwargs": {"follow": False} if fn == "logs" else {}})
        assert code == 403 and body["error"]["exit_code"] == 7, (fn, code, body)
    # nothing changed: the cluster is up, its job still running, no stray job, autostop unset
    after = _status(alice)
    assert [(c["name"], c["status"], c["autostop_minutes"]) for c in after] == [("alices", "UP", None)]
    q = json.loads(alice("queue", "alices", "--json").stdout)
    assert [(j["job_id"], j["status"]) for j in q] == [(1, "RUNNING")]
    assert not any(cluster_dir("alices", server.home).rglob("pwned")) and jobs == (server.home / "managed").exists()
    # an admin may
    assert admin("queue", "alices").returncode == 0
    r = admin("down", "-y", "alices")
    assert r.returncode == 0, r.stderr
    assert _status(alice) == []
    # the gone cluster's history stays alice's: not bob's to read, nor his to inherit with the name
    assert any(e["kind"] == "down" for e in json.loads(alice("events", "alices", "--json").stdout))
    r = bob("events", "alices", "--json")
    assert r.returncode == 5 and "alice" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert bob("launch", "-y", "-d", "-c", "alices", task).returncode == 0
    theirs = json.loads(bob("events", "alices", "--json").stdout)
    assert theirs and all(e["user_name"] == "bob" for e in theirs), theirs
    assert bob("down", "-y", "alices").returncode == 0


def test_arguments_sent_by_name_are_checked_like_positional_ones(server, tmp_path):
    """Found by exploratory testing: `jobs_cancel` with `job_ids` sent by name (a raw HTTP call, not the
    CLI) skipped the ownership check, and bob cancelled alice's managed job. Every call's arguments are now
    bound to the use case's parameters before its check: by name or by position, another user's cluster or
    job is 403 and nothing changes; an argument the use case does not take is exit 2, never a 500."""
    alice = server.client(server.token("alice"), tmp_path / "alice")
    bob = server.client(server.token("bob"), tmp_path / "bob")
    r = alice("launch", "-y", "-d", "-c", "alices", write_task(tmp_path / "t.yaml", name="a", run="sleep 60"))
    assert r.returncode == 0, r.stderr
    r = alice("jobs", "launch", "-y", "-d", write_task(tmp_path / "m.yaml", name="m", run="echo up; sleep 60"))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: json.loads(alice("jobs", "queue", "--json").stdout)[0]["status"] == "RUNNING", 60, 0.3,
             "alice's managed job running")
    by_name = [("jobs_cancel", {"job_ids": [1]}), ("jobs_get", {"job_id": 1}), ("job_timeline", {"job_id": 1}),
               ("jobs_logs", {"job_id": 1, "follow": False}), ("get_cluster", {"name": "alices"}),
               ("stop", {"name": "alices"}), ("down", {"names": ["alices"]}), ("queue", {"name": "alices"}),
               ("cancel", {"name": "alices", "job_ids": [1]}), ("forget_host_keys", {"cluster": "alices"}),
               ("set_autostop", {"name": "alices", "minutes": 1, "down": True}),
               ("logs", {"name": "alices", "job_id": 1, "follow": False})]
    for fn, kwargs in by_name:
        code, body = bob.http(fn, {"args": [], "kwargs": kwargs})
        assert code == 403 and body["error"]["exit_code"] == 7, (fn, code, body)
    for fn, body in [("jobs_cancel", {"args": [], "kwargs": {"job_ids": [1], "nope": 1}}),
                     ("queue", {"args": ["alices"], "kwargs": {"on_event": 1}}), ("get_cluster", {"args": []})]:
        code, answer = bob.http(fn, {"kwargs": {}, **body})
        assert code == 400 and answer["error"]["exit_code"] == 2, (fn, code, answer)
    [j] = json.loads(alice("jobs", "queue", "--json").stdout)
    assert j["status"] == "RUNNING", j  # nothing changed
    assert [(c["status"], c["autostop_minutes"]) for c in _status(alice, "alices")] == [("UP", None)]
    assert alice("jobs", "cancel", "-y", "1").returncode == 0
    assert alice("down", "-y", "alices").returncode == 0


def test_token_revoked_mid_session(server, tmp_path):
    tok = server.token("carol")
    carol = server.client(tok, tmp_path / "carol")
    assert carol("status").returncode == 0
    r = subprocess.run([sys.executable, "-m", "skybroker.cli", "server", "token", "revoke", "carol"],
                       env=server.env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = carol("status")
    assert r.returncode == 7 and "unknown or revoked" in r.stderr, r.stderr
    code, body = carol.http("status")
    assert code == 401 and body["error"]["exit_code"] == 7
    assert tok not in server.log_text()
    r = server.client("brk_not-a-token", tmp_path / "x")("status")
    assert r.returncode == 7


def test_cached_reads_follow_writes_of_other_processes(any_server, tmp_path):
    """status/jobs queue are answered from the server's cache (cache.py) until their tables change: a
    cluster saved by another process on the same database shows at the next status, a token revoked by
    another process is refused at the next request — on SQLite and on PostgreSQL."""
    alice = any_server.client(any_server.token("alice"), tmp_path / "alice")
    for _ in range(3):
        assert _status(alice) == []
    assert "alice status 200" in any_server.log_text() and " cached" in any_server.log_text()
    code = ("from skybroker import state\ntok = state.current_user.set('alice')\n"
            "state.save_cluster(state.ClusterRecord(name='made-elsewhere', cloud='aws', region='us-east-1', zone=None, "
            "instance_type='m6i.large', accelerators=None, use_spot=False, num_nodes=1, hourly_price=0.1, "
            "status=state.STOPPED, launched_at=1.0, nodes=[]))")
    r = subprocess.run([sys.executable, "-c", code], env=any_server.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [(c["name"], c["status"]) for c in _status(alice)] == [("made-elsewhere", "STOPPED")]
    assert _status(alice)[0]["name"] == "made-elsewhere"  # and the new answer is what gets cached
    r = subprocess.run([sys.executable, "-m", "skybroker.cli", "server", "token", "revoke", "alice"],
                       env=any_server.env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = alice("status")
    assert r.returncode == 7 and "unknown or revoked" in r.stderr, r.stderr


def _counting_job(tmp_path, n=25):
    led = tmp_path / "ledger"
    run = (f'i=0; echo "segment" >> "$LEDGER"; while [ $i -lt {n} ]; do i=$((i+1)); echo "count $i" >> "$LEDGER"; '
           'echo "count $i"; sleep 0.2; done; echo final')
    return led, write_task(tmp_path / "m.yaml", name="survivor", envs={"LEDGER": str(led)}, run=run)


def _ran_once(led, n=25):
    lines = led.read_text().splitlines()
    assert lines.count("segment") == 1, lines  # ran once: not restarted by the new controller
    assert [ln for ln in lines if ln.startswith("count")] == [f"count {i}" for i in range(1, n + 1)]


def test_server_killed_and_restarted_mid_managed_job(any_server, tmp_path):
    server = any_server
    led, task = _counting_job(tmp_path)
    dave = server.client(server.token("dave"), tmp_path / "dave")
    r = dave("jobs", "launch", "-y", "-d", task)
    assert r.returncode == 0, r.stderr

    def running():
        js = json.loads(dave("jobs", "queue", "--json").stdout)
        return js and js[0]["status"] == "RUNNING" and led.exists() and "count 3" in led.read_text() and js[0]

    j = wait_for(running, 40, 0.3, "the managed job running")
    assert j["user"] == "dave"
    server.kill()  # SIGKILL: the controller inside it dies too
    r = dave("jobs", "queue")
    assert r.returncode == 1 and "cannot reach the broker server" in r.stderr
    server.start()
    r = dave("jobs", "logs", "1", "-f", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "final" in r.stdout
    [j] = json.loads(dave("jobs", "queue", "--json").stdout)
    assert j["status"] == "SUCCEEDED" and j["recoveries"] == 0
    _ran_once(led)


def test_replicas_on_one_postgresql_fail_over_the_controller(postgres, tmp_path):
    """Two servers share one PostgreSQL (and the machine's BROKER_HOME: the local cloud's nodes and keys).
    Exactly one is the leader; when it is killed the other takes the controller over within 10 s, and
    the managed job finishes once, never recovered twice."""
    db = postgres.fresh_url()
    home = tmp_path / "server_home"
    a, b = Server(home, db=db).start(), Server(home, db=db)
    try:
        wait_for(lambda: "is the leader" in a.log_text(), 10, 0.1, "a leader")
        b.start()
        time.sleep(2.5)  # b tries the lease every second and must not get it while a holds it
        assert "is the leader" not in b.log_text()
        led, task = _counting_job(tmp_path, n=40)
        erin = b.client(b.token("erin"), tmp_path / "erin")  # through the replica that is not the leader
        r = erin("jobs", "launch", "-y", "-d", task)
        assert r.returncode == 0, r.stderr

        def running():
            js = json.loads(erin("jobs", "queue", "--json").stdout)
            return js and js[0]["status"] == "RUNNING" and led.exists() and "count 2" in led.read_text()

        wait_for(running, 40, 0.3, "the managed job running")
        a.kill()
        t0 = time.monotonic()
        wait_for(lambda: "is the leader" in b.log_text(), 10, 0.05, "b taking over")
        took = time.monotonic() - t0
        assert took < 10
        from tests.conftest import REPORTS

        REPORTS.append(f"server replicas: controller taken over {took:.1f} s after the leader was killed")
        r = erin("jobs", "logs", "1", "-f", timeout=60)
        assert r.returncode == 0 and "final" in r.stdout, r.stderr
        [j] = json.loads(erin("jobs", "queue", "--json").stdout)
        assert j["status"] == "SUCCEEDED" and j["recoveries"] == 0
        _ran_once(led, n=40)
    finally:
        a.stop()
        b.stop()


def test_replicas_with_separate_homes_operate_one_cluster(postgres, tmp_path):
    """Two servers with different BROKER_HOMEs (as on two machines) on one PostgreSQL, sharing only the
    database, the secrets key and the local cloud's node directory (BROKER_LOCAL_ROOT: the local cloud is
    "this machine"): a launch through A holds the cluster's lock in PostgreSQL, so B shows it INIT (not
    INTERRUPTED, which B would conclude from its own free lock file before); then B runs a job on it and
    tears it down. (Waiting for another replica's lock: tests/unit/test_replicas_state.py.)"""
    from cryptography.fernet import Fernet

    db = postgres.fresh_url()
    shared = {"BROKER_SECRETS_KEY": Fernet.generate_key().decode(), "BROKER_LOCAL_ROOT": str(tmp_path / "nodes")}
    slow_bring_up = {"BROKER_FAILPOINTS": "agent=sleep(5)"}  # a's launches hold the lock a while
    a = Server(tmp_path / "home_a", db=db, extra_env={**shared, **slow_bring_up}).start()
    b = Server(tmp_path / "home_b", db=db, extra_env=shared).start()
    try:
        tok = a.token("dana")
        via_a, via_b = a.client(tok, tmp_path / "dana_a"), b.client(tok, tmp_path / "dana_b")
        task = write_task(tmp_path / "t.yaml", name="t", run="echo launched")
        launching = via_a.bg("launch", "-y", "-d", "-c", "shared", task)
        wait_for(lambda: [c["status"] for c in _status(via_b)] == ["INIT"], 20, 0.2, "the launch seen from b")
        time.sleep(1.0)
        assert [c["status"] for c in _status(via_b)] == ["INIT"]  # b sees a's lock: not INTERRUPTED
        r = via_b("exec", "shared", "--", "echo too early")
        assert r.returncode == 2 and "is INIT" in r.stderr, r.stderr  # refused, nothing done
        assert launching.wait(60) == 0
        r = via_b("exec", "shared", "--", "echo from b")
        assert r.returncode == 0 and "from b" in r.stdout, r.stderr
        assert not (tmp_path / "home_b" / "locks").exists() and not (tmp_path / "home_a" / "locks").exists()
        r = via_b("down", "-y", "shared")
        assert r.returncode == 0, r.stderr
        assert _status(via_a) == [] and not (tmp_path / "nodes" / "shared").exists()
    finally:
        a.stop()
        b.stop()


def test_ssh_through_the_server_with_the_clients_own_key(server, tmp_path, node_pool, node_key):
    """Client-mode `broker ssh` on real sshd nodes (the `ssh` cloud, pool `lab` in the server's home):
    the server authorizes the client's own key on the node and hands over the host key it pinned, and the
    client's ssh verifies it (StrictHostKeyChecking); the broker's key never leaves the server; another
    user is refused."""
    if shutil.which("ssh") is None:
        pytest.skip("needs the OpenSSH client")
    key, pub = node_key
    [node] = node_pool.start(1, pub)
    try:
        (server.home / "ssh_node_pools.yaml").write_text(f"lab:\n  user: {node.user}\n  identity_file: {key}\n"
                                                         f"  hosts:\n    - {node.ip}\n")
        alice = server.client(server.token("alice"), tmp_path / "alice")
        bob = server.client(server.token("bob"), tmp_path / "bob")
        task = tmp_path / "s.yaml"
        task.write_text("resources: {infra: ssh/lab}\nrun: echo up\n")
        r = alice("launch", "-y", "-c", "lab1", str(task))
        assert r.returncode == 0, r.stderr
        r = alice("ssh", "lab1", "--", "echo hello from $(hostname) as $(whoami)")
        assert r.returncode == 0, r.stderr
        assert f"as {node.user}" in r.stdout, r.stdout
        mine = (tmp_path / "alice" / "keys" / "id_ed25519.pub").read_text().split()[1]
        assert mine != pub.split()[1]  # alice's own key, not the server's
        assert (tmp_path / "alice" / "ssh" / "lab1-node0.known_hosts").read_text().startswith("lab1-node0 ssh-")
        r = alice("ssh", "lab1", "--", "true")  # a second time: the key is not added twice
        assert r.returncode == 0, r.stderr
        code = f"grep -c {mine} ~/.ssh/authorized_keys"
        r = alice("exec", "lab1", "--", code)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].split()[-1] == "1", r.stdout
        r = bob("ssh", "lab1", "--", "true")
        assert r.returncode == 7 and "belongs to user alice" in r.stderr, r.stderr
        assert alice("down", "-y", "lab1").returncode == 0
    finally:
        node_pool.kill(node)


def _uploads(server, user) -> list[str]:
    d = server.home / "uploads" / user
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _sweep(server) -> list[str]:
    r = subprocess.run([sys.executable, "-c", "from skybroker.server.calls import sweep_uploads\n"
                        "print(','.join(sweep_uploads(grace=0)))"], env=server.env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [x for x in r.stdout.strip().split(",") if x]


def test_client_mode_pipelines_hostkeys_gc_cost_report_and_upload_cleanup(server, tmp_path):
    alice = server.client(server.token("alice"), tmp_path / "alice")
    bob = server.client(server.token("bob"), tmp_path / "bob")
    root = server.client(server.token("root", admin=True), tmp_path / "root")
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "data.txt").write_text("from the laptop\n")
    r = alice("launch", "-y", "-c", "dev", write_task(tmp_path / "t.yaml", name="t", workdir=str(tmp_path / "wd"),
                                                     run="cat data.txt"))
    assert r.returncode == 0 and "from the laptop" in r.stdout, r.stderr
    assert _uploads(server, "alice") == []  # synced to the nodes: the server's copy is gone at once
    r = bob("launch", "-y", "-d", "-c", "bobs", write_task(tmp_path / "b.yaml", name="b", run="true"))
    assert r.returncode == 0, r.stderr

    # a pipeline (two YAML documents) through the server: both stages, in order, from one upload
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: twostep\n---\nname: one\nworkdir: " + str(tmp_path / "wd") + "\nresources: {infra: local}\n"
                    "run: 'cat data.txt; sleep 2'\n---\nname: two\nworkdir: " + str(tmp_path / "wd") +
                    "\nresources: {infra: local}\nrun: echo second stage\n")
    r = alice("jobs", "launch", "-y", "-d", str(pipe))
    assert r.returncode == 0, r.stderr
    job = json.loads(alice("jobs", "queue", "--json").stdout)[0]
    assert job["name"] == "twostep", job
    assert len(_uploads(server, "alice")) == 2 and _sweep(server) == []  # one per stage, kept while needed
    wait_for(lambda: json.loads(alice("jobs", "queue", "--json").stdout)[0]["status"] == "SUCCEEDED", 90, 0.5,
             "the pipeline done")
    r = alice("jobs", "logs", str(job["id"]))
    assert "from the laptop" in r.stdout and "second stage" in r.stdout, r.stdout
    assert len(_sweep(server)) == 2 and _uploads(server, "alice") == []  # the job ended: swept

    # hostkeys: the server's pinned keys, its user's cluster only
    r = alice("hostkeys", "forget", "dev")
    assert r.returncode == 0 and "forgot" in r.stderr, r.stderr
    r = bob("hostkeys", "forget", "dev")
    assert r.returncode == 7 and "belongs to user alice" in r.stderr, r.stderr
    # gc: the server's clouds and state, admins only
    r = alice("gc", "--cloud", "local", "--json")
    assert r.returncode == 7 and "only an admin" in r.stderr, r.stderr
    r = root("gc", "--cloud", "local", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["scanned"], r.stdout
    # cost-report: a user's own runs; an admin's, the team's
    def clusters_in(c):
        r = c("cost-report", "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        return sorted({x["cluster"] for x in rep["clusters"]}), [j["name"] for j in rep["managed_jobs"]]

    assert clusters_in(alice) == (["dev"], ["twostep"])
    assert clusters_in(bob) == (["bobs"], [])
    assert clusters_in(root)[0] == ["bobs", "dev"]
    for c, n in ((alice, "dev"), (bob, "bobs")):
        assert c("down", "-y", n).returncode == 0


def test_client_mode_imports_no_server_stack(server, tmp_path):
    alice = server.client(server.token("alice"), tmp_path / "alice")
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('LOADED', sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'psycopg',"
            " 'sqlalchemy', 'httpx', 'boto3', 'skybroker.optimizer') if m in sys.modules), file=sys.stderr))\n"
            "from skybroker.cli import main\nmain(['status'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, **alice.env()})
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stderr, r.stderr
    assert server.log_text().count("alice status 200") == 1  # one round trip
    assert "alice daemons" not in server.log_text()


def test_autostop_works_with_the_client_gone_in_server_mode(server, tmp_path):
    fay = server.client(server.token("fay"), tmp_path / "fay")
    r = fay("launch", "-y", "-c", "idle", write_task(tmp_path / "t.yaml", name="t", run="echo done"))
    assert r.returncode == 0, r.stderr
    r = fay("autostop", "idle", "-i", "0")
    assert r.returncode == 0, r.stderr
    # no client process runs from here on: the cluster's own nodes stop it (autostop on the cluster itself,
    # armed through the server); the cloud's view, asked with --refresh, is the truth
    assert _status(fay)[0]["autostop_where"] == "node"
    wait_for(lambda: _status(fay, "--refresh")[0]["status"] == "STOPPED", 30, 0.5, "the idle cluster stopping itself")
    r = fay("events", "idle", "--json")
    assert any(e["kind"] == "autostop" for e in json.loads(r.stdout)), r.stdout
    assert not (server.home / "autostop.log").exists()  # no background watcher process was started
    r = fay("autostop", "idle", "--cancel")
    assert r.returncode == 0, r.stderr
    r = fay("start", "idle")
    assert r.returncode == 0 and "cluster idle is up" in r.stderr, r.stderr
    r = fay("exec", "-d", "idle", "--", "sleep 30")
    assert r.returncode == 0 and "job 2 submitted" in r.stderr, r.stderr
    r = fay("cancel", "idle", "2")
    assert r.returncode == 0 and "cancelled: 2" in r.stderr, r.stderr
    assert [j["status"] for j in json.loads(fay("queue", "idle", "--json").stdout)] == ["SUCCEEDED", "CANCELLED"]
    r = fay("stop", "-y", "idle")
    assert r.returncode == 0 and _status(fay)[0]["status"] == "STOPPED", r.stderr


def test_interrupted_client_launch_is_rolled_back_by_the_server(tmp_path):
    import signal

    s = Server(tmp_path / "server_home", extra_env={"BROKER_FAILPOINTS": "sync=sleep(2)"}).start()
    try:
        gus = s.client(s.token("gus"), tmp_path / "gus")
        (tmp_path / "wd").mkdir()
        task = write_task(tmp_path / "t.yaml", name="t", workdir=str(tmp_path / "wd"), run="echo never")
        err = tmp_path / "launch.err"
        p = gus.bg("launch", "-y", "-c", "gone", task, stderr=err)
        wait_for(lambda: "installing the node agent" in err.read_text(), 30, 0.1, "the launch under way")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 130 and "never" not in out, err.read_text()
        wait_for(lambda: _status(gus) == [] and not cluster_dir("gone", s.home).exists(), 30, 0.3,
                 "the server rolling the launch back")
        assert any(e["kind"] == "down" for e in json.loads(gus("events", "gone", "--json").stdout))
    finally:
        s.stop()


def _followers(home) -> list[int]:
    """Processes following a job's log on a local cloud node under `home` (`agent.py logs N --follow`)."""
    from pathlib import Path

    found = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0") if p.name.isdigit() else []
        except OSError:
            continue
        if b"logs" in cmd and b"--follow" in cmd and any(str(home).encode() in c for c in cmd):
            found.append(int(p.name))
    return found


def test_a_client_gone_from_a_silent_follow_leaves_no_follower_on_the_nodes(server, tmp_path):
    """Found by exploratory testing: Ctrl-C on `logs -f` of a job that prints nothing for a while left the
    server following it (a thread, and `agent.py logs --follow` on every node) until the job ended, since
    the call was interrupted only at its next output; each abandoned follow added more. Now the call is
    interrupted as soon as the client is gone, its per-node followers too; the job runs on."""
    import signal

    alice = server.client(server.token("alice"), tmp_path / "alice")
    r = alice("launch", "-y", "-d", "-c", "quiet", write_task(tmp_path / "t.yaml", name="q", num_nodes=2,
                                                             run="echo started; sleep 120"))
    assert r.returncode == 0, r.stderr
    for _ in range(2):
        p = alice.bg("logs", "quiet", "1", "-f")
        wait_for(lambda: len(_followers(server.home)) == 2, 30, 0.1, "the server following both nodes")
        assert "started" in p.stdout.readline()
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
        wait_for(lambda: not _followers(server.home), 20, 0.2, "the followers gone with the client")
    [j] = json.loads(alice("queue", "quiet", "--json").stdout)
    assert j["status"] == "RUNNING", j  # the job keeps running
    assert alice("down", "-y", "quiet").returncode == 0


def test_ctrl_c_after_the_job_was_submitted_says_what_a_local_launch_says(server, tmp_path):
    """Found by exploratory testing: Ctrl-C on a client-mode launch (or exec) following its running job
    said "interrupted: the server rolls back what this launch was creating", though the job runs on and
    nothing is rolled back; a local launch says "stopped following; job 1 keeps running on cluster C" and
    how to follow or stop it. The client now says that once the server reported the job submitted."""
    import signal

    alice = server.client(server.token("alice"), tmp_path / "alice")
    task = write_task(tmp_path / "t.yaml", name="t", run="echo started; sleep 120")
    for args, job in ((("launch", "-y", "-c", "follow", task), 1), (("exec", "follow", "--", "sleep 120"), 2)):
        err = tmp_path / f"{args[0]}.err"
        p = alice.bg(*args, stderr=err)
        wait_for(lambda: f"job {job} submitted" in err.read_text(), 30, 0.1, "the job submitted")
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
        said = err.read_text()
        assert f"stopped following; job {job} keeps running on cluster follow" in said, said
        assert f"broker logs follow {job} -f" in said and "rolls back" not in said, said
    q = {j["job_id"]: j["status"] for j in json.loads(alice("queue", "follow", "--json").stdout)}
    assert q[1] == "RUNNING" and q[2] in ("PENDING", "RUNNING"), q
    assert alice("down", "-y", "follow").returncode == 0


def test_a_server_stopped_mid_launch_rolls_the_launch_back(tmp_path):
    """Found by exploratory testing: SIGTERM to the server (systemctl stop, a deploy) during a client's
    launch ended the process with the launch's thread in the middle of it: the cluster stayed INTERRUPTED
    with its instances running (money, on a real cloud), where a local `broker` rolls back on SIGTERM. A
    stopping server now interrupts its running calls and waits for their rollback before it exits."""
    import signal

    s = Server(tmp_path / "server_home", extra_env={"BROKER_FAILPOINTS": "sync=sleep(30)"})
    s.start()
    try:
        gus = s.client(s.token("gus"), tmp_path / "gus")
        (tmp_path / "wd").mkdir()
        task = write_task(tmp_path / "t.yaml", name="t", workdir=str(tmp_path / "wd"), run="echo never")
        err = tmp_path / "launch.err"
        p = gus.bg("launch", "-y", "-c", "mid", task, stderr=err)
        wait_for(lambda: "syncing" in err.read_text(), 30, 0.1, "the launch under way")
        assert cluster_dir("mid", s.home).exists()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
        p.wait(30)
        assert p.returncode != 0 and "never" not in p.stdout.read()
        assert not cluster_dir("mid", s.home).exists()  # rolled back before the process ended
        assert "stopping: interrupting 1 running call(s)" in s.log_text()
        s.extra_env.pop("BROKER_FAILPOINTS")
        s.start()
        assert _status(gus) == []
        assert any(e["kind"] == "down" for e in json.loads(gus("events", "mid", "--json").stdout))
    finally:
        s.stop()


def test_tls(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "c.pem", tmp_path / "k.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    s = Server(tmp_path / "server_home", tls=(crt, pem)).start()
    try:
        hal = s.client(s.token("hal"), tmp_path / "hal")
        r = hal("status")
        assert r.returncode == 1 and "certificate" in r.stderr.lower(), r.stderr  # not trusted: refused
        r = broker_with(hal, "status", BROKER_API_CA=str(crt))
        assert r.returncode == 0, r.stderr
    finally:
        s.stop()


def broker_with(client, *args, **env):
    from tests.integration.local_helpers import broker

    return broker(*args, env={**client.env(), **env})
