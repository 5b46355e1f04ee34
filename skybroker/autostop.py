"""Autostop: stop or tear down a cluster once it has been idle for its autostop time. Idle = no
PENDING/SETTING_UP/RUNNING job on any node (the node agent's `idle-seconds`). Two mechanisms, and the
state records which one guards each cluster (`autostop_where`, shown by `broker status`):

  node   on the cluster itself, for providers with `capabilities.self_stop`: `apply` prepares the cloud
         (e.g. the instances' shutdown behaviour) and arms a watcher in every node's agent with the
         provider's self-stop command. The head decides on its own idleness; workers fire once they are
         idle and the head has stopped answering (they follow it down). No broker process is needed
         anywhere: the laptop may be closed.
  local  a small background watcher on this machine (one per BROKER_HOME, a lock file; it exits when no
         cluster it guards is left, and `broker autostop` / `launch` start it again on demand), the
         fallback for providers without self-stop or when arming on the nodes failed.

    python -m skybroker.autostop    (the local watcher, started detached by ensure_watcher)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from . import settings
from .paths import ensure_home, private_file


def _lock_path():
    return ensure_home() / "autostop.lock"


IN_PROCESS = False  # set by the broker server, which runs the watcher itself (server/daemons.py)


def idle_seconds_for(minutes: float) -> float:
    return float(minutes) * settings.get("autostop_unit")


def apply(rec, minutes: int | None, down: bool, rt=None, on_event=lambda k, m: None) -> str | None:
    """Set (minutes) or cancel (None) a cluster's autostop, on the cluster itself when its provider can,
    else with the watcher on this machine. Records the mechanism in the state and returns it. Cancelling
    a node-side autostop that cannot reach the nodes raises (they might still stop the cluster)."""
    from . import cluster_ops, state
    from .clouds import registry
    from .errors import BrokerError, UsageError

    if minutes is not None and rec.status != state.UP:
        # neither mechanism would act (the watcher guards UP clusters only, a stopped cluster's nodes run no
        # agent) and `broker start` clears autostop (as SkyPilot): refuse instead of promising it
        raise UsageError(f"cluster {rec.name} is {rec.status}: autostop applies to a running cluster",
                         cluster_ops.not_up_hint(rec))
    prov = registry.get(rec.cloud)
    down = bool(down) and minutes is not None
    on_node = rec.autostop_where == state.AUTOSTOP_NODE
    where = None
    if minutes is not None and prov.capabilities.self_stop and rec.status == state.UP and rec.nodes:
        try:
            action = prov.prepare_self_stop(rec.cloud_name, rec.region, "down" if down else "stop")
            _arm_nodes(rec, prov, rt, idle_seconds_for(minutes), action)
            if action == "down" and not down:
                on_event("autostop", f"{rec.name}'s instances cannot be stopped (spot): it will be torn down")
                down = True
            where = state.AUTOSTOP_NODE
        except BrokerError as exc:
            msg = getattr(exc, "message", None) or str(exc)
            state.add_event(rec.name, "autostop", f"could not arm autostop on the cluster ({msg}); "
                                                  "the watcher on this machine guards it instead")
            on_event("warning", f"autostop on the cluster itself failed ({msg}); using the watcher on this machine")
            on_node = True  # some nodes may have been armed: disarm them below
    if where is None and on_node and rec.nodes:
        try:
            try:
                if rec.status == state.UP:  # a stopped cluster's nodes run no watcher to disarm
                    _arm_nodes(rec, prov, rt, None, None)
            finally:
                # the cloud's own default again (EC2: an OS shutdown stops; Azure: no role left with the
                # nodes), on a cancel and when an arm that failed half-way falls back to the watcher here,
                # also when a node could not be disarmed
                prov.release_self_stop(rec.cloud_name, rec.region)
        except BrokerError as exc:
            if minutes is None:  # a cancel that does not reach every node is no cancel
                raise BrokerError(f"could not cancel the autostop on {rec.name}'s nodes: "
                                  f"{getattr(exc, 'message', None) or exc}",
                                  f"the cluster may still stop itself once idle; retry `broker autostop "
                                  f"{rec.name} --cancel`") from None
    if minutes is not None and where is None:
        where = state.AUTOSTOP_LOCAL
    state.set_autostop(rec.name, minutes, down, where)
    rec.autostop_minutes, rec.autostop_down, rec.autostop_where = minutes, down, where
    if minutes is not None:
        how = "on the cluster itself" if where == state.AUTOSTOP_NODE else "by the watcher on this machine"
        state.add_event(rec.name, "autostop", f"{'down' if down else 'stop'} after {minutes} idle minute(s), "
                                              f"enforced {how}")
    if where == state.AUTOSTOP_LOCAL:
        ensure_watcher()
    return where


def _arm_nodes(rec, prov, rt, idle: float | None, action: str | None) -> None:
    """Arm (idle seconds) or clear (None) the autostop watcher in every node's agent."""
    from .backend import ClusterRuntime
    from .runtime.runner import run_parallel

    own = rt is None
    rt = rt or ClusterRuntime(rec)
    head = rec.head
    every, grace = settings.get("autostop_poll"), settings.get("autostop_follow_grace")

    def one(node):
        plan = prov.self_stop_command(rec.cloud_name, node, head, action) if idle is not None else None
        if plan is None:
            rt.agent(node).autostop(None)
        else:
            rt.agent(node).autostop(idle, plan.command, every=every, follow=plan.follow, follow_grace=grace,
                                    ssh_busy=prov.capabilities.remote)  # local nodes share this machine's sshd

    try:
        run_parallel(rt.nodes, one)
    finally:
        if own:
            rt.close()


def ensure_watcher() -> None:
    if IN_PROCESS:
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(_lock_path()), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return  # a watcher is running
    lock.release()
    log = private_file(ensure_home() / "autostop.log")
    subprocess.Popen([sys.executable, "-m", "skybroker.autostop"], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True, env=dict(os.environ))


def check_once(now: float | None = None) -> list[tuple[str, str]]:
    """Apply autostop to every cluster due. Returns [(cluster, action)]."""
    from . import clusters, state
    from .backend import ClusterRuntime

    actions = []
    for rec in state.list_clusters():
        if not _guarded_here(rec):
            continue
        try:  # one cluster's failure (a cloud error, a bug) never ends autostop for the others
            action = _check_cluster(rec, clusters, ClusterRuntime)
        except Exception as exc:  # noqa: BLE001 - logged, retried next round
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            state.add_event(rec.name, "autostop", f"failed: {msg}; retrying in {settings.get('autostop_poll'):.0f}s")
            actions.append((rec.name, f"error: {msg}"))
            continue
        if action:
            actions.append((rec.name, action))
    return actions


def _check_cluster(rec, clusters, ClusterRuntime) -> str | None:
    from . import state
    from .errors import BrokerError

    rt = ClusterRuntime(rec)
    try:
        idle = rt.idle_seconds()
    except BrokerError:
        return None  # unreachable right now: look again next round
    finally:
        rt.close()
    if idle <= 0 or idle < idle_seconds_for(rec.autostop_minutes):  # 0: a job is running or pending
        return None
    if rec.autostop_down:
        clusters.down([rec.name])
        action = "down"
    else:
        try:
            clusters.stop(rec.name)
            action = "stop"
        except BrokerError:  # cannot stop (spot / no stop support): tear down instead
            clusters.down([rec.name])
            action = "down"
    state.add_event(rec.name, "autostop", f"idle {idle:.0f}s ≥ {rec.autostop_minutes} min: {action}")
    return action


def _guarded_here(rec) -> bool:
    """The local watcher's clusters: autostop set, UP, and not enforced on the cluster itself."""
    from . import state

    return rec.autostop_minutes is not None and rec.status == state.UP and rec.autostop_where != state.AUTOSTOP_NODE


def main() -> int:
    from filelock import FileLock, Timeout

    from . import state

    lock = FileLock(str(_lock_path()))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return 0
    try:
        while True:
            try:
                for name, action in check_once():
                    print(f"{time.strftime('%F %T')} autostop: {action} {name}", flush=True)
                if not any(_guarded_here(r) for r in state.list_clusters()):
                    return 0
            except Exception as exc:  # noqa: BLE001 - e.g. the state db locked for a moment: try again
                print(f"{time.strftime('%F %T')} autostop: error: {exc}", flush=True)
            time.sleep(settings.get("autostop_poll"))
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
