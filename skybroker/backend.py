"""A cluster's runtime, the same for every provider: `ClusterRuntime` holds the cluster's command runners
(local sandbox or SSH, one per node) and node agents, and brings the cluster up: waiting for the nodes,
installing the agent, workdir/file-mount sync, the task's container. Talks to nodes only through command
runners, and to the node agent only through runtime/agent_client.py. Its job methods come from two
mixins: submission (backend_submit.py: two-phase, idempotent gang submission) and the jobs on the nodes
(backend_jobs.py: status aggregation, log streaming, cancel). The names callers import from here
(JobStatus, SubmitFailed, …) are re-exported.
"""
from __future__ import annotations

import os
import threading
import time

from . import settings
from .backend_jobs import JobQueries, JobStatus, NodeJob, aggregate
from .backend_submit import WORKDIR, GangSubmit, SubmitFailed, setup_fingerprint
from .errors import BrokerError
from .runtime.agent_client import NODE_DIR, AgentClient
from .runtime.runner import AuthRefused, NodeUnreachable, run_parallel
from .state import ClusterRecord, NodeRecord


AUTH_REFUSALS = 3  # refusals of our SSH key in a row before bring-up believes them (see wait_ready)



def user_facing(runner, rec, node):
    """A runner named for messages with the user's cluster name (`dev-node-1`, as `broker hostkeys forget dev
    --node 1` wants it), not the name on the cloud the provider was given."""
    if hasattr(runner, "node_id"):
        runner.node_id = f"{rec.name}-node-{node.rank}"
    return runner

class NodeLost(NodeUnreachable):
    """The cloud says the node's instance is gone (preempted, terminated) — not just unreachable."""


class ClusterRuntime(GangSubmit, JobQueries):
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
                r = self.provider.runner(self.rec.cloud_name, node)
                user_facing(r, self.rec, node)
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
            infos = self.provider.query(self.rec.cloud_name, self.rec.region)
        except BrokerError:
            return []
        alive = {i.instance_id for i in infos if i.state == RUNNING}
        return [n.rank for n in self.nodes if n.instance_id not in alive]

    # -- bring-up -----------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None, check_every: float = 5.0) -> None:
        """Wait until every node answers a command (SSH up), at most `wait_ready` seconds. While nodes do
        not answer, the provider is asked every few seconds whether their instances still exist: a node
        preempted meanwhile raises NodeLost at once instead of after the timeout. A changed host key is
        never waited out, nor is a key that cannot be loaded. A host that answers but refuses our key fails
        the wait after AUTH_REFUSALS refusals in a row spanning `ssh_auth_grace` seconds (a fresh cloud VM
        refuses keys until cloud-init installs them; an SSH pool's hosts have theirs already: no grace).
        Ctrl-C stops waiting at once (the probes notice the stop flag)."""
        timeout = settings.get("wait_ready") if timeout is None else timeout
        deadline = time.time() + timeout
        grace = settings.get("ssh_auth_grace") if self.provider.keys_at_boot else 0.0
        stop = threading.Event()
        errors: dict[int, BaseException] = {}
        ready: set[int] = set()

        def one(node):
            refused: list[float] = []  # when the host refused our key, in a row
            try:
                while not stop.is_set():
                    try:
                        if self.runner(node).alive(timeout=10):
                            ready.add(node.rank)
                            return
                        refused.clear()
                    except AuthRefused:
                        refused.append(time.time())
                        if (len(refused) >= AUTH_REFUSALS and refused[-1] - refused[0] >= grace) or \
                                time.time() > deadline:
                            raise
                    except NodeUnreachable:
                        refused.clear()
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

    def host_key(self, node: NodeRecord) -> tuple[str, str] | None:
        """The node's host key as pinned here (type, base64), once a connection was made."""
        r = self.runner(node)
        return r.known_hosts.get(r.instance_id)

    def install_peers(self) -> None:
        """Node-to-node SSH on a multi-node cluster (runtime/peers.py), where the provider declares it."""
        from .runtime import peers

        peers.install(self)

    def sync(self, task, on_event=lambda k, m: None) -> None:
        """Workdir → ~/sky_workdir (a local folder synced, or a git repository cloned there: gitclone.py)
        and local file_mounts → their remote paths, on all nodes in parallel.
        The workdir and the file mounts' targets (local ones, bucket COPYs) are claimed first (recorded as
        ours if they do not exist yet: the outermost directory their creation makes), so a teardown of a node
        we do not own removes them, and never a file or directory the user had there."""
        git = getattr(task, "git_url", None)
        if git:
            from .runtime import gitclone

            creds = gitclone.credentials(task)  # read once on the client; the key crosses on stdin only
        claims = ([WORKDIR] if task.workdir else []) + [m.remote for m in task.file_mounts
                                                        if not m.is_bucket or m.mode == "COPY"]

        def one(node):
            r = self.runner(node)
            if claims:
                self.healed(node, lambda a: a.claim(claims))  # a re-imaged host gets its agent again
            if git:
                gitclone.clone(r, self.agent(node, r), task, creds, f"{self.rec.name}-node-{node.rank}")
            if task.workdir:
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


def local_homes(cluster: str | None) -> list | None:
    """The node directories of a cluster whose nodes are all directories on this machine, else None."""
    from . import state

    rec = state.get_cluster(cluster) if cluster else None
    return ClusterRuntime(rec).local_homes() if rec is not None else None


__all__ = ["ClusterRuntime", "JobStatus", "NodeJob", "NodeLost", "SubmitFailed", "aggregate", "setup_fingerprint",
           "WORKDIR", "NODE_DIR"]
