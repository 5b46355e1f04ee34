"""A node lost after a job finished there does not rewrite the job's outcome (`broker queue` remembers how a
job ended on each node once it read it); a job still running on a node that is lost fails. On the `local`
cloud, where removing a node's sandbox makes it unreachable."""
from __future__ import annotations

import shutil

import pytest

from tests.integration.local_helpers import (broker, broker_home, kill_leftovers, node_dir, queue_json, wait_for,
                                             write_task)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _nodes(job: dict) -> list[tuple[int, str, int | None]]:
    return [(n["rank"], n["status"], n["exit_code"]) for n in job["nodes"]]


def test_a_finished_job_keeps_its_outcome_when_a_node_is_lost(tmp_path):
    task = write_task(tmp_path / "t.yaml", num_nodes=2, run='exit "$SKYPILOT_NODE_RANK"')  # node 1 fails (1)
    first = broker("launch", "-y", "-c", "lost", task, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    write_task(tmp_path / "ok.yaml", num_nodes=2, run="echo fine")
    second = broker("launch", "-y", "-c", "lost", tmp_path / "ok.yaml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    shutil.rmtree(node_dir("lost", 1))  # node 1 is gone: it cannot be asked any more
    jobs = queue_json("lost")
    assert [(j["job_id"], j["status"], j["exit_code"]) for j in jobs] == [(1, "FAILED", 1), (2, "SUCCEEDED", 0)]
    assert _nodes(jobs[1]) == [(0, "SUCCEEDED", 0), (1, "SUCCEEDED", 0)]
    assert _nodes(jobs[0])[1] == (1, "FAILED", 1)
    shown = broker("queue", "lost")
    assert shown.returncode == 0 and "1:UNRE" not in shown.stdout, shown.stdout


def test_a_job_running_when_its_node_is_lost_fails(tmp_path):
    task = write_task(tmp_path / "t.yaml", num_nodes=2, run="sleep 60")
    r = broker("launch", "-y", "-d", "-c", "run", task, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: queue_json("run")[-1]["status"] == "RUNNING", 30, what="job 1 running")
    shutil.rmtree(node_dir("run", 1))
    job = queue_json("run")[-1]
    assert (job["status"], _nodes(job)[1][1]) == ("FAILED", "UNREACHABLE")
