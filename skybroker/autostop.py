"""Autostop: a small background watcher on the user's side (no controller VM) that stops or tears down
clusters idle for their autostop time. Idle = no PENDING/SETTING_UP/RUNNING job on any node (the node
agent's `idle-seconds`). One watcher per BROKER_HOME (a lock file); it exits when no cluster has
autostop set, and `broker autostop` / `launch` start it again on demand.

    python -m skybroker.autostop    (started detached by ensure_watcher)
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
        if rec.autostop_minutes is None or rec.status != state.UP:
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
    if idle < rec.autostop_minutes * 60:
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
                if not any(r.autostop_minutes is not None and r.status == state.UP for r in state.list_clusters()):
                    return 0
            except Exception as exc:  # noqa: BLE001 - e.g. the state db locked for a moment: try again
                print(f"{time.strftime('%F %T')} autostop: error: {exc}", flush=True)
            time.sleep(settings.get("autostop_poll"))
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
