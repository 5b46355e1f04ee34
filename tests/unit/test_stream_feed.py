"""StreamFeed's rules (runtime/stream_feed.py) with fake agents (their `watch` lines come from a queue the
test fills) and a fake clock: event → changed, stream end → changed at once, beats stopping → changed."""
from __future__ import annotations

import queue
import threading
import time

import pytest

from skybroker.runtime.agent_client import AgentOutdated
from skybroker.runtime.runner import NodeUnreachable
from skybroker.runtime.stream_feed import StreamFeed


class FakeAgent:
    """`watch` delivers what the test puts on that stream's queue: a dict (a line), an exception (raised),
    None (the command ends). `put` goes to the newest stream."""

    def __init__(self):
        self.queues: list[queue.Queue] = []
        self.opened: list[list[int]] = []
        self.delivered: list[int] = []  # lines taken, per stream
        self.live = 0

    @property
    def q(self) -> queue.Queue:
        return self.queues[-1]

    def watch(self, job_ids, on_event, every=0.3, beat=2.0, also=None):
        q: queue.Queue = queue.Queue()
        n = len(self.queues)
        self.delivered.append(0)
        self.queues.append(q)
        self.opened.append(list(job_ids))
        self.live += 1
        try:
            while True:
                item = q.get(timeout=30)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                try:
                    on_event(item)
                finally:
                    self.delivered[n] += 1
        finally:
            self.live -= 1

    def put(self, *items):
        """Deliver lines on the newest stream and wait until the feed has taken them."""
        n = len(self.queues) - 1
        want = self.delivered[n] + sum(isinstance(i, dict) for i in items)
        for i in items:
            self.queues[n].put(i)
        _until(lambda: self.delivered[n] >= want)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


KEY = (1, "c")


@pytest.fixture
def setup():
    clock, agents = Clock(), [FakeAgent(), FakeAgent()]
    feed = StreamFeed(beat=2.0, misses=3, retry=5.0, also="ckpt", also_gap=30.0, clock=clock)
    src = lambda: ("c", agents)  # noqa: E731
    yield feed, clock, agents, src
    feed.close()
    for a in agents:
        for q in a.queues:
            q.put(None)


def _up(feed, agents, src, job_id=7):
    """First sight (True), the streams opened, their first lines (the starting state, not a change) and
    first beats: the key is watched and nothing changed."""
    assert feed.changed(KEY, job_id, src) is True
    for a in agents:
        _until(lambda a=a: a.opened)
        a.put({"job": job_id, "row": {"status": "RUNNING"}, "size": 10}, {"beat": 1})
    assert feed.watching(KEY)
    assert feed.changed(KEY, job_id, src) is False


def test_an_event_is_a_change_once_and_output_waits_for_min_gap(setup):
    feed, clock, agents, src = setup
    _up(feed, agents, src)
    assert agents[0].opened == [[7]] and agents[1].opened == [[7]]
    agents[1].put({"job": 7, "row": {"status": "SUCCEEDED"}, "size": 12})
    assert feed.changed(KEY, 7, src, min_gap=2.0) is True  # a status change: at once
    assert feed.changed(KEY, 7, src, min_gap=2.0) is False  # told once
    agents[0].put({"job": 7, "size": 20})
    assert feed.changed(KEY, 7, src, min_gap=2.0) is False  # output: not within min_gap of the last look
    clock.t += 2.5
    agents[0].put({"beat": 1}, {"beat": 1})
    assert feed.changed(KEY, 7, src, min_gap=2.0) is True  # the held-back output, now
    assert feed.changed(KEY, 7, src, min_gap=2.0) is False
    agents[0].put({"also": "ckpt"})
    assert feed.changed(KEY, 7, src) is False  # the checkpoint directory: at most every also_gap
    clock.t += 31
    for a in agents:
        a.put({"beat": 1})
    assert feed.changed(KEY, 7, src) is True
    assert feed.watching(KEY)


def test_a_stream_that_ends_or_drops_is_a_change_at_once_and_reopens_after_retry(setup):
    feed, clock, agents, src = setup
    _up(feed, agents, src)
    agents[1].q.put(NodeUnreachable("n1", "connection lost while the command was running"))
    _until(lambda: agents[1].live == 0)
    agents[0].q.put({"beat": 1})  # node 0's stream was stopped with the cluster's: its next line ends it
    assert feed.changed(KEY, 7, src) is True  # no wait for a beat: the node's connection is gone
    assert not feed.watching(KEY)
    assert feed.lost(KEY) is True and feed.lost(KEY) is False  # told once: the controller asks the cloud
    _until(lambda: agents[0].live == 0)
    assert feed.changed(KEY, 7, src) is False  # not reopened before `retry`
    assert len(agents[0].opened) == 1
    clock.t += 5.5
    assert feed.changed(KEY, 7, src) is False
    for a in agents:
        _until(lambda a=a: len(a.opened) == 2)  # both nodes' streams opened again
        a.put({"job": 7, "row": {"status": "RUNNING"}, "size": 10}, {"beat": 1})
    assert feed.watching(KEY)
    agents[0].q.put(None)  # the agent ended its command (every watched job terminal)
    _until(lambda: agents[0].live == 0)
    assert feed.changed(KEY, 7, src) is True and feed.lost(KEY) is False


def test_beats_stopping_is_a_change(setup):
    feed, clock, agents, src = setup
    _up(feed, agents, src)
    clock.t += 5.0
    agents[0].put({"beat": 1})  # node 0 beats, node 1 is silent
    assert feed.changed(KEY, 7, src) is False  # 5 s < 3 beats
    clock.t += 1.5
    assert feed.changed(KEY, 7, src) is True  # 6.5 s without a line from node 1
    assert not feed.watching(KEY)
    for a in agents:  # its streams were stopped: the next line they get ends them
        a.q.put({"beat": 1})
        _until(lambda a=a: a.live == 0)


def test_an_agent_without_watch_leaves_the_job_to_polls(setup):
    feed, clock, agents, src = setup
    assert feed.changed(KEY, 7, src) is True
    for a in agents:
        _until(lambda a=a: a.opened)
        a.q.put(AgentOutdated("node agent predates `watch`"))
        _until(lambda a=a: a.live == 0)
    assert feed.changed(KEY, 7, src) is False  # not a change: the caller goes on polling on its interval
    assert not feed.watching(KEY)
    clock.t += 60
    assert feed.changed(KEY, 7, src) is False and all(len(a.opened) == 1 for a in agents)  # not asked again soon


def test_a_second_job_on_the_cluster_reopens_its_streams_for_both(setup):
    feed, clock, agents, src = setup
    _up(feed, agents, src)
    other = (2, "c")
    assert feed.changed(other, 8, src) is True
    for a in agents:
        _until(lambda a=a: len(a.opened) == 2)
        assert a.opened[-1] == [7, 8]
        a.queues[0].put({"beat": 1})  # the replaced stream's next line stops it
        a.put({"job": 7, "row": {"status": "RUNNING"}, "size": 10}, {"job": 8, "row": {"status": "RUNNING"}, "size": 0},
              {"beat": 1})
    assert feed.watching(KEY) and feed.watching(other)
    agents[0].put({"job": 8, "row": {"status": "FAILED"}, "size": 0})
    assert feed.changed(other, 8, src) is True and feed.changed(KEY, 7, src) is False
    feed._forget_at = 0
    feed.forget([KEY])
    assert not feed.watching(other) and feed.watching(KEY)


def test_a_source_that_cannot_say_is_retried_later(setup):
    feed, clock, agents, _ = setup
    calls = []

    def none():
        calls.append(1)

    assert feed.changed(KEY, 7, none) is True
    assert feed.changed(KEY, 7, none) is False and len(calls) == 1
    clock.t += 6
    assert feed.changed(KEY, 7, none) is False and len(calls) == 2
    assert feed.changed(KEY, None, none) is False


class _Runner:
    """A runner whose one command prints `lines` and exits with `code`."""

    node_id = "n0"

    def __init__(self, lines, code):
        self.lines, self.code, self.cmds = lines, code, []

    def run(self, cmd, stream=None, **kw):
        from skybroker.runtime.runner import RunResult

        self.cmds.append(cmd)
        for line in self.lines:
            stream(line)
        return RunResult(self.code, "\n".join(self.lines), "")


def test_agent_client_watch_passes_lines_and_knows_an_agent_without_watch():
    from skybroker.runtime.agent_client import AgentClient, AgentError

    got = []
    r = _Runner(['{"job": 3, "row": null, "size": 0}', "not json", '{"beat": 1}'], 0)
    AgentClient(r).watch([3, 4], got.append, every=0.25, beat=1.5, also="ckpt")
    assert got == [{"job": 3, "row": None, "size": 0}, {"beat": 1}]
    assert r.cmds[0].endswith("agent.py watch 3 4 --every 0.25 --beat 1.5 --also ckpt")
    old = _Runner(['{"error": "usage: agent.py {autostop,cancel,run,status} ..."}'], 2)
    with pytest.raises(AgentOutdated):
        AgentClient(old).watch([3], got.append)
    with pytest.raises(AgentError, match="disk full"):
        AgentClient(_Runner(['{"error": "internal error: disk full"}'], 1)).watch([3], got.append)
