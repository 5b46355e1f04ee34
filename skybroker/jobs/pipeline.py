"""Managed pipelines: a multi-document task file run as ONE managed job whose stages run in order.

Each stage runs to completion before the next starts, is planned on its own cheapest fit and runs on its
own cluster (`job-<id>-<stage>`, torn down when the stage ends), with the managed-job recovery semantics
of a single job (preemption → relaunch, `max_restarts_on_errors`, ...) per stage. A stage that fails (or
is cancelled) ends the pipeline: the later stages are marked CANCELLED and never start. `jobs cancel`
cancels the current stage and so the pipeline.

Data between stages: the job's checkpoint directory. Every stage sees `$BROKER_CHECKPOINT_DIR`; when a
stage succeeds, the controller copies the head node's directory back one last time (checkpoint.py: a
complete snapshot), and the next stage's nodes get that snapshot restored before `run`, as after a
recovery. So what stage 1 writes there, stage 2 reads (and may add to, for stage 3).

The row (store.py) holds the current stage's task, secrets and resources; `stages` (JSON) keeps every
stage's task, its secrets (encrypted) and outcome. Restart safety: a stage's success is recorded before
its cluster is torn down, and a controller that stops between that and the next stage goes on from there
(no stage runs twice because of it).
"""
from __future__ import annotations

import json
import time

from . import store


def stage_cluster(j) -> str:
    return f"job-{j.id}-{j.stage + 1}" if j.stages else f"job-{j.id}"


def stage_task_id(j) -> str:
    """SKYPILOT_TASK_ID: stable across recoveries; a pipeline's stages get `<task id>-<stage>` (0-based)."""
    return f"{j.task_id}-{j.stage}" if j.stages else j.task_id


def stage_label(j) -> str:
    st = j.stage_list
    return f"stage {j.stage + 1}/{len(st)} ({st[j.stage].get('name') or 'unnamed'})" if st else ""


def has_next(j) -> bool:
    return bool(j.stages) and j.stage + 1 < len(j.stage_list)


def stage_succeeded(j) -> bool:
    """The current stage has succeeded but the next one has not been started yet."""
    return has_next(j) and j.stage_list[j.stage].get("status") == store.SUCCEEDED


def mark_started(j, rec) -> None:
    st = j.stage_list
    cur = st[j.stage]
    if cur.get("started_at") is None:
        with open(store.job_dir(j.id) / "run.log", "a") as f:
            f.write(f"=== broker: {stage_label(j)} at {time.strftime('%F %T')} ===\n")
        cur["started_at"] = time.time()
    cur.update(status=store.RUNNING, cluster=j.cluster, place=rec.infra if rec else None)
    store.update(j.id, stages=json.dumps(st))


def mark_done(j) -> None:
    st = j.stage_list
    st[j.stage].update(status=store.SUCCEEDED, ended_at=time.time(), exit_code=0, place=j.place,
                       cost=round(j.cost - st[j.stage].get("cost_before", 0.0), 6))
    store.update(j.id, stages=json.dumps(st))
    store.add_event(j.id, "stage", f"{stage_label(j)} succeeded")


def advance(j) -> None:
    """The next stage: its task, secrets and resources become the job's, with fresh per-stage recovery
    bookkeeping (restarts on errors, blocked regions, submit token, deadline state); recoveries and cost
    keep adding up for the pipeline. The checkpoint directory carries over."""
    st = j.stage_list
    k = j.stage + 1
    nxt = st[k]
    nxt["cost_before"] = j.cost
    store.update(j.id, stage=k, task=nxt["task"], secrets=store.stage_secrets(nxt), resources=nxt["resources"],
                 status=store.PENDING, cluster=None, cluster_job_id=None, restarts_on_errors=0,
                 segment_start=None, segment_price=None, place=None, blocked=json.dumps({"blocks": []}),
                 submit_token=None, log_offsets="{}", deadline_state=None, stages=json.dumps(st))
    store.add_event(j.id, "stage", f"{stage_label(store.get(j.id))} starts")


def finish_fields(j, status: str, exit_code, reason: str) -> tuple[dict, str]:
    """The stages' outcome when the job ends: the current stage ends with the job's status (unless it
    had already succeeded); if the pipeline did not succeed, every later stage is CANCELLED."""
    if not j.stages:
        return {}, reason
    st, now = j.stage_list, time.time()
    cur = st[j.stage]
    if cur.get("status") != store.SUCCEEDED:
        cur.update(status=status, ended_at=now, exit_code=exit_code, place=j.place,
                   cost=round(j.cost - cur.get("cost_before", 0.0), 6))
    if status != store.SUCCEEDED:
        for later in st[j.stage + 1:]:
            later["status"] = store.CANCELLED
        if len(st) > 1:
            reason = f"{stage_label(j)}: {reason}"
    return {"stages": json.dumps(st)}, reason
