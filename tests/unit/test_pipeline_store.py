"""Managed pipelines in the state database (jobs/store.py, jobs/pipeline.py): one row per pipeline holding
the current stage's task and secrets; stage outcomes; a controller that stops between a stage's success and
the next stage goes on from there instead of running the stage again."""
from __future__ import annotations

import json

from skybroker.jobs import pipeline as P
from skybroker.jobs import store


def _pipe():
    stages = [(f"s{i}", json.dumps({"stage": i}), {"TOKEN": f"secret-{i}"} if i != 1 else {}, f"res-{i}")
              for i in range(3)]
    return store.insert_pipeline("p", stages)


def test_one_row_with_the_current_stage_and_every_stage_kept():
    j = _pipe()
    assert (j.name, j.stage, j.num_stages, json.loads(j.task), j.resources) == ("p", 0, 3, {"stage": 0}, "res-0")
    assert store.decrypt(j.secrets) == {"TOKEN": "secret-0"}
    assert [e["status"] for e in j.stage_list] == ["PENDING"] * 3
    assert "secret-2" not in j.stages  # stored encrypted
    assert store.decrypt(store.stage_secrets(j.stage_list[2])) == {"TOKEN": "secret-2"}
    assert (P.stage_cluster(j), P.stage_task_id(j), P.stage_label(j)) == (f"job-{j.id}-1", f"{j.task_id}-0",
                                                                          "stage 1/3 (s0)")


def test_a_restarted_controller_goes_on_from_a_recorded_stage_success():
    from skybroker.jobs.controller import Controller

    j = _pipe()
    store.update(j.id, status=store.RUNNING, cluster=P.stage_cluster(j), recoveries=2, restarts_on_errors=1,
                 submit_token="tok")
    P.mark_done(store.get(j.id))  # ... and the controller died here, before the next stage started
    c = Controller(workers=1)
    try:
        c.step(j.id)
    finally:
        c.pool.shutdown()
    j = store.get(j.id)
    assert (j.stage, j.status, json.loads(j.task), j.resources) == (1, store.PENDING, {"stage": 1}, "res-1")
    assert store.decrypt(j.secrets) == {} and j.submit_token is None and j.restarts_on_errors == 0
    assert j.recoveries == 2  # the pipeline's count keeps adding up
    assert [e["status"] for e in j.stage_list] == ["SUCCEEDED", "PENDING", "PENDING"]
    assert P.stage_cluster(j) == f"job-{j.id}-2"


def test_a_failed_stage_cancels_the_later_ones():
    j = _pipe()
    P.mark_done(j)
    P.advance(store.get(j.id))
    fields, reason = P.finish_fields(store.get(j.id), store.FAILED, 7, "exit 7")
    assert reason == "stage 2/3 (s1): exit 7"
    st = json.loads(fields["stages"])
    assert [(e["status"], e.get("exit_code")) for e in st] == [("SUCCEEDED", 0), ("FAILED", 7), ("CANCELLED", None)]
