"""Runtime speed: launch → first log line, and `broker status` with many clusters.

    python bench/bench_runtime.py [--runs 3] [--nodes 1 4 16] [--ssh]

Prints medians (wall seconds, process start included):
  - `broker launch -y` of a tiny task on the local cloud until its first output line, for 1/4/16 nodes
    (targets: ≤ 3 s for 1 node, ≤ 6 s for 16);
  - with --ssh (root only): the same on real OpenSSH nodes in network namespaces via an SSH node pool;
  - `broker status` with 50 clusters in the state (target ≤ 0.2 s), beside SkyPilot's `sky status` when
    the baseline kit is set up (bash ../shared/skypilot-baseline/setup.sh /tmp/skypilot-baseline).
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


def broker_argv() -> list[str]:
    bindir = Path(sys.executable).parent
    return [str(bindir / "broker")] if (bindir / "broker").exists() else [sys.executable, "-m", "skybroker.cli"]


def first_line_time(task: Path, env: dict, cluster: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen(broker_argv() + ["launch", "-y", "-c", cluster, str(task)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    first = None
    for line in p.stdout:
        if line.startswith("(node-") and first is None:
            first = time.perf_counter() - t0
    rc = p.wait()
    if rc != 0 or first is None:
        raise SystemExit(f"launch failed (rc={rc})")
    subprocess.run(broker_argv() + ["down", "-y", cluster], env=env, capture_output=True)
    return first


def bench_launch(nodes_list, runs, env, infra: str, tmp: Path) -> dict[int, float]:
    out = {}
    for n in nodes_list:
        task = tmp / f"t{n}.yaml"
        task.write_text(f"name: bench\nnum_nodes: {n}\nresources:\n  infra: {infra}\nrun: echo first line\n")
        times = [first_line_time(task, env, f"bench-{n}-{i}") for i in range(runs)]
        out[n] = statistics.median(times)
    return out


def bench_status(env: dict, runs: int) -> float:
    from skybroker import state
    from skybroker.state import ClusterRecord, NodeRecord

    os.environ["BROKER_HOME"] = env["BROKER_HOME"]
    for i in range(50):
        state.save_cluster(ClusterRecord(
            name=f"c{i:02d}", cloud="aws", region="us-east-1", zone="use1-az1", instance_type="p3.2xlarge",
            accelerators="V100:1", use_spot=i % 2 == 0, num_nodes=2, hourly_price=6.12, status="UP",
            launched_at=time.time() - 60 * i,
            nodes=[NodeRecord(f"i-{i}-{r}", r, f"10.0.{i}.{r}") for r in range(2)]))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(broker_argv() + ["status"], env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sky_status(runs: int) -> float | None:
    base = Path(os.environ.get("SKYPILOT_BASELINE", "/tmp/skypilot-baseline"))
    sky = base / "venv" / "bin" / "sky"
    if not sky.exists():
        return None
    env = dict(os.environ, HOME=str(base / "home"), SKYPILOT_DISABLE_USAGE_COLLECTION="1",
               PATH=f"{sky.parent}:{os.environ['PATH']}")
    subprocess.run([str(sky), "status"], env=env, capture_output=True)  # warm its API server
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(sky), "status"], env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--ssh", action="store_true", help="also on real sshd nodes (root)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rt-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GOOGLE_", "AZURE_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["BROKER_HOME"] = str(tmp / "home")
    try:
        print("launch → first log line, local cloud (median of %d):" % args.runs)
        for n, t in bench_launch(args.nodes, args.runs, env, "local", tmp).items():
            target = 3.0 if n == 1 else 6.0
            print(f"  {n:>3} node(s): {t:6.2f} s   target ≤ {target:.0f} s   {'ok' if t <= target else 'NO'}")
        if args.ssh:
            if os.geteuid() != 0:
                print("  (--ssh needs root: skipped)")
            else:
                from tests.infra.netns import NodePool  # noqa: WPS433 - bench-only import

                pool = NodePool(user="broker")  # its own dir outside /tmp (nodes bind-mount /tmp)
                try:
                    from skybroker.runtime.keys import ensure_user_key

                    key, pub = ensure_user_key(Path(env["BROKER_HOME"]))
                    nodes = pool.start(max(args.nodes), pub)
                    hosts = "\n".join(f"    - {n.ip}" for n in nodes)
                    Path(env["BROKER_HOME"], "ssh_node_pools.yaml").write_text(
                        f"bench:\n  user: broker\n  identity_file: {key}\n  hosts:\n{hosts}\n")
                    print("launch → first log line, sshd nodes in network namespaces:")
                    for n, t in bench_launch(args.nodes, args.runs, env, "ssh/bench", tmp).items():
                        target = 3.0 if n == 1 else 6.0
                        print(f"  {n:>3} node(s): {t:6.2f} s   target ≤ {target:.0f} s   {'ok' if t <= target else 'NO'}")
                finally:
                    pool.close()
        ours = bench_status(env, max(5, args.runs))
        sky = sky_status(3)
        ratio = f"   SkyPilot `sky status` (warm, its own state) {sky:.2f} s → {sky / ours:.0f}× slower" if sky else ""
        print(f"broker status, 50 clusters: {ours:.3f} s   target ≤ 0.2 s   {'ok' if ours <= 0.2 else 'NO'}{ratio}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
