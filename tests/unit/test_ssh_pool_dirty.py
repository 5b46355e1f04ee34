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
    ssh_pools.mark_dirty(ssh._instance_id("lab", host), "old", "unreachable")
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
