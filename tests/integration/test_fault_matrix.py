"""Fault-injection matrix for "nothing leaks": stage × signal × cloud, through the real `broker launch`.

For every cell, a real `broker launch` is held inside one stage of bring-up (a failpoint, or a slow cloud
call on the moto server) and gets a real signal:
  SIGINT / SIGTERM / SIGHUP → the launch must roll back what it created and exit 130, leaving nothing;
  SIGKILL           → no cleanup is possible in the process: the *next command* must show the cluster
                      (`broker status` → INTERRUPTED) when it left instances, and `broker gc --yes` must
                      remove everything (instances, security groups, node directories, intents).
After each cell the cloud and the state are inspected: a cell "left something" if any instance, security
group, node directory, node process, open intent or cluster row of that launch remains. The table is
printed at the end of the test session (tests/conftest.py) and the target is 0. Each stage is a test of its
own (the signals run in it), so parallel workers share the matrix; the summary joins the rows.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import add_table_rows, broker_cmd
from tests.integration.local_helpers import broker, broker_home, kill_leftovers, pids_with_env, write_task, cluster_dir, cloud_name

pytestmark = pytest.mark.slow

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP, "KILL": signal.SIGKILL}


def _launch(task, cluster, env, cwd):
    e = {**os.environ, **env}
    e.pop("BROKER_DEBUG", None)
    err = cwd / f"{cluster}.err"
    f = open(err, "w")
    p = subprocess.Popen(broker_cmd() + ["launch", "-y", "-c", cluster, str(task)], cwd=cwd, env=e,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, text=True)
    f.close()
    return p, err


def _intents_created(cluster: str) -> bool:
    db = broker_home() / "state.db"
    try:
        with sqlite3.connect(str(db), timeout=5) as conn:
            rows = conn.execute("SELECT instance_ids FROM intents WHERE cluster = ? AND state = 'created'",
                                (cluster,)).fetchall()
    except sqlite3.Error:
        return False
    return any(json.loads(r[0] or "[]") for r in rows)


def _wait(cond, p, timeout=60) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _state_leftovers(cluster: str) -> list[str]:
    from skybroker import state

    out = []
    if state.get_cluster(cluster) is not None:
        out.append(f"state row ({state.get_cluster(cluster).status})")
    if state.open_intents(cluster):
        out.append(f"{len(state.open_intents(cluster))} open intent(s)")
    return out


def _run_cell(cloud, stage, signame, cluster, task, env, reached, leftovers, tmp_path) -> dict:
    p, err = _launch(task, cluster, env, tmp_path)
    try:
        ok = _wait(reached, p)
        text = err.read_text()
        if not ok:
            p.kill()
            p.wait()
            return {"cloud": cloud, "stage": stage, "signal": signame, "exit": None, "shown": "-",
                    "left": ["stage never reached: " + text[-300:]]}
        time.sleep(0.2)
        p.send_signal(SIGNALS[signame])
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    after_signal = leftovers()
    shown = "-"
    if signame == "KILL":
        st = broker("status", "--json", env=env)
        rows = [c for c in json.loads(st.stdout or "[]") if c["name"] == cluster] if st.returncode == 0 else []
        shown = rows[0]["status"] if rows else "(none)"
        if after_signal:
            assert rows and rows[0]["status"] == "INTERRUPTED", (cloud, stage, after_signal, st.stdout, st.stderr)
        where = ["--cloud", "local"] if cloud == "local" else ["--cloud", cloud, "--region", "us-east-1"]
        g = broker("gc", "--yes", *where, env=env, timeout=180)
        assert g.returncode == 0, g.stdout + g.stderr
        assert "Traceback" not in g.stderr
    else:
        assert rc == 130, (cloud, stage, signame, rc, err.read_text())
        assert "Traceback" not in err.read_text(), err.read_text()
        assert "launch interrupted while" in err.read_text(), (cloud, stage, signame, err.read_text())
    left = leftovers()
    return {"cloud": cloud, "stage": stage, "signal": signame, "exit": rc, "shown": shown,
            "after_signal": len(after_signal), "left": left}


COLUMNS = ("cloud", "stage", "signal", "exit", "left by signal", "status shows", "left in the end")


def _report(title: str, order: int, rows: list[dict]) -> None:
    """The rows of one stage; the session summary prints every stage's rows of a title as one table,
    with the count of cases that left anything behind (the last column)."""
    add_table_rows(title, COLUMNS, [[r["cloud"], r["stage"], r["signal"], str(r["exit"]),
                                     str(r.get("after_signal", "-")), r["shown"], len(r["left"])] for r in rows],
                   order=order, footer="{n} cases, {bad} left anything behind (target 0)")


# -- the local cloud ----------------------------------------------------------------------------------
LOCAL_STAGES = {  # stage → (failpoint, what shows the launch is inside it)
    "provision": ("provision", lambda c, e: "provisioning" in e()),
    "provision-wait": ("provision-wait", lambda c, e: _intents_created(c)),
    "ready": ("ready", lambda c, e: "to accept commands" in e()),
    "agent": ("agent", lambda c, e: "installing the node agent" in e()),
    "sync": ("sync", lambda c, e: "syncing workdir" in e()),
    "submit": ("submit", lambda c, e: "submitting the job" in e()),
}


@pytest.mark.parametrize("stage", list(LOCAL_STAGES))
def test_fault_matrix_local(tmp_path, stage):
    fp, inside = LOCAL_STAGES[stage]
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.bin").write_bytes(os.urandom(1 << 16))
    task = write_task(tmp_path / "t.yaml", name="fm", num_nodes=2, workdir=str(wd), run="sleep 30")
    rows = []
    for n, signame in enumerate(SIGNALS, 1):
        cluster = f"fm-{n}"
        errf = tmp_path / f"{cluster}.err"

        def leftovers(c=cluster):
            out = _state_leftovers(c)
            d = cluster_dir(c)
            if d.exists() and any(d.iterdir()):
                out.append("node dirs")
            if pids_with_env(f"HOME={d}/", prefix=True):
                out.append("node processes")
            return out

        rows.append(_run_cell("local", stage, signame, cluster, task, {"BROKER_FAILPOINTS": f"{fp}=sleep(3)"},
                              lambda c=cluster, e=errf, f=inside: f(c, lambda: e.read_text() if e.exists() else ""),
                              leftovers, tmp_path))
    kill_leftovers(broker_home())
    _report("fault matrix: local cloud (stage × signal)", list(LOCAL_STAGES).index(stage), rows)
    bad = [r for r in rows if r["left"]]
    assert not bad, bad


# -- AWS on the moto server ---------------------------------------------------------------------------
AWS_TASK = """\
name: fm
resources:
  cloud: aws
  region: us-east-1
  instance_type: t3.micro
  image_id: ami-12345678
run: echo hi
"""


@pytest.fixture
def moto(monkeypatch):
    pytest.importorskip("moto")
    from tests.infra import moto_server

    srv = moto_server.shared()
    srv.reset()
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield srv
    srv.reset()


AWS_STAGES = {  # stage → (env, moto fault, what shows the launch is inside it)
    "before-create": ({"BROKER_FAILPOINTS": "provision=sleep(3)"}, None, lambda m, c, e: "provisioning" in e()),
    # the call answers 1.2 s after it arrives: the signal comes 0.2 s after the test sees it (polled every 0.05 s)
    "create-in-flight": ({}, ("RunInstances", 1.2), lambda m, c, e: bool(m.calls("RunInstances"))),
    "created": ({"BROKER_FAILPOINTS": "provision-wait=sleep(3)"}, None, lambda m, c, e: _intents_created(c)),
    "wait-for-ssh": ({"BROKER_WAIT_READY": "60"}, None, lambda m, c, e: "to accept commands" in e()),
}


@pytest.mark.parametrize("stage", list(AWS_STAGES))
def test_fault_matrix_aws(moto, tmp_path, stage):
    task = tmp_path / "t.yaml"
    task.write_text(AWS_TASK)
    env, fault, inside3 = AWS_STAGES[stage]

    def inside(c, e):
        return inside3(moto, c, e)

    rows = []
    for n, signame in enumerate(SIGNALS, 1):
        cluster = f"fma-{list(AWS_STAGES).index(stage)}-{n}"
        moto.clear()
        if fault:
            moto.fault(fault[0], delay=fault[1])
        errf = tmp_path / f"{cluster}.err"

        def leftovers(c=cluster):
            out = _state_leftovers(c)
            if fault and signame == "KILL":
                time.sleep(fault[1])  # the call in flight completes on the server after the kill
            live = moto.instances(cluster=cloud_name(c))  # its name on the cloud
            if live:
                out.append(f"{len(live)} instance(s)")
            groups = [g["GroupName"] for g in moto.ec2().describe_security_groups()["SecurityGroups"]]
            if f"skybroker-{cloud_name(c)}" in groups:
                out.append("security group")
            return out

        rows.append(_run_cell("aws", stage, signame, cluster, task, env,
                              lambda c=cluster, e=errf, f=inside: f(c, lambda: e.read_text() if e.exists() else ""),
                              leftovers, tmp_path))
    _report("fault matrix: aws on moto (stage × signal)", list(AWS_STAGES).index(stage), rows)
    bad = [r for r in rows if r["left"]]
    assert not bad, bad
