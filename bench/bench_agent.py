"""The node agent's cost per call, as a ratio to the floor measured in the same run: a bare `python3 -S`.

The broker starts the agent for every command it sends to a node (status, logs, submit...), so its start-up
is paid on every poll. Prints CPU time (user+sys of the child, median of N) for `agent.py status` and
`agent.py version` against `python3 -S -c pass`, with the agent installed the way the client installs it
(a launcher plus a module whose bytecode Python caches on the node). Target (issue 16): ≤ 2×.

    python bench/bench_agent.py [-n 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu(cmd, env, n) -> float:
    import resource

    out = []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    out.sort()
    return out[len(out) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    from skybroker.runtime.agent_client import AGENT_PATH, AgentClient
    from skybroker.runtime.local_runner import LocalRunner

    home = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    AgentClient(LocalRunner("bench", home), sys.executable + " -S").install()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a node
    env["HOME"] = str(home)
    agent = str(home / AGENT_PATH[2:])
    py = sys.executable
    subprocess.run([py, "-S", agent, "status"], env=env, stdout=subprocess.DEVNULL, check=True)  # caches bytecode
    floor = cpu([py, "-S", "-c", "pass"], env, args.n)
    for what in ("status", "version", "idle-seconds"):
        t = cpu([py, "-S", agent, what], env, args.n)
        print(f"agent {what:<13} {t * 1000:6.1f} ms CPU   bare python3 -S {floor * 1000:5.1f} ms   ratio {t / floor:.2f}x")


if __name__ == "__main__":
    main()
