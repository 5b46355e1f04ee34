"""A cluster's jobs once they are on its nodes, the same for every provider: one status for a gang from
every node's (`aggregate`: a gang fails if any node fails), listing a cluster's jobs, reading and
streaming their logs from every node, cancelling them, and the nodes' idleness. A job seen finished on a
node is recorded (state: node_jobs), so a node unreachable later keeps the outcome it had: only a job
that had not ended there becomes UNREACHABLE (and fails the gang). `JobQueries` holds these
as methods of backend.ClusterRuntime (which supplies `rec`, `nodes`, `runner` and `agent`); the
JobStatus/NodeJob records it returns are what the rest of the broker (clusters.py, render/, the jobs
controller) reads.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable

from .errors import BrokerError, NotFoundError
from .runtime import agent as agent_mod
from .runtime.runner import NodeUnreachable, run_parallel
from .state import NodeRecord

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
    notice: str | None = None  # a node got the cloud's preemption notice (the job was stopped for it)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def reason(self) -> str | None:
        """Why the job failed, from its first failing node's reason ("node N: ..." on a gang), or None."""
        failing = [n for n in self.nodes if n.status in ("FAILED", "FAILED_SETUP", "UNREACHABLE") and n.reason]
        if self.status not in ("FAILED", "FAILED_SETUP") or not failing:
            return None
        # the cause first: a crash, then a failed command, then a node the others' failure stopped
        failing.sort(key=lambda n: (n.reason.startswith("stopped"), bool(_EXITED.search(n.reason)), n.rank))
        why = " ".join(failing[0].reason.split())  # one line whatever the node said
        return why if len(self.nodes) == 1 else f"node {failing[0].rank}: {why}"

    @property
    def crash(self) -> str | None:
        """`reason` when it says more than the exit code (the node's runner crashed, the node rebooted, the
        gang watch stopped it...), else None: what a follower prints after the job's status."""
        why = self.reason
        return None if why is None or _EXITED.search(why) else why


_EXITED = re.compile(r"(?:^|: )(?:run|setup) exited with code -?\d+$")


# wire.py names a dataclass by module:qualname. These two are re-exported by backend.py and keep its name
# on the wire, so a client and a server from before and after they moved here still understand each other.
NodeJob.__module__ = JobStatus.__module__ = "skybroker.backend"


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
    if failing:  # none when no failing node has one (its runner crashed, it was lost): never an invented 1
        exit_code = next((n.exit_code for n in failing if n.exit_code not in (None, 0)),
                         1 if any(n.exit_code is not None for n in failing) else None)
    elif status == "SUCCEEDED":
        exit_code = 0
    return JobStatus(job_id, meta.get("name"), status, exit_code, tuple(sorted(per_node, key=lambda n: n.rank)),
                     meta.get("submitted_at"), meta.get("started_at"), meta.get("ended_at"), meta.get("notice"))


class JobQueries:
    """ClusterRuntime's questions to every node about its jobs, and cancel (see the module docstring).
    `lost_ranks` (set by `skip_lost`) are never asked; every rank found unreachable (or skipped) is added
    to `unreached`, which `unreached_warnings` names for the user."""

    lost_ranks: frozenset = frozenset()

    def skip_lost(self) -> None:
        """A DEGRADED cluster: the nodes its provider reports gone are not asked again (each would wait out
        a connect timeout); they count as unreachable."""
        self.lost_ranks = frozenset(self.lost_nodes())

    def _unreached(self) -> set:
        # called from the per-node threads at once: one atomic setdefault (a check, then an assignment,
        # let two threads each make a set, and one node's rank was lost from the warnings)
        return self.__dict__.setdefault("_unreached_ranks", set())

    def unreached_warnings(self, what: str) -> list[str]:
        """One warning per node found unreachable so far, naming it: "node 1 (10.0.0.6) of cluster c
        could not be reached: <what>"."""
        ips = {n.rank: n.ip for n in self.nodes}
        return [f"node {r} ({ips.get(r, '?')}) of cluster {self.rec.name} could not be reached: {what}"
                for r in sorted(self._unreached())]

    def node_statuses(self, job_id: int | None = None, lost=()) -> dict[int, list[dict] | None]:
        """Every node's job list (rank → jobs). An unreachable node maps to None, and so do the ranks in
        `lost` (known unreachable already: not asked again, which would wait out a connect timeout)."""
        lost = set(lost) | self.lost_ranks

        def one(node):
            if node.rank in lost:
                self._unreached().add(node.rank)
                return None
            try:
                return self.agent(node).status(job_id)
            except NodeUnreachable:
                self._unreached().add(node.rank)
                return None

        res = run_parallel(self.nodes, one)
        return {n.rank: r for n, r in zip(self.nodes, res)}

    def jobs(self) -> list[JobStatus]:
        per = self.node_statuses()
        ids = sorted({j["job_id"] for jobs in per.values() if jobs for j in jobs})
        finished = self._finished(per)
        return [self._aggregate_from(jid, per, finished) for jid in ids]

    def job(self, job_id: int) -> JobStatus:
        per = self.node_statuses(job_id)
        if not any(jobs for jobs in per.values()):
            raise NotFoundError(f"cluster {self.rec.name} has no job {job_id}", f"see `broker queue {self.rec.name}`")
        return self._aggregate_from(job_id, per)

    def _finished(self, per: dict) -> dict[tuple[int, int], NodeJob]:
        """(rank, job id) → the job as it finished on that node, for every job seen finished there, now or
        before: recorded in the state (by the node's instance) the first time it is read, since a finished
        job cannot change, and a node unreachable afterwards still had it end that way."""
        from . import state

        iid = {n.rank: n.instance_id for n in self.nodes}
        known = state.finished_node_jobs(self.rec.name)
        new = [(iid[rank], j["job_id"], j["status"], j.get("exit_code"), j.get("reason"))
               for rank, jobs in per.items() if rank in iid for j in (jobs or ())
               if j["status"] in TERMINAL and (iid[rank], j["job_id"]) not in known]
        if new:
            state.add_finished_node_jobs(self.rec.name, new)
            known.update({(i, jid): (st, code, why) for i, jid, st, code, why in new})
        by_iid = {i: rank for rank, i in iid.items()}
        return {(by_iid[i], jid): NodeJob(by_iid[i], *row) for (i, jid), row in known.items() if i in by_iid}

    def _aggregate_from(self, jid: int, per: dict, finished: dict | None = None) -> JobStatus:
        if finished is None:
            finished = self._finished(per)
        nodes, meta = [], {}
        for rank, jobs in per.items():
            if jobs is None:  # unreachable now: how the job ended there, if it had, else UNREACHABLE
                nodes.append(finished.get((rank, jid)) or NodeJob(rank, "UNREACHABLE", None, "node unreachable"))
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
        """Cancel on every node that answers (an unreachable one is added to `unreached`)."""
        lost = set(lost) | self.lost_ranks

        def one(node):
            if node.rank in lost:  # known unreachable: nothing to cancel there that we could reach
                self._unreached().add(node.rank)
                return []
            try:
                return self.agent(node).cancel(job_ids or None)
            except NodeUnreachable:
                self._unreached().add(node.rank)
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
        errors: dict[int, BaseException] = {r: NodeUnreachable(f"{self.rec.name}-node-{r}", "lost")
                                            for r in self.lost_ranks}  # a DEGRADED cluster's: not streamed
        nodes = [n for n in self.nodes if n.rank not in self.lost_ranks]

        ended = {n.rank: threading.Event() for n in nodes}  # waited on, not join()ed: an interrupted join
        # marks a running thread as stopped (CPython's bpo-45274 handling), so it could not be interrupted

        def one(node):
            try:
                r = self.runner(node)  # the node's one connection: the stream is another channel on it (SSH)
                if not self.agent(node, r).follow_log(job_id, lambda line: on_line(node.rank, line), follow=follow):
                    errors[node.rank] = BrokerError(f"node {node.rank} has no job {job_id}")
            except NodeUnreachable as exc:
                errors[node.rank] = exc
                self._unreached().add(node.rank)
                stop.set()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[node.rank] = exc
            finally:
                ended[node.rank].set()

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        watcher_done = threading.Event()

        def watch():  # a failed node fails the gang: cancel the others so their streams end
            while not watcher_done.wait(1.0):
                try:
                    if len(self.nodes) > 1 and not stop.is_set():
                        st = self.job(job_id)
                        if st.status in ("FAILED", "FAILED_SETUP") and any(n.status not in TERMINAL for n in st.nodes):
                            self.cancel([job_id])
                    if stop.is_set():  # a node is gone: cancel the job on the survivors so their streams end
                        self.cancel([job_id], lost=_lost(errors))
                        return
                except Exception:  # noqa: BLE001 - best effort in the background (a node cut meanwhile); the
                    if stop.is_set():  # followers report what happened, and a thread's traceback is no message
                        return

        w = threading.Thread(target=watch, daemon=True)
        if follow:
            w.start()
        try:
            for ev in ended.values():
                while not ev.wait(0.2):
                    pass
        except BaseException:  # interrupted (Ctrl-C; a server's client gone): the followers stop too, so no
            from .interrupts import interrupt  # `logs --follow` is left on a node until the job ends

            stop.set()
            for t in threads:
                interrupt(t)
            raise
        finally:
            watcher_done.set()
        return self.job_or_unreachable(job_id, errors)

    def job_or_unreachable(self, job_id: int, errors: dict[int, BaseException]) -> JobStatus:
        return self._aggregate_from(job_id, self.node_statuses(job_id, lost=_lost(errors)))


def _lost(errors: dict[int, BaseException]) -> set[int]:
    """The ranks whose stream ended with the node unreachable."""
    return {rank for rank, exc in list(errors.items()) if isinstance(exc, NodeUnreachable)}
