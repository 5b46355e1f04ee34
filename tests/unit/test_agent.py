"""The on-node agent, driven exactly as the client drives it: `python3 agent.py <cmd>` with HOME = one node.

Set AGENT_PYTHON (e.g. a python3.8) to run the agent under another interpreter.
"""
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skybroker.runtime import agent as agent_mod
from tests.infra.agent_copy import installed_agent
from tests.infra.metadata_fake import Metadata as _Metadata

AGENT = installed_agent()  # the launcher of a copy installed as the client installs it
PY = os.environ.get("AGENT_PYTHON", sys.executable)
GATE = 'while [ ! -e "$HOME/go" ]; do sleep 0.02; done'  # a job blocks here until the test opens the gate


def poll(pred, timeout=15.0, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def pid_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except FileNotFoundError:
        return True
    return data[data.rfind(")") + 2] in "ZX"  # a zombie is dead (this container's init reaps slowly)


class Node:
    def __init__(self, home):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, HOME=str(self.home))

    def run(self, *args, stdin=None, timeout=30):
        return subprocess.run([PY, str(AGENT), *map(str, args)], input=stdin, capture_output=True,
                              env=self.env, timeout=timeout)

    def cmd(self, *args, stdin=None):
        r = self.run(*args, stdin=stdin)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)

    def submit(self, job_id, run=None, setup=None, **fields):
        job = {"job_id": job_id, "name": "job%d" % job_id, "rank": 0, "num_nodes": 1, "setup": setup,
               "run": run, "env": {}, "secret_env": {}, "workdir": "~/sky_workdir", "setup_key": None}
        job.update(fields)
        out = self.cmd("submit", stdin=json.dumps(job).encode())
        assert out["job_id"] == job_id
        return out

    def job(self, job_id):
        jobs = self.cmd("status", "--job", job_id)["jobs"]
        assert len(jobs) == 1
        return jobs[0]

    def wait_status(self, job_id, *statuses, timeout=15.0):
        return poll(lambda: (lambda j: j if j["status"] in statuses else None)(self.job(job_id)), timeout,
                    "job %d to reach %s" % (job_id, statuses))

    def wait(self, job_id):
        out = self.cmd("wait", job_id, "--timeout", 20)
        assert not out["timed_out"]
        return out["jobs"][0]

    def log(self, job_id):
        return self.run("logs", job_id).stdout.decode()

    def open_gate(self):
        (self.home / "go").touch()

    def runner_pid(self, job_id):
        with sqlite3.connect(str(self.home / ".skybroker-node" / "agent.db")) as db:
            return db.execute("SELECT runner_pid FROM jobs WHERE job_id=?", (job_id,)).fetchone()[0]


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "node0")
    yield n
    db = n.home / ".skybroker-node" / "agent.db"  # never leave runners or jobs behind, even when a test fails
    if db.exists():
        with sqlite3.connect(str(db)) as conn:
            rows = conn.execute("SELECT runner_pid, pgid FROM jobs WHERE status IN "
                                "('PENDING', 'SETTING_UP', 'RUNNING')").fetchall()
        for runner, pgid in rows:
            for kill, target in ((os.kill, runner), (os.killpg, pgid)):
                try:
                    target and kill(target, signal.SIGKILL)
                except OSError:
                    pass


def test_submit_runs_to_success_with_log(node):
    assert node.cmd("submit", stdin=json.dumps({"job_id": 1, "run": "echo hello; pwd"}).encode()) == \
        {"job_id": 1, "status": "PENDING"}
    job = node.wait(1)
    assert job["status"] == "SUCCEEDED" and job["exit_code"] == 0
    assert job["submitted_at"] <= job["started_at"] <= job["ended_at"]
    assert node.log(1) == "hello\n%s\n" % (node.home / "sky_workdir")
    assert node.cmd("status")["jobs"][0]["job_id"] == 1
    assert node.cmd("status", "--job", 42) == {"jobs": []}


def test_env_and_secrets_reach_job_but_no_file(node):
    secret = "s3cr3t-Value-9f8e7d"
    node.submit(1, setup='echo "setup $PUBLIC"', run='echo "$PUBLIC"; printf %s "$TOKEN" > "$HOME/seen"; ' + GATE,
                env={"PUBLIC": "visible"}, secret_env={"TOKEN": secret}, setup_key="k")
    node.wait_status(1, "RUNNING")
    poll(lambda: (node.home / "seen").exists(), what="job to write the secret")
    cmdline = Path("/proc/%d/cmdline" % node.runner_pid(1)).read_bytes()

    def leaked():
        return [str(p) for p in (node.home / ".skybroker-node").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]

    assert leaked() == [] and secret.encode() not in cmdline  # while the runner holds it in memory
    node.open_gate()
    assert node.wait(1)["status"] == "SUCCEEDED"
    assert (node.home / "seen").read_text() == secret
    assert node.log(1) == "setup visible\nvisible\n"
    assert leaked() == []


def test_fifo_order_one_job_at_a_time(node):
    for i in (1, 2, 3):
        node.submit(i, run='echo start%d >> "$HOME/order"; %s; echo end%d >> "$HOME/order"' % (i, GATE, i))
    node.wait_status(1, "RUNNING")
    assert [node.job(i)["status"] for i in (2, 3)] == ["PENDING", "PENDING"]
    node.open_gate()
    for i in (1, 2, 3):
        assert node.wait(i)["status"] == "SUCCEEDED"
    assert (node.home / "order").read_text().split() == ["start1", "end1", "start2", "end2", "start3", "end3"]
    jobs = [node.job(i) for i in (1, 2, 3)]
    assert jobs[0]["ended_at"] <= jobs[1]["started_at"] and jobs[1]["ended_at"] <= jobs[2]["started_at"]


def test_setup_runs_once_per_setup_key(node):
    setup = 'echo "setup $N" | tee -a "$HOME/setups"'
    node.submit(1, setup=setup, run="echo run1", setup_key="k1", env={"N": "1"})
    node.submit(2, setup=setup, run="echo run2", setup_key="k1", env={"N": "2"})
    node.submit(3, setup=setup, run="echo run3", setup_key="k2", env={"N": "3"})
    node.submit(4, setup=setup, run="echo run4", setup_key=None, env={"N": "4"})
    for i in (1, 2, 3, 4):
        assert node.wait(i)["status"] == "SUCCEEDED"
    assert (node.home / "setups").read_text().split("\n")[:-1] == ["setup 1", "setup 3", "setup 4"]
    assert node.log(1) == "setup 1\nrun1\n"  # setup then run, same log, in order
    assert node.log(2) == "run2\n"


def test_submit_says_whether_the_setup_succeeded_here_before(node):
    assert node.submit(1, setup="exit 3", run="true", setup_key="k")["setup_done"] is False
    node.wait(1)
    assert node.submit(2, setup="true", run="true", setup_key="k")["setup_done"] is False  # it failed: runs again
    node.wait(2)
    assert node.submit(3, setup="true", run="true", setup_key="k")["setup_done"] is True
    assert "setup_done" not in node.submit(4, run="true", setup_key="k")  # no setup, nothing to say
    assert [node.wait(i)["status"] for i in (3, 4)] == ["SUCCEEDED", "SUCCEEDED"]


def test_failed_setup_and_failed_run_record_exit_codes(node):
    node.submit(1, setup="echo broken; exit 3", run='touch "$HOME/ran1"', setup_key="k")
    node.submit(2, run="echo oops; exit 7")
    node.submit(3, setup="echo fixed", run="true", setup_key="k")  # a failed setup does not count as done
    j1, j2, j3 = node.wait(1), node.wait(2), node.wait(3)
    assert (j1["status"], j1["exit_code"]) == ("FAILED_SETUP", 3) and "setup" in j1["reason"]
    assert not (node.home / "ran1").exists()
    assert (j2["status"], j2["exit_code"]) == ("FAILED", 7)
    assert (j3["status"], j3["exit_code"]) == ("SUCCEEDED", 0)
    assert node.log(1) == "broken\n" and node.log(3) == "fixed\n"


def test_cancel_running_job_kills_whole_tree(node):
    node.submit(1, run='bash -c \'sleep 300 & echo $! > "$HOME/gc.pid"; wait\' & echo $! > "$HOME/child.pid"; wait')
    node.submit(2, run="echo after")
    poll(lambda: (node.home / "gc.pid").exists() and (node.home / "gc.pid").read_text().strip(), what="gc pid")
    pids = [int((node.home / n).read_text()) for n in ("child.pid", "gc.pid")]
    assert not any(pid_gone(p) for p in pids)
    assert node.cmd("cancel", 1) == {"cancelled": [1]}
    assert [pid_gone(p) for p in pids] == [True, True]  # gone when cancel returns
    assert node.job(1)["status"] == "CANCELLED"
    assert node.wait(2)["status"] == "SUCCEEDED"  # the queue goes on
    assert node.wait(1)["status"] == "CANCELLED"  # the runner did not overwrite it
    assert node.cmd("cancel", 1) == {"cancelled": []}


def test_cancel_escalates_to_sigkill(node):
    node.submit(1, run='trap "" TERM; echo $$ > "$HOME/p.pid"; sleep 300')
    poll(lambda: (node.home / "p.pid").exists() and (node.home / "p.pid").read_text().strip(), what="pid")
    node.wait_status(1, "RUNNING")
    pid = int((node.home / "p.pid").read_text())
    assert node.cmd("cancel", "--all") == {"cancelled": [1]}
    assert pid_gone(pid)


def test_cancel_pending_job(node):
    node.submit(1, run=GATE)
    node.submit(2, run='touch "$HOME/ran2"')
    node.submit(3, run="echo three")
    node.wait_status(1, "RUNNING")
    assert node.cmd("cancel", 2, 99) == {"cancelled": [2]}
    node.open_gate()
    assert [node.wait(i)["status"] for i in (1, 2, 3)] == ["SUCCEEDED", "CANCELLED", "SUCCEEDED"]
    assert not (node.home / "ran2").exists()


def test_logs_offset_and_follow(node):
    node.submit(1, run='echo first; %s; echo second' % GATE)
    reader = subprocess.Popen([PY, str(AGENT), "logs", "1", "--follow"], stdout=subprocess.PIPE, env=node.env)
    try:
        ready, _, _ = select.select([reader.stdout], [], [], 15)
        assert ready, "follow reader saw nothing"
        assert reader.stdout.readline() == b"first\n"
        assert node.job(1)["status"] == "RUNNING"  # streamed before the job ended
        r = node.run("logs", 1, "--offset", 6, "--wait-seconds", 0.2)  # long-poll with no new data
        assert (r.returncode, r.stdout) == (0, b"")
        node.open_gate()
        rest, _ = reader.communicate(timeout=15)
    finally:
        reader.kill()
    assert (reader.returncode, rest) == (0, b"second\n")
    assert node.run("logs", 1, "--offset", 6).stdout == b"second\n"
    assert node.run("logs", 1, "--offset", 100).stdout == b""
    r = node.run("logs", 77)
    assert r.returncode == 3 and b"no such job" in r.stderr
    assert node.run("logs", 77, "--follow").returncode == 3


def test_wait_timeout(node):
    node.submit(1, run=GATE)
    out = node.cmd("wait", 1, "--timeout", 0.2)
    assert out["timed_out"] and out["jobs"][0]["status"] in ("PENDING", "RUNNING")
    assert node.run("wait", 5).returncode == 3


def test_job_survives_submitter_session_dying(node):
    job = json.dumps({"job_id": 1, "run": 'echo alive; %s; echo done' % GATE})
    (node.home / "job.json").write_text(job)
    session = subprocess.Popen(["bash", "-c", '"$0" "$1" submit < "$HOME/job.json"; echo submitted; sleep 300',
                                PY, str(AGENT)], stdout=subprocess.PIPE, env=node.env, start_new_session=True)
    assert json.loads(session.stdout.readline()) == {"job_id": 1, "status": "PENDING"}
    assert session.stdout.readline() == b"submitted\n"  # submit returned and did not hold the pipe
    os.killpg(session.pid, signal.SIGKILL)  # the SSH session goes away
    session.wait()
    session.stdout.close()
    node.wait_status(1, "RUNNING")
    node.open_gate()
    assert node.wait(1)["status"] == "SUCCEEDED"
    assert node.log(1) == "alive\ndone\n"


def test_killed_runner_reports_failed_and_queue_continues(node):
    node.submit(1, run='echo $$ > "$HOME/p.pid"; sleep 300')
    node.submit(2, run="echo two")
    node.wait_status(1, "RUNNING")
    poll(lambda: (node.home / "p.pid").exists() and (node.home / "p.pid").read_text().strip(), what="pid")
    os.kill(node.runner_pid(1), signal.SIGKILL)
    job = node.wait_status(1, "FAILED")
    assert "runner" in job["reason"]
    poll(lambda: pid_gone(int((node.home / "p.pid").read_text())), what="orphaned job process to be killed")
    assert node.wait(2)["status"] == "SUCCEEDED"


def test_killed_pending_runner_does_not_block_queue(node):
    node.submit(1, run=GATE)
    node.submit(2, run="echo two")
    node.submit(3, run="echo three")
    os.kill(node.runner_pid(2), signal.SIGKILL)
    node.open_gate()
    assert [node.wait(i)["status"] for i in (1, 2, 3)] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]


def test_job_from_before_a_reboot_is_failed(node):
    node.submit(1, run=GATE)
    node.wait_status(1, "RUNNING")
    with sqlite3.connect(str(node.home / ".skybroker-node" / "agent.db")) as db:
        db.execute("UPDATE jobs SET boot_id='a-previous-boot'")
    job = node.job(1)
    assert job["status"] == "FAILED" and "reboot" in job["reason"]
    runner = node.runner_pid(1)
    node.open_gate()  # let the (really still alive) runner finish; it must not overwrite the verdict
    poll(lambda: pid_gone(runner), what="runner to exit")
    assert node.job(1)["status"] == "FAILED"


def test_concurrent_submits_no_lost_job_no_overlap(node):
    n = 8
    run = ('mkdir "$HOME/busy" 2>/dev/null || echo overlap >> "$HOME/overlap"; echo $JOB >> "$HOME/order"; '
           'sleep 0.05; rmdir "$HOME/busy"')
    procs = [subprocess.Popen([PY, str(AGENT), "submit"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=node.env) for _ in range(n)]
    for i, p in enumerate(procs, 1):
        p.stdin.write(json.dumps({"job_id": i, "run": run, "env": {"JOB": str(i)}}).encode())
        p.stdin.close()
    for i, p in enumerate(procs, 1):
        assert json.loads(p.stdout.read()) == {"job_id": i, "status": "PENDING"}
        assert p.wait(timeout=30) == 0
        p.stdout.close()
    statuses = [node.wait(i)["status"] for i in range(1, n + 1)]
    assert statuses == ["SUCCEEDED"] * n
    assert not (node.home / "overlap").exists()
    order = [int(x) for x in (node.home / "order").read_text().split()]
    assert order == [j["job_id"] for j in node.cmd("status")["jobs"]]  # FIFO = submission (seq) order
    assert sorted(order) == list(range(1, n + 1))


def test_idle_seconds(node):
    assert node.cmd("idle-seconds")["idle_seconds"] >= 0
    node.submit(1, run=GATE)
    assert node.cmd("idle-seconds") == {"idle_seconds": 0}
    node.open_gate()
    end = node.wait(1)["ended_at"]
    first = node.cmd("idle-seconds")["idle_seconds"]
    assert 0 < first <= time.time() - end + 1
    poll(lambda: node.cmd("idle-seconds")["idle_seconds"] > first, what="idle time to grow")


def test_next_id(node):
    assert node.cmd("next-id")["job_id"] == 1
    node.submit(5, run="true")
    assert node.cmd("next-id")["job_id"] == 6
    assert node.cmd("next-id")["job_id"] == 7  # an issued id is reserved


def test_submit_token_is_idempotent_across_restarts(node):
    """The managed-jobs controller records a token before submitting; after a restart the same token
    gets the same id and finds the job it already started, so it never runs twice."""
    first = node.cmd("next-id", "--token", "mj1-0")
    assert first == {"job_id": 1, "existing": False}
    node.submit(1, run='echo ran >> "$HOME/count"', token="mj1-0")
    node.wait(1)
    assert node.cmd("next-id", "--token", "mj1-0") == {"job_id": 1, "existing": True}
    assert [j["job_id"] for j in node.cmd("status", "--token", "mj1-0")["jobs"]] == [1]
    assert node.cmd("status", "--token", "other")["jobs"] == []
    # a resubmit with the token is a duplicate even if the payload differs (e.g. a new checkpoint env)
    again = node.submit(1, run='echo ran >> "$HOME/count"', token="mj1-0", env={"X": "1"})
    assert again["duplicate"] is True
    assert (node.home / "count").read_text() == "ran\n"


def test_held_job_waits_for_release(node):
    node.submit(1, run='echo go >> "$HOME/out"', held_seconds=60)
    time.sleep(0.5)
    j = node.job(1)
    assert j["status"] == "PENDING" and j["held"] is True and not (node.home / "out").exists()
    assert node.cmd("release", 1)["job_id"] == 1
    assert node.wait(1)["status"] == "SUCCEEDED"
    assert (node.home / "out").read_text() == "go\n"


def test_held_job_never_released_cancels_itself(node):
    """A gang submit that died between its two phases leaves no job PENDING forever."""
    node.submit(1, run='echo never >> "$HOME/out"', held_seconds=0.3)
    j = node.wait_status(1, "CANCELLED", timeout=10)
    assert "never released" in j["reason"]
    assert not (node.home / "out").exists()


def test_logs_b64_offsets_are_byte_exact(node):
    import base64

    node.submit(1, run="printf 'a\\377b\\n\\303\\251t\\351\\n'")  # invalid UTF-8 bytes in the output
    node.wait(1)
    raw = (node.home / ".skybroker-node" / "jobs" / "1" / "run.log").read_bytes()
    got, off = b"", 0
    while True:
        out = node.cmd("logs", 1, "--offset", off, "--b64")
        chunk = base64.b64decode(out["data"])
        assert out["offset"] == off and out["next"] == off + len(chunk)
        if not chunk:
            break
        got += chunk
        off = out["next"]
    assert got == raw and b"\xff" in got
    mid = node.cmd("logs", 1, "--offset", 2, "--b64")  # from inside a multi-byte character: still exact
    assert base64.b64decode(mid["data"]) == raw[2:]
    assert mid["status"] == "SUCCEEDED"


def test_long_run_script_beyond_the_argument_limit(node):
    """A `run:` larger than Linux's 128 KiB per-argument limit runs (it is executed from a file)."""
    filler = "# " + "x" * 200 + "\n"
    script = filler * 800 + 'echo "big script ran"\n'
    assert len(script) > 150_000
    node.submit(1, run=script)
    assert node.wait(1)["status"] == "SUCCEEDED"
    assert "big script ran" in node.log(1)


def test_cleanup_removes_only_what_the_broker_created(node):
    home = node.home
    (home / "mine").mkdir()
    (home / "mine" / "keep.txt").write_text("the user's")
    node.cmd("claim", "~/sky_workdir", "~/mine", "/etc")  # ~/mine exists already, /etc is outside home
    (home / "sky_workdir").mkdir()
    (home / "sky_workdir" / "code.py").write_text("synced")
    out = node.cmd("cleanup")
    assert str(home / "sky_workdir") in out["removed"]
    assert not (home / "sky_workdir").exists() and not (home / ".skybroker-node").exists()
    assert (home / "mine" / "keep.txt").read_text() == "the user's"
    assert os.path.isdir("/etc")


def test_claim_of_a_path_whose_parents_are_missing_claims_the_outermost_one(node):
    home = node.home
    (home / "mine").mkdir()
    out = node.cmd("claim", "~/datasets/train/part", "~/mine/extra.yaml")
    assert out["claimed"] == [str(home / "datasets" / "train" / "part"), str(home / "mine" / "extra.yaml")]
    (home / "datasets" / "train" / "part").mkdir(parents=True)
    (home / "datasets" / "train" / "part" / "shard0").write_text("synced")
    (home / "mine" / "extra.yaml").write_text("synced")
    (home / "mine" / "keep.txt").write_text("the user's")
    node.cmd("cleanup")
    assert not (home / "datasets").exists() and not (home / "mine" / "extra.yaml").exists()
    assert (home / "mine" / "keep.txt").read_text() == "the user's"


def test_cleanup_keeps_what_the_user_put_beside_a_mount_in_the_directories_it_made(node):
    """A file mount's missing parents are the broker's, but what the job or the user put in them is not:
    the cleanup removes the mount's target and then only the parents left empty (it removed the whole
    outermost directory, with the job's results in it)."""
    home = node.home
    node.cmd("claim", "~/work/inputs/train.csv", "~/cache/a/b.bin")
    (home / "work" / "inputs").mkdir(parents=True)
    (home / "work" / "inputs" / "train.csv").write_text("synced")
    (home / "work" / "results").mkdir()
    (home / "work" / "results" / "model.pt").write_text("the job's output")
    (home / "cache" / "a").mkdir(parents=True)
    (home / "cache" / "a" / "b.bin").write_text("synced")
    node.cmd("cleanup")
    assert not (home / "work" / "inputs").exists() and not (home / "cache").exists()
    assert (home / "work" / "results" / "model.pt").read_text() == "the job's output"


def test_a_follow_of_a_silent_job_ends_once_its_reader_is_gone(node):
    node.submit(1, run=GATE)  # prints nothing until the gate opens
    node.wait_status(1, "RUNNING")
    r, w = os.pipe()
    follower = subprocess.Popen([PY, str(AGENT), "logs", "1", "--follow"], stdout=w, env=node.env)
    os.close(w)
    try:
        time.sleep(0.5)
        assert follower.poll() is None  # still following while someone reads
        os.close(r)  # the SSH channel closed (the client was interrupted)
        follower.wait(timeout=10)  # it notices without writing anything
    finally:
        follower.kill()
        node.open_gate()
    assert node.wait(1)["status"] == "SUCCEEDED"  # the job itself was not touched


def test_the_gang_watch_stops_the_job_once_a_peer_that_answered_stops_answering(node):
    import socket

    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    peer.listen(16)
    port = peer.getsockname()[1]
    never = socket.socket()
    never.bind(("127.0.0.1", 0))  # bound, never listening: a peer that never answered is no reason
    node.submit(1, run="sleep 60", rank=0, num_nodes=3,
                gang={"peers": [["127.0.0.1", port], ["127.0.0.1", never.getsockname()[1]]], "grace": 1, "every": 0.2})
    node.wait_status(1, "RUNNING")
    time.sleep(1.5)
    assert node.job(1)["status"] == "RUNNING"
    peer.close()  # the peer is lost
    job = node.wait_status(1, "FAILED", timeout=20)
    assert "127.0.0.1:%d" % port in job["reason"] and "stopped answering" in job["reason"], job
    never.close()
    assert node.run("submit", stdin=json.dumps({"job_id": 2, "gang": {"peers": "x"}}).encode()).returncode == 2


def test_the_gang_watch_takes_no_clock_step_for_a_silent_peer(monkeypatch):
    """The watch measures silence on the monotonic clock: a wall-clock step forward (NTP, a resumed VM)
    during one failed probe is no lost peer (with time.time it killed the healthy job at once)."""
    import types

    from skybroker.runtime.agent import gang

    real = time.monotonic
    fake = types.SimpleNamespace(monotonic=real, time=lambda: real() + (3600.0 if probes[0] > 1 else 0.0))
    probes = [0]

    def answers(host, port, timeout):
        probes[0] += 1
        return probes[0] == 1  # answered once, then one (transient) failure after another

    killed = []
    monkeypatch.setattr(gang, "time", fake)
    monkeypatch.setattr(gang, "_answers", answers)
    monkeypatch.setattr(gang.Watch, "_kill", lambda self: killed.append(self.lost))
    w = gang.Watch({"peers": [["10.0.0.2", 22]], "grace": 30, "every": 0.05}, 0, None)
    try:
        deadline = real() + 30
        while probes[0] < 10 and real() < deadline:
            time.sleep(0.05)
    finally:
        w.stop()
    assert probes[0] >= 10 and killed == [] and w.lost is None, (probes, killed)


def test_cleanup_refuses_a_directory_holding_a_client_state_db(node):
    node.cmd("version")
    (node.home / ".skybroker-node").mkdir(exist_ok=True)
    (node.home / ".skybroker-node" / "state.db").write_bytes(b"client state")
    r = node.run("cleanup")
    assert r.returncode != 0 and "refusing" in json.loads(r.stdout)["error"]
    assert (node.home / ".skybroker-node" / "state.db").exists()


def test_idempotent_resubmit_and_conflicting_duplicate(node):
    job = {"job_id": 1, "run": 'echo x >> "$HOME/count"', "secret_env": {"S": "v"}}
    node.cmd("submit", stdin=json.dumps(job).encode())
    again = node.cmd("submit", stdin=json.dumps(job).encode())
    assert again["duplicate"] is True
    r = node.run("submit", stdin=json.dumps(dict(job, run="echo other")).encode())
    assert r.returncode != 0 and "different payload" in json.loads(r.stdout)["error"]
    assert node.wait(1)["status"] == "SUCCEEDED"
    assert (node.home / "count").read_text() == "x\n"


BAD_PAYLOADS = [
    b"not json", b"[1, 2]", b"{}", b'{"job_id": "1"}', b'{"job_id": true}', b'{"job_id": -1}',
    b'{"job_id": 1, "bogus": 1}', b'{"job_id": 1, "env": {"A": 1}}', b'{"job_id": 1, "env": {"1A": "x"}}',
    b'{"job_id": 1, "secret_env": []}', b'{"job_id": 1, "rank": 2, "num_nodes": 2}', b'{"job_id": 1, "run": 5}',
]
BAD_ARGS = [(), ("frobnicate",), ("logs",), ("logs", "x"), ("logs", 1, "--offset", -1), ("wait", 1, "--timeout"),
            ("cancel",), ("status", "--job", "abc")]


def test_bad_input_is_a_json_error(node):
    for payload in BAD_PAYLOADS:
        r = node.run("submit", stdin=payload)
        assert r.returncode == 2 and "error" in json.loads(r.stdout), payload
    assert node.cmd("status") == {"jobs": []}
    for args in BAD_ARGS:
        r = node.run(*args)
        assert r.returncode == 2 and "error" in json.loads(r.stdout), args


def test_module_exports(node):
    assert node.cmd("version") == {"version": agent_mod.agent_version()}
    package = AGENT.parent / agent_mod.PACKAGE
    assert sorted(p.name for p in package.glob("*.py")) == sorted(agent_mod.FILES)
    for name, data in agent_mod.sources():  # the copy on the node is the package, byte for byte
        assert (package / name).read_bytes() == data
    assert agent_mod.TERMINAL_STATUSES == {"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED"}
    assert {agent_mod.PENDING, agent_mod.SETTING_UP, agent_mod.RUNNING} == set(agent_mod.ACTIVE_STATUSES)


# -- preemption notices ---------------------------------------------------------------------------------
NOTICE_URLS = {"aws": "/latest/meta-data/spot/instance-action", "gcp": "/computeMetadata/v1/instance/preempted",
               "azure": "/metadata/scheduledevents?api-version=2020-07-01"}


@pytest.mark.parametrize("kind", ["aws", "gcp", "azure"])
def test_preemption_notice_stops_the_job_with_sigterm_and_is_recorded(node, kind):
    md = _Metadata()
    try:
        run = ('trap \'echo "got SIGTERM, checkpointing"; echo saved > "$HOME/ckpt"; exit 0\' TERM; '
               'echo started; while true; do sleep 0.1; done')
        node.submit(1, run=run, notice={"kind": kind, "url": md.base + NOTICE_URLS[kind], "every": 0.2, "grace": 5})
        node.wait_status(1, "RUNNING")
        time.sleep(1.0)
        assert node.job(1)["status"] == "RUNNING" and node.job(1)["notice"] is None  # no notice: runs on
        md.noticed = True
        j = node.wait_status(1, "FAILED", timeout=15)  # stopped by the notice: not "succeeded", whatever its code
        assert j["notice"] and kind in j["notice"] and "preemption notice" in j["reason"]
        assert (node.home / "ckpt").read_text() == "saved\n"  # the job had its SIGTERM to checkpoint
        assert "got SIGTERM, checkpointing" in node.log(1)
    finally:
        md.close()


def test_a_notice_that_never_comes_changes_nothing(node):
    node.submit(1, run="sleep 0.5; echo done", notice={"kind": "aws", "url": "http://127.0.0.1:9/latest/meta-data/"
                                                        "spot/instance-action", "every": 0.1})
    j = node.wait(1)
    assert j["status"] == "SUCCEEDED" and j["notice"] is None


# -- autostop on the node ----------------------------------------------------------------------------
def _watcher_pids(node):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = open("/proc/%s/environ" % name, "rb").read()
                cmd = open("/proc/%s/cmdline" % name, "rb").read()
            except OSError:
                continue
            if b"_autostop_watch" in cmd and ("HOME=%s" % node.home).encode() + b"\0" in env:
                if not pid_gone(int(name)):
                    out.append(int(name))
    return out


def test_autostop_runs_the_command_once_idle_then_exits(node):
    node.submit(1, run=GATE)
    fired = node.home / "fired"
    assert node.cmd("autostop", "--idle-seconds", 0.3, "--command", "echo x >> %s" % fired, "--every", 0.05) == \
        {"armed": True}
    time.sleep(1.0)
    assert not fired.exists()  # a running job: not idle
    node.open_gate()
    node.wait(1)
    poll(lambda: fired.exists(), what="the self-stop command to run")
    poll(lambda: not _watcher_pids(node), what="the watcher to exit")
    assert fired.read_text() == "x\n"  # once


def test_autostop_worker_follows_its_head(node):
    """--follow HOST:PORT: idle is not enough, the head must also stop answering for the grace."""
    import socket

    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(16)
    port = head.getsockname()[1]
    fired = node.home / "fired"
    node.cmd("autostop", "--idle-seconds", 0, "--command", "touch %s" % fired, "--every", 0.05,
             "--follow", "127.0.0.1:%d" % port, "--follow-grace", 0.5)
    time.sleep(1.0)
    assert not fired.exists()  # idle, but the head still answers
    head.close()
    poll(lambda: fired.exists(), what="the worker to follow its head down")


def test_autostop_failed_command_is_retried_and_clear_stops_it(node):
    tries = node.home / "tries"
    cmd = 'echo t >> %s; [ "$(wc -l < %s)" -ge 2 ]' % (tries, tries)  # fails the first time
    node.cmd("autostop", "--idle-seconds", 0, "--command", cmd, "--every", 0.05)
    poll(lambda: tries.exists() and len(tries.read_text().split()) >= 2, what="a retry after the failure")
    poll(lambda: not _watcher_pids(node), what="the watcher to exit after success")
    # armed again, then cleared before it fires: nothing runs and the watcher exits
    other = node.home / "other"
    node.submit(2, run=GATE)
    node.cmd("autostop", "--idle-seconds", 0, "--command", "touch %s" % other, "--every", 0.05)
    poll(lambda: _watcher_pids(node), what="the watcher to start")
    assert node.cmd("autostop", "--clear") == {"armed": False}
    poll(lambda: not _watcher_pids(node), what="the watcher to exit once cleared")
    node.open_gate()
    node.wait(2)
    assert not other.exists()
    assert node.run("autostop", "--idle-seconds", 5, "--command", "true", "--follow", "nohostport").returncode == 2


def test_autostop_ssh_busy_counts_an_interactive_session(node):
    """--ssh-busy: a process titled like sshd's session process for a pty keeps the node busy; the idle
    time starts when it is gone. (An `exec -a` title is what /proc shows for sshd's own.)"""
    fired = node.home / "fired"
    session = subprocess.Popen(["bash", "-c", 'exec -a "sshd: tester@pts/97" sleep 60'])
    try:
        poll(lambda: open("/proc/%d/cmdline" % session.pid, "rb").read().startswith(b"sshd: tester@pts/97"),
             what="the fake session's title")
        node.cmd("autostop", "--idle-seconds", 2.0, "--command", "touch %s" % fired, "--every", 0.05, "--ssh-busy")
        time.sleep(2.5)
        assert not fired.exists()  # idle of jobs (for longer than the idle time), but someone is logged in
    finally:
        session.kill()
        session.wait()
    gone = time.time()
    poll(lambda: fired.exists(), what="the watcher to fire once the session closed")
    # idle counted from the session's end, not from the arming (which would fire at the next 0.05 s round):
    # the margin (1 s of the 2 s idle time) leaves room for a watcher that was not scheduled for a while
    assert time.time() - gone >= 1.0


# ------------------------------------------------------------------------ run: submit + follow in one call
MARK = "BROKER-0123456789abcdef"


def _run_job(node, run, **fields):
    job = {"job_id": None, "name": "r", "run": run, "env": {}, "secret_env": {}}
    job.update(fields)
    r = node.run("run", "--marker", MARK, stdin=json.dumps(job).encode())
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    head, _, rest = r.stdout.partition(b"\n")
    assert head.startswith(MARK.encode() + b" ")
    body, _, tail = rest.rstrip(b"\n").rpartition(b"\n")
    if not tail.startswith(MARK.encode()):  # the log was empty: the end marker follows the start marker
        body, tail = b"", rest.rstrip(b"\n")
    return json.loads(head[len(MARK) + 1:]), body, json.loads(tail[len(MARK) + 1:])["job"]


def test_run_allocates_submits_and_streams_exact_bytes(node):
    node.submit(4, run="true")
    start, body, end = _run_job(node, "printf 'a\\nb\\xff\\n'; printf tail; exit 3")
    assert start == {"job_id": 5, "status": "PENDING", "duplicate": False}
    assert body == b"a\nb\xff\ntail"  # byte-exact; the agent adds the newline before its end marker only
    assert (end["job_id"], end["status"], end["exit_code"]) == (5, "FAILED", 3)
    assert node.cmd("logs", 5, "--b64")["data"] == "YQpi/wp0YWls"  # the log itself has no added newline


def test_run_fills_in_the_id_and_spares_the_job_from_the_calls_kill_marker(node):
    env = dict(node.env, BROKER_RUN_ID="call-1")
    r = subprocess.run([PY, str(AGENT), "run", "--marker", MARK], env=env, capture_output=True, timeout=30,
                       input=json.dumps({"job_id": None, "run": 'echo "$ID|${BROKER_RUN_ID-unset}"', "env": {},
                                         "id_env": {"ID": "job-{job_id}"}}).encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(b"\n")[1] == b"job-1|unset"


def test_run_with_a_token_never_starts_a_job_twice(node):
    first = _run_job(node, "echo once >> $HOME/ledger", token="tok-1")
    again = _run_job(node, "echo once >> $HOME/ledger", token="tok-1")
    assert first[0]["job_id"] == again[0]["job_id"] == 1 and again[0]["duplicate"] is True
    assert again[2]["status"] == "SUCCEEDED"
    assert (node.home / "ledger").read_text() == "once\n"


def test_run_needs_a_marker_and_reports_bad_input(node):
    r = node.run("run", stdin=b"{}")
    assert r.returncode == 2 and b"--marker" in r.stdout
    r = node.run("run", "--marker", MARK, stdin=json.dumps({"job_id": None, "bogus": 1}).encode())
    assert r.returncode == 2 and b"unknown job field" in r.stdout
    assert node.cmd("status")["jobs"] == []


def test_run_stream_killed_leaves_the_job_running(node):
    """The client's Ctrl-C kills the call's process group: the job (its own session) keeps running."""
    p = subprocess.Popen([PY, str(AGENT), "run", "--marker", MARK], env=node.env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, start_new_session=True)
    p.stdin.write(json.dumps({"job_id": None, "run": GATE + "; echo done", "env": {}}).encode())
    p.stdin.close()
    assert p.stdout.readline().startswith(MARK.encode())
    node.wait_status(1, "RUNNING")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert node.job(1)["status"] == "RUNNING"
    (node.home / "go").touch()
    assert node.wait(1)["status"] == "SUCCEEDED"


def test_watch_streams_row_changes_log_growth_and_beats_then_ends(node):
    """`watch`: the first line of a job is its row, then a line per status change (row) or log growth
    (size only), beats in between, and the command ends by itself once the job is terminal."""
    node.submit(1, run=GATE + "; echo one; sleep 0.5; echo two; sleep 0.5")
    p = subprocess.Popen([PY, str(AGENT), "watch", "1", "--every", "0.05", "--beat", "0.2"], stdout=subprocess.PIPE,
                         env=node.env)
    lines = []
    try:
        first = json.loads(p.stdout.readline())
        assert first["job"] == 1 and first["row"]["status"] in ("PENDING", "RUNNING") and first["size"] == 0
        node.open_gate()
        for raw in p.stdout:
            lines.append(json.loads(raw))
        assert p.wait(timeout=20) == 0
    finally:
        p.kill()
        p.wait()
    rows = [d["row"]["status"] for d in lines if "row" in d]
    assert rows[-1] == "SUCCEEDED" and "RUNNING" in [first["row"]["status"]] + rows, rows
    sizes = [d["size"] for d in lines if "job" in d and "row" not in d]
    assert sizes and sizes == sorted(sizes), lines  # the log grew between status changes, never shrank
    assert lines[-1 if "beat" not in lines[-1] else -2]["size"] == len(b"one\ntwo\n")
    assert sum("beat" in d for d in lines) >= 2


def test_watch_of_an_unknown_job_ends_at_once_and_its_client_going_away_ends_it(node):
    r = node.run("watch", "7")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0]) == {"job": 7, "row": None, "size": 0}
    node.submit(1, run=GATE)
    p = subprocess.Popen([PY, str(AGENT), "watch", "1", "--beat", "0.1"], stdout=subprocess.PIPE, env=node.env)
    assert json.loads(p.stdout.readline())["job"] == 1
    p.stdout.close()  # the channel is gone: the next beat cannot be written
    assert p.wait(timeout=10) == 0
    node.open_gate()


# -- a full disk ------------------------------------------------------------------------------------
_FULL = """import sys
sys.path.insert(0, %r)
import skybroker_agent as a
import skybroker_agent.store as s
def db():
    raise s._sqlite().OperationalError("database or disk is full")
s.db = db
sys.exit(a.main())
"""


def test_a_submit_on_a_full_disk_is_one_line_naming_the_node_and_the_disk(tmp_path):
    """The agent's SQLite DB cannot be written (SQLite's "database or disk is full", injected into the
    installed copy): the client's error is one line naming the node and the agent's DB on that disk, with
    a hint (it was "internal error: OperationalError: ...")."""
    from skybroker.runtime.agent_client import AgentClient, AgentError
    from skybroker.runtime.runner import RunResult

    node = Node(tmp_path / "n0")
    code = _FULL % str(AGENT.parent)
    job = {"job_id": 1, "name": "j", "rank": 0, "num_nodes": 1, "setup": None, "run": "true", "env": {},
           "secret_env": {}, "workdir": "~", "setup_key": None}

    class Runner:
        node_id = "c1 node 0"

        def run(self, cmd, stdin=None, timeout=None, **kw):
            r = subprocess.run([PY, "-S", "-c", code, *cmd.split()[3:]], input=stdin, capture_output=True,
                               env=node.env, timeout=30)
            return RunResult(r.returncode, r.stdout.decode(), r.stderr.decode())

    with pytest.raises(AgentError) as ei:
        AgentClient(Runner(), label="c1 node 0").submit(job)
    msg = ei.value.message
    assert "\n" not in msg and "Traceback" not in msg and "internal error" not in msg, msg
    assert msg.startswith("node agent on c1 node 0: its disk is full: ")
    assert str(node.home / ".skybroker-node" / "agent.db") in msg and "database or disk is full" in msg
    assert "disk_size" in ei.value.hint


def test_a_disk_io_error_is_a_full_disk_only_when_the_disk_has_no_space(tmp_path, monkeypatch):
    """SQLite says "disk I/O error" when its WAL cannot grow on a full disk: that is reported as a full disk
    only when the disk has (almost) no space left; ENOSPC always is."""
    from collections import namedtuple

    monkeypatch.setenv("HOME", str(tmp_path))
    err = sqlite3.OperationalError("disk I/O error")
    vfs = namedtuple("vfs", "f_bavail f_frsize")
    monkeypatch.setattr(os, "statvfs", lambda p: vfs(10 << 20, 1))
    assert agent_mod.disk_full(err) is None
    assert "its disk is full" in agent_mod.disk_full(OSError(28, "No space left on device"))
    monkeypatch.setattr(os, "statvfs", lambda p: vfs(0, 4096))
    assert agent_mod.disk_full(err).startswith("its disk is full: %s cannot be written (disk I/O error; 0 KiB free)"
                                               % (tmp_path / ".skybroker-node" / "agent.db"))
