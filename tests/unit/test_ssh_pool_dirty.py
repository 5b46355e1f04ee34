"""SSH pools: the cleanup of hosts `down` could not clean (ssh_pools.dirty_hosts) before they are reused."""
from __future__ import annotations

import threading

from skybroker.clouds import ssh, ssh_pools
from skybroker.clouds.ssh_pools import Pool, PoolHost


class _Runner:
    def close(self):
        pass


def test_two_launches_clean_a_dirty_host_once(monkeypatch):
    """Two launches on one pool both find a host dirty: the second waits for the first's cleanup and then
    leaves the host alone. (It cleaned it again, concurrently: once the first launch had taken the host, that
    second cleanup cancelled the new cluster's jobs and removed its files.)"""
    host = PoolHost("10.9.0.1", 22, "u", None)
    pool = Pool("lab", (host,))
    ssh_pools.mark_dirty(ssh._address(ssh._instance_id("lab", host)), "old", "unreachable")
    cloud = ssh.SSHCloud()
    monkeypatch.setattr(ssh, "ssh_runner", lambda name, node: _Runner())
    monkeypatch.setattr(ssh, "host_keys", lambda: type("K", (), {"forget": lambda self, iid: None})())
    cleanups, second = [], []
    reached = threading.Event()

    class Agent:
        def __init__(self, *a, **kw):
            pass

        def cleanup(self):
            cleanups.append(1)
            reached.set()
            if len(cleanups) == 1:  # the other launch comes while this cleanup runs
                t = threading.Thread(target=lambda: second.append(cloud._clean_dirty(pool, [host])))
                t.start()
                second.append(t)
                reached.clear()
                reached.wait(2.0)  # without the lock the second cleanup starts here

    from skybroker.runtime import agent_client

    monkeypatch.setattr(agent_client, "AgentClient", Agent)
    assert cloud._clean_dirty(pool, [host]) == ([host], [])
    second[0].join(30)
    assert cleanups == [1], cleanups
    assert second[1] == ([host], []) and ssh_pools.dirty_hosts() == {}


def test_a_host_two_pools_list_is_one_host(monkeypatch):
    """The same login (user@ip:port) listed in pools `a` and `b`: held by a cluster of pool a, it is no
    capacity in pool b; left dirty by pool a's down, pool b cleans it before giving it out. (It was handed
    to a second cluster at once, and one cluster's down then cancelled the other's jobs.)"""
    import socket
    import time

    import pytest

    from skybroker import state
    from skybroker.clouds.base import ProvisionRequest
    from skybroker.errors import CapacityError
    from skybroker.paths import broker_home
    from skybroker.state import ClusterRecord, NodeRecord

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    try:
        broker_home().mkdir(parents=True, exist_ok=True)
        (broker_home() / "ssh_node_pools.yaml").write_text(
            "".join(f"{p}:\n  user: u\n  hosts: [{{ip: 127.0.0.1, port: {port}}}]\n" for p in ("a", "b")))
        cloud = ssh.SSHCloud()
        host = PoolHost("127.0.0.1", port, "u", None)
        state.save_cluster(ClusterRecord(
            name="x", cloud="ssh", region="a", zone=None, instance_type="ssh-node", accelerators=None,
            use_spot=False, num_nodes=1, hourly_price=0.0, status="UP", launched_at=time.time(),
            nodes=[NodeRecord(ssh._instance_id("a", host), 0, "127.0.0.1", "127.0.0.1", "u", port, None, None)]))
        with pytest.raises(CapacityError):
            cloud._hosts(ProvisionRequest("y", "b", None, "ssh-node", 1))
        state.delete_cluster("x")
        ssh_pools.mark_dirty(ssh._address(ssh._instance_id("a", host)), "x", "unreachable")
        cleaned = []
        monkeypatch.setattr(ssh.SSHCloud, "_clean_locked",
                            lambda self, pool, hosts, dirty: (cleaned.append(pool.name), ([], ["127.0.0.1"]))[1])
        with pytest.raises(CapacityError, match="still holding what an earlier cluster left"):
            cloud._hosts(ProvisionRequest("y", "b", None, "ssh-node", 1))
        assert cleaned == ["b"]
    finally:
        srv.close()
