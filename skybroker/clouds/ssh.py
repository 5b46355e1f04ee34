"""The `ssh` provider: node pools the user already has (BROKER_HOME/ssh_node_pools.yaml, see ssh_pools.py),
addressed as `--infra ssh/<pool>`. "Provisioning" allocates free hosts of the pool to the cluster;
"terminating" cancels the cluster's jobs, removes what skybroker put on the hosts (the node agent's
directory and the paths it claimed; never anything else, even when the host is this machine) and frees
them; a host that could not be cleaned (unreachable) is kept out of the pool until a later claim has
cleaned it (ssh_pools.dirty_hosts). The machines themselves are never powered off. A host serves one
cluster at a time.
"""
from __future__ import annotations

import re

from ..errors import BrokerError, CapacityError, InvalidRequestError, Place
from .base import RUNNING, TAG_CLUSTER, UNREACHABLE, Capabilities, InstanceInfo, ProvisionRequest, Provider
from .common import host_keys, ssh_runner
from .ssh_pools import Pool, load_pools

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


def _address(instance_id: str) -> str:
    """The login an instance id names (user@ip:port), whatever pool lists it: one machine account that
    two pools both list is one host (one agent directory, one set of jobs), never two clusters' at once."""
    m = re.search(r"[^:@]+@[^@]+:\d+$", instance_id)
    return m.group(0) if m else instance_id


class SSHCloud(Provider):
    name = "ssh"
    capabilities = Capabilities(stop=False, spot=False, firewall=False, accelerators=False, priced=False,
                                named_only=True, remote=True, gone_reasons=False, tagged_listing=False)

    def virtual_offers(self, res) -> list:
        from ..optimizer import Candidate

        if res.accelerator:
            return []
        return [Candidate(res, 0, self.name, pool.name, None, "ssh-node", 0.0, 0.0, None, 0.0, False, 0.0, 1)
                for pool in load_pools() if not res.region or res.region == pool.name]

    region_word = "SSH node pool"
    keys_at_boot = False  # the hosts accept the pool's key already: a refusal is believed at once

    def regions(self) -> list:
        return [p.name for p in load_pools()]

    def known_regions(self) -> list[str]:
        return self.regions()

    def unavailable_reason(self):
        if load_pools():
            return None
        from .ssh_pools import pools_file

        return (f"no SSH node pools are defined ({pools_file()} is missing or empty)",
                "declare the pool there (see README: Clouds without an account)")

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

    def preflight_place(self, region: str | None) -> None:
        """The pool's `identity_file`s are usable keys (ssh_pools.check_keys), and the broker's own key
        when some host uses it."""
        from .ssh_pools import check_keys

        pool = self._pool(region)
        check_keys(pool)
        if any(h.identity_file is None for h in pool.hosts):
            super().preflight_place(region)

    def _allocated(self, cluster: str) -> dict[str, str]:
        """host address (_address) → cluster, for hosts held by other clusters, in any pool: their nodes
        in the state, and the hosts an unfinished launch recorded in the intents ledger."""
        from .. import state

        out = {}
        for rec in state.list_clusters():
            if rec.cloud == self.name and rec.name != cluster:
                for n in rec.nodes:
                    out[_address(n.instance_id)] = rec.name
        for it in state.open_intents():
            if it["cloud"] == self.name and it["cluster"] != cluster:
                for iid in it["instance_ids"]:
                    out.setdefault(_address(iid), it["cluster"])
        return out

    def _info(self, pool: str, host, rank: int, cluster: str) -> InstanceInfo:
        return InstanceInfo(_instance_id(pool, host), RUNNING, host.ip, host.ip, host.user, host.port, None, False,
                            {"pool": pool, TAG_CLUSTER: cluster}, None, None, host.identity_file, rank)

    def _hosts(self, req: ProvisionRequest):
        from .. import state
        from ..runtime.runner import run_parallel

        pool = self._pool(req.region)
        rec = state.get_cluster(req.cluster)
        mine_ids = {n.instance_id for n in rec.nodes} if rec is not None else set()
        mine_ids |= {i for it in state.open_intents(req.cluster) if it["cloud"] == self.name for i in it["instance_ids"]}
        taken = self._allocated(req.cluster)
        mine = [h for h in pool.hosts if _instance_id(pool.name, h) in mine_ids]
        free = [h for h in pool.hosts if _address(_instance_id(pool.name, h)) not in taken and h not in mine]
        up = run_parallel(free, lambda h: _port_open(h.ip, h.port)) if len(mine) < req.num_nodes else []
        live = [h for h, ok in zip(free, up) if ok]  # a host that does not answer is no capacity
        live, dirty = self._clean_dirty(pool, live)
        hosts = (mine + live)[: req.num_nodes]
        if len(hosts) < req.num_nodes:
            down = len(free) - len(live) - len(dirty)
            raise CapacityError(f"pool {pool.name} has {len(mine) + len(live)} free host(s) answering, "
                                f"{req.num_nodes} needed" + (f" ({down} not answering)" if down else "") +
                                (f" ({len(dirty)} still holding what an earlier cluster left: "
                                 f"{', '.join(dirty)})" if dirty else ""),
                                Place("ssh", pool.name), code="PoolExhausted")
        return pool, hosts

    def _clean_dirty(self, pool: Pool, hosts: list) -> tuple[list, list[str]]:
        """Hosts that `down` could not clean (ssh_pools.dirty_hosts: they may still run the old cluster's
        jobs) are cleaned before they are given to a cluster: (the usable hosts, the IPs of those that could
        still not be cleaned, which are no capacity)."""
        from .ssh_pools import cleaning, dirty_hosts

        if not any(_address(_instance_id(pool.name, h)) in dirty_hosts() for h in hosts):
            return hosts, []
        with cleaning():  # one cleaner at a time, rereading: another launch may have cleaned (and taken) one
            return self._clean_locked(pool, hosts, dirty_hosts())

    def _clean_locked(self, pool: Pool, hosts: list, dirty: dict) -> tuple[list, list[str]]:
        from ..runtime.agent_client import AgentClient
        from ..runtime.runner import run_parallel
        from ..state import NodeRecord
        from .ssh_pools import clear_dirty

        todo = [h for h in hosts if _address(_instance_id(pool.name, h)) in dirty]
        if not todo:
            return hosts, []

        def clean(h) -> bool:
            iid = _instance_id(pool.name, h)
            left = dirty[_address(iid)]
            node = NodeRecord(iid, 0, h.ip, h.ip, h.user, h.port, None, h.identity_file)
            r = ssh_runner(str(left.get("cluster") or "pool"), node)
            try:
                AgentClient(r, self.agent_python(), f"{h.ip} (left by cluster {left.get('cluster')})").cleanup()
            except BrokerError:
                return False
            finally:
                r.close()
                try:  # pinned by this connection: the cluster that gets the host pins it again
                    host_keys().forget(iid)
                except BrokerError:
                    pass
            clear_dirty(_address(iid))
            return True

        ok = dict(zip(todo, run_parallel(todo, clean)))
        return [h for h in hosts if ok.get(h, True)], [h.ip for h in todo if not ok[h]]

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        if req.accelerator:
            raise InvalidRequestError("SSH node pools do not advertise accelerators yet")
        pool, hosts = self._hosts(req)
        return [_instance_id(pool.name, h) for h in hosts]

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        pool = self._pool(req.region)
        by_id = {_instance_id(pool.name, h): h for h in pool.hosts}
        return [self._info(pool.name, by_id[i], rank, req.cluster) for rank, i in enumerate(ids) if i in by_id]

    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
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

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        """Cancel the cluster's jobs and remove what skybroker put on its hosts; the hosts are freed even
        when that fails (unreachable, changed host key), with a warning saying what was left."""
        from .. import state
        from ..runtime.agent_client import AgentClient
        from ..runtime.runner import AuthRefused, HostKeyMismatch, NodeUnreachable, run_parallel

        from .ssh_pools import mark_dirty

        rec = state.get_cluster(cluster)
        if rec is None:
            return []
        kept = (f"; the host stays out of pool {region or rec.region} until it is cleaned (its jobs may still run "
                "there): the next launch on the pool cleans it first once it answers")

        def clean(node) -> str | None:
            r = ssh_runner(cluster, node)
            try:
                AgentClient(r, self.agent_python(), f"{cluster} node {node.rank}").cleanup()
                return None
            except HostKeyMismatch as exc:
                return (f"{node.ip}: host key changed, nothing was cleaned there ({exc.message}); "
                        f"after checking the host, `broker hostkeys forget {cluster}`")
            except AuthRefused as exc:
                why = f"{node.ip}: {exc.message}; nothing was cleaned there"
            except NodeUnreachable:
                why = f"{node.ip}: unreachable, nothing was cleaned there"
            except BrokerError as exc:
                why = f"{node.ip}: cleanup failed: {exc.message}"
            finally:
                r.close()
            mark_dirty(_address(node.instance_id), cluster, why)
            return why + kept

        return [w for w in run_parallel(rec.nodes, clean) if w]

    def runner(self, cluster: str, node):
        return ssh_runner(cluster, node)


PROVIDER = SSHCloud
