"""Managed jobs on real sshd nodes (root; tests/infra/netns.py) through an SSH node pool, with the
controller in this process so its SSH connections and agent calls can be counted (issue 16): one
connection per node kept open across polls, and the agent's `watch` stream telling the controller when to
look instead of a poll per interval."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.integration.local_helpers import broker, broker_home, wait_for, write_task

pytestmark = pytest.mark.slow


@pytest.fixture
def ssh_pool(tmp_path):
    """One SSH node pool "p" of two sshd nodes (a preempted job relaunches on the other)."""
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    from skybroker.runtime.keys import ensure_user_key

    key, pub = ensure_user_key(broker_home())
    pool = NodePool(Path("/var/tmp") / f"skybroker-chan-{os.getpid()}", user="broker")
    try:
        nodes = pool.start(2, pub)
        (broker_home() / "ssh_node_pools.yaml").write_text(
            f"p:\n  user: broker\n  identity_file: {key}\n  hosts: [{', '.join(n.ip for n in nodes)}]\n")
        yield pool, nodes
    finally:
        pool.close()


class Counts:
    """SSH connections opened and agent calls made (one-shot commands; a `watch` stream is not one)."""

    def __init__(self, monkeypatch):
        from skybroker.jobs import logsync
        from skybroker.runtime import agent_client, ssh_runner

        self.connects = self.calls = self.polls = 0
        self._lock = threading.Lock()
        real_connect, real_call, real_poll = ssh_runner.SSHRunner._connect, agent_client.AgentClient._call, logsync.poll

        def connect(runner, timeout):
            with self._lock:
                self.connects += 1
            return real_connect(runner, timeout)

        def call(client, *args, **kw):
            with self._lock:
                self.calls += 1
            return real_call(client, *args, **kw)

        def poll(j, rt):
            try:
                return real_poll(j, rt)
            finally:
                with self._lock:
                    self.polls += 1

        monkeypatch.setattr(ssh_runner.SSHRunner, "_connect", connect)
        monkeypatch.setattr(agent_client.AgentClient, "_call", call)
        monkeypatch.setattr(logsync, "poll", poll)


def _controller(monkeypatch):
    from skybroker.jobs import controller as C
    from skybroker.jobs import recovery as R

    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "0.5")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "600")
    monkeypatch.setattr(R, "NETWORK_GRACE_SECONDS", 1.0)  # a pool cannot tell a dead host from a partition
    ctl = C.Controller(workers=4)
    return ctl, threading.Thread(target=ctl.run, daemon=True)


def _submit(task_path: Path) -> int:
    import json

    from skybroker import api
    from skybroker.jobs import store
    from skybroker.spec import task_to_dict

    task = api.load_task(str(task_path), {})
    return store.insert(task.name, json.dumps(task_to_dict(task)), task.secret_dict, "test").id


def _job(jid):
    from skybroker.jobs import store

    return store.get(jid)


def _log(jid) -> str:
    try:
        return (broker_home() / "managed" / str(jid) / "run.log").read_text()
    except OSError:
        return ""


def _stop(ctl, t, jid):
    from skybroker.jobs import store

    store.request_cancel(jid)
    wait_for(lambda: _job(jid).status in store.TERMINAL, 60, 0.1, "cancelled")
    t.join(30)
    ctl.pool.shutdown(wait=True)


def test_polls_of_a_job_reuse_one_ssh_connection(ssh_pool, tmp_path, monkeypatch):
    """A chatty job is looked at again and again; after the first look no poll connects again."""
    task = write_task(tmp_path / "t.yaml", name="chatty", resources={"infra": "ssh/p"},
                      run="i=0; while true; do i=$((i+1)); echo line $i; sleep 0.3; done")
    jid = _submit(task)
    counts = Counts(monkeypatch)
    ctl, t = _controller(monkeypatch)
    t.start()
    try:
        wait_for(lambda: _job(jid).status == "RUNNING" and "line 2" in _log(jid), 90, 0.1, "running, output")
        wait_for(lambda: counts.polls >= 2, 30, 0.05, "a first poll done")
        connects, polls = counts.connects, counts.polls
        wait_for(lambda: counts.polls >= polls + 4, 60, 0.05, "four more polls")
        assert counts.connects == connects, (counts.connects, connects)
        n = int(_log(jid).strip().splitlines()[-1].split()[-1])
        wait_for(lambda: f"line {n + 3}" in _log(jid), 30, 0.1, "output keeps arriving")
    finally:
        _stop(ctl, t, jid)
    assert not ctl.rts.names()  # the cluster is gone: its connections were closed
