"""`broker exec c -- true` on a warm 1-node cluster, as a ratio to a floor measured in the same run.

    python bench/bench_exec.py [--runs 9] [--ssh]

Two floors, both "one bare runner round trip": `<agent python> -c pass` through the cluster's own runner
(the local cloud's sandbox runner; with --ssh, the SSH runner to an sshd node in a network namespace):
  cli     a fresh Python process that reads the cluster from the state, opens its head node's runner (SSH:
          connects) and makes that one round trip; compared with the wall time of `broker exec c -- true`
          (a fresh process too). Target (issue 16): exec ≤ 3× this floor.
  warm    the same round trip on an already open runner, in this process; compared with `api.exec_` in
          this process (which opens its own runner, as every exec does).
Medians of --runs, wall seconds. Also prints the number of agent calls one exec makes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLOOR = """
import sys
from skybroker import state
from skybroker.backend import ClusterRuntime
rt = ClusterRuntime(state.get_cluster(sys.argv[1]))
r = rt.runner(rt.nodes[0]).run(rt.provider.agent_python() + " -c pass")
sys.exit(r.exit_code)
"""


def broker_argv() -> list[str]:
    return [sys.executable, "-m", "skybroker.cli"]


def timed(argv, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def med(fn, runs: int) -> float:
    fn()  # warm-up (bytecode caches, the node's agent)
    return statistics.median(fn() for _ in range(runs))


def count_calls(cluster: str) -> int:
    from skybroker import api
    from skybroker.runtime.agent_client import AgentClient

    n = [0]
    names = [m for m in ("_call", "run", "follow_log") if hasattr(AgentClient, m)]  # `run`: since issue 16
    orig = {m: getattr(AgentClient, m) for m in names}

    def counting(f):
        def wrapper(*a, **k):
            n[0] += 1
            return f(*a, **k)
        return wrapper

    for m in names:
        setattr(AgentClient, m, counting(orig[m]))
    try:
        api.exec_(cluster, api.exec_task(["true"], {}))
    finally:
        for m in names:
            setattr(AgentClient, m, orig[m])
    return n[0]


def bench(cluster: str, env: dict, runs: int, label: str) -> None:
    from skybroker import api, state
    from skybroker.backend import ClusterRuntime

    cli_floor = med(lambda: timed([sys.executable, "-c", FLOOR, cluster], env), runs)
    cli_exec = med(lambda: timed(broker_argv() + ["exec", cluster, "--", "true"], env), runs)
    rt = ClusterRuntime(state.get_cluster(cluster))
    runner, cmd = rt.runner(rt.nodes[0]), rt.provider.agent_python() + " -c pass"

    def warm_rt():
        t0 = time.perf_counter()
        runner.run(cmd)
        return time.perf_counter() - t0

    def warm_exec():
        t0 = time.perf_counter()
        res = api.exec_(cluster, api.exec_task(["true"], {}))
        assert res.status.status == "SUCCEEDED", res.status
        return time.perf_counter() - t0

    w_floor, w_exec = med(warm_rt, runs), med(warm_exec, runs)
    rt.close()
    calls = count_calls(cluster)
    print(f"{label}:")
    print(f"  cli : broker exec {cli_exec * 1000:6.0f} ms   floor (fresh process, one round trip) "
          f"{cli_floor * 1000:5.0f} ms   ratio {cli_exec / cli_floor:.2f}x   target ≤ 3x "
          f"{'ok' if cli_exec <= 3 * cli_floor else 'NO'}")
    print(f"  warm: api.exec_   {w_exec * 1000:6.0f} ms   floor (open runner, one round trip)   "
          f"{w_floor * 1000:5.0f} ms   ratio {w_exec / w_floor:.2f}x")
    print(f"  agent calls per exec: {calls}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--ssh", action="store_true", help="also on a real sshd node (root)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GOOGLE_", "AZURE_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["BROKER_HOME"] = os.environ["BROKER_HOME"] = str(tmp / "home")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    task = tmp / "t.yaml"
    pool = None
    try:
        with open("/proc/loadavg") as f:
            print("load average:", " ".join(f.read().split()[:3]))
        task.write_text("name: bench\nresources:\n  infra: local\nrun: 'true'\n")
        subprocess.run(broker_argv() + ["launch", "-y", "-c", "bx", str(task)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        bench("bx", env, args.runs, "local cloud (1 node)")
        if args.ssh:
            from tests.infra.netns import NodePool  # noqa: WPS433 - bench-only import

            from skybroker.runtime.keys import ensure_user_key

            pool = NodePool(user="broker")
            key, pub = ensure_user_key(Path(env["BROKER_HOME"]))
            node = pool.start(1, pub)[0]
            Path(env["BROKER_HOME"], "ssh_node_pools.yaml").write_text(
                f"bench:\n  user: broker\n  identity_file: {key}\n  hosts:\n    - {node.ip}\n")
            task.write_text("name: bench\nresources:\n  infra: ssh/bench\nrun: 'true'\n")
            subprocess.run(broker_argv() + ["launch", "-y", "-c", "bs", str(task)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            bench("bs", env, args.runs, "sshd node in a network namespace (1 node)")
            subprocess.run(broker_argv() + ["down", "-y", "bs"], env=env, capture_output=True)
        subprocess.run(broker_argv() + ["down", "-y", "bx"], env=env, capture_output=True)
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
