"""`broker status` with many clusters: the cost on a terminal as a ratio to the cost in a pipe.

    python bench/bench_status.py [--clusters 500] [--runs 7]

Fills a scratch BROKER_HOME with N cluster records (no cloud involved), then runs `broker status`
with stdout to a pipe and with stdout on a pseudo-terminal (120 columns), and prints the median CPU
time of each (user + system of the child, so another process loading the machine barely moves it) and
the ratio terminal / pipe. Target (issue 16): ≤ 2×. A bare `python -c pass` is printed as the floor.
"""
from __future__ import annotations

import argparse
import os
import pty
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fill(home: Path, n: int) -> None:
    env = dict(os.environ, BROKER_HOME=str(home), PYTHONPATH=str(REPO))
    code = f"""
import time
from skybroker import state
now = time.time()
conn = state.db()
conn.execute("BEGIN")
if True:
    for i in range({n}):
        state.save_cluster(state.ClusterRecord(
            name=f"cluster-{{i:04d}}", cloud=("aws", "gcp", "azure")[i % 3], region="us-east-1", zone=None,
            instance_type="p3.2xlarge", accelerators="V100:1" if i % 2 else None, use_spot=bool(i % 4),
            num_nodes=1 + i % 3, hourly_price=3.06 * (1 + i % 3), status=("UP", "STOPPED")[i % 2],
            launched_at=now - 60 * i, autostop_minutes=30 if i % 5 == 0 else None,
            nodes=[state.NodeRecord(f"i-{{i:08x}}", 0, "10.0.0.1")]))
conn.execute("COMMIT")
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def child_cpu(run) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def piped(cmd, env):
    def run():
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and r.stdout.count(b"\n") > 10, r.stdout[-300:]
    return run


def on_tty(cmd, env):
    def run():
        master, slave = pty.openpty()
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        p = subprocess.Popen(cmd, env=dict(env, TERM="xterm-256color", COLUMNS="120"), stdout=slave,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        p.wait()
        os.close(master)
        assert p.returncode == 0 and out.count(b"\n") > 10, out[-300:]
    return run


def median_cpu(run, runs: int) -> float:
    run()  # warm-up (page cache, bytecode)
    return statistics.median(child_cpu(run) for _ in range(runs))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        t = time.perf_counter()
        fill(home, a.clusters)
        env = dict(os.environ, BROKER_HOME=str(home), PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "skybroker.cli", "status"]
        floor = median_cpu(piped([sys.executable, "-c", "print('x\\n' * 20)"], env), a.runs)
        p = median_cpu(piped(cmd, env), a.runs)
        tt = median_cpu(on_tty(cmd, env), a.runs)
    print(f"broker status, {a.clusters} clusters (filled in {time.perf_counter() - t:.1f} s), median CPU of {a.runs} runs")
    print(f"  python floor        {floor * 1000:7.1f} ms")
    print(f"  piped               {p * 1000:7.1f} ms")
    print(f"  terminal (120 cols) {tt * 1000:7.1f} ms")
    print(f"  terminal / piped    {tt / p:7.2f}x   (target <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
