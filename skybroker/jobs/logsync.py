"""Copying a managed job's output from its nodes into the job's own log (`managed/<id>/run.log`).

Offsets are byte offsets into each node's log, advanced only past complete lines that were written to
the job's log: bytes that are not UTF-8 never shift an offset (they are decoded with replacement for
display only), and a partial last line is read again next time rather than kept in memory, so a
controller restart neither loses nor splits it. A line longer than MAX_PARTIAL is written as it is.
"""
from __future__ import annotations

import json

from ..errors import BrokerError
from . import store

MAX_PARTIAL = 64 * 1024
READ_LIMIT = 1 << 20  # what the agent returns at most per read
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED"})


def split_complete(data: bytes, final: bool = False) -> tuple[list[str], int]:
    """(complete lines decoded, bytes consumed). With final, a trailing partial line counts too."""
    cut = data.rfind(b"\n") + 1
    if final or (cut == 0 and len(data) >= MAX_PARTIAL):
        cut = len(data)
    body = data[:cut]
    if not body:
        return [], 0
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln.decode("utf-8", errors="replace") for ln in lines], cut


def poll(j, rt):
    """One look at a managed job on all its nodes, one agent call per node: the new complete log lines go
    to the job's log and the job's status comes back (a JobStatus; a node that cannot be reached counts
    as UNREACHABLE). Once the job has ended on a node, everything left in its log is read."""
    from ..backend_jobs import NodeJob, aggregate
    from ..runtime.runner import NodeUnreachable

    offsets = json.loads(j.log_offsets or "{}")
    before = dict(offsets)
    multi = len(rt.nodes) > 1
    out: list[str] = []
    nodes, meta = [], {}
    for node in rt.nodes:
        off = int(offsets.get(str(node.rank), 0))
        agent = rt.agent(node)
        try:
            while True:
                data, _, row = agent.poll(j.cluster_job_id, off)
                done = row is not None and row["status"] in TERMINAL_STATUSES
                lines, used = split_complete(data, final=done and len(data) < READ_LIMIT)
                off += used
                out += [f"(node-{node.rank}) {line}" if multi else line for line in lines]
                if not (done and len(data) >= READ_LIMIT):
                    break
        except (NodeUnreachable, OSError):
            nodes.append(NodeJob(node.rank, "UNREACHABLE", None, "node unreachable"))
            continue
        except BrokerError:
            nodes.append(NodeJob(node.rank, "UNREACHABLE", None, "agent error"))
            continue
        offsets[str(node.rank)] = off
        if row is None:
            nodes.append(NodeJob(node.rank, "UNKNOWN"))
            continue
        nodes.append(NodeJob(node.rank, row["status"], row.get("exit_code"), row.get("reason")))
        if node.rank == 0 or not meta:
            meta = dict(row, notice=meta.get("notice") or row.get("notice"))
        elif row.get("notice"):
            meta = dict(meta, notice=row["notice"])
    if out:
        with open(store.job_dir(j.id) / "run.log", "a", encoding="utf-8", errors="replace") as f:
            f.write("\n".join(out) + "\n")
    if offsets != before:  # a quiet job costs no write to the state database
        store.update(j.id, log_offsets=json.dumps(offsets))
    return aggregate(j.cluster_job_id, nodes, meta)
