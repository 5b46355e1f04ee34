"""The broker server under load: 50 concurrent clients against one server on PostgreSQL.

    python bench/bench_server.py [--clients 50] [--requests 20]

Starts a throw-away PostgreSQL (tests/infra/postgres.py, Debian's postgresql package), seeds it with 20
clusters and 20 managed jobs of two users, starts `broker server start --db …` on a free loopback port,
then runs `--clients` threads, each a client (skybroker.client.http, the CLI's own transport) issuing
`--requests` calls in a round of status / jobs queue / launch --dryrun (plan). Prints throughput and
p50/p99 latency per call, and the CLI's `status` wall time in client mode as a ratio to local mode
(same clusters in a local SQLite), both measured in this run.

Targets (issue 14): client-mode `status` ≤ 2× local mode; p99 ≤ 100 ms for reads at 50 clients.

The Python load generator burns 3–4× the server's CPU on the same cores, so when ApacheBench (`ab`, from
apache2-utils, which .ci/run installs) is there, a last phase repeats the reads with it: the same 50
concurrent clients (25 on status, 25 on jobs queue, keep-alive, the same token and request bodies), from a
load generator that costs a fraction of the server's CPU. Its p99 is the server's latency under that
concurrency rather than the load generator's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def seed(n: int = 20) -> None:
    from skybroker import state
    from skybroker.jobs import store

    for i in range(n):
        tok = state.current_user.set("alice" if i % 2 else "bob")
        try:
            state.save_cluster(state.ClusterRecord(
                name=f"c{i}", cloud="aws", region="us-east-1", zone="use1-az1", instance_type="m6i.2xlarge",
                accelerators=None, use_spot=bool(i % 3), num_nodes=1 + i % 4, hourly_price=0.384,
                status=state.UP, launched_at=time.time() - 60 * i,
                nodes=[state.NodeRecord(f"i-{i}", 0, f"10.0.0.{i}")]))
            store.insert(f"job{i}", "{}", {}, "1x m6i.2xlarge")
        finally:
            state.current_user.reset(tok)


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and its reaped children (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """CPU of the server process and its live children (uvicorn's worker processes with --workers)."""
    total = cpu_seconds(pid)
    for kid in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in kid.read_text().split():
            try:
                total += cpu_seconds(int(c))
            except OSError:
                pass
    return total


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed_cli(args, env, runs=7) -> float:
    cmd = [sys.executable, "-m", "skybroker.cli"] + args
    subprocess.run(cmd, env=env, capture_output=True)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True)
        ts.append(time.perf_counter() - t)
        if r.returncode:
            raise SystemExit(r.stderr.decode())
    return statistics.median(ts)


def _client_proc(payload):
    """One client process: `n` threads, each a client issuing `requests` calls from `t_start` on."""
    url, token, n, requests, names, t_start, k0 = payload
    from skybroker import api
    from skybroker.client.http import Client

    task = api.load_task(str(REPO / "examples" / "v100.yaml"))
    fns = {"status": lambda c: c.call("status", all_users=False),
           "jobs queue": lambda c: c.call("jobs_queue", all_users=False),
           "launch --dryrun": lambda c: c.call("plan", task, [], None)}
    lat: dict[str, list[float]] = {name: [] for name in names}
    errors: list[str] = []

    def client(k: int):
        c = Client(url, token)
        time.sleep(max(0.0, t_start - time.time()))
        for i in range(requests):
            name = names[(k + i) % len(names)]
            t = time.perf_counter()
            try:
                fns[name](c)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors.append(repr(exc))
            lat[name].append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(k0 + k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.time()


def _writer(stop: threading.Event, every: float, count: list) -> None:
    """Another process's writes: alice's cluster c1 saved every `every` s (each invalidates the cached
    `status` answers, on every server process, through PostgreSQL's notifications)."""
    from skybroker import state

    while not stop.wait(every):
        rec = state.get_cluster("c1")
        rec.hourly_price += 0.001
        state.save_cluster(rec)
        count[0] += 1


def phase(label, names, args, url, token, srv_pid, write_every: float = 0.0) -> None:
    """`args.clients` clients spread over `args.procs` processes (so the clients' own CPU is not one GIL)."""
    import multiprocessing as mp

    load0 = os.getloadavg()[0]
    cpu0 = server_cpu(srv_pid)
    me0 = os.times()
    per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    t_start = time.time() + 2.0
    stop, writes = threading.Event(), [0]
    with mp.get_context("fork").Pool(args.procs) as pool:
        if write_every:
            threading.Thread(target=_writer, args=(stop, write_every, writes), daemon=True).start()
        res = pool.map(_client_proc, [(url, token, n, args.requests, names, t_start, sum(per[:i]))
                                      for i, n in enumerate(per)])
        stop.set()
    wall = max(r[2] for r in res) - t_start
    me1 = os.times()
    srv_cpu = server_cpu(srv_pid) - cpu0
    cli_cpu = me1.children_user + me1.children_system - me0.children_user - me0.children_system
    lat = {name: [x for r in res for x in r[0][name]] for name in names}
    errors = [e for r in res for e in r[1]]
    total = sum(len(v) for v in lat.values())
    print(f"{label}: {args.clients} clients ({args.procs} processes) × {args.requests} requests on PostgreSQL: "
          f"{total} in {wall:.2f} s = {total / wall:.0f} req/s, {len(errors)} errors {errors[:3]}"
          + (f"; {writes[0]} writes to the clusters table meanwhile" if write_every else ""))
    print(f"  {'call':18} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for name, xs in lat.items():
        print(f"  {name:18} {len(xs):5d} {1000 * pct(xs, .5):8.1f} {1000 * pct(xs, .99):8.1f}")
    r = lat["status"] + lat["jobs queue"]
    print(f"  reads p99: {1000 * pct(r, .99):.1f} ms (target ≤ 100 ms)")
    print(f"  CPU over {wall:.1f} s: server {srv_cpu:.1f} s, load generator {cli_cpu:.1f} s; "
          f"machine load average {load0:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def ab_phase(args, url, token, srv_pid, write_every: float = 0.0) -> None:
    """The reads with ApacheBench: two `ab` processes at once, args.clients // 2 connections each (and, with
    write_every, the writer of the Python phase meanwhile). ab takes the bench server's throw-away token on
    its command line (it has no other way to send a header)."""
    import shutil

    if not shutil.which("ab"):
        print("ab (apache2-utils) not installed: no ApacheBench phase")
        return
    from skybroker import wire

    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    body = tmp / "body.json"
    body.write_text(wire.dumps({"args": [], "kwargs": {"all_users": False}}))
    for fn in ("status", "jobs_queue"):  # what ab will send answers real data (ab then checks every answer
        # is 2xx and of this same length: its "failed" count)
        req = urllib.request.Request(f"{url}/api/v1/call/{fn}", data=body.read_bytes(), method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        value = wire.load(json.loads(urllib.request.urlopen(req, timeout=10).read())["value"])
        rows = value["clusters"] if isinstance(value, dict) else value
        assert len(rows) == 10, (fn, str(value)[:300])  # alice's 10 of the 20
    n = max(200, args.clients * args.requests * 2)
    conc = max(1, args.clients // 2)
    load0, cpu0, me0 = os.getloadavg()[0], server_cpu(srv_pid), os.times()
    stop, writes = threading.Event(), [0]
    if write_every:
        threading.Thread(target=_writer, args=(stop, write_every, writes), daemon=True).start()
    t0 = time.perf_counter()
    procs = {fn: subprocess.Popen(["ab", "-q", "-k", "-c", str(conc), "-n", str(n), "-p", str(body), "-T",
                                   "application/json", "-H", f"Authorization: Bearer {token}", "-e",
                                   str(tmp / f"{fn}.csv"), f"{url}/api/v1/call/{fn}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for fn in ("status", "jobs_queue")}
    outs = {fn: p.communicate() for fn, p in procs.items()}
    wall = time.perf_counter() - t0
    stop.set()
    me1 = os.times()
    gen_cpu = me1.children_user + me1.children_system - me0.children_user - me0.children_system
    srv_cpu = server_cpu(srv_pid) - cpu0
    print(f"reads with ApacheBench: {2 * conc} clients, {2 * n} requests in {wall:.2f} s = {2 * n / wall:.0f} req/s"
          + (f"; {writes[0]} writes to the clusters table meanwhile" if write_every else ""))
    p99s = []
    for fn, (out, err) in outs.items():
        if procs[fn].returncode:
            print(f"  {fn}: ab failed: {err.strip()[:300]}")
            continue
        pcts = dict(line.split(",") for line in (tmp / f"{fn}.csv").read_text().splitlines()[1:])
        import re

        # ab counts an answer of another length as failed: with writes the status answer changes (a price)
        m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", out)
        failed = (f"{int(m[1]) + int(m[2]) + int(m[4])} (+{m[3]} of another length)" if m else
                  next((ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("Failed requests")), "?"))
        non2xx = next((ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("Non-2xx")), "0")
        p99s.append(float(pcts["99"]))
        print(f"  {fn:18} n {n:5d}  p50 {float(pcts['50']):6.1f} ms  p99 {float(pcts['99']):6.1f} ms  "
              f"failed {failed}, non-2xx {non2xx}")
    shutil.rmtree(tmp, ignore_errors=True)
    if p99s:
        print(f"  reads p99 (the worse of the two): {max(p99s):.1f} ms (target ≤ 100 ms)")
    print(f"  CPU over {wall:.1f} s: server {srv_cpu:.1f} s, load generator (ab) {gen_cpu:.1f} s; "
          f"machine load average {load0:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=60, help="per client")
    ap.add_argument("--workers", type=int, default=1, help="the server's HTTP worker processes")
    ap.add_argument("--procs", type=int, default=5, help="client processes the clients are spread over")
    ap.add_argument("--only-ab", action="store_true", help="only the ApacheBench reads (and the CLI ratio)")
    args = ap.parse_args()
    from tests.infra.postgres import Postgres
    from tests.integration.server_helpers import free_port

    pg = Postgres().start()
    home = Path(tempfile.mkdtemp(prefix="bench-server-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "BROKER_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(BROKER_HOME=str(home / "server"), BROKER_DB=pg.fresh_url(), PYTHONPATH=str(REPO))
    os.environ.update(env)
    seed()
    token = json.loads(subprocess.run([sys.executable, "-m", "skybroker.cli", "server", "token", "create", "alice",
                                       "--json"], env=env, capture_output=True, text=True, check=True).stdout)["token"]
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "skybroker.cli", "server", "start", "--port", str(port),
                            "--workers", str(args.workers)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/api/v1/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        from skybroker import api
        from skybroker.client.http import Client

        task = api.load_task(str(REPO / "examples" / "v100.yaml"))
        reads = [("status", lambda c: c.call("status", all_users=False)),
                 ("jobs queue", lambda c: c.call("jobs_queue", all_users=False))]
        one = Client(url, token)
        seq = []
        cpu0 = server_cpu(srv.pid)
        for i in range(200):
            t = time.perf_counter()
            reads[i % 2][1](one)
            seq.append(time.perf_counter() - t)
        per = max(1e-6, server_cpu(srv.pid) - cpu0) / 200
        print(f"one client, sequential reads: p50 {1000 * pct(seq, .5):.1f} ms, p99 {1000 * pct(seq, .99):.1f} ms; "
              f"server CPU {1000 * per:.1f} ms per read (≈ {1 / per:.0f} reads/s per core, whatever the load)")
        for label, names, every in () if args.only_ab else (("reads only", ["status", "jobs queue"], 0),
                                    ("reads, a write every 20 ms", ["status", "jobs queue"], 0.02),
                                    ("reads + launch --dryrun", ["status", "jobs queue", "launch --dryrun"], 0)):
            phase(label, names, args, url, token, srv.pid, every)
        ab_phase(args, url, token, srv.pid)
        ab_phase(args, url, token, srv.pid, write_every=0.02)

        client_env = dict(env, BROKER_HOME=str(home / "client"), BROKER_API_SERVER=url, BROKER_API_TOKEN=token)
        client_env.pop("BROKER_DB")
        local_env = dict(env, BROKER_HOME=str(home / "local"))
        local_env.pop("BROKER_DB")
        os.environ.pop("BROKER_DB")
        os.environ["BROKER_HOME"] = local_env["BROKER_HOME"]
        from skybroker import state

        state._local.conn = None
        seed()  # the same clusters in a local SQLite
        t_client = timed_cli(["status", "-u"], client_env)
        t_local = timed_cli(["status"], local_env)
        print(f"CLI status: client mode {t_client:.3f} s, local mode {t_local:.3f} s, ratio {t_client / t_local:.2f} "
              f"(target ≤ 2)")
    finally:
        srv.terminate()
        srv.wait(10)
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
