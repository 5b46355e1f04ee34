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

from .paths import ensure_home

POLL_SECONDS = float(os.environ.get("BROKER_AUTOSTOP_POLL", "20"))


def _lock_path():
    return ensure_home() / "autostop.lock"


def ensure_watcher() -> None:
    from filelock import FileLock, Timeout

    lock = FileLock(str(_lock_path()))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return  # a watcher is running
    lock.release()
    log = open(ensure_home() / "autostop.log", "ab")
    subprocess.Popen([sys.executable, "-m", "skybroker.autostop"], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True, env=dict(os.environ))


def check_once(now: float | None = None) -> list[tuple[str, str]]:
    """Apply autostop to every cluster due. Returns [(cluster, action)]."""
    from . import clusters, state
    from .backend import ClusterRuntime
    from .errors import BrokerError

    actions = []
    for rec in state.list_clusters():
        if rec.autostop_minutes is None or rec.status != state.UP:
            continue
        rt = ClusterRuntime(rec)
        try:
            idle = rt.idle_seconds()
        except BrokerError:
            continue
        finally:
            rt.close()
        if idle >= rec.autostop_minutes * 60:
            if rec.autostop_down:
                clusters.down([rec.name])
                actions.append((rec.name, "down"))
            else:
                try:
                    clusters.stop(rec.name)
                    actions.append((rec.name, "stop"))
                except BrokerError:  # cannot stop (spot / no stop support): tear down instead
                    clusters.down([rec.name])
                    actions.append((rec.name, "down"))
            state.add_event(rec.name, "autostop", f"idle {idle:.0f}s ≥ {rec.autostop_minutes} min: {actions[-1][1]}")
    return actions


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
            for name, action in check_once():
                print(f"{time.strftime('%F %T')} autostop: {action} {name}", flush=True)
            if not any(r.autostop_minutes is not None and r.status == state.UP for r in state.list_clusters()):
                return 0
            time.sleep(POLL_SECONDS)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
