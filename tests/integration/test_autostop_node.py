"""Autostop on the cluster itself, on the `local` cloud: the real CLI arms it, then no broker process is
left anywhere (no local watcher, no client): the head node's own agent stops or terminates the cluster
through the local provider once it is idle, and the cloud (node.json, the local cloud's "API") shows it.
`broker status --refresh` then reports it. One autostop "minute" is one second here
(BROKER_AUTOSTOP_UNIT=1); timing bounds are generous "does not hang" limits.
"""
from __future__ import annotations

import json
import shutil

import pytest

from tests.integration.local_helpers import (broker, broker_home, kill_leftovers, node_dir, pids_with_env,
                                             status_json, wait_for, write_task, cluster_dir)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")

FAST = {"BROKER_AUTOSTOP_UNIT": "1", "BROKER_AUTOSTOP_POLL": "0.2"}


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _cloud_states(cluster: str, nodes: int) -> list[str | None]:
    """What the local cloud itself says of each node (None: terminated)."""
    out = []
    for rank in range(nodes):
        try:
            out.append(json.loads((node_dir(cluster, rank) / "node.json").read_text())["state"])
        except (OSError, ValueError):
            out.append(None)
    return out


def _broker_processes() -> list[int]:
    """Broker processes of this BROKER_HOME on the client side (a local autostop watcher, a CLI)."""
    return [p for p in pids_with_env(f"BROKER_HOME={broker_home()}")
            if b"skybroker.autostop" in open(f"/proc/{p}/cmdline", "rb").read()
            or b"skybroker.cli" in open(f"/proc/{p}/cmdline", "rb").read()]


def _launch(tmp_path, name: str, nodes: int = 2, run: str = "echo hi") -> None:
    task = write_task(tmp_path / f"{name}.yaml", name=name, num_nodes=nodes, run=run)
    r = broker("launch", "-y", "-c", name, task, *(["-d"] if run.startswith("sleep") else []), cwd=tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr


def test_idle_cluster_stops_itself_with_no_broker_process_left(tmp_path):
    _launch(tmp_path, "selfstop")
    r = broker("autostop", "selfstop", "-i", "2", env=FAST)
    assert r.returncode == 0, r.stderr
    assert "enforced on the cluster itself" in r.stderr + r.stdout
    c = status_json()[0]
    assert (c["autostop_minutes"], c["autostop_where"]) == (2, "node")
    r = broker("status")
    assert "2m node" in r.stdout and "enforced on the cluster itself" in r.stderr, (r.stdout, r.stderr)
    assert _broker_processes() == []  # nothing of the broker runs on this side: no watcher, no client
    wait_for(lambda: _cloud_states("selfstop", 2) == ["stopped", "stopped"], 30, interval=0.2,
             what="the cluster to stop itself")
    assert status_json()[0]["status"] == "UP"  # the state only learns it from the cloud ...
    c = status_json(refresh=True)[0]  # ... which is the truth
    assert c["status"] == "STOPPED"
    assert cluster_dir("selfstop").is_dir()  # stopped, not torn down
    r = broker("events", "selfstop")
    assert "enforced on the cluster itself" in r.stdout and "STOPPED" in r.stdout, r.stdout
    # it starts again like any stopped cluster, with its autostop cleared (nodes included)
    r = broker("start", "selfstop")
    assert r.returncode == 0, r.stderr
    c = status_json()[0]
    assert (c["status"], c["autostop_minutes"], c["autostop_where"]) == ("UP", None, None)


def test_idle_cluster_terminates_itself_and_commands_notice(tmp_path):
    _launch(tmp_path, "selfdown")
    r = broker("autostop", "selfdown", "-i", "1", "--down", env=FAST)
    assert r.returncode == 0, r.stderr
    assert status_json()[0]["autostop_down"] is True
    wait_for(lambda: not cluster_dir("selfdown").exists(), 30, interval=0.2,
             what="the cluster to terminate itself")
    r = broker("exec", "selfdown", "--", "true")  # a command on it asks the cloud, not the stale record
    assert r.returncode == 5 and "terminated itself" in r.stderr, r.stderr
    assert status_json(refresh=True) == []


def test_busy_cluster_is_not_stopped_until_its_job_ends(tmp_path):
    _launch(tmp_path, "busy", nodes=1, run="sleep 60")
    r = broker("autostop", "busy", "-i", "0", env=FAST)  # 0: at once when idle, never while busy
    assert r.returncode == 0, r.stderr
    import time

    time.sleep(3)  # 15 watcher rounds
    assert _cloud_states("busy", 1) == ["running"]
    r = broker("queue", "busy", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "RUNNING", r.stdout
    r = broker("cancel", "busy", "--all", "-y")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _cloud_states("busy", 1) == ["stopped"], 30, interval=0.2,
             what="the cluster to stop once idle")
    assert status_json(refresh=True)[0]["status"] == "STOPPED"


def test_cancel_disarms_the_nodes_and_the_local_watcher_is_the_fallback(tmp_path, monkeypatch):
    import time

    from skybroker import api, autostop, state
    from skybroker.clouds.local import LocalCloud
    from skybroker.errors import InvalidRequestError

    _launch(tmp_path, "guarded", nodes=1)
    _launch(tmp_path, "fallback", nodes=1)
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    # armed for 8 "minutes" (8 s here): the cancel below must reach the node before that, also on a loaded
    # machine; with 1 the node could stop itself before a slow CLI call disarmed it
    api.set_autostop("guarded", 8, False)
    armed = time.monotonic()
    assert state.get_cluster("guarded").autostop_where == "node"
    assert autostop.check_once() == []  # not the local watcher's

    def refuse(self, cluster, region, action):
        raise InvalidRequestError("no self-stop here")

    with monkeypatch.context() as m:
        m.setattr(LocalCloud, "prepare_self_stop", refuse)  # a provider that cannot arm its nodes
        rec = api.set_autostop("fallback", 0, False)
    assert (rec.autostop_where, rec.autostop_down) == ("local", False)
    assert any("could not arm autostop on the cluster" in e["message"] for e in state.events("fallback"))
    r = broker("autostop", "guarded", "--cancel")  # the real CLI disarms the node
    assert r.returncode == 0, r.stderr
    c = next(c for c in status_json() if c["name"] == "guarded")
    assert (c["autostop_minutes"], c["autostop_where"]) == (None, None)
    # the local watcher (started on demand, a process of its own) serves the fallback cluster only
    wait_for(lambda: state.get_cluster("fallback").status == "STOPPED", 30, interval=0.2,
             what="the local watcher's stop")  # (its --down path: test_promises_launch.py)
    assert _cloud_states("fallback", 1) == ["stopped"] and state.get_cluster("guarded").status == "UP"
    wait_for(lambda: _broker_processes() == [], 15, interval=0.2, what="the local watcher to exit (nothing left to guard)")
    time.sleep(max(0.0, 9.5 - (time.monotonic() - armed)))  # past the 8 s the node was armed with
    assert _cloud_states("guarded", 1) == ["running"]


def test_launch_idle_minutes_and_down_flags_as_in_skypilot(tmp_path):
    """`sky launch -i N --down` carries over: `--down` alone tears the cluster down once its job ends, and
    `-i N` on an existing cluster sets its autostop."""
    task = write_task(tmp_path / "t.yaml", name="t", run="echo hi")
    r = broker("launch", "-y", "-c", "gone", "--down", task, cwd=tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _cloud_states("gone", 1) == [None], 60, 0.2, "the cluster torn down once idle")
    wait_for(lambda: broker("status", "--refresh", "--json", env=FAST).stdout.strip() == "[]", 30, 0.5,
             "the state to learn it")

    r = broker("launch", "-y", "-c", "kept", task, cwd=tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr
    (c,) = json.loads(broker("status", "--json").stdout)
    assert c["autostop_minutes"] is None, c
    r = broker("launch", "-y", "-c", "kept", "-i", "600", task, cwd=tmp_path, env=FAST)  # reused: set now
    assert r.returncode == 0, r.stderr
    (c,) = json.loads(broker("status", "--json").stdout)
    assert (c["autostop_minutes"], c["autostop_down"]) == (600, False), c
    r = broker("launch", "-y", "-c", "kept", "-i", "-1", task, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert broker("down", "-y", "kept").returncode == 0
