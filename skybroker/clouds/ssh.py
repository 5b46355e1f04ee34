"""The `ssh` provider: node pools the user already has (BROKER_HOME/ssh_node_pools.yaml, see ssh_pools.py),
addressed as `--infra ssh/<pool>`. "Provisioning" allocates free hosts of the pool to the cluster;
"terminating" cancels the cluster's jobs, removes what skybroker put on the hosts (the node agent's
directory and the paths it claimed; never anything else, even when the host is this machine) and frees
them; a host that could not be cleaned (unreachable) is kept out of the pool until a later claim has
cleaned it (ssh_pools.dirty_hosts). The machines themselves are never powered off. A host serves one
cluster at a time.

A pool file may be shared by several BROKER_HOMEs (two laptops, a laptop and a CI runner): a host this home
allocates is also claimed on the host itself, in `~/.skybroker-claim` (the home's id and the cluster's name on
the cloud, written only if absent), so another home sees it taken; `terminate` removes the claim once the host
is cleaned (a host left dirty keeps it: its old jobs may still run). A claim of this home for a cluster it no
longer knows is stale and taken over. Each host is put in the launch's intent (intents.py) before its claim is
written, so a launch killed between the claim and the cluster's record leaves an intent naming the host: the
home's next mutating command (intents.reconcile, also `broker gc`) releases the claim, and other homes get it. A host that cannot be asked (it refuses the key, its host key changed) is
allocated as before: the bring-up then says why it does not accept commands.
"""
from __future__ import annotations

import re

from ..errors import BrokerError, CapacityError, InvalidRequestError, Place
from .base import RUNNING, TAG_CLUSTER, UNREACHABLE, Capabilities, InstanceInfo, ProvisionRequest, Provider
from .common import host_keys, ssh_runner
from .ssh_pools import Pool, load_pools

PROBE_SECONDS = 2.0
CLAIM_FILE = "~/.skybroker-claim"


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
            if rec.cloud == self.name and rec.cloud_name != cluster:
                for n in rec.nodes:
                    out[_address(n.instance_id)] = rec.name
        for it in state.open_intents():
            if it["cloud"] == self.name and it["cluster_on_cloud"] != cluster:
                for iid in it["instance_ids"]:
                    out.setdefault(_address(iid), it["cluster"])
        return out

    def _info(self, pool: str, host, rank: int, cluster: str) -> InstanceInfo:
        return InstanceInfo(_instance_id(pool, host), RUNNING, host.ip, host.ip, host.user, host.port, None, False,
                            {"pool": pool, TAG_CLUSTER: cluster}, None, None, host.identity_file, rank)

    def _hosts(self, req: ProvisionRequest):
        from .. import state

        pool, hosts, others = self._free_hosts(req)
        intent = _open_intent(req.cluster)
        claimed, theirs = [], 0
        for h in hosts:  # claimed on the host too, one by one, until there are enough
            if len(claimed) == req.num_nodes:
                break
            if intent is not None:  # recorded before the claim is written: a launch that dies after it leaves an
                # intent naming the host, so this home's next command (intents.reconcile) releases the claim
                state.set_intent(intent, "creating", [_instance_id(pool.name, x) for x in claimed + [h]])
            if _claim(pool, h, req.cluster, state.home_id(), self._known_here()):
                claimed.append(h)
            else:
                theirs += 1
        if intent is not None:
            state.set_intent(intent, "creating", [_instance_id(pool.name, x) for x in claimed])
        if len(claimed) < req.num_nodes:
            for h in claimed:
                _release(pool, h, req.cluster, state.home_id())
            why = (f"; {theirs} claimed by another broker home (its `broker down` frees them; for a home that is "
                   f"gone, remove {CLAIM_FILE} on the host)") if theirs else ""
            raise CapacityError(f"pool {pool.name} has {len(claimed)} free host(s) answering, "
                                f"{req.num_nodes} needed{others}{why}", Place("ssh", pool.name), code="PoolExhausted")
        return pool, claimed

    def _known_here(self) -> set[str]:
        """The names on the cloud of this home's clusters on SSH pools (recorded or being launched)."""
        from .. import state

        names = {r.cloud_name for r in state.list_clusters() if r.cloud == self.name}
        return names | {it["cluster_on_cloud"] for it in state.open_intents() if it["cloud"] == self.name}

    def _free_hosts(self, req: ProvisionRequest):
        """(pool, candidate hosts: the cluster's own first, then free ones that answer, " (N not answering)")."""
        from .. import state
        from ..runtime.runner import run_parallel

        pool = self._pool(req.region)
        rec = state.get_cluster_on_cloud(req.cluster)
        mine_ids = {n.instance_id for n in rec.nodes} if rec is not None else set()
        mine_ids |= {i for it in state.open_intents() if it["cloud"] == self.name
                     and it["cluster_on_cloud"] == req.cluster for i in it["instance_ids"]}
        taken = self._allocated(req.cluster)
        mine = [h for h in pool.hosts if _instance_id(pool.name, h) in mine_ids]
        free = [h for h in pool.hosts if _address(_instance_id(pool.name, h)) not in taken and h not in mine]
        up = run_parallel(free, lambda h: _port_open(h.ip, h.port)) if len(mine) < req.num_nodes else []
        live = [h for h, ok in zip(free, up) if ok]  # a host that does not answer is no capacity
        live, dirty = self._clean_dirty(pool, live)
        down = len(free) - len(live) - len(dirty)
        hosts = mine + live
        others = (f" ({down} not answering)" if down else "") + (
            f" ({len(dirty)} still holding what an earlier cluster left: {', '.join(dirty)})" if dirty else "")
        if len(hosts) < req.num_nodes:
            raise CapacityError(f"pool {pool.name} has {len(hosts)} free host(s) answering, "
                                f"{req.num_nodes} needed{others}", Place("ssh", pool.name), code="PoolExhausted")
        return pool, hosts, others

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
        from .ssh_pools import clear_dirty

        todo = [h for h in hosts if _address(_instance_id(pool.name, h)) in dirty]
        if not todo:
            return hosts, []

        def clean(h) -> bool:
            iid = _instance_id(pool.name, h)
            left = dirty[_address(iid)]
            r = ssh_runner(str(left.get("cluster") or "pool"), _host_node(pool, h))
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

        rec = state.get_cluster_on_cloud(cluster)
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

        rec = state.get_cluster_on_cloud(cluster)
        held = self._held(cluster, rec)
        if rec is None:
            return self._release_held(cluster, held)
        kept = (f"; the host stays out of pool {region or rec.region} until it is cleaned (its jobs may still run "
                "there): the next launch on the pool cleans it first once it answers")
        left: set[str] = set()  # hosts not cleaned: they keep this home's claim until they are

        def clean(node) -> str | None:
            r = ssh_runner(rec.name, node)
            try:
                AgentClient(r, self.agent_python(), f"{rec.name} node {node.rank}").cleanup()
                return None
            except HostKeyMismatch as exc:
                return (f"{node.ip}: host key changed, nothing was cleaned there ({exc.message}); "
                        f"after checking the host, `broker hostkeys forget {rec.name}`")
            except AuthRefused as exc:
                why = f"{node.ip}: {exc.message}; nothing was cleaned there"
            except NodeUnreachable:
                why = f"{node.ip}: unreachable, nothing was cleaned there"
            except BrokerError as exc:
                why = f"{node.ip}: cleanup failed: {exc.message}"
            finally:
                r.close()
            mark_dirty(_address(node.instance_id), rec.name, why)
            left.add(node.instance_id)
            return why + kept

        warnings = [w for w in run_parallel(rec.nodes, clean) if w]
        held = [(p, h) for p, h in held if _instance_id(p.name, h) not in left]
        return warnings + self._release_held(cluster, held)

    def _held(self, cluster: str, rec) -> list:
        """(pool, host) of every host the cluster may hold: its nodes and its open intents' hosts."""
        from .. import state

        ids = {n.instance_id for n in rec.nodes} if rec is not None else set()
        ids |= {i for it in state.open_intents() if it["cloud"] == self.name and it["cluster_on_cloud"] == cluster
                for i in it["instance_ids"]}
        out = []
        for pool in load_pools():
            out += [(pool, h) for h in pool.hosts if _instance_id(pool.name, h) in ids]
        return out

    def _release_held(self, cluster: str, held) -> list[str]:
        from .. import state
        from ..runtime.runner import run_parallel

        me = state.home_id()
        return [w for w in run_parallel(held, lambda ph: _release(ph[0], ph[1], cluster, me)) if w]

    def runner(self, cluster: str, node):
        return ssh_runner(cluster, node)


def _host_node(pool, host):
    """A pool host as a node (rank 0) to open a runner on, outside any cluster."""
    from ..state import NodeRecord

    return NodeRecord(_instance_id(pool.name, host), 0, host.ip, host.ip, host.user, host.port, None,
                      host.identity_file)


def _host_runner(pool, host):
    return ssh_runner(f"claim-{pool.name}", _host_node(pool, host))


def _open_intent(cluster: str) -> int | None:
    """The id of the intent the provisioner recorded for this create (provision._attempt: the newest one still
    "creating" for the cluster on this cloud), or None (run_instances called outside a launch)."""
    from .. import state

    ids = [it["id"] for it in state.open_intents() if it["cloud"] == SSHCloud.name
           and it["cluster_on_cloud"] == cluster and it["state"] == "creating"]
    return max(ids) if ids else None


def _claim(pool, host, cluster: str, home: str, known: set[str]) -> bool:
    """Claim `host` for `cluster` of this home on the host itself. False: another home holds it.

    The claim file appears with its content at once (written aside, then hard-linked: link(2) fails if the
    file exists), so a home reading it never sees a claim half-written (empty) and takes it over while its
    writer believes it holds the host. A stale claim (this home's, for a cluster it no longer knows) or an
    empty one is taken over only under a lock directory and only if it still reads as it did (two takers of
    one stale host: one wins)."""
    import shlex

    me = f"{home} {cluster}"
    q = shlex.quote(me)
    cmd = (f"f={CLAIM_FILE}; t=\"$f.$$\"; if echo {q} > \"$t\" && ln \"$t\" \"$f\" 2>/dev/null; then "
           "rm -f \"$t\"; echo CLAIMED; else rm -f \"$t\"; echo \"HELD $(head -n1 \"$f\" 2>/dev/null)\"; fi")
    r = _run_on(pool, host, cmd)
    if r is None:
        return True  # not askable: the bring-up reports why (as for any host that refuses us)
    out = r.strip().splitlines()[-1] if r.strip() else ""
    if out == "CLAIMED" or out == f"HELD {me}":
        return True
    seen = out[len("HELD "):].strip() if out.startswith("HELD ") else ""
    held = seen.split()
    if (len(held) == 2 and held[0] == home and held[1] not in known) or not held:  # stale (ours) or empty
        take = (f"f={CLAIM_FILE}; l=\"$f.lock\"; if mkdir \"$l\" 2>/dev/null; then "
                f"if [ \"$(head -n1 \"$f\" 2>/dev/null)\" = {shlex.quote(seen)} ] && echo {q} > \"$f.$$\" && "
                "mv -f \"$f.$$\" \"$f\"; then echo CLAIMED; fi; rm -f \"$f.$$\"; rmdir \"$l\"; fi")
        got = _run_on(pool, host, take)
        return got is not None and got.strip().endswith("CLAIMED")
    return False


def _release(pool, host, cluster: str, home: str) -> str | None:
    """Remove the host's claim if it is still this cluster's; a warning if the host cannot be asked."""
    import shlex

    me = shlex.quote(f"{home} {cluster}")
    out = _run_on(pool, host, f"f={CLAIM_FILE}; [ \"$(head -n1 \"$f\" 2>/dev/null)\" = {me} ] && rm -f \"$f\"; "
                              "echo RELEASED")
    if out is None:
        return f"{host.ip}: could not remove the claim of {cluster} ({CLAIM_FILE} may remain; remove it by hand)"
    return None


def _run_on(pool, host, cmd: str) -> str | None:
    """stdout of `cmd` on the host, or None when the host cannot be asked."""
    r = None
    try:
        r = _host_runner(pool, host)
        res = r.run(cmd, timeout=30)
        return res.stdout if res.ok else None
    except BrokerError:
        return None
    finally:
        if r is not None:
            r.close()


PROVIDER = SSHCloud
