"""Managed jobs on real sshd nodes (root; tests/infra/netns.py) through an SSH node pool, with the
controller in this process so its SSH connections and agent calls can be counted (issue 16): one
connection per node kept open across polls, and the agent's `watch` stream telling the controller when to
look instead of a poll per interval."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.integration.local_helpers import broker, broker_home, ssh_node_pools, wait_for, write_task

pytestmark = pytest.mark.slow


@pytest.fixture
def ssh_pool(tmp_path):
    """One SSH node pool "p" of two sshd nodes (a preempted job relaunches on the other)."""
    with ssh_node_pools("chan", {"p": 2}) as (pool, by_name):
        yield pool, by_name["p"]


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
    from skybroker import settings
    from skybroker.jobs import controller as C
    from skybroker.jobs import recovery as R

    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "0.5")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "600")
    # as the controller process sets it (controller.main): connects to a node time out after 4 s, not the
    # CLI's 10 s (a recovery's teardown of the lost cluster waits that out on the dead node's address)
    monkeypatch.setenv("BROKER_SSH_CONNECT_TIMEOUT", str(settings.get("controller_ssh_timeout")))
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


def _beats(monkeypatch) -> list:
    """Every heartbeat line the controller's stream feed receives."""
    from skybroker.runtime import stream_feed

    seen: list = []
    real = stream_feed.StreamFeed._on

    def on(feed, s, doc):
        if "beat" in doc:
            seen.append(doc)
        return real(feed, s, doc)

    monkeypatch.setattr(stream_feed.StreamFeed, "_on", on)
    return seen


def test_a_sleeping_job_costs_no_agent_call_nor_connection_while_its_stream_beats(ssh_pool, tmp_path, monkeypatch):
    """With the agent's `watch` stream up, a job that sleeps is not polled: agent calls, polls and SSH
    connections stay where they were while beats keep arriving (the old path: one call per interval)."""
    task = write_task(tmp_path / "t.yaml", name="sleeper", resources={"infra": "ssh/p"},
                      run="echo started; sleep 600")
    jid = _submit(task)
    counts, beats = Counts(monkeypatch), _beats(monkeypatch)
    ctl, t = _controller(monkeypatch)
    # a beat a second (not 2 s), with the same 6 s of silence before a stream counts as dead: the six beats
    # this test waits for take 6 s, not 12, and the window of four beats still holds 13 poll intervals
    ctl.sfeed.beat, ctl.sfeed.misses = 1.0, 6
    t.start()
    try:
        wait_for(lambda: _job(jid).status == "RUNNING" and "started" in _log(jid), 90, 0.1, "running, output")
        key = (jid, _job(jid).cluster)
        wait_for(lambda: ctl.sfeed.watching(key), 60, 0.05, "the job's stream up")
        n = len(beats)
        wait_for(lambda: len(beats) >= n + 2, 30, 0.05, "two beats")  # the poll after the stream came up is done
        calls, connects, polls, n = counts.calls, counts.connects, counts.polls, len(beats)
        wait_for(lambda: len(beats) >= n + 4, 60, 0.05, "four more beats")
        assert (counts.calls, counts.connects, counts.polls) == (calls, connects, polls)
        assert ctl.sfeed.watching(key) and _job(jid).status == "RUNNING"
    finally:
        _stop(ctl, t, jid)


def test_a_killed_node_ends_its_stream_and_the_job_recovers_with_its_output_in_jobs_logs(ssh_pool, tmp_path,
                                                                                          monkeypatch):
    pool, nodes = ssh_pool
    task = write_task(tmp_path / "t.yaml", name="ticker", resources={"infra": "ssh/p", "job_recovery": "FAILOVER"},
                      run='echo "start on $(hostname)"; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done')
    jid = _submit(task)
    ctl, t = _controller(monkeypatch)
    t.start()
    try:
        wait_for(lambda: _job(jid).status == "RUNNING" and "tick 2" in _log(jid), 90, 0.1, "running, output")
        key = (jid, _job(jid).cluster)
        wait_for(lambda: ctl.sfeed.watching(key), 60, 0.05, "the job's stream up")
        from skybroker import state

        ip = state.get_cluster(_job(jid).cluster).nodes[0].ip
        victim = next(n for n in nodes if n.ip == ip)
        other = next(n for n in nodes if n.ip != ip)
        pool.kill(victim)
        wait_for(lambda: _job(jid).recoveries == 1 and _job(jid).status == "RUNNING", 120, 0.1, "recovered")
        wait_for(lambda: f"start on {other.name}" in _log(jid) and _log(jid).count("tick 2") >= 2, 60, 0.1,
                 "output of the new run")
        r = broker("jobs", "logs", str(jid))
        assert r.returncode == 0, r.stderr
        assert f"start on {victim.name}" in r.stdout and f"start on {other.name}" in r.stdout, r.stdout
        assert "=== broker: recovery 1" in r.stdout and "lost" in r.stdout, r.stdout
        wait_for(lambda: ctl.sfeed.watching((jid, _job(jid).cluster)), 60, 0.05, "the new run's stream up")
    finally:
        _stop(ctl, t, jid)


def test_an_agent_without_watch_falls_back_to_polls(ssh_pool, tmp_path, monkeypatch):
    """The node's agent predates `watch` (AgentOutdated): the job is polled on its interval as before —
    output arrives, and the polls reuse the open connection."""
    from skybroker.runtime import agent_client

    tried = []

    def old_agent(client, job_ids, on_event, **kw):
        tried.append(list(job_ids))
        raise agent_client.AgentOutdated(f"node agent on {client.label} predates `watch`")

    monkeypatch.setattr(agent_client.AgentClient, "watch", old_agent)
    task = write_task(tmp_path / "t.yaml", name="quiet", resources={"infra": "ssh/p"},
                      run="echo started; sleep 2; echo later; sleep 600")
    jid = _submit(task)
    counts = Counts(monkeypatch)
    ctl, t = _controller(monkeypatch)
    t.start()
    try:
        wait_for(lambda: _job(jid).status == "RUNNING" and "later" in _log(jid), 90, 0.1, "running, output")
        wait_for(lambda: tried, 30, 0.05, "the stream tried")
        connects, polls = counts.connects, counts.polls
        wait_for(lambda: counts.polls >= polls + 3, 60, 0.05, "polls on the interval")  # a sleeping job, polled
        assert counts.connects == connects and not ctl.sfeed.watching((jid, _job(jid).cluster))
        assert len(tried) == 1  # not asked again at every poll
    finally:
        _stop(ctl, t, jid)
