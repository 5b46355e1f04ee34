"""A cluster's runtime, the same for every cloud: node agents, workdir/file-mount sync, job submission to
every node, log streaming, status aggregation, cancel. Talks to nodes only through command runners
(local sandbox or SSH) and to the node agent (runtime/agent.py) on each of them.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .errors import BrokerError
from .runtime import agent as agent_mod
from .runtime.runner import NodeUnreachable, run_parallel
from .state import ClusterRecord, NodeRecord

AGENT = "~/.broker/agent.py"
WORKDIR = "~/sky_workdir"
PY = "python3 -S"  # -S: skip site, halves the agent's start-up

TERMINAL = agent_mod.TERMINAL_STATUSES


@dataclass(frozen=True)
class NodeJob:
    rank: int
    status: str
    exit_code: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    name: str | None
    status: str
    exit_code: int | None
    nodes: tuple[NodeJob, ...]
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def aggregate(job_id: int, per_node: list[NodeJob], meta: dict | None = None) -> JobStatus:
    """One status for a job from every node's: a gang fails if any node fails."""
    meta = meta or {}
    statuses = [n.status for n in per_node]
    failing = sorted((n for n in per_node if n.status in ("FAILED", "FAILED_SETUP", "UNREACHABLE")),
                     key=lambda n: n.rank)
    if all(s in TERMINAL for s in statuses):
        if "CANCELLED" in statuses and not failing:
            status = "CANCELLED"
        elif any(n.status == "FAILED_SETUP" for n in failing):
            status = "FAILED_SETUP"
        elif failing:
            status = "FAILED"
        else:
            status = "SUCCEEDED"
    elif failing:
        status = "FAILED"  # the gang has failed even if other nodes still run
    elif "RUNNING" in statuses:
        status = "RUNNING"
    elif "SETTING_UP" in statuses:
        status = "SETTING_UP"
    else:
        status = "PENDING"
    exit_code = None
    if failing:
        exit_code = next((n.exit_code for n in failing if n.exit_code not in (None, 0)), 1)
    elif status == "SUCCEEDED":
        exit_code = 0
    return JobStatus(job_id, meta.get("name"), status, exit_code, tuple(sorted(per_node, key=lambda n: n.rank)),
                     meta.get("submitted_at"), meta.get("started_at"), meta.get("ended_at"))


class ClusterRuntime:
    def __init__(self, rec: ClusterRecord):
        from .clouds.registry import get_cloud

        self.rec = rec
        self.cloud = get_cloud(rec.cloud)
        self._runners: dict[int, object] = {}
        self._lock = threading.Lock()

    # -- runners --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[NodeRecord]:
        return sorted(self.rec.nodes, key=lambda n: n.rank)

    def runner(self, node: NodeRecord):
        with self._lock:
            r = self._runners.get(node.rank)
            if r is None:
                r = self.cloud.runner(self.rec.name, node)
                self._runners[node.rank] = r
            return r

    def fresh_runner(self, node: NodeRecord):
        """A separate connection (for a long-lived stream alongside other commands)."""
        return self.cloud.runner(self.rec.name, node)

    def close(self) -> None:
        for r in self._runners.values():
            try:
                r.close()
            except Exception:
                pass
        self._runners.clear()

    def _agent(self, node: NodeRecord, args: str, *, stdin: bytes | None = None, timeout: float = 60.0,
               runner=None) -> dict:
        r = runner or self.runner(node)
        res = r.run(f"{PY} {AGENT} {args}", stdin=stdin, timeout=timeout)
        try:
            out = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
        except ValueError:
            out = {}
        if res.exit_code != 0:
            msg = out.get("error") or res.stderr.strip()[-500:] or f"exit code {res.exit_code}"
            raise BrokerError(f"node agent on {self.rec.name} node {node.rank}: {msg}")
        return out

    # -- bring-up -------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every node answers a command (SSH up). BROKER_WAIT_READY overrides the 600 s.
        Ctrl-C stops waiting at once (the probes are daemon threads that notice the stop flag)."""
        import os

        timeout = float(os.environ.get("BROKER_WAIT_READY", "600")) if timeout is None else timeout
        deadline = time.time() + timeout
        stop = threading.Event()
        errors: dict[int, BaseException] = {}

        def one(node):
            try:
                while not stop.is_set():
                    try:
                        if self.runner(node).alive(timeout=10):
                            return
                    except NodeUnreachable:
                        pass
                    if time.time() > deadline:
                        raise NodeUnreachable(f"{self.rec.name}-node-{node.rank}",
                                              f"not reachable after {timeout:.0f}s")
                    stop.wait(1.0)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                errors[node.rank] = exc

        threads = [threading.Thread(target=one, args=(n,), daemon=True, name=f"wait-{n.rank}") for n in self.nodes]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            stop.set()
            raise
        if errors:
            raise errors[min(errors)]

    def install_agent(self) -> None:
        src = agent_mod.source()

        def one(node):
            self.runner(node).put_file(src, AGENT, 0o755)

        run_parallel(self.nodes, one)

    def sync(self, task) -> None:
        """Workdir → ~/sky_workdir and local file_mounts → their remote paths, on all nodes in parallel."""
        mounts = [m for m in task.file_mounts]
        check_mounts(task)

        def one(node):
            r = self.runner(node)
            if task.workdir:
                r.sync_up(task.workdir, WORKDIR, ignore_files=True)
            for m in mounts:
                import os

                if os.path.isdir(m.source):
                    r.sync_up(m.source, m.remote, ignore_files=False)
                else:
                    with open(m.source, "rb") as f:
                        r.put_file(f.read(), m.remote, 0o644)

        run_parallel(self.nodes, one)

    # -- jobs -----------------------------------------------------------------------------------
    def node_env(self, task, rank: int, job_id: int, task_id: str) -> dict[str, str]:
        rec = self.rec
        ips = "\n".join(n.private_ip or n.ip for n in self.nodes)
        gpus = int(_gpu_count(rec.accelerators))
        info = json.dumps({"cluster": rec.name, "cloud": rec.cloud, "region": rec.region, "zone": rec.zone,
                           "num_nodes": rec.num_nodes, "instance_type": rec.instance_type})
        base = {"NODE_RANK": str(rank), "NODE_IPS": ips, "NUM_NODES": str(len(self.nodes)),
                "NUM_GPUS_PER_NODE": str(gpus), "TASK_ID": task_id, "CLUSTER_INFO": info,
                "JOB_ID": str(job_id), "CLUSTER_NAME": rec.name}
        env = {}
        for k, v in base.items():
            env[f"SKYPILOT_{k}"] = v
            env[f"BROKER_{k}"] = v
        env.update(task.env_dict)
        return env

    def submit(self, task, *, job_name: str | None, task_id: str | None = None,
               run_setup: bool = True, extra_env: dict | None = None,
               env_by_rank: dict[int, dict] | None = None) -> int:
        head = self.nodes[0]
        job_id = int(self._agent(head, "next-id")["job_id"])
        task_id = task_id or f"broker-{time.strftime('%Y%m%d-%H%M%S')}_{self.rec.name}_{job_id}"
        setup_key = setup_fingerprint(task) if (run_setup and task.setup) else None

        def one(node):
            payload = {"job_id": job_id, "name": job_name or task.name or "task", "rank": node.rank,
                       "num_nodes": len(self.nodes), "setup": task.setup if run_setup else None,
                       "run": task.run, "env": {**self.node_env(task, node.rank, job_id, task_id), **(extra_env or {}),
                               **((env_by_rank or {}).get(node.rank) or {})},
                       "secret_env": task.secret_dict, "workdir": WORKDIR, "setup_key": setup_key}
            self._agent(node, "submit", stdin=json.dumps(payload).encode())

        run_parallel(self.nodes, one)
        return job_id

    def node_statuses(self, job_id: int | None = None) -> dict[int, list[dict]]:
        """Every node's job list (rank → jobs). An unreachable node maps to None."""
        arg = f"status --job {job_id}" if job_id is not None else "status"

        def one(node):
            try:
                return self._agent(node, arg, timeout=30)["jobs"]
            except NodeUnreachable:
                return None

        res = run_parallel(self.nodes, one)
        return {n.rank: r for n, r in zip(self.nodes, res)}

    def jobs(self) -> list[JobStatus]:
        per = self.node_statuses()
        ids = sorted({j["job_id"] for jobs in per.values() if jobs for j in jobs})
        out = []
        for jid in ids:
            out.append(self._aggregate_from(jid, per))
        return out

    def job(self, job_id: int) -> JobStatus:
        per = self.node_statuses(job_id)
        if not any(jobs for jobs in per.values()):
            from .errors import NotFoundError

            raise NotFoundError(f"cluster {self.rec.name} has no job {job_id}",
                                f"see `broker queue {self.rec.name}`")
        return self._aggregate_from(job_id, per)

    def _aggregate_from(self, jid: int, per: dict) -> JobStatus:
        nodes, meta = [], {}
        for rank, jobs in per.items():
            if jobs is None:
                nodes.append(NodeJob(rank, "UNREACHABLE", None, "node unreachable"))
                continue
            j = next((j for j in jobs if j["job_id"] == jid), None)
            if j is None:
                nodes.append(NodeJob(rank, "UNKNOWN"))
                continue
            nodes.append(NodeJob(rank, j["status"], j.get("exit_code"), j.get("reason")))
            if rank == 0 or not meta:
                meta = j
        return aggregate(jid, nodes, meta)

    def cancel(self, job_ids: list[int] | None) -> list[int]:
        arg = "cancel --all" if not job_ids else "cancel " + " ".join(str(int(j)) for j in job_ids)

        def one(node):
            try:
                return self._agent(node, arg, timeout=60).get("cancelled", [])
            except NodeUnreachable:
                return []

        res = run_parallel(self.nodes, one)
        return sorted({j for r in res for j in r})

    def idle_seconds(self) -> float:
        return min(float(self._agent(n, "idle-seconds")["idle_seconds"]) for n in self.nodes)

    def stream_logs(self, job_id: int, on_line: Callable[[int, str], None], *, follow: bool = True,
                    stop: threading.Event | None = None) -> JobStatus:
        """Stream every node's log of a job until it ends (or only what exists, without follow).
        A node that dies mid-stream is reported as UNREACHABLE within seconds; when any node fails the
        rest of the gang is cancelled so nothing waits forever."""
        stop = stop or threading.Event()
        errors: dict[int, BaseException] = {}
        nodes = self.nodes

        def one(node):
            r = self.fresh_runner(node)
            try:
                cmd = f"{PY} {AGENT} logs {job_id}" + (" --follow" if follow else "")
                res = r.run(cmd, stream=lambda line: on_line(node.rank, line))
                if res.exit_code == 3:
                    errors[node.rank] = BrokerError(f"node {node.rank} has no job {job_id}")
            except NodeUnreachable as exc:
                errors[node.rank] = exc
                stop.set()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[node.rank] = exc
            finally:
                try:
                    r.close()
                except Exception:
                    pass

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        watcher_done = threading.Event()

        def watch():  # a failed node fails the gang: cancel the others so their streams end
            while not watcher_done.wait(1.0):
                if len(nodes) > 1 and not stop.is_set():
                    try:
                        st = self.job(job_id)
                    except BrokerError:
                        continue
                    if st.status in ("FAILED", "FAILED_SETUP") and any(n.status not in TERMINAL for n in st.nodes):
                        self.cancel([job_id])
                if stop.is_set():
                    # a node is gone: cancel the job on the survivors so their streams end
                    try:
                        self.cancel([job_id])
                    except BrokerError:
                        pass
                    return

        w = threading.Thread(target=watch, daemon=True)
        if follow:
            w.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            watcher_done.set()
        st = self.job_or_unreachable(job_id, errors)
        return st

    def job_or_unreachable(self, job_id: int, errors: dict[int, BaseException]) -> JobStatus:
        per = self.node_statuses(job_id)
        for rank, exc in errors.items():
            if isinstance(exc, NodeUnreachable):
                per[rank] = None
        return self._aggregate_from(job_id, per)


def check_mounts(task) -> None:
    """Refuse what sync cannot do, before anything is provisioned."""
    buckets = [m for m in task.file_mounts if m.is_bucket]
    if buckets:
        from .errors import SpecError

        raise SpecError(f"bucket {buckets[0].source} is not supported yet",
                        "mount a local path instead, or copy the data in `setup`", source=task.source,
                        field=f"file_mounts.{buckets[0].remote}")


def setup_fingerprint(task) -> str:
    """Setup is skipped on a reused cluster when this is unchanged (same script, same env, same secrets)."""
    h = hashlib.sha256()
    h.update((task.setup or "").encode())
    h.update(json.dumps(sorted(task.envs)).encode())
    h.update(json.dumps(sorted((k, hashlib.sha256(v.encode()).hexdigest()) for k, v in task.secrets)).encode())
    return h.hexdigest()[:32]


def _gpu_count(acc: str | None) -> float:
    if not acc or ":" not in acc:
        return 0
    try:
        return float(acc.rsplit(":", 1)[1])
    except ValueError:
        return 0

