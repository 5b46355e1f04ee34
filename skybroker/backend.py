"""A cluster's runtime, the same for every provider: node agents, workdir/file-mount sync, gang job
submission, log streaming, status aggregation, cancel. Talks to nodes only through command runners
(local sandbox or SSH), and to the node agent only through runtime/agent_client.py.

Gang submission is two-phase and idempotent: the job id is reserved on the head with the caller's submit
token, the job is submitted *held* to every node, then released on every node once all of them have it.
If any node fails to get it, or the caller is interrupted (Ctrl-C, SIGTERM) meanwhile, the nodes that
have it cancel it before the error propagates: no node runs a job the others never got. A held job
that is never released (the client died between the phases) cancels itself on the node.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import settings
from .errors import BrokerError, NotFoundError
from .failpoints import failpoint
from .runtime import agent as agent_mod
from .runtime.agent_client import NODE_DIR, AgentClient, AgentOutdated
from .runtime.runner import HostKeyMismatch, NodeUnreachable, run_parallel
from .state import ClusterRecord, NodeRecord

WORKDIR = "~/sky_workdir"
TERMINAL = agent_mod.TERMINAL_STATUSES


class NodeLost(NodeUnreachable):
    """The cloud says the node's instance is gone (preempted, terminated) — not just unreachable."""


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
    notice: str | None = None  # a node got the cloud's preemption notice (the job was stopped for it)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def aggregate(job_id: int, per_node: list[NodeJob], meta: dict | None = None) -> JobStatus:
    """One status for a job from every node's: a gang fails if any node fails."""
    meta = meta or {}
    known = [n for n in per_node if n.status != "UNKNOWN"]
    if known and all(n.status in TERMINAL for n in known):
        per_node = known  # a node that never had the job (its submit failed, it was cancelled) is no reason to wait
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
                     meta.get("submitted_at"), meta.get("started_at"), meta.get("ended_at"), meta.get("notice"))


class ClusterRuntime:
    def __init__(self, rec: ClusterRecord):
        from .clouds import registry

        self.rec = rec
        self.provider = registry.get(rec.cloud)
        self._runners: dict[int, object] = {}
        self._lock = threading.Lock()

    # -- runners and agents -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[NodeRecord]:
        return sorted(self.rec.nodes, key=lambda n: n.rank)

    def runner(self, node: NodeRecord):
        with self._lock:
            r = self._runners.get(node.rank)
            if r is None:
                r = self.provider.runner(self.rec.name, node)
                self._runners[node.rank] = r
            return r

    def agent(self, node: NodeRecord, runner=None) -> AgentClient:
        return AgentClient(runner or self.runner(node), self.provider.agent_python(),
                           f"{self.rec.name} node {node.rank}")

    def local_homes(self) -> list | None:
        """Every node's directory when all are directories on this machine (the local cloud), else None:
        what runtime/channel.py watches and reads instead of starting an agent per look."""
        homes = [getattr(self.runner(n), "home", None) if hasattr(self.runner(n), "local_home") else None
                 for n in self.nodes]
        return homes if homes and all(h is not None for h in homes) else None

    def close(self) -> None:
        for r in self._runners.values():
            try:
                r.close()
            except Exception:
                pass
        self._runners.clear()

    def lost_nodes(self) -> list[int]:
        """Ranks whose instance the provider no longer reports running (empty if it cannot tell)."""
        from .clouds.base import RUNNING

        try:
            infos = self.provider.query(self.rec.name, self.rec.region)
        except BrokerError:
            return []
        alive = {i.instance_id for i in infos if i.state == RUNNING}
        return [n.rank for n in self.nodes if n.instance_id not in alive]

    # -- bring-up -----------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None, check_every: float = 5.0) -> None:
        """Wait until every node answers a command (SSH up), at most `wait_ready` seconds. While nodes do
        not answer, the provider is asked every few seconds whether their instances still exist: a node
        preempted meanwhile raises NodeLost at once instead of after the timeout. A changed host key is
        never waited out. Ctrl-C stops waiting at once (the probes notice the stop flag)."""
        timeout = settings.get("wait_ready") if timeout is None else timeout
        deadline = time.time() + timeout
        stop = threading.Event()
        errors: dict[int, BaseException] = {}
        ready: set[int] = set()

        def one(node):
            try:
                while not stop.is_set():
                    try:
                        if self.runner(node).alive(timeout=10):
                            ready.add(node.rank)
                            return
                    except NodeUnreachable:
                        pass
                    if time.time() > deadline:
                        raise NodeUnreachable(f"{self.rec.name}-node-{node.rank}", f"not reachable after {timeout:.0f}s")
                    stop.wait(1.0)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                errors[node.rank] = exc
                stop.set()

        threads = [threading.Thread(target=one, args=(n,), daemon=True, name=f"wait-{n.rank}") for n in self.nodes]
        for t in threads:
            t.start()
        next_check = time.time() + check_every
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
                if time.time() >= next_check and not errors and len(ready) < len(self.nodes):
                    next_check = time.time() + check_every
                    lost = self.lost_nodes()
                    if lost:
                        stop.set()
                        raise NodeLost(f"{self.rec.name}-node-{lost[0]}", "its instance is gone (preempted or "
                                       "terminated) while waiting for it to accept commands")
        except BaseException:
            stop.set()
            raise
        if errors:
            raise errors[min(errors)]

    def install_agent(self) -> None:
        run_parallel(self.nodes, lambda node: self.agent(node).install())

    def sync(self, task, on_event=lambda k, m: None) -> None:
        """Workdir → ~/sky_workdir (a local folder synced, or a git repository cloned there: gitclone.py)
        and local file_mounts → their remote paths, on all nodes in parallel.
        The workdir is claimed first (recorded as ours if it does not exist yet), so a teardown of a node
        we do not own removes it, and never a directory the user had there."""
        git = getattr(task, "git_url", None)
        if git:
            from .runtime import gitclone

            creds = gitclone.credentials(task)  # read once on the client; the key crosses on stdin only

        def one(node):
            r = self.runner(node)
            if git:
                gitclone.clone(r, self.agent(node, r), task, creds, f"{self.rec.name}-node-{node.rank}")
            if task.workdir:
                self.agent(node, r).claim([WORKDIR])
                r.sync_up(task.workdir, WORKDIR, ignore_files=True)
            for m in (m for m in task.file_mounts if not m.is_bucket):
                if os.path.isdir(m.source):
                    r.sync_up(m.source, m.remote, ignore_files=False)
                else:
                    with open(m.source, "rb") as f:
                        r.put_file(f.read(), m.remote, 0o644)

        run_parallel(self.nodes, one)
        if any(m.is_bucket for m in task.file_mounts):
            from .storage import mounts

            mounts.sync(self, task, on_event)

    # -- the task's container (`image_id: docker:...`, containers.py) ---------------------------------
    def container_image(self, task) -> str | None:
        """The image the task's setup/run run in on this cluster (None: on the node itself)."""
        from . import containers

        if not containers.runs_in_container(self.provider):
            return None
        return containers.image_for(task, self.rec.cloud, self.rec.region)

    def check_container_engine(self, image: str) -> None:
        """Every node has a usable docker/podman (an early, clear error before anything is synced)."""
        from . import containers
        from .runtime.agent_client import ContainerFailed

        try:
            run_parallel(self.nodes, lambda n: self.agent(n).container_check())
        except ContainerFailed as exc:
            raise containers.error(exc, image) from None

    def start_containers(self, task, image: str) -> None:
        """Pull the image and start (or reuse) the container on every node."""
        from . import containers
        from .runtime.agent_client import ContainerFailed

        spec, password = containers.spec_for(task, image)
        try:
            run_parallel(self.nodes, lambda n: self.agent(n).container_up(spec, password))
        except ContainerFailed as exc:
            raise containers.error(exc, image) from None

    def restart_containers(self) -> None:
        """After a start: each node's recorded container runs again (no-op on nodes without one)."""
        from .runtime.agent_client import ContainerFailed

        try:
            run_parallel(self.nodes, lambda n: self.agent(n).container_restart())
        except ContainerFailed as exc:
            raise BrokerError(f"restarting the task's container failed on {exc.label}: {exc.detail}") from None

    # -- jobs ---------------------------------------------------------------------------------------
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

    def find_token(self, token: str) -> int | None:
        """The job a submit token already started on this cluster (released on every node), or None.
        A job only some nodes have, or still held, is cancelled there: it never ran, so it is safe to
        submit again."""
        per = run_parallel(self.nodes, lambda n: self.agent(n).status(token=token))
        have = [jobs[0] for jobs in per if jobs]
        if not have:
            return None
        job_id = have[0]["job_id"]
        if len(have) == len(self.nodes) and not any(j["held"] for j in have):
            return job_id
        if len(have) == len(self.nodes) and all(j["status"] == "PENDING" for j in have):
            run_parallel(self.nodes, lambda n: self.agent(n).release(job_id))  # every node has it: go
            return job_id
        self._cancel_quietly(job_id)
        return None

    def _payload(self, task, node, job_id, *, job_name, task_id, run_setup, extra_env, env_by_rank, token, held,
                 notice, setup_key) -> dict:
        return {"job_id": job_id, "name": job_name or task.name or "task", "rank": node.rank,
                "num_nodes": len(self.nodes), "setup": task.setup if run_setup else None,
                "run": task.run, "env": {**self.node_env(task, node.rank, job_id, task_id), **(extra_env or {}),
                                         **((env_by_rank or {}).get(node.rank) or {})},
                "secret_env": task.secret_dict, "workdir": WORKDIR, "setup_key": setup_key,
                "token": token, "held_seconds": held, "notice": notice}

    def submit(self, task, *, job_name: str | None, task_id: str | None = None, run_setup: bool = True,
               extra_env: dict | None = None, env_by_rank: dict[int, dict] | None = None,
               token: str | None = None, notice: dict | None = None) -> int:
        head = self.nodes[0]
        job_id, _ = self.agent(head).next_id(token)
        task_id = task_id or f"broker-{time.strftime('%Y%m%d-%H%M%S')}_{self.rec.name}_{job_id}"
        setup_key = setup_fingerprint(task) if (run_setup and task.setup) else None
        gang = len(self.nodes) > 1
        held = settings.get("held_job_timeout") if gang else None
        delivered: set[int] = set()

        def one(node):
            payload = self._payload(task, node, job_id, job_name=job_name, task_id=task_id, run_setup=run_setup,
                                    extra_env=extra_env, env_by_rank=env_by_rank, token=token, held=held,
                                    notice=notice, setup_key=setup_key)
            failpoint(f"submit-node-{node.rank}")
            self.agent(node).submit(payload)
            delivered.add(node.rank)

        try:
            run_parallel(self.nodes, one)
            if gang:
                run_parallel(self.nodes, lambda n: self.agent(n).release(job_id))
        except BaseException as exc:
            undone = self._cancel_quietly(job_id)
            raise SubmitFailed(job_id, sorted(delivered), undone, exc) from exc
        return job_id

    def run_followed(self, task, *, job_name: str | None, on_line: Callable[[int, str], None],
                     on_start: Callable[[int], None] = lambda job_id: None) -> JobStatus:
        """A one-node cluster's job (no setup) submitted and followed in ONE agent call: the node allocates
        the id (under a fresh submit token) and streams the log, then the job's final row. Ctrl-C once
        `on_start` was called leaves the job running (KeyboardInterrupt propagates); before it, or any
        failure before the job was on the node, cancels what the token may have started (SubmitFailed).
        The stream ending early (the node died) gives the job as UNREACHABLE."""
        import uuid

        node = self.nodes[0]
        token = "run-" + uuid.uuid4().hex
        task_id = f"broker-{time.strftime('%Y%m%d-%H%M%S')}_{self.rec.name}_{{job_id}}"
        payload = self._payload(task, node, "{job_id}", job_name=job_name, task_id=task_id, run_setup=False,
                                extra_env=None, env_by_rank=None, token=token, held=None, notice=None, setup_key=None)
        payload["job_id"] = None
        ids = [f"{p}_{k}" for k in ("JOB_ID", "TASK_ID") for p in ("SKYPILOT", "BROKER")]
        payload["id_env"] = {k: payload["env"].pop(k) for k in ids
                             if "{job_id}" in payload["env"].get(k, "") and k not in task.env_dict}
        started: list[int] = []

        def start(job_id: int) -> None:
            started.append(job_id)
            on_start(job_id)

        agent = self.agent(node)

        def follow(line: str) -> None:
            on_line(node.rank, line)

        try:
            failpoint("submit-node-0")
            try:
                job_id, row = agent.run(payload, follow, start)
            except AgentOutdated:  # a cluster launched by an older broker: bring its agent up to date
                agent.install()
                job_id, row = agent.run(payload, follow, start)
        except NodeUnreachable as exc:
            if not started:
                raise SubmitFailed(None, [], False, exc) from exc
            return self.job_or_unreachable(started[0], {node.rank: exc})
        except BaseException as exc:
            if started:
                raise
            undone = self._cancel_token(token)
            raise SubmitFailed(None, [], undone, exc) from exc
        if row is None:
            return self.job_or_unreachable(job_id, {})
        return aggregate(job_id, [NodeJob(node.rank, row["status"], row.get("exit_code"), row.get("reason"))], row)

    def _cancel_token(self, token: str) -> bool:
        """Cancel whatever a submit token started on the head; True if nothing of it is left."""
        try:
            jobs = self.agent(self.nodes[0]).status(token=token)
            if jobs:
                self.agent(self.nodes[0]).cancel([j["job_id"] for j in jobs], timeout=30)
            return True
        except BrokerError:
            return False

    def _cancel_quietly(self, job_id: int) -> bool:
        """Cancel a job on every node that can be reached; True if no node is known to still have it."""
        ok = True

        def one(node):
            nonlocal ok
            try:
                self.agent(node).cancel([job_id], timeout=30)
            except NodeUnreachable:
                ok = False
            except BrokerError:
                ok = False

        try:
            run_parallel(self.nodes, one)
        except BaseException:
            return False
        return ok

    def node_statuses(self, job_id: int | None = None, lost=()) -> dict[int, list[dict] | None]:
        """Every node's job list (rank → jobs). An unreachable node maps to None, and so do the ranks in
        `lost` (known unreachable already: not asked again, which would wait out a connect timeout)."""
        def one(node):
            if node.rank in lost:
                return None
            try:
                return self.agent(node).status(job_id)
            except NodeUnreachable:
                return None

        res = run_parallel(self.nodes, one)
        return {n.rank: r for n, r in zip(self.nodes, res)}

    def jobs(self) -> list[JobStatus]:
        per = self.node_statuses()
        ids = sorted({j["job_id"] for jobs in per.values() if jobs for j in jobs})
        return [self._aggregate_from(jid, per) for jid in ids]

    def job(self, job_id: int) -> JobStatus:
        per = self.node_statuses(job_id)
        if not any(jobs for jobs in per.values()):
            raise NotFoundError(f"cluster {self.rec.name} has no job {job_id}", f"see `broker queue {self.rec.name}`")
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

    def cancel(self, job_ids: list[int] | None, lost=()) -> list[int]:
        def one(node):
            if node.rank in lost:  # known unreachable: nothing to cancel there that we could reach
                return []
            try:
                return self.agent(node).cancel(job_ids or None)
            except NodeUnreachable:
                return []

        res = run_parallel(self.nodes, one)
        return sorted({j for r in res for j in r})

    def idle_seconds(self) -> float:
        return min(self.agent(n).idle_seconds() for n in self.nodes)

    def read_log(self, node: NodeRecord, job_id: int, offset: int) -> tuple[bytes, int]:
        data, nxt, _ = self.agent(node).read_log(job_id, offset)
        return data, nxt

    def stream_logs(self, job_id: int, on_line: Callable[[int, str], None], *, follow: bool = True,
                    stop: threading.Event | None = None) -> JobStatus:
        """Stream every node's log of a job until it ends (or only what exists, without follow).
        A node that dies mid-stream is reported as UNREACHABLE within seconds; when any node fails the
        rest of the gang is cancelled so nothing waits forever."""
        stop = stop or threading.Event()
        errors: dict[int, BaseException] = {}
        nodes = self.nodes

        def one(node):
            r = self.runner(node)  # the node's one connection: the stream is another channel on it (SSH)
            try:
                if not self.agent(node, r).follow_log(job_id, lambda line: on_line(node.rank, line), follow=follow):
                    errors[node.rank] = BrokerError(f"node {node.rank} has no job {job_id}")
            except NodeUnreachable as exc:
                errors[node.rank] = exc
                stop.set()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[node.rank] = exc

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
                    try:  # a node is gone: cancel the job on the survivors so their streams end
                        self.cancel([job_id], lost=_lost(errors))
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
        return self.job_or_unreachable(job_id, errors)

    def job_or_unreachable(self, job_id: int, errors: dict[int, BaseException]) -> JobStatus:
        return self._aggregate_from(job_id, self.node_statuses(job_id, lost=_lost(errors)))


def _lost(errors: dict[int, BaseException]) -> set[int]:
    """The ranks whose stream ended with the node unreachable."""
    return {rank for rank, exc in list(errors.items()) if isinstance(exc, NodeUnreachable)}


def local_homes(cluster: str | None) -> list | None:
    """The node directories of a cluster whose nodes are all directories on this machine, else None."""
    from . import state

    rec = state.get_cluster(cluster) if cluster else None
    return ClusterRuntime(rec).local_homes() if rec is not None else None


class SubmitFailed(BrokerError):
    """Submission did not reach every node (or was interrupted); the nodes that had the job cancelled it."""

    def __init__(self, job_id: int | None, delivered: list[int], undone: bool, cause: BaseException):
        self.job_id, self.delivered, self.undone, self.cause = job_id, delivered, undone, cause
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else (
            getattr(cause, "message", None) or str(cause) or type(cause).__name__)
        if job_id is None:  # a one-call submit (run_followed): the node allocates the id
            what = "nothing runs" if undone else "the node may have it; see `broker queue`"
            super().__init__(f"submitting the job failed ({why}): {what}")
            if isinstance(cause, HostKeyMismatch):
                self.hint = cause.hint
            return
        if not delivered:
            what = "no node received it"
        elif undone:
            what = f"node(s) {', '.join(map(str, delivered))} had received it and cancelled it; nothing runs"
        else:
            what = (f"node(s) {', '.join(map(str, delivered))} had received it; cancelling it there did not "
                    "succeed everywhere")
        super().__init__(f"submitting job {job_id} failed ({why}): {what}")
        if isinstance(cause, HostKeyMismatch):
            self.hint = cause.hint


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


__all__ = ["ClusterRuntime", "JobStatus", "NodeJob", "NodeLost", "SubmitFailed", "aggregate", "setup_fingerprint",
           "WORKDIR", "NODE_DIR"]
