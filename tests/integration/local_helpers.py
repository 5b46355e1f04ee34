"""Helpers for end-to-end tests of clusters on the `local` cloud: the real CLI as a subprocess, task files,
and /proc inspection of the sandboxed "nodes" (BROKER_HOME/local/<cluster>/node-<i>)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import yaml

from tests.conftest import broker_cmd


def broker_home() -> Path:
    return Path(os.environ["BROKER_HOME"])


def cloud_name(cluster: str, home: Path | None = None) -> str:
    """A new cluster's name on the cloud in `home` (this test's BROKER_HOME by default): its local directory,
    its tags. Read from the home's home.id when it has one (no state opened in the test process)."""
    from skybroker import state

    home = home or broker_home()
    try:
        hid = (home / "home.id").read_text().strip()
    except OSError:
        if home != broker_home():  # a server's home that never named a cluster (or keeps its id in PostgreSQL)
            return cluster
        hid = state.home_id()
    return state.cloud_name_for(cluster, hid[:state.HOME_SUFFIX_LEN])


def cluster_dir(cluster: str, home: Path | None = None) -> Path:
    """The local cloud's directory of a cluster launched in `home` (BROKER_HOME/local/<name on the cloud>)."""
    return (home or broker_home()) / "local" / cloud_name(cluster, home)


def node_dir(cluster: str, rank: int) -> Path:
    return cluster_dir(cluster) / f"node-{rank}"


def _env(extra: dict | None) -> dict:
    e = dict(os.environ)  # carries the per-test HOME and BROKER_HOME
    e.pop("BROKER_DEBUG", None)
    e.update(extra or {})
    return e


def broker(*args, cwd: Path | str | None = None, env: dict | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `broker ARGS...` to completion (stdin closed, so nothing prompts)."""
    t0 = time.monotonic()
    r = subprocess.run(broker_cmd() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL, env=_env(env))
    if os.environ.get("BROKER_E2E_TIMING"):
        print(f"[{time.monotonic() - t0:5.2f}s] broker {' '.join(map(str, args))}")
    return r


def broker_bg(*args, cwd: Path | str | None = None, env: dict | None = None,
              stderr: Path | None = None) -> subprocess.Popen:
    """Start `broker ARGS...` in the background (text pipes; stderr to a file if given, to watch it)."""
    err = open(stderr, "w") if stderr is not None else subprocess.PIPE
    try:
        return subprocess.Popen(broker_cmd() + [str(a) for a in args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL, text=True, env=_env(env))
    finally:
        if stderr is not None:
            err.close()


def write_task(path: Path, **fields) -> Path:
    """A task YAML on the local cloud (resources default to `infra: local`)."""
    fields.setdefault("resources", {"infra": "local"})
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def node_lines(stdout: str) -> dict[int, list[str]]:
    """Job output lines by node rank (the `(node-N) ` prefix removed)."""
    out: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("(node-") and ") " in line:
            head, _, text = line.partition(") ")
            out.setdefault(int(head[len("(node-"):]), []).append(text)
    return out


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until pred() is truthy; return its value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def status_json(env: dict | None = None, refresh: bool = False) -> list[dict]:
    r = broker("status", "--json", *(["--refresh"] if refresh else []), env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def queue_json(cluster: str) -> list[dict]:
    r = broker("queue", cluster, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def submitted_id(stderr: str) -> int:
    """The job id from `job N submitted` in broker's progress output."""
    m = re.findall(r"job (\d+) submitted", stderr)
    assert m, stderr
    return int(m[-1])


def job_state(cluster: str, job_id: int) -> str | None:
    return next((j["status"] for j in queue_json(cluster) if j["job_id"] == job_id), None)


def _environ(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZXx"
    except (OSError, IndexError):
        return False


def pids_with_env(entry: str, prefix: bool = False) -> list[int]:
    """Live pids whose environment has exactly `entry` (or an entry starting with it, if prefix)."""
    want = entry.encode()
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        env = _environ(int(name))
        if env is None:
            continue
        if any(e.startswith(want) if prefix else e == want for e in env) and alive(int(name)):
            out.append(int(name))
    return out


def node_pids(cluster: str, rank: int) -> list[int]:
    """Every live process of one local node (its HOME is the node's sandbox directory)."""
    return pids_with_env(f"HOME={node_dir(cluster, rank)}")


def kill_pids(pids, sig=signal.SIGKILL) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def kill_leftovers(home: Path) -> list[int]:
    """Kill whatever this test's BROKER_HOME left running (node processes, autostop watcher)."""
    victims = set(pids_with_env(f"HOME={home}/local/", prefix=True))
    victims |= set(pids_with_env(f"BROKER_HOME={home}"))
    kill_pids(victims)
    return sorted(victims)


def ssh_node_pools(tag: str, layout: dict[str, int]):
    """A context manager: sshd nodes in network namespaces (a tests.infra.netns.NodePool under /var/tmp)
    listed in BROKER_HOME/ssh_node_pools.yaml as the pools of `layout` (pool name → number of hosts), all
    reached with the broker's own key. Yields (pool, {pool name: [nodes]}); skips when the machine cannot
    run sshd nodes."""
    import contextlib

    @contextlib.contextmanager
    def pools():
        import pytest

        from skybroker.runtime.keys import ensure_user_key
        from tests.infra.netns import NodePool, missing_requirements

        why = missing_requirements()
        if why:
            pytest.skip(f"sshd test nodes unavailable: {why}")
        key, pub = ensure_user_key(broker_home())
        pool = NodePool(Path("/var/tmp") / f"skybroker-{tag}-{os.getpid()}", user="broker")
        try:
            nodes = iter(pool.start(sum(layout.values()), pub))
            by_name = {name: [next(nodes) for _ in range(n)] for name, n in layout.items()}
            broker_home().mkdir(parents=True, exist_ok=True)
            (broker_home() / "ssh_node_pools.yaml").write_text("".join(
                f"{name}:\n  user: broker\n  identity_file: {key}\n  hosts: [{', '.join(n.ip for n in ns)}]\n"
                for name, ns in by_name.items()))
            yield pool, by_name
        finally:
            pool.close()

    return pools()
