"""Clusters on real OpenSSH nodes (network namespaces) through the `ssh` cloud: the same code path a
cloud VM takes (paramiko, rsync over ssh, node agent), exercised for real. Root only (skipped otherwise)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, broker_cmd
from tests.integration.local_helpers import declare_pool


def broker(*args, timeout=120, check=False, **kw):
    r = subprocess.run(broker_cmd() + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       stdin=subprocess.DEVNULL, env=dict(os.environ), **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"broker {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def ssh_nodes(node_pool, node_key):
    """Four fresh sshd nodes declared as pool `lab` in this test's BROKER_HOME."""
    key, pub = node_key
    nodes = node_pool.start(4, pub)
    declare_pool(nodes, key)
    yield nodes
    for n in nodes:
        if n.alive:
            node_pool.kill(n)


def task(tmp_path, body: str, name="t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def test_four_nodes_ranks_ips_and_env(ssh_nodes, tmp_path):
    t = task(tmp_path, """
name: ranks
num_nodes: 4
resources: {infra: ssh/lab}
envs: {GREETING: hi}
run: |
  echo "rank=$SKYPILOT_NODE_RANK n=$SKYPILOT_NUM_NODES twin=$BROKER_NODE_RANK g=$GREETING pwd=$(pwd)"
  echo "ips=$(echo "$SKYPILOT_NODE_IPS" | paste -sd, -)"
  echo "me=$(hostname -I | tr -d ' ')"
""")
    r = broker("launch", "-y", "-c", "sshc", str(t), check=True)
    ranks = sorted(line.split("rank=")[1].split()[0] for line in r.stdout.splitlines() if "rank=" in line)
    assert ranks == ["0", "1", "2", "3"]
    assert r.stdout.count("n=4 ") == 4 and r.stdout.count("g=hi") == 4
    ips_lines = {line.split("ips=")[1] for line in r.stdout.splitlines() if "ips=" in line}
    assert len(ips_lines) == 1
    ips = ips_lines.pop().split(",")
    assert sorted(ips) == sorted(n.ip for n in ssh_nodes)
    for line in r.stdout.splitlines():  # each node's own IP is at its rank in SKYPILOT_NODE_IPS
        if "me=" in line:
            rank = int(line.split(")")[0].split("-")[1])
            assert ips[rank] in line
    assert "/sky_workdir" in r.stdout or "pwd=" in r.stdout
    st = json.loads(broker("status", "--json", check=True).stdout)
    assert [(c["name"], c["cloud"], c["num_nodes"], c["status"]) for c in st] == [("sshc", "ssh", 4, "UP")]
    broker("down", "-y", "sshc", check=True)
    assert broker("down", "-y", "sshc").returncode == 0  # idempotent
    for n in ssh_nodes:  # what skybroker put on the hosts is gone
        assert not (n.home / ".skybroker-node").exists()


def test_workdir_sync_honours_ignore_files(ssh_nodes, tmp_path):
    wd = tmp_path / "wd"
    (wd / "sub").mkdir(parents=True)
    (wd / ".git").mkdir()
    (wd / ".git" / "HEAD").write_text("ref")
    (wd / "keep.py").write_text("print(1)")
    (wd / "big.bin").write_text("x")
    (wd / ".gitignore").write_text("*.bin\n")
    (wd / "sub" / ".gitignore").write_text("secret.txt\n")
    (wd / "sub" / "secret.txt").write_text("s")
    (wd / "sub" / "ok.txt").write_text("o")
    (wd / ".brokerignore").write_text("scratch/\n")
    (wd / "scratch").mkdir()
    (wd / "scratch" / "tmp").write_text("t")
    t = task(tmp_path, f"workdir: {wd}\nnum_nodes: 2\nresources: {{infra: ssh/lab}}\nrun: find . -type f | sort\n")
    r = broker("launch", "-y", "-c", "sync", str(t), check=True)
    for node in ssh_nodes[:2]:
        files = sorted(str(p.relative_to(node.home / "sky_workdir")) for p in (node.home / "sky_workdir").rglob("*")
                       if p.is_file())
        assert files == [".brokerignore", ".gitignore", "keep.py", "sub/.gitignore", "sub/ok.txt"], files
    assert "secret.txt" not in r.stdout and ".git/HEAD" not in r.stdout
    broker("down", "-y", "sync", check=True)


def test_failing_node_exit_code_and_queue_logs_cancel(ssh_nodes, tmp_path):
    t = task(tmp_path, "num_nodes: 3\nresources: {infra: ssh/lab}\n"
                       "run: 'if [ $SKYPILOT_NODE_RANK = 1 ]; then echo boom; exit 7; fi; sleep 60'\n")
    t0 = time.time()
    r = broker("launch", "-y", "-c", "fail", str(t))
    assert r.returncode == 7, r.stderr
    assert time.time() - t0 < 45  # the rest of the gang was cancelled, not waited for
    assert "(node-1) boom" in r.stdout
    r = broker("exec", "-d", "fail", "--", "sleep 300")
    assert r.returncode == 0
    q = json.loads(broker("queue", "fail", "--json", check=True).stdout)
    assert q[0]["status"] == "FAILED" and q[0]["exit_code"] == 7
    running = q[-1]["job_id"]
    deadline = time.time() + 20
    while time.time() < deadline:
        q = json.loads(broker("queue", "fail", "--json", check=True).stdout)
        if q[-1]["status"] == "RUNNING":
            break
        time.sleep(0.3)
    assert broker("cancel", "fail", str(running)).returncode == 0
    q = json.loads(broker("queue", "fail", "--json", check=True).stdout)
    assert q[-1]["status"] == "CANCELLED"
    logs = broker("logs", "fail", "1")
    assert "(node-1) boom" in logs.stdout
    broker("down", "-y", "fail", check=True)


def test_node_killed_mid_job_is_reported_fast(ssh_nodes, node_pool, tmp_path, monkeypatch):
    t = task(tmp_path, "num_nodes: 2\nresources: {infra: ssh/lab}\nrun: 'echo started; sleep 120'\n")
    p = subprocess.Popen(broker_cmd() + ["launch", "-y", "-c", "kill", str(t)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, stdin=subprocess.DEVNULL, env=dict(os.environ))
    seen = 0
    for line in p.stdout:
        if "started" in line:
            seen += 1
            if seen == 2:
                break
    t0 = time.time()
    node_pool.kill(ssh_nodes[1])  # the pool file lists hosts in order: ssh_nodes[1] is rank 1
    try:
        out, err = p.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("broker launch hung after a node was killed")
    detect = time.time() - t0
    assert p.returncode not in (0, None)
    assert "unreachable" in err and "Traceback" not in err
    assert detect < 15, detect  # the lost node is not asked again (that waited out two connect timeouts: 21 s)
    # the clean-up's connect to the dead node's address waits out the whole connect timeout (10 s by default)
    monkeypatch.setenv("BROKER_SSH_CONNECT_TIMEOUT", "2")
    broker("down", "-y", "kill")
