"""Terminating and starting an existing cluster: the same code for `down`, a failed bring-up's teardown
(lifecycle.py), the managed-jobs controller, `gc`, reconciliation and autostop.

`terminate` removes a cluster everywhere it may have resources (its place and every open intent's), with its
pinned host keys, ssh config entry, `persistent: false` buckets, ephemeral volumes and cost-ledger run, then
forgets it; `start_locked` starts a stopped cluster (the caller holds its lock) and brings its nodes back to
the state bring-up left them in; `check_owner` is the rule of whose cluster a launch may reuse (a user's,
a managed job's, a pool's), with the owner helpers clusters.py and intents.py use (`active_owner`,
`owner_by_name`, `reserved_name`, `ends_hint`). Cloud SDKs are imported only when these run.
"""
from __future__ import annotations

import re

from typing import Callable

from . import state
from .errors import BrokerError
from .state import UP, ClusterRecord

Event = Callable[[str, str], None]


def terminate(rec: ClusterRecord, on_event: Event = lambda k, m: None) -> list[str]:
    """Terminate a cluster everywhere it may have resources (its place and any open intent's), then
    forget it. Returns the warnings (also sent to on_event)."""
    from . import intents
    from .clouds import registry

    warnings: list[str] = []
    for cloud, region, on_cloud in intents.places(rec.name) or [(rec.cloud, rec.region, rec.cloud_name)]:
        if not cloud:
            continue
        for w in registry.get(cloud).terminate(on_cloud, region) or ():
            warnings.append(w)
            on_event("warning", w)
    _forget_host_keys(rec)
    from . import sshconfig
    from .storage.mounts import release_cluster

    warnings += release_cluster(rec, on_event)  # its `persistent: false` buckets
    from .volumes.ops import release_cluster as release_volumes

    from .clouds.base import Leftover

    failed = frozenset(w.resource_id for w in warnings if isinstance(w, Leftover))
    warnings += release_volumes(rec, on_event, failed)  # its ephemeral volumes deleted, applied ones detached

    sshconfig.remove(rec.name)
    state.close_intents(rec.name)
    from .costs import ledger

    ledger.close_run(rec.name)
    state.add_event(rec.name, "down", "terminated" + (f" with {len(warnings)} warning(s)" if warnings else ""))
    state.delete_cluster(rec.name)
    return warnings


def left_behind(name: str, warnings: list[str]) -> None:
    """`down` fails (LeftBehind) when the teardown left something with a cost (clouds.base.Leftover)."""
    from .clouds.base import Leftover
    from .errors import LeftBehind

    left = [w for w in warnings if isinstance(w, Leftover)]
    if left:
        raise LeftBehind(f"cluster {name} was terminated, but not all of it is gone: " + "; ".join(left),
                         "`broker gc --yes` removes what is left (it keeps the cluster's tag) once the cloud lets it go")


def _forget_host_keys(rec: ClusterRecord) -> None:
    from .clouds import registry

    if not rec.cloud or not registry.known(rec.cloud) or not registry.get(rec.cloud, sdk=False).capabilities.remote:
        return
    from .clouds.common import host_keys

    store = host_keys()
    for n in rec.nodes:
        try:
            store.forget(n.instance_id)
        except BrokerError:
            pass


def start_locked(rec: ClusterRecord, on_event: Event = lambda k, m: None) -> ClusterRecord:
    """Start a STOPPED cluster and bring its nodes back. If any of it fails (a node the cloud has no capacity to
    start, SSH, Ctrl-C), the nodes that did start are stopped again before the error goes up: the cluster
    stays STOPPED with nothing running, so `stop` ("already stopped") never leaves a node billing."""
    from .clouds import registry

    prov = registry.get(rec.cloud)
    try:
        return _start(prov, rec, on_event)
    except BaseException as exc:
        raise _stopped_again(prov, rec, exc, on_event) from (None if isinstance(exc, KeyboardInterrupt) else exc)


def _stopped_again(prov, rec: ClusterRecord, exc: BaseException, on_event: Event) -> BaseException:
    """The start of `rec` failed with `exc`: stop what may have started; the error to raise (names the cluster,
    says whether it is all stopped again)."""
    from .costs import ledger

    try:
        prov.stop(rec.cloud_name, rec.region)
    except BaseException as again:  # noqa: BLE001 - reported with the original error
        why = getattr(again, "message", None) or str(again) or type(again).__name__
        state.add_event(rec.name, "start", f"start failed; stopping it again failed too: {why}")
        if not isinstance(exc, BrokerError):
            return exc
        return BrokerError(f"could not start cluster {rec.name} on {rec.infra}: {exc.message.rstrip('.')}; "
                           f"stopping the nodes that had started failed too ({why}): some may be running",
                           f"`broker status --refresh` shows what runs; `broker down {rec.name}` removes it",
                           exc.exit_code)
    ledger.set_state(rec.name, ledger.STOPPED)
    state.set_status(rec.name, state.STOPPED)
    state.add_event(rec.name, "start", "start failed: the nodes that had started were stopped again")
    on_event("cleanup", f"start of {rec.name} failed: the nodes that had started were stopped again")
    if not isinstance(exc, BrokerError):
        return exc
    hint = f"{exc.hint}; " if exc.hint else ""
    return BrokerError(f"could not start cluster {rec.name} on {rec.infra}: {exc.message.rstrip('.')}; the nodes "
                       "that had started were stopped again: it stays STOPPED",
                       f"{hint}`broker start {rec.name}` tries again (capacity may free up), `broker down "
                       f"{rec.name}` removes it", exc.exit_code)


def _start(prov, rec: ClusterRecord, on_event: Event) -> ClusterRecord:
    from .backend import ClusterRuntime

    infos = prov.start(rec.cloud_name, rec.region)
    from .costs import ledger

    ledger.set_state(rec.name, ledger.UP)
    by_id = {i.instance_id: i for i in infos}
    for n in rec.nodes:  # IPs may change across a stop/start
        i = by_id.get(n.instance_id)
        if i is not None:
            n.ip = i.public_ip or i.private_ip or n.ip
            n.private_ip = i.private_ip or n.private_ip
    rt = ClusterRuntime(rec)
    try:
        rt.wait_ready()
        rt.install_agent()
        rt.restart_containers()  # a task container stopped with the node runs again
        if rec.autostop_where == state.AUTOSTOP_NODE:  # cleared below: the nodes' own watchers too
            from .runtime.runner import run_parallel

            run_parallel(rt.nodes, lambda n: rt.agent(n).autostop(None))
            try:  # no right left with the nodes (Azure roles); never fails a start that has succeeded
                rt.provider.release_self_stop(rec.cloud_name, rec.region)
            except BrokerError as exc:
                state.add_event(rec.name, "autostop", f"could not take the nodes' autostop rights back "
                                                      f"({getattr(exc, 'message', None) or exc})")
    finally:
        rt.close()
    rec.status = UP
    state.save_cluster(rec)
    state.add_event(rec.name, "start", "started")
    write_ssh_config(rec)
    if rec.autostop_minutes is not None:  # as SkyPilot: a restarted cluster starts without autostop
        state.set_autostop(rec.name, None, False)
        rec.autostop_minutes, rec.autostop_down = None, False
        state.add_event(rec.name, "autostop", "cleared by start; set it again with `broker autostop`")
    return rec


def write_ssh_config(rec: ClusterRecord) -> None:
    """`ssh <cluster>` works (best effort: a read-only ~/.ssh never fails a launch)."""
    from . import sshconfig

    try:
        sshconfig.write(rec)
    except OSError as exc:
        state.add_event(rec.name, "warning", f"could not write the ssh config: {exc}")


def check_owner(rec, owner: str | None) -> None:
    """A launch reuses only a cluster of its own kind: a user's launch never takes a managed job's or a pool's
    cluster, and a managed job or pool never takes a user's (or another job's): it would tear it down later."""
    theirs = rec.owner
    if theirs == owner or (owner or "").startswith("managed:") and (theirs or "").startswith("pool:"):
        return  # the same owner, or a managed job on a pool's worker
    from .errors import UsageError

    if theirs is None:
        raise UsageError(f"a cluster named {rec.name} exists and is not {owner_name(owner)}'s",
                         f"{owner_name(owner)} uses the name {rec.name}: `broker down {rec.name}` frees it")
    ends = ends_hint(theirs)
    raise UsageError(f"cluster {rec.name} belongs to {owner_name(theirs)}",
                     "use another cluster name" + (f"; {ends}" if ends else ""))


def check_user(rec) -> None:
    """Server mode: a request may act only on its caller's cluster (an admin's on any). The server checks
    before the call (server/calls.py); a launch checks again holding the cluster's lock, where no other
    user's launch can make the cluster meanwhile (two users launching one new name at once)."""
    if callers(rec):
        return
    from .errors import not_yours

    raise not_yours(f"cluster {rec.name}", rec.user_name)


def callers(rec) -> bool:
    """Whether the caller of a server request may act on (and hear about) this cluster: theirs, or any for
    an admin; always outside a server request."""
    caller = state.current_caller.get()
    return caller is None or caller[1] or rec is None or rec.user_name == caller[0]


def owner_name(owner: str | None) -> str:
    """ "managed:5" -> "managed job 5", "pool:p" -> "pool p", None -> "you"."""
    if owner is None:
        return "you"
    kind, _, ident = owner.partition(":")
    return {"managed": f"managed job {ident}", "pool": f"pool {ident}"}.get(kind, owner)


_ENDS = {"managed": "`broker jobs cancel {}` ends the job and its cluster",
         "pool": "`broker jobs pool down {}` ends the pool and its workers"}
# the names managed jobs (jobs/pipeline.py: job-<id>[-<stage>]) and pools (jobs/pool_store.py) give their clusters
_JOB_NAME = re.compile(r"job-(\d+)(?:-\d+)?")
_POOL_NAME = re.compile(r"pool-(.+)-\d+")


def ends_hint(owner: str) -> str:
    """What ends the managed job or pool `owner` ("managed:5", "pool:p") with its clusters; "" for others."""
    kind, _, ident = owner.partition(":")
    return _ENDS[kind].format(ident) if kind in _ENDS else ""


def reserved_name(name: str) -> bool:
    """A name managed jobs and pools give their clusters: never a new user cluster's."""
    return bool(_JOB_NAME.fullmatch(name) or _POOL_NAME.fullmatch(name))


def active_owner(owner: str) -> str | None:
    """The status of the managed job or pool that owns a cluster while it is active (its controller would
    relaunch a cluster torn down under it), else None."""
    kind, _, ident = owner.partition(":")
    if kind == "managed" and ident.isdigit():
        from .jobs import store

        j = store.get(int(ident))
        return j.status if j is not None and j.status not in store.TERMINAL else None
    if kind == "pool":
        from .jobs import pool_store

        return "active" if pool_store.get(ident) is not None else None
    return None


def owner_by_name(name: str) -> str | None:
    """The owner a cluster's name implies (the clouds' tags hold no owner): a managed job's `job-<id>[-<stage>]`,
    a pool's `pool-<pool>-<n>` while that pool exists, else the user's."""
    m = _JOB_NAME.fullmatch(name)
    if m:
        return f"managed:{m.group(1)}"
    m = _POOL_NAME.fullmatch(name)
    if m:
        from .jobs import pool_store

        return f"pool:{m.group(1)}" if pool_store.get(m.group(1)) is not None else None
    return None


def not_up_hint(rec) -> str:
    """What to do about a cluster that is not UP (for the commands that need it UP)."""
    if rec.status == state.STOPPED:
        return f"`broker start {rec.name}` first"
    if rec.status == state.DEGRADED:  # waiting never mends it; a launch onto it brings the lost nodes back
        return (f"some of its nodes are gone: `broker launch -c {rec.name} TASK` brings them back, "
                f"`broker down {rec.name}` removes the cluster")
    return f"wait for it, or `broker down {rec.name}`"
