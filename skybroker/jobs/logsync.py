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


def fetch(j, rt, final: bool = False) -> int:
    """Append every node's new complete lines to the job's log; returns how many lines were added."""
    offsets = json.loads(j.log_offsets or "{}")
    multi = len(rt.nodes) > 1
    out: list[str] = []
    for node in rt.nodes:
        off = int(offsets.get(str(node.rank), 0))
        try:
            data, _ = rt.read_log(node, j.cluster_job_id, off)
        except (BrokerError, OSError):
            continue
        lines, used = split_complete(data, final)
        if not used:
            continue
        offsets[str(node.rank)] = off + used
        out += [f"(node-{node.rank}) {line}" if multi else line for line in lines]
    if out:
        with open(store.job_dir(j.id) / "run.log", "a", encoding="utf-8", errors="replace") as f:
            f.write("\n".join(out) + "\n")
    store.update(j.id, log_offsets=json.dumps(offsets))
    return len(out)
