"""The `ssh` cloud: node pools the user already has (BROKER_HOME/ssh_node_pools.yaml, see ssh_pools.py),
addressed as `--infra ssh/<pool>`. "Provisioning" allocates free hosts of the pool to the cluster;
"terminating" cancels the cluster's jobs, removes what skybroker put on the hosts and frees them. The
machines themselves are never powered off. A host serves one cluster at a time.
"""
from __future__ import annotations

from ..errors import CapacityError, InvalidRequestError, Place
from .base import RUNNING, TAG_CLUSTER, InstanceInfo, ProvisionRequest
from .common import ssh_runner
from .ssh_pools import Pool, load_pools


UNREACHABLE = "unreachable"
PROBE_SECONDS = 2.0


def _port_open(ip: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((ip, port), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def _instance_id(pool: str, host) -> str:
    return f"ssh:{pool}:{host.user}@{host.ip}:{host.port}"


class SSHCloud:
    name = "ssh"
    supports_stop = False

    def _pool(self, name: str | None) -> Pool:
        pools = load_pools()
        if not pools:
            from .ssh_pools import pools_file

            raise InvalidRequestError(f"no SSH node pools defined in {pools_file()}",
                                      hint="declare one (see README: SSH node pools)")
        if name is None:
            return pools[0]
        for p in pools:
            if p.name == name:
                return p
        raise InvalidRequestError(f"no SSH node pool named {name!r}",
                                  hint=f"pools: {', '.join(p.name for p in pools)}")

    def _allocated(self) -> dict[str, str]:
        """instance id → cluster, from our state (the pool file is the user's; allocation is ours)."""
        from .. import state

        out = {}
        for rec in state.list_clusters():
            if rec.cloud == "ssh":
                for n in rec.nodes:
                    out[n.instance_id] = rec.name
        return out

    def _info(self, pool: str, host, rank: int, cluster: str) -> InstanceInfo:
        return InstanceInfo(_instance_id(pool, host), RUNNING, host.ip, host.ip, host.user, host.port, None, False,
                            {"pool": pool, TAG_CLUSTER: cluster}, None, None, host.identity_file, rank)

    def provision(self, req: ProvisionRequest) -> list[InstanceInfo]:
        if req.accelerator:
            raise InvalidRequestError("SSH node pools do not advertise accelerators yet")
        pool = self._pool(req.region)
        taken = self._allocated()
        from ..runtime.runner import run_parallel

        mine = [h for h in pool.hosts if taken.get(_instance_id(pool.name, h)) == req.cluster]
        free = [h for h in pool.hosts if _instance_id(pool.name, h) not in taken]
        up = run_parallel(free, lambda h: _port_open(h.ip, h.port)) if len(mine) < req.num_nodes else []
        live = [h for h, ok in zip(free, up) if ok]  # a host that does not answer is no capacity
        hosts = (mine + live)[: req.num_nodes]
        if len(hosts) < req.num_nodes:
            down = len(free) - len(live)
            raise CapacityError(f"pool {pool.name} has {len(mine) + len(live)} free host(s) answering, "
                                f"{req.num_nodes} needed" + (f" ({down} not answering)" if down else ""),
                                Place("ssh", pool.name), code="PoolExhausted")
        return [self._info(pool.name, h, i, req.cluster) for i, h in enumerate(hosts)]

    def query(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        """The pool's hosts allocated to the cluster. There is no cloud API to ask, so a host whose SSH
        port does not answer within PROBE_SECONDS is reported "unreachable" (for a pool, a dead host and a
        cut network look the same; managed jobs treat both as a lost node)."""
        from .. import state
        from ..runtime.runner import run_parallel

        rec = state.get_cluster(cluster)
        if rec is None:
            return []
        up = run_parallel(rec.nodes, lambda n: _port_open(n.ip, n.ssh_port or 22))
        return [InstanceInfo(n.instance_id, RUNNING if ok else UNREACHABLE, n.ip, n.private_ip, n.ssh_user,
                             n.ssh_port, None, False, {TAG_CLUSTER: cluster}, "unreachable" if not ok else None,
                             None, n.identity_file, n.rank) for n, ok in zip(rec.nodes, up)]

    def terminate(self, cluster: str, region: str | None) -> None:
        from .. import state
        from ..runtime.runner import NodeUnreachable, run_parallel

        rec = state.get_cluster(cluster)
        if rec is None:
            return

        def clean(node):
            r = ssh_runner(cluster, node)
            try:
                r.run("python3 ~/.broker/agent.py cancel --all >/dev/null 2>&1; rm -rf ~/.broker ~/sky_workdir",
                      timeout=60)
            except NodeUnreachable:
                pass  # an unreachable host has nothing we can clean; it is freed anyway
            finally:
                r.close()

        run_parallel(rec.nodes, clean)

    def stop(self, cluster: str, region: str | None) -> None:
        raise InvalidRequestError("SSH node pools cannot be stopped", hint=f"use `broker down {cluster}`")

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        return self.query(cluster, region)

    def open_ports(self, cluster: str, region: str | None, ports) -> None:
        return None  # the user's own machines: their firewall is theirs

    def runner(self, cluster: str, node):
        return ssh_runner(cluster, node)
