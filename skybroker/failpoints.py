"""Fault injection for tests: `BROKER_FAILPOINTS="sync=sleep(5),submit=raise,provision=exit"` pauses,
fails or kills the process (like SIGKILL: no cleanup at all) when execution reaches a named point, so a
test can deliver a real signal or a real preemption while a stage is genuinely in progress. The points
are the lifecycle's stages (`ready`, `agent`, `sync`, `prepare`, `submit`: at the start of the stage;
`after-<stage>`: just after it), `provision` (a place was chosen and its intent recorded, nothing created there yet),
`provision-wait` (instances created and recorded in the intents ledger, not yet running), `after-volumes`
(the task's volumes attached and mounted, sync not started), `after-teardown` (a managed job's cluster
torn down at its end, its terminal status not yet recorded), `after-resubmit` (a managed job's restart after a
failure submitted on its cluster, not yet recorded) and
`submit-node-<rank>` (just before one node receives the job). Unset (the
default), a failpoint costs one environment lookup (settings.py).
"""
from __future__ import annotations

import os
import re
import time

from . import settings


def failpoint(point: str) -> None:
    spec = settings.get("failpoints")
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name != point:
            continue
        m = re.fullmatch(r"sleep\(([\d.]+)\)", action)
        if m:
            end = time.time() + float(m.group(1))
            while time.time() < end:  # in small steps: a signal interrupts it like real work would be
                time.sleep(0.05)
        elif action == "raise":
            from .errors import BrokerError

            raise BrokerError(f"failpoint {point}")
        elif action == "exit":
            os._exit(137)
