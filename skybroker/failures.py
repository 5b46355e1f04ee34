"""What a failed bring-up means: the exception a stage raised, classified as a lifecycle.Failure.

LOST when the cloud took the instances (a node reported lost, or the cloud no longer lists them),
UNREACHABLE when they are alive to the cloud but not to us (SSH), REFUSED when no place would take the
cluster, USER for bad input (exit code 2), INTERRUPTED for Ctrl-C / SIGTERM / SIGHUP, ERROR otherwise (a
host key mismatch included: never taken for a preemption). lifecycle.py turns the result into its
BringUpError; the managed-jobs controller's recovery decision reads it there.
"""
from __future__ import annotations

from .errors import BrokerError, NoFeasibleError, SpecError
from .lifecycle import Failure


def classify(rec, exc: BaseException) -> Failure:
    """The Failure of a bring-up of `rec` (None before its row exists) that raised `exc`."""
    from .backend_submit import SubmitFailed
    from .provision import ProvisionExhausted

    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SubmitFailed) and isinstance(exc.cause, KeyboardInterrupt)):
        return Failure.INTERRUPTED
    if isinstance(exc, (ProvisionExhausted, NoFeasibleError)):
        return Failure.REFUSED
    if isinstance(exc, SpecError) or getattr(exc, "exit_code", None) == 2:
        return Failure.USER
    return _lost_or_unreachable(rec, exc)


def _lost_or_unreachable(rec, exc) -> Failure:
    from .backend import NodeLost
    from .backend_submit import SubmitFailed
    from .runtime.runner import HostKeyMismatch, NodeUnreachable

    cause = exc.cause if isinstance(exc, SubmitFailed) else exc
    if isinstance(cause, HostKeyMismatch):
        return Failure.ERROR
    if isinstance(cause, NodeLost) or _instances_lost(rec):  # the cloud's view decides: gone is LOST
        return Failure.LOST
    if isinstance(cause, (NodeUnreachable, OSError)):
        return Failure.UNREACHABLE
    return Failure.ERROR


def _instances_lost(rec) -> bool:
    if rec is None or not rec.nodes:
        return False
    from .backend import ClusterRuntime

    try:
        return bool(ClusterRuntime(rec).lost_nodes())
    except BrokerError:
        return False
