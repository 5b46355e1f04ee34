"""Clusters end to end on the `local` cloud: the real `broker` CLI as a subprocess, real node agents, real
process trees. Node i of cluster C is the sandbox BROKER_HOME/local/C/node-i (its $HOME) at 127.0.0.(i+1).

Timing bounds below are generous "does not hang" limits, never performance assertions.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.local_helpers import (alive, broker, broker_bg, broker_home, job_state, kill_leftovers,
                                             kill_pids, node_dir, node_lines, node_pids, pids_with_env,
                                             queue_json, status_json, wait_for, write_task)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Whatever a test leaves running on its nodes (or an autostop watcher) is killed afterwards."""
    yield
    kill_leftovers(broker_home())


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


# ------------------------------------------------------------------------------------------------ 1
def test_four_node_job_environment(tmp_path):
    task = write_task(
        tmp_path / "env.yaml", name="envcheck", num_nodes=4,
        envs={"FROM_YAML": "yaml-value", "OVERRIDDEN": "from-yaml"},
        run=("pwd > ~/pwd.txt\n"
             "python3 -c 'import json, os; json.dump(dict(os.environ), open(os.path.expanduser(\"~/env.json\"), \"w\"))'\n"
             "echo \"hello from rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES\"\n"))
    r = broker("launch", "-y", "-c", "envc", task, "--env", "OVERRIDDEN=from-cli", "--env", "EXTRA=x y",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _no_traceback(r)

    lines = node_lines(r.stdout)
    assert sorted(lines) == [0, 1, 2, 3], r.stdout
    for rank in range(4):
        assert lines[rank] == [f"hello from rank {rank} of 4"], r.stdout

    envs = {rank: json.loads((node_dir("envc", rank) / "env.json").read_text()) for rank in range(4)}
    own_ip = {rank: json.loads((node_dir("envc", rank) / "node.json").read_text())["ip"] for rank in range(4)}
    assert sorted(int(e["SKYPILOT_NODE_RANK"]) for e in envs.values()) == [0, 1, 2, 3]
    task_ids = set()
    for rank, e in envs.items():
        assert e["HOME"] == str(node_dir("envc", rank))
        assert int(e["SKYPILOT_NODE_RANK"]) == rank
        assert e["SKYPILOT_NUM_NODES"] == "4"
        ips = e["SKYPILOT_NODE_IPS"].split("\n")
        assert len(ips) == 4 and len(set(ips)) == 4, ips
        assert ips[0] == own_ip[0]  # head first
        assert ips[rank] == own_ip[rank]  # every node finds its own IP at its rank
        info = json.loads(e["SKYPILOT_CLUSTER_INFO"])
        assert info["cluster"] == "envc" and info["cloud"] == "local"
        assert {"region", "zone"} <= set(info)
        assert e["SKYPILOT_TASK_ID"]
        task_ids.add(e["SKYPILOT_TASK_ID"])
        for k in ("NODE_RANK", "NODE_IPS", "NUM_NODES", "CLUSTER_INFO", "TASK_ID", "NUM_GPUS_PER_NODE"):
            assert e[f"BROKER_{k}"] == e[f"SKYPILOT_{k}"], k
        assert e["FROM_YAML"] == "yaml-value"
        assert e["OVERRIDDEN"] == "from-cli"
        assert e["EXTRA"] == "x y"
        assert (node_dir("envc", rank) / "pwd.txt").read_text().strip() == str(node_dir("envc", rank) / "sky_workdir")
    assert len(task_ids) == 1  # one task id for the whole gang
    assert list(own_ip.values()) == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]


# ------------------------------------------------------------------------------------------------ 2
def _make_workdir(root: Path) -> Path:
    wd = root / "proj"
    (wd / "sub" / "deep").mkdir(parents=True)
    (wd / ".git" / "objects").mkdir(parents=True)
    (wd / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (wd / ".git" / "objects" / "blob").write_text("x")
    (wd / ".gitignore").write_text("*.log\nbuild/\n")
    (wd / ".brokerignore").write_text("secret-notes.txt\n")
    (wd / "sub" / ".gitignore").write_text("*.tmp\n")
    (wd / "train.py").write_text("print('train')\n")
    (wd / "debug.log").write_text("ignored\n")
    (wd / "secret-notes.txt").write_text("ignored\n")
    (wd / "build").mkdir()
    (wd / "build" / "out.bin").write_text("ignored\n")
    (wd / "sub" / "keep.txt").write_text("kept\n")
    (wd / "sub" / "scratch.tmp").write_text("ignored\n")
    (wd / "sub" / "deep" / "more.tmp").write_text("ignored\n")
    (wd / "sub" / "deep" / "data.csv").write_text("1,2\n")
    (wd / "top.tmp").write_text("kept: sub/.gitignore applies to sub/ only\n")
    return wd


def test_workdir_sync_and_file_mounts(tmp_path):
    wd = _make_workdir(tmp_path)
    data = tmp_path / "dataset"
    (data / "part").mkdir(parents=True)
    (data / "a.txt").write_text("A\n")
    (data / "part" / "b.txt").write_text("B\n")
    (tmp_path / "config.ini").write_text("[x]\ny=1\n")
    task = write_task(tmp_path / "sync.yaml", name="sync", num_nodes=2, workdir=str(wd),
                      file_mounts={"~/data": str(data), "~/conf/config.ini": str(tmp_path / "config.ini")},
                      run="cat train.py; cat ~/data/part/b.txt; cat ~/conf/config.ini | head -1")
    r = broker("launch", "-y", "-c", "sync", task, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = node_lines(r.stdout)
    for rank in (0, 1):
        assert lines[rank] == ["print('train')", "B", "[x]"], r.stdout
        home = node_dir("sync", rank)
        shipped = sorted(str(p.relative_to(home / "sky_workdir")) for p in (home / "sky_workdir").rglob("*")
                         if p.is_file())
        assert shipped == [".brokerignore", ".gitignore", "sub/.gitignore", "sub/deep/data.csv", "sub/keep.txt",
                           "top.tmp", "train.py"], shipped
        assert not (home / "sky_workdir" / ".git").exists()
        assert (home / "data" / "a.txt").read_text() == "A\n"
        assert (home / "data" / "part" / "b.txt").read_text() == "B\n"
        assert (home / "conf" / "config.ini").read_text() == "[x]\ny=1\n"


def test_bucket_mount_is_a_clear_error_and_leaves_no_cluster(tmp_path):
    task = write_task(tmp_path / "bucket.yaml", name="bkt", file_mounts={"~/data": "s3://some-bucket/path"},
                      run="echo never")
    r = broker("launch", "-y", "-c", "bkt", task, cwd=tmp_path)
    assert r.returncode not in (0, None), r.stdout
    assert "not supported yet" in r.stderr, r.stderr
    assert "s3://some-bucket" in r.stderr
    _no_traceback(r)
    assert "never" not in r.stdout
    assert status_json() == []
    assert not (broker_home() / "local" / "bkt").exists()


# ------------------------------------------------------------------------------------------------ 3
def test_failing_node_fails_the_gang_promptly(tmp_path):
    task = write_task(tmp_path / "fail.yaml", name="fail", num_nodes=4,
                      run="echo started; if [ $SKYPILOT_NODE_RANK = 2 ]; then sleep 0.3; exit 7; fi; sleep 30")
    t0 = time.monotonic()
    r = broker("launch", "-y", "-c", "fail", task, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 7, (r.stdout, r.stderr)
    assert elapsed < 25, f"launch took {elapsed:.1f}s: the surviving nodes were not cancelled"
    _no_traceback(r)
    assert "FAILED" in r.stderr and "node-2: FAILED (7)" in r.stderr, r.stderr
    jobs = queue_json("fail")
    assert jobs[-1]["status"] == "FAILED" and jobs[-1]["exit_code"] == 7
    by_rank = {n["rank"]: n for n in jobs[-1]["nodes"]}
    assert by_rank[2]["status"] == "FAILED" and by_rank[2]["exit_code"] == 7
    assert all(by_rank[k]["status"] == "CANCELLED" for k in (0, 1, 3)), by_rank
    for rank in range(4):  # no `sleep 30` left behind on any node
        assert wait_for(lambda: not [p for p in node_pids("fail", rank) if _cmd(p).startswith("sleep")],
                        timeout=10, what=f"node {rank} job processes to end")


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_failing_setup_reports_failed_setup(tmp_path):
    task = write_task(tmp_path / "setup.yaml", name="badsetup", num_nodes=2,
                      setup="echo preparing; exit 3", run="echo should-not-run")
    r = broker("launch", "-y", "-c", "badsetup", task, cwd=tmp_path)
    assert r.returncode == 3, (r.stdout, r.stderr)
    _no_traceback(r)
    assert "FAILED_SETUP" in r.stderr, r.stderr
    assert "should-not-run" not in r.stdout
    assert "(node-0) preparing" in r.stdout and "(node-1) preparing" in r.stdout
    assert queue_json("badsetup")[-1]["status"] == "FAILED_SETUP"


# ------------------------------------------------------------------------------------------------ 4
def test_reuse_skips_unchanged_setup(tmp_path):
    task = tmp_path / "reuse.yaml"
    write_task(task, name="reuse", num_nodes=2, setup="echo SETUP-ONE", run="echo RUN-$SKYPILOT_NODE_RANK")
    first = broker("launch", "-y", "-c", "reuse", task, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "provisioning" in first.stderr
    assert first.stdout.count("SETUP-ONE") == 2  # once per node
    created = {r: json.loads((node_dir("reuse", r) / "node.json").read_text())["instance_id"] for r in (0, 1)}

    second = broker("launch", "-y", "-c", "reuse", task, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "provisioning" not in second.stderr and "reusing cluster reuse" in second.stderr, second.stderr
    assert "SETUP-ONE" not in second.stdout  # unchanged setup is skipped
    assert "(node-0) RUN-0" in second.stdout and "(node-1) RUN-1" in second.stdout
    assert {r: json.loads((node_dir("reuse", r) / "node.json").read_text())["instance_id"]
            for r in (0, 1)} == created  # the same nodes

    write_task(task, name="reuse", num_nodes=2, setup="echo SETUP-TWO", run="echo RUN-$SKYPILOT_NODE_RANK")
    third = broker("launch", "-y", "-c", "reuse", task, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "provisioning" not in third.stderr
    assert third.stdout.count("SETUP-TWO") == 2  # a changed setup runs again
    assert [j["status"] for j in queue_json("reuse")] == ["SUCCEEDED"] * 3
    assert len(status_json()) == 1


def test_exec_detach_queue_logs_cancel(tmp_path):
    boot = write_task(tmp_path / "boot.yaml", name="boot", num_nodes=2, run="true")
    r = broker("launch", "-y", "-c", "jobs", boot, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    # exec a command and a task file (no setup on exec)
    r = broker("exec", "jobs", "--", "echo hi from $SKYPILOT_NODE_RANK")
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout) == {0: ["hi from 0"], 1: ["hi from 1"]}, r.stdout
    t = write_task(tmp_path / "t.yaml", name="t", setup="echo NO-SETUP-ON-EXEC", run="echo task-$SKYPILOT_NUM_NODES")
    r = broker("exec", "jobs", t, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NO-SETUP-ON-EXEC" not in r.stdout
    assert node_lines(r.stdout) == {0: ["task-2"], 1: ["task-2"]}, r.stdout
    r = broker("exec", "jobs", "--", "exit 4")
    assert r.returncode == 4, r.stderr

    # -d returns while the job runs; the job spawns a grandchild `sleep 300` and records its pid
    long = write_task(tmp_path / "long.yaml", name="long",
                      run="bash -c 'sleep 300; true' & echo $! > ~/child.pid\n"
                          "echo waiting-on-child\nwait\n")
    t0 = time.monotonic()
    r = broker("launch", "-y", "-d", "-c", "jobs", long, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 20
    long_id = int(r.stderr.split("job ")[-1].split()[0]) if "job " in r.stderr else None
    jobs = queue_json("jobs")
    long_id = jobs[-1]["job_id"]
    assert jobs[-1]["name"] == "long"
    wait_for(lambda: job_state("jobs", long_id) == "RUNNING", 15, what="the detached job to run")
    q = broker("queue", "jobs")
    assert q.returncode == 0 and "RUNNING" in q.stdout and "SUCCEEDED" in q.stdout and "FAILED" in q.stdout, q.stdout

    wait_for(lambda: all((node_dir("jobs", k) / "child.pid").exists() for k in (0, 1)), 10, what="child pids")
    bash_pids = [int((node_dir("jobs", k) / "child.pid").read_text()) for k in (0, 1)]
    sleeps = [p for k in (0, 1) for p in node_pids("jobs", k) if _cmd(p).startswith("sleep 300")]
    assert len(sleeps) == 2 and all(alive(p) for p in bash_pids), sleeps

    # logs without --follow: what exists now, and returns although the job still runs
    r = broker("logs", "jobs", long_id, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "(node-0) waiting-on-child" in r.stdout and "(node-1) waiting-on-child" in r.stdout, r.stdout

    # cancel kills the whole process tree on every node
    r = broker("cancel", "jobs", long_id)
    assert r.returncode == 0, r.stderr
    assert str(long_id) in r.stderr
    wait_for(lambda: not any(alive(p) for p in sleeps + bash_pids), 10, what="the job's process tree to die")
    assert job_state("jobs", long_id) == "CANCELLED"

    # logs --follow streams until the end and exits with the job's code
    r = broker("exec", "-d", "jobs", "--", "sleep 0.5; echo tail-line; exit 5")
    assert r.returncode == 0, r.stderr
    fid = queue_json("jobs")[-1]["job_id"]
    r = broker("logs", "jobs", fid, "--follow", timeout=30)
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert "(node-0) tail-line" in r.stdout and "(node-1) tail-line" in r.stdout
    assert job_state("jobs", fid) == "FAILED"

    # cancel --all: one running and one queued behind it
    ids = []
    for _ in range(2):
        r = broker("exec", "-d", "jobs", "--", "sleep 300")
        assert r.returncode == 0, r.stderr
        ids.append(queue_json("jobs")[-1]["job_id"])
    wait_for(lambda: job_state("jobs", ids[0]) == "RUNNING", 15, what="the first job to run")
    assert job_state("jobs", ids[1]) == "PENDING"
    r = broker("cancel", "jobs", "--all")
    assert r.returncode == 0, r.stderr
    states = {j["job_id"]: j["status"] for j in queue_json("jobs")}
    assert states[ids[0]] == "CANCELLED" and states[ids[1]] == "CANCELLED", states
    assert wait_for(lambda: not [p for k in (0, 1) for p in node_pids("jobs", k) if _cmd(p).startswith("sleep")],
                    10, what="sleeps to end")
    # unknown cluster / job
    assert broker("queue", "nope").returncode == 5
    assert broker("logs", "jobs", 999).returncode == 5
