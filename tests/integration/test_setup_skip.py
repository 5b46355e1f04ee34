"""A reused cluster skips an unchanged setup only where it succeeded (the node's agent records a successful
setup; the client always sends it along): a failed setup runs again, on the node(s) it failed on, and a launch
that starts while the previous one's setup is still running does not take it for done. On the `local` cloud."""
from __future__ import annotations

import shutil

import pytest

from tests.integration.local_helpers import (broker, broker_bg, broker_home, kill_leftovers, node_dir, node_lines,
                                             queue_json, wait_for, write_task)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")

SKIPPED = "setup unchanged since the last launch on this cluster: skipped"


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def test_a_failed_setup_runs_again_where_it_failed(tmp_path):
    # node 1's setup fails the first time only; node 0's always succeeds
    setup = ('if [ "$SKYPILOT_NODE_RANK" = 1 ] && [ ! -e ~/tried ]; then touch ~/tried; exit 5; fi\n'
             'echo SETUP-$SKYPILOT_NODE_RANK; touch ~/setup_ok')
    task = write_task(tmp_path / "t.yaml", num_nodes=2, setup=setup, run="ls ~/setup_ok && echo RAN")
    first = broker("launch", "-y", "-c", "fs", task, cwd=tmp_path)
    assert first.returncode == 5, first.stderr
    assert queue_json("fs")[-1]["status"] == "FAILED_SETUP"

    second = broker("launch", "-y", "-c", "fs", task, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert SKIPPED not in second.stderr
    assert "done before on node(s) 0: skipped there; it runs on node(s) 1" in second.stderr, second.stderr
    lines = node_lines(second.stdout)
    assert "SETUP-1" in lines[1] and "RAN" in lines[1]  # the failed setup ran again on node 1
    assert "SETUP-0" not in lines[0] and "RAN" in lines[0]  # and not again where it had succeeded

    third = broker("launch", "-y", "-c", "fs", task, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert SKIPPED in third.stderr  # succeeded on every node now: skipped, and said so
    assert "SETUP-" not in third.stdout and third.stdout.count("RAN") == 2


def test_a_launch_during_a_setup_that_then_fails_runs_it(tmp_path):
    task = write_task(tmp_path / "t.yaml", setup='sleep 3; echo SETUP-RAN >> ~/setups; exit 3', run="echo RAN")
    err = tmp_path / "first.err"
    first = broker_bg("launch", "-y", "-c", "fc", task, cwd=tmp_path, stderr=err)
    try:
        wait_for(lambda: "job 1 submitted" in err.read_text(), 60, what="the first job submitted")
        second = broker("launch", "-y", "-c", "fc", task, cwd=tmp_path)  # queued behind job 1's setup
        assert first.wait(60) == 3
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 3, second.stderr
    assert SKIPPED not in second.stderr
    assert [j["status"] for j in queue_json("fc")] == ["FAILED_SETUP", "FAILED_SETUP"]
    assert (node_dir("fc", 0) / "setups").read_text().count("SETUP-RAN") == 2  # job 2 ran the setup too
