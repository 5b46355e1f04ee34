"""runtime/channel.py: reading a local node's agent files directly (no process per look) gives what the
agent itself answers, and the change feed moves exactly when a watched job's files do."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skybroker.runtime import channel
from skybroker.runtime.agent_client import AgentClient
from skybroker.runtime.local_runner import LocalRunner
from skybroker.runtime.runner import NodeUnreachable
from tests.infra.agent_copy import installed_agent

AGENT = installed_agent()  # the launcher of a copy installed as the client installs it


def agent(home, *args, stdin=None):
    r = subprocess.run([sys.executable, str(AGENT), *map(str, args)], input=stdin, capture_output=True,
                       env=dict(os.environ, HOME=str(home)), timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def submit(home, job_id, run):
    agent(home, "submit", stdin=json.dumps({"job_id": job_id, "run": run, "env": {}}).encode())


def wait_status(home, job_id, *statuses):
    deadline = time.time() + 20
    while True:
        job = agent(home, "status", "--job", job_id)["jobs"][0]
        if job["status"] in statuses:
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def test_read_job_is_what_the_agent_answers(tmp_path):
    assert channel.read_job(tmp_path, 1) == (b"", 0, None)  # no agent database yet
    submit(tmp_path, 1, "printf 'one\\ntwo \\xff'")
    wait_status(tmp_path, 1, "SUCCEEDED")
    data, nxt, row = channel.read_job(tmp_path, 1, 4)
    theirs = agent(tmp_path, "logs", 1, "--offset", 4, "--b64")
    assert (data, nxt) == (b"two \xff", 9) and row == theirs["job"]
    assert channel.read_job(tmp_path, 2) == (b"", 0, None)


def test_a_dead_runner_is_left_to_the_agent(tmp_path):
    submit(tmp_path, 1, "sleep 30")
    job = wait_status(tmp_path, 1, "RUNNING")
    assert channel.read_job(tmp_path, 1)[2]["status"] == "RUNNING"
    db = tmp_path / ".skybroker-node" / "agent.db"
    import sqlite3

    pid, pgid = sqlite3.connect(db).execute("SELECT runner_pid, pgid FROM jobs WHERE job_id=1").fetchone()
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline
        time.sleep(0.02)
    with pytest.raises(channel.NeedsAgent):
        channel.read_job(tmp_path, 1)
    # the client then asks the agent, which reconciles (and kills what is left of the job)
    client = AgentClient(LocalRunner("n", tmp_path), sys.executable + " -S")
    client.install()
    data, _, row = client.poll(1)
    assert row["status"] == "FAILED" and "runner process died" in row["reason"], (job, row)


def test_poll_and_status_of_a_local_node_start_no_process(tmp_path, monkeypatch):
    runner = LocalRunner("n", tmp_path)
    client = AgentClient(runner, sys.executable + " -S")
    client.install()
    submit(tmp_path, 1, "echo hi")
    wait_status(tmp_path, 1, "SUCCEEDED")

    def no_process(*a, **k):
        raise AssertionError("a process was started for a look at a local node")

    monkeypatch.setattr(runner, "run", no_process)
    data, nxt, row = client.poll(1)
    assert (data, nxt, row["status"]) == (b"hi\n", 3, "SUCCEEDED")
    assert [j["status"] for j in client.status(1)] == ["SUCCEEDED"]
    assert client.status(7) == []
    shutil.rmtree(tmp_path)
    with pytest.raises(NodeUnreachable):
        client.poll(1)  # the node is gone: unreachable, as through the agent


def test_change_feed_moves_with_the_files():
    now = [0.0]
    feed = channel.ChangeFeed(every=1.0, clock=lambda: now[0])
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"feed-{os.getpid()}-{time.time_ns()}"
    log = base / ".skybroker-node" / "jobs" / "3" / "run.log"
    log.parent.mkdir(parents=True)
    (base / "node.json").write_text("{}")
    log.write_bytes(b"")
    calls = []
    homes = lambda: calls.append(1) or [base]  # noqa: E731
    try:
        assert feed.changed("j", 3, homes) is True and feed.watching("j")  # first sight
        now[0] += 1
        log.write_bytes(b"output")
        assert feed.changed("j", 3, homes, min_gap=5) is False  # new output only: not before min_gap
        now[0] += 4
        assert feed.changed("j", 3, homes, min_gap=5) is True  # ...kept until then
        now[0] += 1
        (base / ".skybroker-node" / "agent.db-wal").write_bytes(b"x")
        assert feed.changed("j", 3, homes, min_gap=5) is True  # a state change: at once
        now[0] += 1
        assert feed.changed("j", 3, homes) is False
        log.write_bytes(b"more")
        assert feed.changed("j", 3, homes) is False  # not before `every` seconds
        now[0] += 1
        assert feed.changed("j", 3, homes) is True
        now[0] += 1
        shutil.rmtree(base)  # preempted: the node's files are gone
        assert feed.changed("j", 3, homes) is True
        assert calls == [1]  # the homes are looked up once per (key, job id)
        now[0] += 1
        assert feed.changed("j", 4, homes) is True and calls == [1, 1]  # a new cluster job: looked up again
        assert feed.changed("r", 1, lambda: None) is False and not feed.watching("r")  # not local: polled
        now[0] += 5
        feed.forget(["r"])
        assert not feed.watching("j")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_change_feed_holds_checkpoint_changes_for_their_gap(tmp_path):
    now = [0.0]
    feed = channel.ChangeFeed(every=0, clock=lambda: now[0], also=("ckpt",), also_gap=30)
    (tmp_path / "ckpt").mkdir()
    assert feed.changed("j", 1, lambda: [tmp_path]) is True
    now[0] += 5
    time.sleep(0.02)  # past the filesystem's coarse timestamp tick
    (tmp_path / "ckpt" / "step").write_text("1")  # a new entry: the directory's mtime moves
    assert feed.changed("j", 1, lambda: [tmp_path]) is False  # the controller copies at most every 30 s
    now[0] += 25
    assert feed.changed("j", 1, lambda: [tmp_path]) is True
    assert feed.changed("j", 1, lambda: [tmp_path]) is False
