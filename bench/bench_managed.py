"""Managed jobs: how fast a preemption is noticed and the job runs again, and what the controller costs
with many jobs. Prints figures; not a test.

    python bench/bench_managed.py                 # (a) preemption on the local cloud, (b) 200 jobs
    python bench/bench_managed.py --jobs 50 --runs 3 --poll 1
    python bench/bench_managed.py --skip-scale    # only (a)
    python bench/bench_managed.py --ssh --skip-scale   # (a) also on real sshd nodes (root)

(a) A managed job on the local cloud prints a line every 0.1 s and appends to a host ledger. A
    "preemption" kills every process of its node and deletes the node. Measured, median of --runs:
    detect  = preemption → the controller records the recovery (job leaves RUNNING);
    running = preemption → the relaunched run's first line (host ledger: the job really runs again),
    and → that line is visible in `jobs logs` (run.log, fetched by the controller's poll).
(b) --jobs managed jobs on the local cloud, each `sleep 600`, submitted through the same use case as
    `broker jobs launch -d`: time until all are RUNNING; then, while they sleep, the CPU of the controller
    plus every process it started and every process on a local node (cores over a 20 s window; target
    ≤ 0.1), its RSS (VmRSS, VmHWM from /proc/PID/status; target ≤ 100 MB) and threads; then three
    preemptions one after the other (target: each detected within 2 s at that job count); then cancel all
    and check everything is cleaned up. Run it with --jobs 100, 300, 1000.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _wait(pred, timeout, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def _controller_pid(home: Path) -> int | None:
    try:
        pid = int((home / "managed" / "controller.pid").read_text())
    except (OSError, ValueError):
        return None
    try:  # a zombie (this process started it and has not reaped it) counts as gone
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return pid if st not in "ZX" else None


def _local_pids(home: Path) -> list[int]:
    want = f"HOME={home}/local/".encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            st = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if st not in "ZX" and any(e.startswith(want) for e in env):
            out.append(int(name))
    return out


def _submit(path: Path, ops):
    from skybroker import api

    return ops.launch(api.load_task(str(path), {}))


def bench_preemption(tmp: Path, runs: int, poll: float) -> None:
    from skybroker.clouds.local import _kill_node_processes
    from skybroker.jobs import ops, store

    home = Path(os.environ["BROKER_HOME"])
    led = tmp / "ledger"
    task = tmp / "ticker.yaml"
    task.write_text(f"""name: ticker
resources: {{infra: local, job_recovery: FAILOVER}}
run: |
  n=$(grep -c start {led} 2>/dev/null || echo 0)
  echo "start $n $(date +%s.%N)" >> {led}
  echo "start segment $n"
  while true; do echo tick; sleep 0.1; done
""")
    j = _submit(task, ops)
    jid = j.id
    detect, running, visible = [], [], []
    log = home / "managed" / str(jid) / "run.log"
    try:
        for k in range(runs):
            _wait(lambda: store.get(jid).status == "RUNNING", 60, what="RUNNING")
            _wait(lambda k=k: led.exists() and len(led.read_text().splitlines()) == k + 1, 30, what="segment start")
            _wait(lambda k=k: log.exists() and f"start segment {k}" in log.read_text(), 30, what="first line in log")
            time.sleep(random.uniform(0.5, 0.5 + poll))  # no phase lock with the controller's poll
            node = home / "local" / f"job-{jid}" / "node-0"
            t0 = time.time()
            _kill_node_processes(node)
            shutil.rmtree(node, ignore_errors=True)
            _wait(lambda k=k: store.get(jid).recoveries == k + 1, 60, what="recovery recorded")
            detect.append(time.time() - t0)
            line = _wait(lambda k=k: (ls := led.read_text().splitlines()) and len(ls) == k + 2 and ls[-1], 60,
                         what="new run")
            running.append(float(line.split()[2]) - t0)
            _wait(lambda k=k: f"start segment {k + 1}" in log.read_text(), 60, what="new run in log")
            visible.append(time.time() - t0)
    finally:
        store.request_cancel(jid)
        ops.ensure_controller()
        _wait(lambda: store.get(jid).status in store.TERMINAL, 60, what="cancel")
    med = statistics.median
    print(f"(a) preemption on the local cloud, poll interval {poll:g} s (BROKER_JOBS_POLL), median of {runs}:")
    print(f"    preemption → detected (recovery recorded): {med(detect):5.2f} s   target ≤ 5 s   "
          f"{'ok' if med(detect) <= 5 else 'NO'}   (all: {', '.join(f'{x:.2f}' for x in detect)})")
    print(f"    preemption → job running again (new run's first line): {med(running):5.2f} s   target ≤ 10 s   "
          f"{'ok' if med(running) <= 10 else 'NO'}   (all: {', '.join(f'{x:.2f}' for x in running)})")
    print(f"    preemption → that line visible in `jobs logs`: {med(visible):5.2f} s")


def bench_preemption_ssh(tmp: Path, runs: int, poll: float) -> None:
    """(c) The same on real OpenSSH nodes in network namespaces through an SSH node pool: a preemption is
    the node powered off (every process of its namespace killed); the job relaunches on another host."""
    from skybroker import state
    from skybroker.jobs import ops, store
    from skybroker.runtime.keys import ensure_user_key
    from tests.infra.netns import NodePool, missing_requirements

    why = missing_requirements()
    if why:
        print(f"(c) skipped: {why}")
        return
    home = Path(os.environ["BROKER_HOME"])
    key, pub = ensure_user_key(home)
    shared = Path(tempfile.mkdtemp(prefix="bench-ssh-", dir="/var/tmp"))  # visible to nodes and host
    shared.chmod(0o777)
    led = shared / "ledger"
    pool = NodePool(user="broker")  # its own dir outside /tmp (nodes bind-mount /tmp)
    try:
        nodes = pool.start(runs + 1, pub)
        hosts = "\n".join(f"    - {n.ip}" for n in nodes)
        (home / "ssh_node_pools.yaml").write_text(f"bench:\n  user: broker\n  identity_file: {key}\n  hosts:\n{hosts}\n")
        task = tmp / "ssh-ticker.yaml"
        task.write_text(f"""name: ticker
resources: {{infra: ssh/bench, job_recovery: FAILOVER}}
run: |
  n=$(grep -c start {led} 2>/dev/null || echo 0)
  echo "start $n $(date +%s.%N)" >> {led}
  while true; do echo tick; sleep 0.1; done
""")
        jid = _submit(task, ops).id
        detect, running = [], []
        try:
            for k in range(runs):
                _wait(lambda: store.get(jid).status == "RUNNING", 90, what="RUNNING")
                _wait(lambda k=k: led.exists() and len(led.read_text().splitlines()) == k + 1, 60, what="segment")
                time.sleep(random.uniform(0.5, 0.5 + poll))
                rec = state.get_cluster(f"job-{jid}")
                victim = next(n for n in nodes if n.ip == rec.nodes[0].ip)
                t0 = time.time()
                pool.kill(victim)
                _wait(lambda k=k: store.get(jid).recoveries == k + 1, 120, what="recovery recorded")
                detect.append(time.time() - t0)
                line = _wait(lambda k=k: (ls := led.read_text().splitlines()) and len(ls) == k + 2 and ls[-1], 120,
                             what="new run")
                running.append(float(line.split()[2]) - t0)
        finally:
            store.request_cancel(jid)
            ops.ensure_controller()
            _wait(lambda: store.get(jid).status in store.TERMINAL, 120, what="cancel")
    finally:
        pool.close()
        shutil.rmtree(shared, ignore_errors=True)
    med = statistics.median
    print(f"(c) preemption on sshd nodes (ssh pool), poll interval {poll:g} s, median of {runs}:")
    print(f"    preemption → detected: {med(detect):5.2f} s   (all: {', '.join(f'{x:.2f}' for x in detect)})")
    print(f"    preemption → job running again on another host: {med(running):5.2f} s   "
          f"(all: {', '.join(f'{x:.2f}' for x in running)})")


def bench_scale(tmp: Path, n: int, poll: float) -> None:
    from skybroker.jobs import ops, store

    home = Path(os.environ["BROKER_HOME"])
    task = tmp / "sleeper.yaml"
    task.write_text("name: sleeper\nresources: {infra: local}\nrun: sleep 600\n")
    t0 = time.time()
    ids = [_submit(task, ops).id for _ in range(n)]
    t_sub = time.time() - t0
    pid = _wait(lambda: _controller_pid(home), 20, what="controller")
    peak_threads = 0
    rss_samples = []

    def sample():
        nonlocal peak_threads
        st = _proc_status(pid)
        if st:
            peak_threads = max(peak_threads, int(st.get("Threads", "0")))
            rss_samples.append(int(st["VmRSS"].split()[0]))
        return st

    def all_running():
        sample()
        rows = [j for j in store.all_jobs() if j.id in set(ids)]
        bad = [j for j in rows if j.status in store.TERMINAL]
        if bad:
            raise SystemExit(f"job {bad[0].id} ended: {bad[0].status} {bad[0].failure}")
        return sum(j.status == "RUNNING" for j in rows) == n

    _wait(all_running, 3600, 0.5, what=f"all {n} RUNNING")
    t_up = time.time() - t0
    time.sleep(5)  # let the last launches' steps settle
    window = max(20.0, 3 * poll)
    c0, t_w = _tree_cpu(pid, home), time.time()
    while time.time() < t_w + window:
        sample()
        time.sleep(0.5)
    cores = (_tree_cpu(pid, home) - c0) / (time.time() - t_w)
    st = sample()
    detect = []
    from skybroker.clouds.local import _kill_node_processes

    for jid in random.sample(ids, min(3, n)):  # preemptions while all the others sleep
        before = store.get(jid).recoveries
        node = home / "local" / f"job-{jid}" / "node-0"
        t_p = time.time()
        _kill_node_processes(node)
        shutil.rmtree(node, ignore_errors=True)
        _wait(lambda: store.get(jid).recoveries > before, 120, 0.02, what="recovery recorded")
        detect.append(time.time() - t_p)
    print(f"(b) {n} concurrent managed jobs on the local cloud (`sleep 600` each), poll {poll:g} s:")
    print(f"    submitted in {t_sub:.1f} s; all RUNNING after {t_up:.1f} s")
    print(f"    while they sleep ({window:.0f} s window): {cores:.3f} cores (controller + everything it spawns + the "
          f"jobs' processes)   target ≤ 0.1   {'ok' if cores <= 0.1 else 'NO'}")
    print(f"    controller pid {pid}: VmRSS {_mb(st.get('VmRSS'))} MB, VmHWM {_mb(st.get('VmHWM'))} MB "
          f"(target ≤ 100 MB: {'ok' if _mb(st.get('VmRSS')) <= 100 else 'NO'}), threads {st.get('Threads')} "
          f"(peak {peak_threads})")
    print(f"    preemption → detected (recovery recorded) at {n} jobs: {', '.join(f'{x:.2f}' for x in detect)} s   "
          f"target ≤ 2 s   {'ok' if max(detect) <= 2 else 'NO'}")
    t1 = time.time()
    done = ops.cancel([], all_=True)
    _wait(lambda: all(store.get(i).status in store.TERMINAL for i in ids), 600, 0.5, what="all cancelled")
    t_cancel = time.time() - t1
    statuses = {store.get(i).status for i in ids}
    local = home / "local"
    left_dirs = [p for p in local.iterdir()] if local.exists() else []
    left_pids = _local_pids(home)
    gone = _wait(lambda: _controller_pid(home) is None, 60, 0.5, what="controller exit") or True
    print(f"    cancel --all ({len(done)} jobs): all {sorted(statuses)} after {t_cancel:.1f} s; "
          f"cluster dirs left {len(left_dirs)}, job processes left {len(left_pids)}, controller exited: {gone}")


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (with children: plus those of its children it has waited for)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _tree_cpu(pid: int, home: Path) -> float:
    """The controller and every process it started (waited for), plus every process running on a local
    node (the jobs' runners and commands, which the agents detach)."""
    return _cpu_seconds(pid, children=True) + sum(_cpu_seconds(p) for p in _local_pids(home) if p != pid)


def _mb(v: str | None) -> float:
    return round(int(v.split()[0]) / 1024, 1) if v else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--poll", type=float, default=float(os.environ.get("BROKER_JOBS_POLL", "2")))
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-preemption", action="store_true")
    ap.add_argument("--ssh", action="store_true", help="also preempt real sshd nodes (root)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-managed-"))
    os.environ.update({"BROKER_HOME": str(tmp / "home"), "HOME": str(tmp / "user"), "BROKER_JOBS_POLL": str(args.poll),
                       "BROKER_CONTROLLER_EXIT_GRACE": "2", "BROKER_CHECKPOINT_INTERVAL": "30"})
    (tmp / "user").mkdir()
    for k in [k for k in os.environ if k.startswith(("AWS_", "GOOGLE_", "AZURE_"))]:
        del os.environ[k]
    try:
        if not args.skip_preemption:
            bench_preemption(tmp, args.runs, args.poll)
            if args.ssh:
                bench_preemption_ssh(tmp, args.runs, args.poll)
        if not args.skip_scale:
            bench_scale(tmp, args.jobs, args.poll)
    finally:
        home = Path(os.environ["BROKER_HOME"])
        pid = _controller_pid(home)
        for p in _local_pids(home) + ([pid] if pid else []):
            try:
                os.kill(p, 9)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
