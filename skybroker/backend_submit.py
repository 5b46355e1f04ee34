"""Getting a job onto every node of a cluster, the same for every provider: the job's environment
(SKYPILOT_*/BROKER_* per node), the setup fingerprint under which a node's agent records a successful setup
and skips it after (the node's record, not the client's, decides), and submission. `GangSubmit` holds these as methods of backend.ClusterRuntime (which supplies `rec`,
`nodes` and `agent`; the job lookups come from backend_jobs.JobQueries).

Gang submission is two-phase and idempotent: the job id is reserved on the head with the caller's submit
token, the job is submitted *held* to every node, then released on every node once all of them have it.
If any node fails to get it, or the caller is interrupted (Ctrl-C, SIGTERM) meanwhile, the nodes that
have it cancel it before the error propagates: no node runs a job the others never got. A held job
that is never released (the client died between the phases) cancels itself on the node. A one-node job
without setup is submitted and followed in one agent call (`run_followed`).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Callable

from . import settings
from .backend_jobs import TERMINAL, JobStatus, NodeJob, aggregate
from .errors import BrokerError
from .failpoints import failpoint
from .runtime.agent_client import AgentError, AgentMissing, AgentOutdated
from .runtime.runner import HostKeyMismatch, NodeUnreachable, run_parallel

WORKDIR = "~/sky_workdir"
# How SKYPILOT_CLUSTER_INFO names the cloud under SkyPilot (str() of its cloud classes); others as ours.
SKYPILOT_CLOUD_NAMES = {"aws": "AWS", "gcp": "GCP", "azure": "Azure", "kubernetes": "Kubernetes", "lambda": "Lambda",
                        "ssh": "SSH"}


def global_task_id(name: str, job_id, managed: bool = False, at: float | None = None) -> str:
    """SKYPILOT_TASK_ID in SkyPilot's own shape (its common_utils.get_global_job_id), which scripts parse:
    `sky-[managed-]YYYY-MM-DD-HH-MM-SS-ffffff_<cluster or job name>_<job id>`."""
    import datetime

    t = datetime.datetime.fromtimestamp(time.time() if at is None else at)
    return f"sky-{'managed-' if managed else ''}{t.strftime('%Y-%m-%d-%H-%M-%S-%f')}_{name}_{job_id}"


class GangSubmit:
    """ClusterRuntime's submission of a job to every node (see the module docstring)."""

    setup_done_on: list[int] | None = None  # set by submit

    def node_env(self, task, rank: int, job_id: int, task_id: str) -> dict[str, str]:
        rec = self.rec
        ips = "\n".join(n.private_ip or n.ip for n in self.nodes)
        gpus = int(_gpu_count(rec.accelerators))
        # SkyPilot's keys are cluster_name, cloud (its class name: AWS, GCP, ...), region, zone (its smoke test
        # `echo "$SKYPILOT_CLUSTER_INFO" | jq .cluster_name`); "cluster", num_nodes, instance_type are ours
        info = json.dumps({"cluster_name": rec.name, "cloud": SKYPILOT_CLOUD_NAMES.get(rec.cloud, rec.cloud),
                           "region": rec.region, "zone": rec.zone, "cluster": rec.name,
                           "num_nodes": rec.num_nodes, "instance_type": rec.instance_type})
        base = {"NODE_RANK": str(rank), "NODE_IPS": ips, "NUM_NODES": str(len(self.nodes)),
                "NUM_GPUS_PER_NODE": str(gpus), "TASK_ID": task_id, "CLUSTER_INFO": info,
                "JOB_ID": str(job_id), "CLUSTER_NAME": rec.name,
                # SkyPilot gives `setup` these names (its smoke test test_launch_with_failing_setup branches on
                # $SKYPILOT_SETUP_NODE_RANK); they hold the same values as the run's
                "SETUP_NODE_RANK": str(rank), "SETUP_NODE_IPS": ips, "SETUP_NUM_GPUS_PER_NODE": str(gpus)}
        env = {}
        for k, v in base.items():
            env[f"SKYPILOT_{k}"] = v
            env[f"BROKER_{k}"] = v
        env.update(task.env_dict)
        return env

    def healed(self, node, call):
        """`call(agent)` on the node; on a node without an agent (a re-imaged host: AgentMissing, nothing
        ran) the agent is installed and `call` made again. Only for submission and its sync, which hold
        the cluster's lock: a `down` removing the agent meanwhile cannot be undone by it."""
        agent = self.agent(node)
        try:
            return call(agent)
        except AgentMissing:
            agent.install()
            return call(agent)

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
                "token": token, "held_seconds": held, "notice": notice, "gang": self._gang(node)}

    def _gang(self, node) -> dict | None:
        """The gang watch of a multi-node job on remote nodes (runtime/agent/gang.py): the other nodes'
        SSH addresses as the nodes reach each other; None for one node, local nodes, or when disabled."""
        grace = settings.get("gang_peer_grace")
        if len(self.nodes) < 2 or grace <= 0 or not self.provider.capabilities.remote:
            return None
        return {"peers": [[n.private_ip or n.ip, int(n.ssh_port or 22)] for n in self.nodes if n.rank != node.rank],
                "grace": grace, "every": max(0.5, min(10.0, grace / 3))}

    def submit(self, task, *, job_name: str | None, task_id: str | None = None, run_setup: bool = True,
               extra_env: dict | None = None, env_by_rank: dict[int, dict] | None = None,
               token: str | None = None, notice: dict | None = None) -> int:
        """The job on every node (see the module docstring); its id. With `run_setup` the task's setup goes
        with its fingerprint to every node, whose agent skips it if it succeeded there before and runs it
        otherwise (a failed or interrupted setup runs again; a job queued behind one still setting up waits
        and then knows). `setup_done_on` is then the ranks whose agent had that setup done when the job
        arrived (None: no setup, or an agent that does not say)."""
        head = self.nodes[0]
        if len(self.nodes) > 1:
            self.end_broken_gangs()
        job_id, _ = self.healed(head, lambda a: a.next_id(token))
        task_id = task_id or global_task_id(self.rec.name, job_id)
        setup_key = setup_fingerprint(task) if (run_setup and task.setup) else None
        gang = len(self.nodes) > 1
        held = settings.get("held_job_timeout") if gang else None
        delivered: set[int] = set()
        done: dict[int, bool] = {}
        self.setup_done_on = None

        def one(node):
            payload = self._payload(task, node, job_id, job_name=job_name, task_id=task_id, run_setup=run_setup,
                                    extra_env=extra_env, env_by_rank=env_by_rank, token=token, held=held,
                                    notice=notice, setup_key=setup_key)
            failpoint(f"submit-node-{node.rank}")
            try:
                answer = self.healed(node, lambda a: a.submit(payload))
            except AgentError as exc:
                if "unknown job field" not in exc.message:
                    raise
                self.agent(node).install()  # an agent installed by an older broker: brought up to date
                answer = self.healed(node, lambda a: a.submit(payload))
            delivered.add(node.rank)
            if "setup_done" in answer:  # an agent from before it answered this says nothing
                done[node.rank] = bool(answer["setup_done"])

        try:
            run_parallel(self.nodes, one)
            if gang:
                run_parallel(self.nodes, lambda n: self.agent(n).release(job_id))
        except BaseException as exc:
            undone = self._cancel_quietly(job_id)
            raise SubmitFailed(job_id, sorted(delivered), undone, exc) from exc
        if setup_key and len(done) == len(self.nodes):
            self.setup_done_on = sorted(r for r, d in done.items() if d)
        return job_id

    def end_broken_gangs(self) -> list[int]:
        """Cancel, where it still runs, every job that already failed on another node (nobody followed it:
        `-d`): else the new job would start at once on the node that failed and on the others only once
        their part of the old one ends, out of step. Under SkyPilot a job failing on one node ends on all
        (task_codegen.py get_or_fail: ray.cancel the rest). Best effort: a node not answering is no reason
        not to submit (submission itself says so)."""
        try:
            per = self.node_statuses()
        except BrokerError:
            return []
        seen: dict[int, list[str]] = {}
        for jobs in per.values():
            for j in jobs or ():
                seen.setdefault(j["job_id"], []).append(j["status"])
        broken = sorted(jid for jid, sts in seen.items()
                        if any(s in ("FAILED", "FAILED_SETUP") for s in sts) and any(s not in TERMINAL for s in sts))
        if broken:
            try:
                self.cancel(broken)
            except BrokerError:
                pass
        return broken

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
        task_id = global_task_id(self.rec.name, "{job_id}")  # the agent fills in the id it allocates
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


class SubmitFailed(BrokerError):
    """Submission did not reach every node (or was interrupted); the nodes that had the job cancelled it."""

    def __init__(self, job_id: int | None, delivered: list[int], undone: bool, cause: BaseException):
        self.job_id, self.delivered, self.undone, self.cause = job_id, delivered, undone, cause
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else (
            getattr(cause, "message", None) or str(cause) or type(cause).__name__)
        if job_id is None:  # a one-call submit (run_followed): the node allocates the id
            what = "nothing runs" if undone or isinstance(cause, HostKeyMismatch) else \
                "the node may have it; see `broker queue`"  # a changed host key: nothing was sent
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
