"""SSH pool hosts that are lost (cut off, killed) while a cluster holds them, on real sshd nodes (network
namespaces; root only): a DEGRADED cluster's jobs can still be looked at and cancelled on the nodes that
answer; `down` with a host cut off keeps that host out of the pool until it has been cleaned; `down` removes
the workdir and the file mounts the broker created (never what was there before); an interrupted `logs -f`
leaves no follower on the node."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, broker_cmd
from tests.integration.local_helpers import declare_pool


def broker(*args, timeout=120, **kw):
    return subprocess.run(broker_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, stdin=subprocess.DEVNULL, env=dict(os.environ), **kw)


def flat(text: str) -> str:
    return " ".join(text.split())


def wait_for(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def node_procs(node, pattern: str) -> list[str]:
    """Command lines of the node's processes (its namespace's pids) that contain `pattern`."""
    out = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout.split()
    found = []
    for pid in out:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmd:
            found.append(cmd)
    return found


@pytest.fixture
def lab(node_pool, node_key, monkeypatch):
    """Three fresh sshd nodes declared as pool `lab` in this test's BROKER_HOME (a cut host is noticed in
    about 2 s: short connect timeout)."""
    key, pub = node_key
    nodes = node_pool.start(3, pub)
    declare_pool(nodes, key)
    monkeypatch.setenv("BROKER_SSH_CONNECT_TIMEOUT", "2")
    yield nodes
    for n in nodes:
        if n.alive:
            node_pool.restore_network(n)
            node_pool.kill(n)


def _queue(name):
    r = broker("queue", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_degraded_clusters_jobs_can_be_seen_and_cancelled_on_the_nodes_that_answer(lab, node_pool, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("BROKER_GANG_PEER_GRACE", "0")  # the nodes' own gang watch would stop the job too
    t = tmp_path / "t.yaml"
    t.write_text("num_nodes: 2\nresources: {infra: ssh/lab}\nrun: 'echo hello-$SKYPILOT_NODE_RANK; sleep 300'\n")
    r = broker("launch", "-y", "-d", "-c", "deg", t)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _queue("deg")[-1]["status"] == "RUNNING", 30, "the job running")
    wait_for(lambda: node_procs(lab[0], "sleep 300"), 10, "the job on node 0")
    node_pool.cut_network(lab[1])  # rank 1: the pool lists hosts in order
    st = json.loads(broker("status", "--refresh", "--json").stdout)
    assert st[0]["status"] == "DEGRADED", st

    q = broker("queue", "deg", "--json")
    assert q.returncode == 0, q.stderr
    job = json.loads(q.stdout)[-1]
    assert [(n["rank"], n["status"]) for n in job["nodes"]] == [(0, "RUNNING"), (1, "UNREACHABLE")]
    assert "node 1" in flat(q.stderr) and lab[1].ip in q.stderr, q.stderr  # the warning names the lost node

    lg = broker("logs", "deg", "1")
    assert lg.returncode == 0, lg.stderr
    assert "hello-0" in lg.stdout and "node 1" in flat(lg.stderr), (lg.stdout, lg.stderr)

    c = broker("cancel", "deg", "1")
    assert c.returncode == 0, c.stderr
    assert "node 1" in flat(c.stderr) and lab[1].ip in c.stderr, c.stderr  # says where it could not cancel
    wait_for(lambda: not node_procs(lab[0], "sleep 300"), 15, "the job cancelled on node 0")
    assert broker("down", "-y", "deg").returncode in (0, 1)


def test_a_host_down_could_not_clean_is_cleaned_before_another_cluster_gets_it(lab, node_pool, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("BROKER_GANG_PEER_GRACE", "0")  # the cut host's job must still run when it is back
    t = tmp_path / "t.yaml"
    t.write_text("num_nodes: 2\nresources: {infra: ssh/lab}\nrun: 'sleep 300'\n")
    assert broker("launch", "-y", "-d", "-c", "old", t).returncode == 0
    wait_for(lambda: node_procs(lab[1], "sleep 300"), 30, "the job on node 1")
    node_pool.cut_network(lab[1])
    d = broker("down", "-y", "old")
    assert d.returncode == 0, d.stderr
    assert lab[1].ip in d.stderr and "stays out of pool lab until it is cleaned" in flat(d.stderr), d.stderr
    assert not node_procs(lab[0], "sleep 300")  # the host that answered was cleaned at once
    node_pool.restore_network(lab[1])
    assert node_procs(lab[1], "sleep 300")  # the old cluster's job still runs on the host that was cut off

    t2 = tmp_path / "t2.yaml"
    t2.write_text("num_nodes: 3\nresources: {infra: ssh/lab}\nrun: 'echo new-$SKYPILOT_NODE_RANK'\n")
    r = broker("launch", "-y", "-c", "new", t2, timeout=90)  # needs every host: the left-over one is cleaned first
    assert r.returncode == 0, r.stderr
    assert "new-1" in r.stdout and "new-2" in r.stdout
    assert not node_procs(lab[1], "sleep 300")
    assert [j["job_id"] for j in _queue("new")] == [1]  # the old cluster's jobs are not in the new one's queue
    assert broker("down", "-y", "new").returncode == 0


def test_down_removes_the_workdir_and_the_file_mounts_it_created_and_nothing_else(lab, tmp_path):
    node = lab[0]
    (node.home / "mine").mkdir()  # the user's own directories on the host, there before the cluster
    (node.home / "mine" / "notes.txt").write_text("keep")
    (node.home / "existing").mkdir()
    (node.home / "existing" / "own.txt").write_text("keep too")
    pw = pwd.getpwnam(node.user)
    for p in ("mine", "mine/notes.txt", "existing", "existing/own.txt"):
        os.lchown(node.home / p, pw.pw_uid, pw.pw_gid)  # the user's own, as on a real host
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "code.py").write_text("print(1)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("1,2")
    cfg = tmp_path / "app.yaml"
    cfg.write_text("a: 1")
    t = tmp_path / "t.yaml"
    t.write_text(f"workdir: {wd}\nresources: {{infra: ssh/lab}}\n"
                 f"file_mounts:\n  ~/datasets/train: {data}\n  ~/conf/app.yaml: {cfg}\n"
                 f"  ~/mine/extra.yaml: {cfg}\n  ~/existing: {data}\n"
                 "run: 'ls ~/sky_workdir ~/datasets/train ~/conf ~/mine ~/existing'\n")
    r = broker("launch", "-y", "-c", "mounts", t)
    assert r.returncode == 0, r.stderr
    assert "code.py" in r.stdout and "in.csv" in r.stdout and "extra.yaml" in r.stdout
    d = broker("down", "-y", "mounts")
    assert d.returncode == 0, d.stderr
    left = sorted(p.relative_to(node.home).as_posix() for p in node.home.rglob("*"))
    for gone in ("sky_workdir", "datasets", "conf", ".skybroker-node", "mine/extra.yaml"):
        assert gone not in left, left  # what the broker created
    assert (node.home / "mine" / "notes.txt").read_text() == "keep"  # what was there before
    assert (node.home / "existing" / "own.txt").read_text() == "keep too"


@pytest.mark.parametrize("how", ["logs", "exec"])
def test_an_interrupted_follow_of_a_silent_job_leaves_no_follower_on_the_node(lab, tmp_path, how):
    t = tmp_path / "t.yaml"
    t.write_text("resources: {infra: ssh/lab}\nrun: 'echo once; sleep 300'\n")
    assert broker("launch", "-y", "-d", "-c", "quiet", t).returncode == 0
    wait_for(lambda: node_procs(lab[0], "sleep 300"), 30, "the job running")
    # exec: one node, followed in the same agent call (`run`); the job waits its turn, silent too
    args = ["logs", "quiet", "1", "-f"] if how == "logs" else ["exec", "quiet", "--", "sleep 301"]
    p = subprocess.Popen(broker_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO, stdin=subprocess.DEVNULL, env=dict(os.environ))
    follower = "--follow" if how == "logs" else "agent.py run"
    try:
        wait_for(lambda: node_procs(lab[0], follower), 30, "the follower on the node")
        time.sleep(0.5)
        p.send_signal(2)  # Ctrl-C
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    wait_for(lambda: not node_procs(lab[0], follower), 15, "no follower left on the node")
    assert node_procs(lab[0], "sleep 300")  # the job itself keeps running: only the follow was interrupted
    assert broker("down", "-y", "quiet").returncode == 0


@pytest.mark.parametrize("lose", ["kill", "cut"])
def test_a_detached_gang_whose_node_is_lost_is_stopped_on_the_survivors(lab, node_pool, tmp_path, monkeypatch, lose):
    monkeypatch.setenv("BROKER_GANG_PEER_GRACE", "3")
    t = tmp_path / "t.yaml"
    t.write_text("num_nodes: 3\nresources: {infra: ssh/lab}\nrun: 'sleep 300'\n")
    assert broker("launch", "-y", "-d", "-c", "gang", t).returncode == 0
    for n in lab:
        wait_for(lambda: node_procs(n, "sleep 300"), 30, f"the job on {n.name}")
    time.sleep(6)  # every node has seen the others answer (the watch only acts on a peer it saw answering)
    (node_pool.kill if lose == "kill" else node_pool.cut_network)(lab[2])
    for n in lab[:2]:  # no client follows the job: the survivors stop it themselves
        wait_for(lambda: not node_procs(n, "sleep 300"), 30, f"the job stopped on {n.name}")
    job = _queue("gang")[-1]
    assert job["status"] == "FAILED"
    for rank in (0, 1):
        node = job["nodes"][rank]
        assert node["status"] == "FAILED" and lab[2].ip in (node["reason"] or ""), node
    assert broker("down", "-y", "gang").returncode == 0
