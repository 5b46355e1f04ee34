"""Reconciling a cluster's record with its cloud (the tags are the truth).

`refresh` is what `broker status --refresh` does for each cluster. A cluster whose instances are all gone
(terminated outside the broker, or by its own autostop on the cluster) is torn down through the same
path as `broker down`, so what it leaves behind (an AWS security group, host keys, the ssh config) is
removed too, not only its row. `fresh` is the check every command on a cluster makes when the cluster
may have stopped itself (its autostop runs on its nodes): one cloud query instead of acting on a record
that says UP. `unless_gone` is the one query a launch makes before reusing a cluster.
"""
from __future__ import annotations

from . import state
from .errors import BrokerError, CredentialsError
from .state import DEGRADED, INIT, INTERRUPTED, STOPPED, UP, ClusterRecord


def refresh_all(recs: list[ClusterRecord]) -> list[ClusterRecord]:
    """`status --refresh`: every record reconciled with its cloud, those found gone left out. A cluster
    whose cloud cannot be asked (no credentials, unreachable) does not stop the others: it is kept as
    recorded, with `refresh_error` saying why. A cloud that refused our credentials is not asked again for
    its other clusters."""
    from .wire import error_dict

    out = []
    refused: dict[str, BrokerError] = {}
    for rec in recs:
        err = refused.get(rec.cloud)
        if err is None:
            try:
                new = refresh(rec)
            except BrokerError as exc:
                err = exc
                if isinstance(exc, CredentialsError):
                    refused[rec.cloud] = exc
            else:
                if new is not None:
                    out.append(new)
                continue
        rec.refresh_error = error_dict(err)
        out.append(rec)
    return out


def refresh(rec: ClusterRecord, locked: bool = False) -> ClusterRecord | None:
    """Reconcile one record with the cloud; None when the cluster no longer exists. `locked`: the caller
    holds the cluster's lock."""
    from .clouds.base import RUNNING, STOPPED as S_STOPPED, STOPPING
    from .clouds.registry import get as get_provider

    if rec.status in (INIT, INTERRUPTED) or not rec.cloud:
        return rec
    infos = get_provider(rec.cloud).query(rec.cloud_name, rec.region)
    if not infos:
        return _gone(rec, locked)
    states = {i.state for i in infos}
    new = UP if states == {RUNNING} and len(infos) >= rec.num_nodes else (
        STOPPED if states <= {S_STOPPED, STOPPING} else DEGRADED)
    changed = new != rec.status
    if changed:
        why = " (its autostop runs on the cluster itself)" if rec.autostop_where == state.AUTOSTOP_NODE else ""
        state.set_status(rec.name, new)
        state.add_event(rec.name, "refresh", f"the cloud reports it {new}{why if new == STOPPED else ''}")
        rec.status = new
    if changed or new == DEGRADED:  # billing follows what the cloud reports: a stopped cluster pays its disks,
        from .costs import ledger  # one that lost nodes only the nodes it still has

        since = [i.since for i in infos]  # a cluster that stopped itself: billed as stopped from when it did
        at = min(max(since), ledger.now()) if new == STOPPED and since and None not in since else None
        ledger.set_state(rec.name, ledger.STOPPED if new == STOPPED else ledger.UP, at=at,
                         nodes=len(infos) if new == DEGRADED else None)
    return rec


def _gone(rec: ClusterRecord, locked: bool) -> ClusterRecord | None:
    import contextlib

    from . import cluster_ops
    from .locks import ClusterBusy, cluster_lock

    why = "it terminated itself: autostop on the cluster" if rec.autostop_where == state.AUTOSTOP_NODE \
        else "terminated outside the broker"
    try:
        with contextlib.nullcontext() if locked else cluster_lock(rec.name, timeout=0):
            cur = state.get_cluster(rec.name)
            if cur is None:
                return None
            state.add_event(rec.name, "refresh", f"no instances left in the cloud ({why}): removing what it left")
            cluster_ops.terminate(cur)  # the provider removes per-cluster leftovers (security group, ...)
    except ClusterBusy:
        return rec  # another command is working on it: it will find out
    return None


def unless_gone(rec: ClusterRecord, locked: bool = False) -> ClusterRecord | None:
    """Before a launch reuses an UP or STOPPED cluster: None if the cloud lists none of its instances any
    more (terminated outside the broker, e.g. in the cloud's console), after removing what it left as
    `refresh` does; the record otherwise. A cloud that cannot be asked leaves the record as it is (the
    launch's own connection then says what is wrong)."""
    from .clouds.registry import get as get_provider

    if rec.status not in (UP, STOPPED) or not rec.cloud:
        return rec
    try:
        infos = get_provider(rec.cloud).query(rec.cloud_name, rec.region)
    except BrokerError:
        return rec
    return rec if infos else _gone(rec, locked)


def fresh(rec: ClusterRecord, locked: bool = False) -> ClusterRecord | None:
    """The record, reconciled first if the cluster may have stopped itself (autostop on its nodes)."""
    if rec.status == UP and rec.autostop_where == state.AUTOSTOP_NODE:
        return refresh(rec, locked)
    return rec
