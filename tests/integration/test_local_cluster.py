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

from tests.integration.local_helpers import (alive, broker, broker_bg, broker_home, kill_leftovers,
                                             kill_pids, node_dir, node_lines, node_pids, pids_with_env,
                                             queue_json, status_json, submitted_id, wait_for, write_task, cluster_dir)

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


def test_bucket_without_credentials_is_a_clear_error_and_leaves_no_cluster(tmp_path):
    task = write_task(tmp_path / "bucket.yaml", name="bkt", file_mounts={"~/data": "s3://some-bucket/path"},
                      run="echo never")
    r = broker("launch", "-y", "-c", "bkt", task, cwd=tmp_path)
    assert r.returncode == 2, r.stdout  # bad input (buckets themselves: test_buckets.py)
    assert "file_mounts.~/data: no AWS credentials found" in r.stderr, r.stderr
    _no_traceback(r)
    assert "never" not in r.stdout
    assert status_json() == []
    assert not cluster_dir("bkt").exists()


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
        assert wait_for(lambda r=rank: not [p for p in node_pids("fail", r) if _cmd(p).startswith("sleep")],
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


def test_reuse_refuses_a_task_the_cluster_cannot_run(tmp_path):
    """`launch -c` on a cluster that exists and `exec` check the task against the cluster's launched
    resources and nodes: a mismatch is exit 2 naming what does not fit, nothing runs, the cluster stays."""
    dev = write_task(tmp_path / "dev.yaml", name="dev", num_nodes=2, run="echo ok-$SKYPILOT_NODE_RANK")
    r = broker("launch", "-y", "-c", "fit", dev, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = status_json()
    nodes = {k: json.loads((node_dir("fit", k) / "node.json").read_text())["instance_id"] for k in (0, 1)}

    train = write_task(tmp_path / "train.yaml", name="train", num_nodes=1,
                       resources={"infra": "aws", "accelerators": "A100:8"}, run="touch ~/ran-$SKYPILOT_JOB_ID")
    refused = [
        (("launch", "-y", "-c", "fit", train), ["does not fit existing cluster fit", "infra aws (the cluster is on local)",
                                                "accelerators A100:8 (the cluster has none)",
                                                "the task asks for 1 node(s), the cluster has 2",
                                                "existed before this launch and stays up"]),
        (("exec", "fit", train), ["does not fit existing cluster fit", "accelerators A100:8 (the cluster has none)"]),
        (("exec", "fit", "--num-nodes", "3", "--", "touch ~/ran-cmd"), ["the task needs 3 node(s), the cluster has 2"]),
        (("exec", "fit", "--gpus", "V100", "--", "touch ~/ran-cmd"), ["accelerators V100:1 (the cluster has none)"]),
        (("exec", "fit", "--infra", "aws", "--", "touch ~/ran-cmd"), ["infra aws (the cluster is on local)"]),
    ]
    for args, words in refused:
        r = broker(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        _no_traceback(r)
        for w in words:
            assert w in r.stderr, (args, w, r.stderr)
        assert "cluster fit has 2× local (on-demand) on local" in r.stderr, r.stderr
        assert "broker down fit" in r.stderr, r.stderr
    # nothing ran, nothing was submitted, the cluster is as it was
    assert not [p for k in (0, 1) for p in node_dir("fit", k).glob("ran-*")]
    assert [j["job_id"] for j in queue_json("fit")] == [1]
    after = status_json()
    assert [(c["name"], c["status"], c["num_nodes"]) for c in after] == \
        [(c["name"], c["status"], c["num_nodes"]) for c in before]
    assert {k: json.loads((node_dir("fit", k) / "node.json").read_text())["instance_id"] for k in (0, 1)} == nodes

    # accepted: the same task again, and a task without resources or num_nodes (runs on every node)
    r = broker("launch", "-y", "-c", "fit", dev, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "reusing cluster fit" in r.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text("run: echo plain-$SKYPILOT_NODE_RANK\n")
    for args in (("launch", "-y", "-c", "fit", plain), ("exec", "fit", plain), ("exec", "fit", "--", "echo plain-$SKYPILOT_NODE_RANK")):
        r = broker(*args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        assert node_lines(r.stdout) == {0: ["plain-0"], 1: ["plain-1"]}, (args, r.stdout)
    assert [j["status"] for j in queue_json("fit")] == ["SUCCEEDED"] * 5

    # a stopped cluster is checked before it is started: it stays stopped
    assert broker("stop", "-y", "fit").returncode == 0
    r = broker("launch", "-y", "-c", "fit", train, cwd=tmp_path)
    assert r.returncode == 2 and "does not fit existing cluster fit" in r.stderr, r.stderr
    assert "starting stopped cluster" not in r.stderr, r.stderr
    assert [c["status"] for c in status_json()] == ["STOPPED"]


def test_exec_detach_queue_logs_cancel(tmp_path):
    boot = write_task(tmp_path / "boot.yaml", name="boot", num_nodes=2, run="true")
    r = broker("launch", "-y", "-c", "jobs", boot, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    # exec a command and a task file (no setup on exec); a failing exec carries its exit code
    r = broker("exec", "jobs", "--", "echo hi from $SKYPILOT_NODE_RANK")
    assert r.returncode == 0, r.stderr
    assert node_lines(r.stdout) == {0: ["hi from 0"], 1: ["hi from 1"]}, r.stdout
    t = write_task(tmp_path / "t.yaml", name="t", setup="echo NO-SETUP-ON-EXEC",
                   run="echo task-$SKYPILOT_NUM_NODES; exit 4")
    r = broker("exec", "jobs", t, cwd=tmp_path)
    assert r.returncode == 4, r.stderr
    assert "NO-SETUP-ON-EXEC" not in r.stdout
    assert node_lines(r.stdout) == {0: ["task-2"], 1: ["task-2"]}, r.stdout

    # -d returns while the job runs; the job spawns a grandchild `sleep 300` and records its pid
    long = write_task(tmp_path / "long.yaml", name="long",
                      run="bash -c 'sleep 300; true' & echo $! > ~/child.pid\n"
                          "echo waiting-on-child\nwait\n")
    r = broker("launch", "-y", "-d", "-c", "jobs", long, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    long_id = submitted_id(r.stderr)
    wait_for(lambda: all((node_dir("jobs", k) / "child.pid").exists() for k in (0, 1)), 15, what="child pids")
    bash_pids = [int((node_dir("jobs", k) / "child.pid").read_text()) for k in (0, 1)]
    sleeps = wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(
        [p for k in (0, 1) for p in node_pids("jobs", k) if _cmd(p).startswith("sleep 300")]),
        15, what="the grandchildren to start")
    assert all(alive(p) for p in bash_pids)

    jobs = {j["job_id"]: j for j in queue_json("jobs")}
    assert jobs[long_id]["name"] == "long" and jobs[long_id]["status"] == "RUNNING", jobs
    assert [n["status"] for n in jobs[long_id]["nodes"]] == ["RUNNING", "RUNNING"]
    assert [j["status"] for j in jobs.values()] == ["SUCCEEDED", "SUCCEEDED", "FAILED", "RUNNING"], jobs
    q = broker("queue", "jobs")
    assert q.returncode == 0, q.stderr
    for word in ("RUNNING", "SUCCEEDED", "FAILED", "long"):
        assert word in q.stdout, q.stdout

    # logs without --follow: what exists now, and it returns although the job still runs
    r = broker("logs", "jobs", long_id, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "(node-0) waiting-on-child" in r.stdout and "(node-1) waiting-on-child" in r.stdout, r.stdout

    # cancel kills the whole process tree on every node
    r = broker("cancel", "jobs", long_id)
    assert r.returncode == 0, r.stderr
    assert f"cancelled: {long_id}" in r.stderr, r.stderr
    wait_for(lambda: not any(alive(p) for p in sleeps + bash_pids), 10, what="the job's process tree to die")

    # logs --follow streams until the end and exits with the job's code
    r = broker("exec", "-d", "jobs", "--", "sleep 0.5; echo tail-line; exit 5")
    assert r.returncode == 0, r.stderr
    fid = submitted_id(r.stderr)
    r = broker("logs", "jobs", fid, "--follow", timeout=30)
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert "(node-0) tail-line" in r.stdout and "(node-1) tail-line" in r.stdout

    # cancel --all: one running and one queued behind it
    ids = []
    for _ in range(2):
        r = broker("exec", "-d", "jobs", "--", "touch ~/started-$SKYPILOT_JOB_ID; sleep 300")
        assert r.returncode == 0, r.stderr
        ids.append(submitted_id(r.stderr))
    wait_for(lambda: (node_dir("jobs", 0) / f"started-{ids[0]}").exists(), 15, what="the first job to run")
    r = broker("cancel", "jobs", "--all", "-y")
    assert r.returncode == 0, r.stderr
    assert f"cancelled: {ids[0]}, {ids[1]}" in r.stderr, r.stderr
    states = {j["job_id"]: j["status"] for j in queue_json("jobs")}
    assert states == {1: "SUCCEEDED", 2: "SUCCEEDED", 3: "FAILED", long_id: "CANCELLED", fid: "FAILED",
                      ids[0]: "CANCELLED", ids[1]: "CANCELLED"}, states
    assert not (node_dir("jobs", 0) / f"started-{ids[1]}").exists()
    assert wait_for(lambda: not [p for k in (0, 1) for p in node_pids("jobs", k) if _cmd(p).startswith("sleep")],
                    10, what="sleeps to end")
    # unknown cluster / job
    assert broker("queue", "nope").returncode == 5
    assert broker("logs", "jobs", 999).returncode == 5


def test_cancel_kills_descendants_that_left_the_process_group(tmp_path):
    task = write_task(tmp_path / "esc.yaml", name="esc",
                      run="setsid sleep 300 & echo $! > ~/escaped.pid; touch ~/ready; wait")
    r = broker("launch", "-y", "-d", "-c", "esc", task, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    job = submitted_id(r.stderr)
    wait_for(lambda: (node_dir("esc", 0) / "ready").exists(), 15, what="the job to start")
    escaped = int((node_dir("esc", 0) / "escaped.pid").read_text())
    assert alive(escaped)
    r = broker("cancel", "esc", job)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not alive(escaped), 3, what="the escaped descendant to be killed")


# ------------------------------------------------------------------------------------------------ 5
def test_status_refresh_and_idempotent_down(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="st", run="sleep 300 & echo $! > ~/bg.pid; true")
    for name, nodes in (("alpha", 1), ("beta", 2), ("gamma", 1)):
        r = broker("launch", "-y", "-c", name, task, "--num-nodes", nodes, cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    recs = {c["name"]: c for c in status_json()}
    assert sorted(recs) == ["alpha", "beta", "gamma"]
    for name, nodes in (("alpha", 1), ("beta", 2), ("gamma", 1)):
        c = recs[name]
        assert c["infra"] == "local" and c["cloud"] == "local" and c["status"] == "UP"
        assert c["num_nodes"] == nodes and c["hourly_price"] == 0.0 and c["head_ip"] == "127.0.0.1"
        assert abs(c["launched_at"] - time.time()) < 300
    r = broker("status")
    assert r.returncode == 0, r.stderr
    for word in ("NAME", "INFRA", "NODES", "STATUS", "LAUNCHED", "$/h", "alpha", "beta", "gamma", "UP", "local",
                 "ago", "0.0000"):
        assert word in r.stdout, (word, r.stdout)
    r = broker("status", "beta")
    assert "beta" in r.stdout and "alpha" not in r.stdout

    # beta's nodes vanish behind our back: --refresh drops it, plain status does not look
    shutil.rmtree(cluster_dir("beta"))
    assert sorted(c["name"] for c in status_json()) == ["alpha", "beta", "gamma"]
    assert sorted(c["name"] for c in status_json(refresh=True)) == ["alpha", "gamma"]
    assert sorted(c["name"] for c in status_json()) == ["alpha", "gamma"]

    # down twice: both succeed; processes and directories are gone
    bg = int((node_dir("alpha", 0) / "bg.pid").read_text())
    assert alive(bg)
    r = broker("down", "alpha", "-y")  # destructive: -y is required when stdin is not a terminal
    assert r.returncode == 0, r.stderr
    assert "terminated" in r.stderr
    assert not cluster_dir("alpha").exists()
    assert not alive(bg) and node_pids("alpha", 0) == []
    r = broker("down", "alpha")
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    assert "does not exist" in r.stderr
    assert [c["name"] for c in status_json()] == ["gamma"]

    bg = int((node_dir("gamma", 0) / "bg.pid").read_text())
    r = broker("down", "--all", "-y")
    assert r.returncode == 0, r.stderr
    assert status_json() == []
    assert not alive(bg)
    assert list((broker_home() / "local").iterdir()) == []
    r = broker("down", "--all", "-y")
    assert r.returncode == 0 and "no clusters" in r.stderr


# ------------------------------------------------------------------------------------------------ 6
def test_concurrent_commands_on_one_cluster(tmp_path):
    from filelock import FileLock

    # two launches of the same new cluster race (started together while a third command holds the cluster's
    # lock): one provisions, the other waits for it and then reuses the cluster
    task = write_task(tmp_path / "c.yaml", name="conc", num_nodes=2, setup="echo SETUP-RAN",
                      run="echo run-$SKYPILOT_JOB_ID")
    (broker_home() / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(broker_home() / "locks" / "conc.lock"))
    errs = [tmp_path / f"launch-{i}.err" for i in range(2)]
    with lock:
        procs = [broker_bg("launch", "-y", "-c", "conc", task, cwd=tmp_path, stderr=errs[i]) for i in range(2)]
        wait_for(lambda: all("waiting for another broker command on cluster conc" in e.read_text() for e in errs),
                 30, what="both launches to report that they wait")
    outs = [p.communicate(timeout=60)[0] for p in procs]
    errs = [e.read_text() for e in errs]
    for p, out, err in zip(procs, outs, errs):
        assert p.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err, err
    assert sum("provisioning" in e for e in errs) == 1, errs
    assert sum("reusing cluster conc" in e for e in errs) == 1, errs
    assert sum(o.count("SETUP-RAN") for o in outs) == 2, outs  # setup ran once per node, not twice
    assert [c["name"] for c in status_json()] == ["conc"]

    # two execs while another command holds the cluster: both wait visibly, then both run
    lock.acquire()
    try:
        errs = [tmp_path / f"exec-{i}.err" for i in range(2)]
        procs = [broker_bg("exec", "conc", "--", f"echo exec-{i}", stderr=errs[i]) for i in range(2)]
        wait_for(lambda: all("waiting for another broker command on cluster conc" in e.read_text() for e in errs),
                 30, what="both execs to report that they wait")
        assert all(p.poll() is None for p in procs)
    finally:
        lock.release()
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=60)
        err = errs[i].read_text()
        assert p.returncode == 0, err
        assert "database is locked" not in err
        assert node_lines(out) == {0: [f"exec-{i}"], 1: [f"exec-{i}"]}, out
    # plus read-only commands alongside a running job
    procs = [broker_bg("exec", "conc", "--", "sleep 0.5"), broker_bg("queue", "conc", "--json"),
             broker_bg("status", "--json"), broker_bg("queue", "conc")]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "database is locked" not in err
    assert [j["status"] for j in queue_json("conc")] == ["SUCCEEDED"] * 5

    # `down` while `launch -c` of a new cluster is provisioning: down waits for the launch's lock, then
    # tears the cluster down under the running job; the launch reports it promptly (no hang, no traceback)
    long = write_task(tmp_path / "long.yaml", name="long", num_nodes=2, run="echo started; sleep 60")
    launch = broker_bg("launch", "-y", "-c", "racer", long, cwd=tmp_path, stderr=tmp_path / "racer.err")
    try:
        wait_for(lambda: "provisioning" in (tmp_path / "racer.err").read_text() or launch.poll() is not None, 30,
                 interval=0.02, what="the launch to start provisioning")
        d = broker("down", "-y", "racer", timeout=60)
        assert d.returncode == 0, d.stderr
        assert "terminating racer" in d.stderr, d.stderr  # it waited for the cluster to exist, then removed it
        out, _ = launch.communicate(timeout=30)
    finally:
        if launch.poll() is None:
            launch.kill()
    err = (tmp_path / "racer.err").read_text()
    assert launch.returncode not in (0, None), (out, err)
    assert "Traceback" not in err and "database is locked" not in err, err
    assert "cluster racer was torn down during the job" in " ".join(err.split()), err
    assert [c["name"] for c in status_json()] == ["conc"]
    assert not cluster_dir("racer").exists()
    assert node_pids("racer", 0) == [] and node_pids("racer", 1) == []


# ------------------------------------------------------------------------------------------------ 7
SECRET = "s3cr3t-value-7f9c2d"
CLI_SECRET = "cli-only-secret-41b7e0"


def test_secrets_reach_the_job_but_are_never_stored_or_printed(tmp_path):
    task = write_task(
        tmp_path / "sec.yaml", name="sec", num_nodes=2, secrets={"TOKEN": SECRET},
        envs={"PLAIN": "visible"},
        setup='printf %s "$TOKEN" | wc -c > ~/setup-token-len',
        run=('printf %s "$TOKEN" | wc -c > ~/token-len\n'
             'printf %s "$OTHER" | sha256sum | cut -c1-16 > ~/other-hash\n'
             'echo "job sees PLAIN=$PLAIN and a token of $(cat ~/token-len) chars"\n'))
    r = broker("launch", "-y", "-c", "sec", task, "--secret", f"OTHER={CLI_SECRET}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r2 = broker("exec", "sec", task, "--secret", f"OTHER={CLI_SECRET}", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    r3 = broker("queue", "sec", "--json")
    r4 = broker("status", "--json")
    import hashlib

    for rank in (0, 1):
        home = node_dir("sec", rank)
        assert (home / "token-len").read_text().strip() == str(len(SECRET))
        assert (home / "setup-token-len").read_text().strip() == str(len(SECRET))
        assert (home / "other-hash").read_text().strip() == hashlib.sha256(CLI_SECRET.encode()).hexdigest()[:16]
    assert f"(node-0) job sees PLAIN=visible and a token of {len(SECRET)} chars" in r.stdout, r.stdout
    for res in (r, r2, r3, r4):
        for value in (SECRET, CLI_SECRET):
            assert value not in res.stdout and value not in res.stderr
    leaks = []
    for path in broker_home().rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            leaks += [f"{path}: {v}" for v in (SECRET, CLI_SECRET) if v.encode() in data]
    assert leaks == []
    # the task YAML's own directory and HOME (where the CLI may write config or caches) stay clean too
    for path in Path(os.environ["HOME"]).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------------ 8
def test_stop_start_and_autostop(tmp_path):
    task = write_task(tmp_path / "a.yaml", name="auto", num_nodes=2, run="sleep 300 & echo $! > ~/bg.pid")
    r = broker("launch", "-y", "-c", "auto", task, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bg = int((node_dir("auto", 1) / "bg.pid").read_text())

    r = broker("stop", "auto", "-y")
    assert r.returncode == 0, r.stderr
    assert status_json()[0]["status"] == "STOPPED"
    assert not alive(bg) and node_pids("auto", 0) == [] and node_pids("auto", 1) == []
    assert broker("exec", "auto", "--", "true").returncode != 0  # a stopped cluster runs nothing
    r = broker("start", "auto")
    assert r.returncode == 0, r.stderr
    assert status_json()[0]["status"] == "UP"
    r = broker("exec", "auto", "--", "echo back-$SKYPILOT_NODE_RANK")
    assert r.returncode == 0 and node_lines(r.stdout) == {0: ["back-0"], 1: ["back-1"]}, r.stderr

    fast = {"BROKER_AUTOSTOP_POLL": "0.5"}
    r = broker("autostop", "auto", "-i", "0", env=fast)
    assert r.returncode == 0, r.stderr
    assert status_json()[0]["autostop_minutes"] == 0
    # the local cloud enforces autostop on the cluster itself: the cloud's truth shows it, after --refresh
    wait_for(lambda: status_json(refresh=True)[0]["status"] == "STOPPED", 30, interval=0.3,
             what="autostop to stop the cluster")
    assert cluster_dir("auto").is_dir()  # stopped, not torn down

    r = broker("start", "auto")
    assert r.returncode == 0, r.stderr
    r = broker("autostop", "auto", "-i", "0", "--down", env=fast)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: status_json(refresh=True) == [], 30, interval=0.3, what="autostop --down to remove the cluster")
    assert not cluster_dir("auto").exists()
    # no watcher on this machine was needed for any of it
    assert not [p for p in pids_with_env(f"BROKER_HOME={broker_home()}") if "skybroker.autostop" in _cmd(p)]


# ------------------------------------------------------------------------------------------------ 9
def test_node_killed_mid_job_is_reported_promptly(tmp_path):
    task = write_task(tmp_path / "k.yaml", name="kill", num_nodes=3,
                      run="touch ~/started; echo started; sleep 60")
    t0 = time.monotonic()
    p = broker_bg("launch", "-y", "-c", "kill", task, cwd=tmp_path)
    try:
        wait_for(lambda: all((node_dir("kill", k) / "started").exists() for k in range(3)) or p.poll() is not None,
                 40, what="the job to start on every node")
        assert p.poll() is None, p.communicate()
        victims = node_pids("kill", 1)
        assert victims, "node 1 has no processes?"
        killed_at = time.monotonic()
        kill_pids(victims)
        out, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
    reported_after = time.monotonic() - killed_at
    assert p.returncode not in (0, None), (out, err)
    assert reported_after < 30, f"the lost node was noticed only after {reported_after:.1f}s"
    assert time.monotonic() - t0 < 55  # well before the 60 s job would have ended
    _no_traceback(subprocess.CompletedProcess([], p.returncode, out, err))
    assert "node-1" in err and ("FAILED" in err or "unreachable" in err), err
    # the survivors' job was cancelled, not left running
    for rank in (0, 2):
        wait_for(lambda r=rank: not [q for q in node_pids("kill", r) if _cmd(q).startswith("sleep")], 15,
                 what=f"node {rank}'s job to be cancelled")


# ----------------------------------------------------------------------------------------------- 10
def test_ctrl_c_exits_promptly_without_traceback(tmp_path):
    task = write_task(tmp_path / "i.yaml", name="intr", num_nodes=2, run="echo started; sleep 60")
    p = broker_bg("launch", "-y", "-c", "intr", task, cwd=tmp_path, stderr=tmp_path / "launch.err")
    try:
        wait_for(lambda: all((node_dir("intr", k) / ".skybroker-node" / "jobs" / "1" / "run.log").exists()
                             and b"started" in (node_dir("intr", k) / ".skybroker-node" / "jobs" / "1" / "run.log").read_bytes()
                             for k in (0, 1)) or p.poll() is not None, 40, what="the job to start")
        assert p.poll() is None, p.communicate()
        time.sleep(0.3)  # let the log stream attach
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    err = (tmp_path / "launch.err").read_text()
    assert p.returncode not in (0, None)
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    # the CLI is gone, and it left no stray client-side process behind (only the job itself, on the nodes)
    leftovers = [q for q in pids_with_env(f"BROKER_HOME={broker_home()}") if "skybroker" in _cmd(q)]
    assert leftovers == [], [_cmd(q) for q in leftovers]


def test_exec_on_one_node_is_one_agent_call(tmp_path, monkeypatch):
    """A one-node exec submits and follows in a single call to the node (the agent's `run`): the id, the
    output (byte-exact lines, a last line without newline), the exit code; the node's env names the id.
    Ctrl-C while it follows leaves the job running, and says so."""
    from skybroker import api
    from skybroker.runtime.local_runner import LocalRunner

    boot = write_task(tmp_path / "boot.yaml", name="boot", run="true")
    assert broker("launch", "-y", "-c", "one", boot, cwd=tmp_path).returncode == 0
    calls, lines = [], []
    real_run = LocalRunner.run
    monkeypatch.setattr(LocalRunner, "run", lambda self, cmd, **kw: calls.append(cmd) or real_run(self, cmd, **kw))
    res = api.exec_("one", api.exec_task(["echo id=$SKYPILOT_JOB_ID; printf 'no newline'; exit 5"], {}),
                    on_line=lambda rank, line: lines.append((rank, line)))
    assert len(calls) == 1 and " run --marker " in calls[0], calls
    assert lines == [(0, f"id={res.job_id}"), (0, "no newline")]
    assert (res.status.status, res.status.exit_code) == ("FAILED", 5)
    monkeypatch.setattr(LocalRunner, "run", real_run)

    p = broker_bg("exec", "one", "--", "echo started; sleep 60; echo never")
    assert p.stdout.readline().strip() == "(node-0) started"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "keeps running" in err and "Traceback" not in err, err
    job_id = submitted_id(err)
    assert {j["job_id"]: j["status"] for j in queue_json("one")}[job_id] == "RUNNING"
    assert broker("cancel", "one", job_id).returncode == 0
    assert broker("down", "-y", "one").returncode == 0
