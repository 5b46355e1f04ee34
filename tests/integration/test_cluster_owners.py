"""Clusters of managed jobs and pools are theirs (found by exploratory testing: a user's `job-5` was taken
over by managed job 5 and torn down with it, and `broker down -a` tore down a running job's cluster, which
its controller then relaunched as "preempted"). Through the real CLI and controller on the `local` cloud:

  - `job-<N>` and `pool-<pool>-<N>` are refused as new user cluster names (exit 2, nothing created);
  - a user's launch onto a managed job's cluster is refused and the job runs on;
  - `broker down NAME` / `down -a` skip an active managed job's cluster with a note saying what ends it;
  - a managed job never takes a cluster that is not its own (the bring-up's owner check);
  - a bad BROKER_* value is refused before anything is created.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from skybroker import cluster_ops, lifecycle
from skybroker.errors import UsageError
from skybroker.state import UP, ClusterRecord
from tests.integration.local_helpers import broker, broker_home, kill_leftovers, status_json, wait_for, write_task, cluster_dir
from tests.integration.test_promises_launch import flat
from tests.integration.test_managed_jobs import fast_controller  # noqa: F401 - its autouse fixture, here too
from tests.integration.test_managed_jobs import (TERMINAL, _cmdline, assert_clean, job, launch_detached, local_job_pids,
                                                 wait_status)


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    kill_leftovers(broker_home())


def _sleepers() -> list[int]:
    """The managed job's `sleep 60` processes on the local cloud."""
    return sorted(p for p in local_job_pids() if _cmdline(p).split(": ", 1)[1].split() == ["sleep", "60"])


def _rec(name: str, owner: str | None) -> ClusterRecord:
    return ClusterRecord(name=name, cloud="local", region=None, zone=None, instance_type=None, accelerators=None,
                         use_spot=False, num_nodes=1, hourly_price=0.0, status=UP, launched_at=0.0, owner=owner)


@pytest.mark.parametrize("theirs,ours,ok", [
    (None, None, True),                      # a user's cluster, the user again
    ("managed:3", "managed:3", True),        # a managed job's relaunch on its own cluster
    ("pool:p", "managed:7", True),           # a managed job on its pool's worker
    (None, "managed:5", False),              # a user's old `job-5`: never taken by managed job 5
    ("managed:5", None, False),              # a user's launch onto managed job 5's cluster
    ("pool:p", None, False),                 # onto a pool's worker
    ("managed:5", "managed:6", False),
])
def test_owner_check(theirs, ours, ok):
    rec = _rec("job-5", theirs)
    if ok:
        cluster_ops.check_owner(rec, ours)
        return
    with pytest.raises(UsageError) as e:
        cluster_ops.check_owner(rec, ours)
    msg = e.value.message + " " + (e.value.hint or "")
    assert "job-5" in msg
    if theirs == "managed:5":
        assert "managed job 5" in msg and "broker jobs cancel 5" in msg
    if theirs is None:
        assert "managed job 5" in msg and "broker down job-5" in msg


@pytest.mark.parametrize("name", ["job-1", "job-42", "job-3-2", "pool-mypool-0"])
def test_reserved_names_are_refused_for_new_user_clusters(tmp_path, name):
    task = write_task(tmp_path / "t.yaml", name="mine", run="echo hi")
    r = broker("launch", "-y", "-c", name, task)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "reserved" in r.stderr and "Traceback" not in r.stderr
    assert status_json() == [] and not cluster_dir(name).exists()
    ok = broker("launch", "-y", "-c", "job-x", task)  # not the managed pattern
    assert ok.returncode == 0, ok.stderr
    assert broker("down", "-y", "job-x").returncode == 0


def test_a_managed_jobs_cluster_is_not_the_users(tmp_path):
    task = write_task(tmp_path / "m.yaml", name="held", run="echo up; sleep 60")
    jid = launch_detached(task)
    wait_status(jid, "RUNNING")
    name = f"job-{jid}"
    wait_for(lambda: _sleepers(), 10, 0.05, "the job's `sleep 60`")
    pids = _sleepers()  # the job's own process (the agent's short-lived helpers come and go)
    mine = write_task(tmp_path / "u.yaml", name="mine", run="echo my-job")
    user = broker("launch", "-y", "-c", "userc", mine)
    assert user.returncode == 0, user.stderr

    r = broker("launch", "-y", "-c", name, mine)  # onto the managed job's cluster
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"belongs to managed job {jid}" in flat(r.stderr) and f"broker jobs cancel {jid}" in flat(r.stderr)
    assert "my-job" not in r.stdout

    d = broker("down", "-y", name)  # named: spared, and the exit code says it was not torn down
    assert d.returncode == 2, d.stdout + d.stderr
    assert f"cluster {name} belongs to managed job {jid} (RUNNING): not torn down" in flat(d.stderr)
    assert f"not torn down: {name}" in flat(d.stderr)
    for verb in (("stop", "-y", name), ("autostop", name, "-i", "5")):  # its controller would take it for a loss
        r = broker(*verb)
        assert r.returncode == 2, (verb, r.stdout + r.stderr)
        assert f"belongs to managed job {jid} (RUNNING)" in flat(r.stderr) and f"broker jobs cancel {jid}" in r.stderr
    a = broker("down", "-a", "-y")  # every cluster of the user's; the job's is spared, exit 0
    assert a.returncode == 0, a.stderr
    out = flat(a.stdout + a.stderr)
    assert "cluster userc terminated" in out and f"{name} terminated" not in out
    names = [c["name"] for c in status_json()]
    assert names == [name], names
    assert job(jid).status == "RUNNING" and job(jid).recoveries == 0
    assert _sleepers() == pids  # the same process: nothing was torn down or relaunched

    assert broker("jobs", "cancel", "-y", jid).returncode == 0
    assert wait_status(jid, TERMINAL).status == "CANCELLED"
    assert_clean(jid)


def test_a_bad_setting_is_refused_before_anything_is_created(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="wr", run="echo hi")
    r = broker("launch", "-y", "-c", "wr", task, env={"BROKER_WAIT_READY": "abc"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "BROKER_WAIT_READY='abc' is not a number" in r.stderr
    assert "terminated" not in r.stderr and "provisioning" not in r.stderr
    assert status_json() == [] and not cluster_dir("wr").exists()


def test_a_managed_job_leaves_a_users_older_cluster_of_its_name_alone(tmp_path):
    """A user's `job-1` from before the names were reserved (made here in-process, past the CLI's refusal):
    managed job 1 fails with a clear message and neither takes nor tears down the user's cluster."""
    from skybroker import api
    from skybroker.api_plan import load_task

    mine = write_task(tmp_path / "u.yaml", name="mine", run="echo mine; sleep 60")
    t = load_task(str(mine), {})
    run = lifecycle.bring_up(lifecycle.BringUp(task=t, cluster="job-1", plan_fn=lambda extra: api.plan(t)))
    run.runtime.close()
    wait_for(lambda: local_job_pids(), 10, 0.05, "the user's job")
    before = local_job_pids()
    jid = launch_detached(write_task(tmp_path / "m.yaml", name="managed", run="echo managed"))
    assert jid == 1
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "FAILED", j.failure
    assert "a cluster named job-1 exists and is not managed job 1's" in (j.failure or ""), j.failure
    assert [c["name"] for c in status_json()] == ["job-1"]
    assert set(before) <= set(local_job_pids())  # the user's job runs on
    assert broker("down", "-y", "job-1").returncode == 0


def test_default_names_are_never_reserved(monkeypatch):
    from skybroker import clusters

    draws = iter(["1824", "2013", "ab12"])
    monkeypatch.setattr(clusters.secrets, "token_hex", lambda n: next(draws))
    task = type("T", (), {"name": "job"})()
    assert clusters.default_name(task) == "job-ab12"


def test_the_server_plans_with_its_own_placement_not_the_clients(tmp_path):
    from dataclasses import replace

    from skybroker.api_plan import load_task
    from skybroker.server.calls import server_task

    t = replace(load_task(str(write_task(tmp_path / "t.yaml", name="p", resources={"infra": "aws"}, run="x")), {}),
                placement="{}")
    user = type("U", (), {"name": "alice", "admin": False})()
    assert server_task(user, t).placement is None


def test_a_launch_checks_the_callers_cluster_again_under_its_lock(tmp_path, monkeypatch):
    """Server mode (found by exploratory testing): alice and bob launching `-c race` at once both passed the
    server's ownership check before either cluster existed, and the one that got the cluster's lock second
    ran its job on the other's new cluster. The bring-up now checks the caller again holding the lock: the
    server's launch call as bob, onto alice's cluster made since, is refused (exit 7) and runs nothing;
    alice and an admin may."""
    pytest.importorskip("fastapi")
    from skybroker import state
    from skybroker.api_plan import load_task
    from skybroker.errors import ForbiddenError
    from skybroker.server import calls
    from skybroker.server.app import _as_user
    from skybroker.users import User

    monkeypatch.setenv("BROKER_SERVER_ALLOW_LOCAL_CLOUD", "1")
    marker = tmp_path / "ran"
    t = load_task(str(write_task(tmp_path / "t.yaml", name="t", resources={"infra": "local"},
                                 run=f'echo "$WHO" >> {marker}')), {})
    alice, bob, root = User("alice", False), User("bob", False), User("root", True)
    r = _as_user(alice, calls.run_launch, alice, replace(t, envs={"WHO": "alice"}), cluster="race")
    assert r.status.status == "SUCCEEDED" and state.get_cluster("race").user_name == "alice"
    with pytest.raises(ForbiddenError) as e:
        _as_user(bob, calls.run_launch, bob, replace(t, envs={"WHO": "bob"}), cluster="race")
    assert e.value.exit_code == 7 and "cluster race belongs to user alice" in e.value.message
    assert marker.read_text().split() == ["alice"]  # bob's job never ran there
    for u in (alice, root):
        assert _as_user(u, calls.run_launch, u, replace(t, envs={"WHO": u.name}), cluster="race").reused
    assert marker.read_text().split() == ["alice", "alice", "root"]
    assert state.get_cluster("race").user_name == "alice"
    assert broker("down", "-y", "race").returncode == 0


def test_settling_interrupted_launches_tells_only_their_user(tmp_path):
    """Server mode (found by exploratory testing): any command of bob's that settles interrupted launches
    (`down`, `launch`) printed alice's "cluster term1: its launch was interrupted ...; `broker down term1`
    removes them", naming her cluster and telling him to do what he may not. Both are settled, but only
    each user (or an admin) hears of theirs."""
    from skybroker import intents, state
    from skybroker.state import INIT

    for user, name in (("alice", "a1"), ("bob", "b1")):
        tok = state.current_user.set(user)
        try:
            state.save_cluster(replace(_rec(name, None), status=INIT))
            state.add_intent(name, "local", None, None, f"{name}-gone")  # nothing was created there
        finally:
            state.current_user.reset(tok)
    said = []
    tok = state.current_caller.set(("bob", False))
    try:
        intents.reconcile(lambda k, m: said.append(m))
    finally:
        state.current_caller.reset(tok)
    assert any(m.startswith("b1:") for m in said) and not any("a1" in m for m in said), said
    assert not state.open_intents("a1") and not state.open_intents("b1")  # both settled all the same
