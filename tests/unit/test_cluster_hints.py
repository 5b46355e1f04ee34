"""Hints and reports of the cluster commands: what to do about a DEGRADED cluster, gc's skipped places."""
from __future__ import annotations

from tests.unit.test_endpoints import rec


def test_a_degraded_cluster_is_told_how_to_mend_it():
    """`exec`/`stop`/`start` on a DEGRADED cluster said "wait for it, or broker down": waiting never mends it."""
    from skybroker import cluster_ops

    hint = cluster_ops.not_up_hint(rec(status="DEGRADED"))
    assert "broker launch -c c TASK" in hint and "wait" not in hint
    assert "broker start c" in cluster_ops.not_up_hint(rec(status="STOPPED"))


def test_gc_says_a_reason_shared_by_many_regions_once(capsys):
    """One GCP auth failure printed 45 identical 'not scanned: gcp/<region>' lines."""
    from types import SimpleNamespace

    from skybroker import render

    scan = SimpleNamespace(skipped=[(f"gcp/r{i}", "credentials refused") for i in range(45)] + [("aws", "no SDK")],
                           scanned={"local": 1}, orphans=[])
    render.print_gc_scan(scan)
    err = capsys.readouterr().err
    assert err.count("not scanned") == 2 and "gcp/r0 and 44 more: credentials refused" in " ".join(err.split()), err


def test_a_failed_agent_install_says_the_nodes_error_not_its_traceback():
    """A read-only home printed the node's whole Python traceback."""
    import pytest

    from skybroker.runtime.agent_client import AgentClient, AgentError
    from skybroker.runtime.runner import RunResult

    class Runner:
        def run(self, cmd, stdin=None, timeout=None):
            return RunResult(1, "", 'Traceback (most recent call last):\n  File "<string>", line 6, in <module>\n'
                                    "PermissionError: [Errno 13] Permission denied: '/home/broker/.skybroker-node'\n")

    with pytest.raises(AgentError) as ei:
        AgentClient(Runner(), label="ro node 2").install()
    assert "Traceback" not in ei.value.message and "Permission denied: '/home/broker/.skybroker-node'" in ei.value.message
    assert "writable home" in ei.value.hint
