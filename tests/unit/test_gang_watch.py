"""The gang watcher of a followed job (backend_jobs.JobQueries.stream_logs) is best effort in the background:
an error while it cancels the survivors (a node cut meanwhile) must not print a thread traceback, which it
did under `broker logs -f` when a node was cut mid-stream."""
from __future__ import annotations

import threading
import time

from skybroker.backend_jobs import JobQueries
from skybroker.runtime.runner import NodeUnreachable
from skybroker.state import NodeRecord


class Agent:
    def __init__(self, rank):
        self.rank = rank

    def follow_log(self, job_id, on_line, follow=True):
        if self.rank == 1:
            raise NodeUnreachable("node 1 is unreachable")
        time.sleep(2.5)  # node 0 streams on while the watcher acts
        return True


class Queries(JobQueries):
    nodes = [NodeRecord("i-0", 0, "10.0.0.1"), NodeRecord("i-1", 1, "10.0.0.2")]

    def runner(self, node):
        return None

    def agent(self, node, r=None):
        return Agent(node.rank)

    def cancel(self, job_ids, lost=()):
        raise OSError("Socket is closed")  # what paramiko raises on a connection cut meanwhile

    def job_or_unreachable(self, job_id, errors):
        return sorted(errors)


def test_an_error_in_the_gang_watcher_prints_no_traceback(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    assert Queries().stream_logs(1, lambda rank, line: None) == [1]
    assert seen == [], seen


def test_every_unreachable_node_is_named_when_they_fail_at_once():
    """The per-node threads record unreachable ranks into one set made on first use: two threads making
    it at once must not lose a rank (a check-then-assign did; holding the first thread between its check
    and its assignment makes the race certain here)."""
    calls = []

    class Slow(dict):
        def __contains__(self, key):
            found = super().__contains__(key)
            calls.append(key)
            if len(calls) == 1:  # the first thread is held between its check and its assignment
                time.sleep(1.0)
            return found

    class Gone:
        def status(self, job_id):
            raise NodeUnreachable("gone")

    class Q(JobQueries):
        nodes = [NodeRecord("i-0", 0, "10.0.0.1"), NodeRecord("i-1", 1, "10.0.0.2")]
        rec = type("R", (), {"name": "c"})()

        def agent(self, node, r=None):
            return Gone()

    q = Q()
    q.__dict__ = Slow()
    assert q.node_statuses() == {0: None, 1: None}
    warns = q.unreached_warnings("x")
    assert [w.split(" (")[0] for w in warns] == ["node 0", "node 1"], warns
