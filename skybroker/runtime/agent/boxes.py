"""The agent's `container-*` commands; the container work is in container.py (next to this file)."""
import os
import sys

from . import ACTIVE_SQL, AgentError, answer
from . import procs, store


def container():
    """The container module (imported on first use: most commands never need it)."""
    from . import container as mod

    return mod


def container_state():
    if not os.path.exists(os.path.join(store.base(), "container.json")):
        return None
    return container().load(store.base())


def container_call(fn):
    mod = container()
    try:
        return fn(mod)
    except mod.ContainerError as e:
        raise AgentError(str(e), code=e.code)


def cmd_container_up(args):
    """stdin: {"spec": {image, run_options, mounts, username, server}, "password": ...}. The node's
    container is made the one the spec asks for (pulled, started); the password only reaches `login`."""
    import json

    try:
        payload = json.loads(sys.stdin.read() or "{}")
    except ValueError as e:
        raise AgentError("stdin is not valid JSON: %s" % e)
    spec = payload.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("image"), str) or not spec["image"]:
        raise AgentError("container-up: spec.image is required")
    conn = store.db()
    procs.reconcile(conn)
    busy = bool(conn.execute("SELECT 1 FROM jobs WHERE " + ACTIVE_SQL).fetchone())
    answer(container_call(lambda m: m.up(store.base(), spec, payload.get("password"), busy=busy)))
    return 0


def cmd_container_check(args):
    """The engine the node would use (exit code 4 when there is none)."""
    engine, kind = container_call(lambda m: m.detect())
    answer({"engine": engine, "kind": kind})
    return 0


def cmd_container_restart(args):
    """After a stop/start of the node: the recorded container runs again (nothing recorded: nothing to do)."""
    state = container_state()
    if state is None:
        answer({"container": None})
        return 0
    answer({"container": state["name"], "state": container_call(lambda m: m.ensure_running(state))})
    return 0


def cmd_container_stop(args):
    answer({"stopped": container_call(lambda m: m.stop(store.base()))})
    return 0


def cmd_container_status(args):
    state = container_state()
    if state is None:
        answer({"container": None})
        return 0
    run = container_call(lambda m: m.running(state))
    answer({"container": state["name"], "image": state["image"], "engine": state["kind"],
          "running": run, "key": state.get("key")})
    return 0
