"""Cluster use cases: launch, exec, status, down, stop, start, autostop, queue, logs, cancel, host keys.

Bring-up itself is lifecycle.py (the one state machine); this module drives it and the other commands.
Every mutating command first settles what interrupted launches left behind (intents.reconcile).
Nothing here prints: progress goes to `on_event(kind, message)`, job output to `on_line(rank, line)`.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from . import cluster_ops, intents, lifecycle, state
from .errors import BrokerError, Interrupted, LeftBehind, NotFoundError, UsageError
from .locks import cluster_lock, validate_name
from .state import DEGRADED, INIT, INTERRUPTED, STOPPED, UP, ClusterRecord

if TYPE_CHECKING:  # pragma: no cover
    from .backend_jobs import JobStatus

Event = Callable[[str, str], None]
Line = Callable[[int, str], None]

__all__ = ["validate_name", "default_name", "launch", "exec_", "status", "down", "stop", "start", "set_autostop",
           "queue", "logs", "cancel", "forget_host_keys", "LaunchResult"]


def _noop(*_a) -> None:
    return None


def default_name(task) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", (task.name or "broker").lower()).strip("-")[:30] or "broker"
    if not base[0].isalpha():
        base = "c-" + base
    while True:  # never a name reserved for managed jobs and pools (`job-1824` from a task named "job")
        name = f"{base}-{secrets.token_hex(2)}"
        if not cluster_ops.reserved_name(name):
            return name


def get(name: str) -> ClusterRecord:
    rec = state.get_cluster(validate_name(name))
    if rec is None:
        raise NotFoundError(f"cluster {name!r} not found", "see `broker status` for your clusters")
    return rec


def get_fresh(name: str, locked: bool = False) -> ClusterRecord:
    """The record, reconciled with the cloud first when the cluster may have stopped itself (autostop
    on the cluster): a command never acts on an UP record whose instances are stopped or gone."""
    from . import reconcile

    rec = reconcile.fresh(get(name), locked)
    if rec is None:
        raise NotFoundError(f"cluster {name!r} no longer exists: it terminated itself (autostop on the cluster)",
                            "see `broker events " + name + "`; `broker launch` makes a new one")
    return rec


def exists(name: str) -> bool:
    return state.get_cluster(validate_name(name)) is not None


def settle(on_event: Event = _noop) -> list[str]:
    """Reconcile interrupted launches (cheap when there are none: two queries)."""
    return intents.reconcile(on_event)


@dataclass
class LaunchResult:
    cluster: str
    job_id: int | None
    status: JobStatus | None
    attempts: list
    reused: bool
    cluster_status: str | None = None  # once the job ended (a `stop`/`down` during it finished); None: gone


def launch(task, *, cluster: str | None = None, plan_fn=None, detach: bool = False, retry_until_up: bool = False,
           keep_on_failure: bool = False, on_event: Event = _noop, on_line: Line = _noop) -> LaunchResult:
    """Provision (or reuse) a cluster for `task`, sync, run setup+run on every node, stream logs."""
    name = _user_cluster_name(cluster) if cluster else default_name(task)
    lifecycle.preflight(task, name)  # before anything else: bad input creates nothing
    settle(on_event)
    try:
        run = lifecycle.bring_up(lifecycle.BringUp(task=task, cluster=name, plan_fn=plan_fn, keep_on_failure=keep_on_failure,
                                                   retry_until_up=retry_until_up, on_event=on_event))
    except lifecycle.BringUpError as err:
        if err.failure == lifecycle.Failure.INTERRUPTED:
            raise lifecycle.interrupted_message(err) from None
        raise
    rt = run.runtime
    if detach:
        rt.close()
        return LaunchResult(name, run.job_id, None, run.attempts, run.reused)
    st = _stream(rt, name, run.job_id, on_line)
    return LaunchResult(name, run.job_id, st, run.attempts, run.reused, _settled_status(name, st, on_event))


def _settled_status(name: str, st: JobStatus, on_event: Event) -> str | None:
    """The cluster's status after the job, for the launch's last words. A `stop` or `down` that killed the
    job holds the cluster lock from before it touched the instances until its state is written, so once we
    hold the lock it has finished. Only a job that did not succeed can have been killed so: only then is the
    lock waited for (at most 2 minutes, e.g. behind another launch onto the cluster; then the status as is)."""
    from .locks import ClusterBusy

    if st.status != "SUCCEEDED":
        try:
            with cluster_lock(name, on_wait=lambda m: on_event("wait", m), timeout=120):
                pass
        except ClusterBusy:
            pass
    rec = state.get_cluster(name)
    return rec.status if rec else None


def _stream(rt, name: str, job_id: int, on_line: Line) -> JobStatus:
    try:
        return rt.stream_logs(job_id, on_line)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following; job {job_id} keeps running on cluster {name}",
                          f"`broker logs {name} {job_id} -f` to follow again, `broker cancel {name} {job_id}` to stop it, "
                          f"`broker down {name}` to remove the cluster") from None
    finally:
        rt.close()


def exec_(name: str, task, *, detach: bool = False, on_event: Event = _noop, on_line: Line = _noop) -> LaunchResult:
    """Run a task (no setup) on an existing cluster. On one node, without detach, the job is submitted and
    followed in one agent call (the cluster lock is released as soon as the job is on the node)."""
    from contextlib import ExitStack

    from .backend import ClusterRuntime
    from .backend_submit import SubmitFailed

    rec = get_fresh(name)
    _require_up(rec)
    lifecycle.require_fit(task, rec)  # a task the cluster cannot satisfy: refused before anything runs
    lifecycle.preflight(task, name)
    started: list[int] = []
    with ExitStack() as locked:
        locked.enter_context(cluster_lock(name, on_wait=lambda m: on_event("wait", m)))
        rt = ClusterRuntime(rec)

        def on_start(job_id: int) -> None:
            started.append(job_id)
            locked.close()
            on_event("submitted", f"job {job_id} submitted to {name}")

        try:
            if task.workdir or task.file_mounts or task.git_url:
                on_event("sync", lifecycle._sync_what(task))
                rt.sync(task, on_event)
            if rec.num_nodes == 1 and len(rt.nodes) == 1 and not detach:
                st = rt.run_followed(replace(task, num_nodes=1), job_name=task.name, on_line=on_line, on_start=on_start)
                rt.close()
                return LaunchResult(name, st.job_id, st, [], True)
            job_id = rt.submit(replace(task, num_nodes=rec.num_nodes), job_name=task.name, run_setup=False)
        except BaseException as exc:
            rt.close()
            if started and isinstance(exc, KeyboardInterrupt):
                raise Interrupted(f"stopped following; job {started[0]} keeps running on cluster {name}",
                                  f"`broker logs {name} {started[0]} -f` to follow again, `broker cancel {name} "
                                  f"{started[0]}` to stop it, `broker down {name}` to remove the cluster") from None
            if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SubmitFailed) and
                                                      isinstance(exc.cause, KeyboardInterrupt)):
                what = exc.message if isinstance(exc, SubmitFailed) else "nothing was submitted"
                raise Interrupted(f"exec interrupted: {what}; cluster {name} stays up") from None
            raise
        on_event("submitted", f"job {job_id} submitted to {name}")
    if detach:
        rt.close()
        return LaunchResult(name, job_id, None, [], True)
    return LaunchResult(name, job_id, _stream(rt, name, job_id, on_line), [], True)


def status(refresh: bool = False, names: list[str] | None = None) -> list[ClusterRecord]:
    """Clusters in the state. A cluster whose launch died is shown INTERRUPTED (no cloud call: its lock
    is free). With refresh, every cluster is reconciled with its cloud (the tags are the truth) and the
    intents of interrupted launches are settled."""
    for n in names or ():
        validate_name(n)
    if refresh:
        settle()
    recs = state.list_clusters()
    if names:
        recs = [r for r in recs if r.name in names]
    for r in recs:
        if r.status == INIT and intents.lock_is_free(r.name):
            r.status = INTERRUPTED
    if refresh:
        from . import reconcile

        recs = reconcile.refresh_all(recs)
    return recs


def down(names: list[str], *, on_event: Event = _noop, spare_owned: bool = False, only_owner: str | None = None
         ) -> list[str]:
    """Terminate clusters. Idempotent: a name that is already gone is reported, not an error. A cluster
    whose launch was interrupted is removed everywhere its intents say it may have resources. With
    `spare_owned` (the user's `broker down`), a cluster of an active managed job or pool is skipped with a
    note: its controller would relaunch it; the job's own teardown (controller, pools) does not spare it, but
    passes `only_owner` ("managed:<id>", "pool:<name>"): a cluster of that name with another owner (a user's
    older `job-5`) is left alone."""
    for name in names:
        validate_name(name)
    settle(on_event)
    done: list[str] = []
    failed: list[tuple[str, str, BrokerError]] = []  # (cluster, where, why): the others are torn down anyway
    for name in names:
        where = ""
        try:
            with cluster_lock(name, on_wait=lambda m: on_event("wait", m)):
                rec = state.get_cluster(name)
                if rec is None and not state.open_intents(name):
                    on_event("skip", f"cluster {name} does not exist (already down)")
                    continue
                if rec is None:
                    rec = ClusterRecord(name=name, cloud="", region=None, zone=None, instance_type=None,
                                        accelerators=None, use_spot=False, num_nodes=0, hourly_price=0.0,
                                        status=INTERRUPTED, launched_at=0.0,
                                        owner=only_owner)  # only intents left: whoever asks may clean them
                if only_owner is not None and rec.owner != only_owner:
                    on_event("skip", f"cluster {name} is not {cluster_ops.owner_name(only_owner)}'s: left alone")
                    continue
                busy = cluster_ops.active_owner(rec.owner) if spare_owned and rec.owner else None
                if busy:
                    on_event("skip", f"cluster {name} belongs to {cluster_ops.owner_name(rec.owner)} ({busy}): not "
                                     f"torn down; {cluster_ops.ends_hint(rec.owner)}")
                    continue
                where = rec.infra or "interrupted launch"
                on_event("down", f"terminating {name} ({where})")
                cluster_ops.left_behind(name, cluster_ops.terminate(rec, on_event))
                done.append(name)
        except BrokerError as exc:
            if len(names) == 1:
                raise
            failed.append((name, where, exc))
            on_event("failed", f"could not tear down {name}{f' ({where})' if where else ''}: {exc.message}")
    if failed:
        raise _down_failed(failed, done)
    return done


def _down_failed(failed: list[tuple[str, str, BrokerError]], done: list[str]) -> BrokerError:
    """One error for the clusters `down` could not tear down (each with its cloud's error), raised after
    every other cluster was torn down; its exit code is the first failure's."""
    lines = [f"{name}{f' ({where})' if where else ''}: {exc.message}" for name, where, exc in failed]
    head = f"could not tear down {len(failed)} cluster{'s' if len(failed) > 1 else ''}"
    msg = f"{head}: {lines[0]}" if len(lines) == 1 else f"{head}:\n" + "\n".join("  " + x for x in lines)
    if done:
        msg += f"\ntorn down: {', '.join(done)}"
    hints = list(dict.fromkeys(exc.hint for _, _, exc in failed if exc.hint))
    retry = [n for n, _, exc in failed if not isinstance(exc, LeftBehind)]  # their records are gone
    again = f"`broker down {' '.join(retry)}`"
    hint = "; ".join(hints) if not retry else (f"{'; '.join(hints)}; then {again} again" if hints
                                               else f"{again} tries again")
    return BrokerError(msg, hint, failed[0][2].exit_code)


def stop(name: str, *, on_event: Event = _noop) -> bool:
    """Stop a cluster's instances. False if it was already STOPPED (nothing done)."""
    from .clouds.registry import get as get_provider

    settle(on_event)
    with cluster_lock(validate_name(name), on_wait=lambda m: on_event("wait", m)):
        rec = get_fresh(name, locked=True)
        prov = get_provider(rec.cloud)
        if not prov.capabilities.stop:
            raise UsageError(f"the {rec.cloud} cloud cannot stop instances", f"use `broker down {name}`")
        if rec.use_spot:
            raise UsageError("spot instances cannot be stopped", f"use `broker down {name}`")
        if rec.status == STOPPED:  # idempotent, as `start` of an UP cluster and `down` of a gone one
            return False
        _require_up(rec)
        prov.stop(rec.cloud_name, rec.region)
        from .costs import ledger

        ledger.set_state(name, ledger.STOPPED)  # from now on only its disks are billed
        state.set_status(name, STOPPED)
        state.add_event(name, "stop", "stopped")
        return True


def start(name: str, *, on_event: Event = _noop) -> ClusterRecord:
    settle(on_event)
    with cluster_lock(validate_name(name), on_wait=lambda m: on_event("wait", m)):
        rec = get_fresh(name, locked=True)
        if rec.status == UP:
            return rec
        if rec.status != STOPPED:
            raise UsageError(f"cluster {name} is {rec.status}", f"`broker down {name}` removes it")
        return cluster_ops.start_locked(rec, on_event)


def set_autostop(name: str, minutes: int | None, down_after: bool, *, on_event: Event = _noop) -> ClusterRecord:
    """Set or cancel (minutes None) a cluster's autostop: on the cluster itself when its provider can
    (no broker process needed), else by the watcher on this machine (autostop.py)."""
    from . import autostop

    with cluster_lock(validate_name(name), on_wait=lambda m: on_event("wait", m)):
        rec = get_fresh(name, locked=True)
        autostop.apply(rec, minutes, down_after, on_event=on_event)
    return get(name)


def queue(name: str, on_event: Event = _noop) -> list[JobStatus]:
    rt = _jobs_runtime(name)
    try:
        return rt.jobs()
    finally:
        _warn_unreached(rt, "its jobs there show as last seen ended, else UNREACHABLE", on_event)


def _jobs_runtime(name: str):
    """The runtime of a cluster whose jobs are looked at or cancelled: UP, or DEGRADED (its lost nodes
    are not asked; the rest answer)."""
    from .backend import ClusterRuntime

    rec = get_fresh(name)
    _require_up(rec, degraded_ok=True)
    rt = ClusterRuntime(rec)
    if rec.status == DEGRADED:
        rt.skip_lost()
    return rt


def _warn_unreached(rt, what: str, on_event: Event) -> None:
    rt.close()
    for w in rt.unreached_warnings(what):
        on_event("warning", w)


def _require_up(rec: ClusterRecord, degraded_ok: bool = False) -> None:
    if rec.status == INIT and intents.lock_is_free(rec.name):
        rec.status = INTERRUPTED
    if rec.status == INTERRUPTED:
        raise UsageError(f"cluster {rec.name}'s launch was interrupted",
                         f"`broker down {rec.name}` removes it, `broker launch -c {rec.name} TASK` relaunches it")
    if rec.status != UP and not (degraded_ok and rec.status == DEGRADED):
        raise UsageError(f"cluster {rec.name} is {rec.status}", cluster_ops.not_up_hint(rec))


def logs(name: str, job_id: int | None, *, follow: bool, on_line: Line, on_event: Event = _noop) -> JobStatus:
    rt = _jobs_runtime(name)
    try:
        if job_id is None:
            jobs = rt.jobs()
            if not jobs:
                raise NotFoundError(f"cluster {name} has no jobs yet", f"`broker exec {name} -- CMD` runs one")
            job_id = jobs[-1].job_id
        rt.job(job_id)  # NotFoundError for an unknown id
        return rt.stream_logs(job_id, on_line, follow=follow)
    finally:
        _warn_unreached(rt, "its log is not shown", on_event)


def cancel(name: str, job_ids: list[int] | None, all_jobs: bool = False, on_event: Event = _noop) -> list[int]:
    if not job_ids and not all_jobs:
        raise UsageError("name the job(s) to cancel, or pass --all", f"see `broker queue {name}`")
    rt = _jobs_runtime(name)
    try:
        if job_ids:
            for jid in job_ids:
                rt.job(jid)  # NotFoundError (exit 5) for an unknown job, as everywhere
        return rt.cancel(None if all_jobs else job_ids)
    finally:
        _warn_unreached(rt, f"nothing was cancelled there (a job may still run on it: `broker cancel` again "
                            f"once it answers, or `broker down {rt.rec.name}`)", on_event)


def adopt(on_event: Event = _noop) -> list[str]:
    """Rebuild state entries from the clouds' tags: every cluster with instances that a ready provider
    lists and the state does not know is recorded (UP, or STOPPED when all its instances are), with its
    nodes, so `status`, `exec`, `down` work on it again. Prices are unknown (0) for adopted clusters. Only
    this home's clusters are adopted (gc.scan never offers another home's)."""
    import time

    from . import gc
    from .clouds.base import RUNNING, STOPPED as S_STOPPED
    from .clouds.registry import get as get_provider
    from .state import ClusterRecord, NodeRecord

    scan = gc.scan(on_event=on_event)
    out = []
    for o in scan.orphans:
        if o.interrupted or not o.instance_ids or state.get_cluster(o.cluster) is not None:
            continue
        with cluster_lock(o.cluster, timeout=0):
            infos = get_provider(o.cloud).query(o.cloud_name, o.region)
            if not infos:
                continue
            ordered = sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))
            nodes = [NodeRecord(i.instance_id, r, i.public_ip or i.private_ip or "", i.private_ip, i.ssh_user,
                                i.ssh_port, i.home, i.identity_file) for r, i in enumerate(ordered)]
            states = {i.state for i in infos}
            status_ = UP if states == {RUNNING} else STOPPED if states <= {S_STOPPED} else "DEGRADED"
            state.save_cluster(ClusterRecord(name=o.cluster, cloud=o.cloud, region=o.region, zone=ordered[0].zone,
                                             instance_type=None, accelerators=None, use_spot=any(i.spot for i in infos),
                                             num_nodes=len(nodes), hourly_price=0.0, status=status_,
                                             launched_at=time.time(), nodes=nodes, owner=cluster_ops.owner_by_name(o.cluster),
                                             name_on_cloud=o.cloud_name))
            state.add_event(o.cluster, "adopt", f"rebuilt from the tags of {len(nodes)} instance(s) on {o.cloud}")
            out.append(o.cluster)
    return out


def ssh_target(name: str, rank: int = 0) -> dict:
    """How to open a shell on a node: for remote nodes the ssh command line (with the pinned host key),
    for the local cloud the node's sandbox directory."""
    from . import sshconfig
    from .clouds.registry import get as get_provider

    rec = get(name)
    _require_up(rec)
    node = next((n for n in rec.nodes if n.rank == rank), None)
    if node is None:
        raise NotFoundError(f"cluster {name} has no node {rank}", f"its nodes are 0..{len(rec.nodes) - 1}")
    if not get_provider(rec.cloud, sdk=False).capabilities.remote:
        return {"kind": "local", "home": node.home}
    path = sshconfig.cluster_file(name)
    if not path.exists():
        path = sshconfig.write(rec)
    return {"kind": "ssh", "argv": ["ssh", "-F", str(path), sshconfig.host_alias(name, rank)]}


_PUBKEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( [\x21-\x7e ]{0,100})?$")


def ssh_grant(name: str, rank: int, public_key: str) -> dict:
    """Client mode `broker ssh`: authorize the client's own public key on a node (its user's
    ~/.ssh/authorized_keys, added once) and say how to reach it, with the host key pinned at launch. The
    broker's own key never leaves the server."""
    import shlex

    from .clouds.common import host_keys
    from .clouds.registry import get as get_provider

    rec = get(name)
    _require_up(rec)
    node = next((n for n in rec.nodes if n.rank == rank), None)
    if node is None:
        raise NotFoundError(f"cluster {name} has no node {rank}", f"its nodes are 0..{len(rec.nodes) - 1}")
    prov = get_provider(rec.cloud, sdk=False)
    if not prov.capabilities.remote:
        raise UsageError(f"cluster {name}'s nodes are directories on the server machine, not SSH hosts",
                         f"`broker exec {name} -- CMD` runs a command there")
    if not isinstance(public_key, str) or not _PUBKEY.match(public_key.strip()):
        raise UsageError("not an OpenSSH public key (ssh-ed25519/ssh-rsa/ecdsa AAAA… [comment])")
    q = shlex.quote(public_key.strip())
    from .backend import user_facing

    r = user_facing(prov.runner(rec.cloud_name, node), rec, node).run(
        "umask 077; mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && "
        f"(grep -qxF {q} ~/.ssh/authorized_keys || echo {q} >> ~/.ssh/authorized_keys)", timeout=60)
    if not r.ok:
        raise BrokerError(f"could not authorize your key on {name} node {rank}: {r.stderr.strip()[:300]}")
    pinned = host_keys().get(node.instance_id)
    state.add_event(name, "ssh", f"a client key was authorized on node {rank} ({public_key.split()[0]})")
    return {"host": node.ip, "port": node.ssh_port or 22, "user": node.ssh_user or prov.default_ssh_user,
            "host_key": list(pinned) if pinned else None}


def forget_host_keys(name: str, rank: int | None = None) -> list[str]:
    """Forget the pinned host keys of a cluster's nodes (after checking that the host really changed):
    the next connection pins the key it is shown. Returns the instance ids forgotten."""
    from .clouds.common import host_keys

    rec = get(name)
    nodes = [n for n in rec.nodes if rank is None or n.rank == rank]
    if rank is not None and not nodes:
        raise NotFoundError(f"cluster {name} has no node {rank}", f"its nodes are 0..{len(rec.nodes) - 1}")
    store = host_keys()
    out = []
    for n in nodes:
        if store.get(n.instance_id) is not None:
            store.forget(n.instance_id)
            out.append(n.instance_id)
    state.add_event(name, "hostkey", f"forgot pinned host keys: {', '.join(out) or 'none were pinned'}")
    return out


def _user_cluster_name(name: str) -> str:
    """A name the user gives a new cluster: valid, and not one a managed job or a pool will take. An existing
    cluster of that name is left to the owner check of the bring-up (a user's old `job-5` stays usable)."""
    validate_name(name)
    if cluster_ops.reserved_name(name) and state.get_cluster(name) is None:
        raise UsageError(f"cluster name {name!r} is reserved", "job-<N>, job-<N>-<stage> and pool-<pool>-<N> name "
                         "the clusters of managed jobs, their stages and pools; choose another name")
    return name


def refuse_if_owned(name: str, what: str) -> None:
    """The user's `stop` / `autostop` of an active managed job's or pool's cluster: exit 2 (its controller
    would take the stop for a preemption and relaunch)."""
    rec = state.get_cluster(validate_name(name))
    busy = cluster_ops.active_owner(rec.owner) if rec is not None and rec.owner else None
    if busy:
        raise UsageError(f"cluster {name} belongs to {cluster_ops.owner_name(rec.owner)} ({busy}): it is not {what} "
                         "by hand", cluster_ops.ends_hint(rec.owner))


