"""runtime/peers.py: the node's part of node-to-node SSH, run here in a scratch HOME (sh, awk): idempotent,
and the user's own ~/.ssh/config and authorized keys are kept."""
from __future__ import annotations

import os
import subprocess

import pytest

from skybroker.runtime import peers
from skybroker.state import NodeRecord

NODES = [NodeRecord(instance_id="i-0", rank=0, ip="34.1.1.1", private_ip="10.0.0.5", ssh_user="ubuntu"),
         NodeRecord(instance_id="i-1", rank=1, ip="34.1.1.2", private_ip="10.0.0.6", ssh_user="ubuntu", ssh_port=2222)]


def _run(home, script):
    r = subprocess.run(["sh", "-c", script], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_install_twice_keeps_the_users_config_and_adds_the_key_once(tmp_path):
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_text("Host work\n  User me\n")
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAuser me@laptop\n")
    private, public = peers.make_pair("c1")
    assert private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----") and public.startswith("ssh-ed25519 ")
    block = peers.config_block(NODES, "root")
    for _ in range(2):
        _run(tmp_path, peers.install_script(public, block))
    cfg = (ssh / "config").read_text()
    assert cfg.startswith("Host work\n  User me\n") and cfg.count(peers.BEGIN) == 1 and cfg.count(peers.END) == 1
    assert "Host 10.0.0.6\n  User ubuntu\n  Port 2222\n" in cfg and "StrictHostKeyChecking yes" in cfg
    keys = (ssh / "authorized_keys").read_text().splitlines()
    assert keys == ["ssh-ed25519 AAAAuser me@laptop", public]
    assert oct((ssh / "config").stat().st_mode & 0o777) == "0o600"
    other = peers.config_block(NODES[:1], "root")  # a new cluster on the same host replaces the block
    _run(tmp_path, peers.install_script(public, other))
    assert "10.0.0.6" not in (ssh / "config").read_text()


def test_known_hosts_name_every_node_by_the_address_the_nodes_use():
    keys = {"i-0": ("ssh-ed25519", "AAAA0"), "i-1": ("ecdsa-sha2-nistp256", "AAAA1")}
    text = peers.known_hosts(NODES, lambda n: keys[n.instance_id])
    assert text == "10.0.0.5 ssh-ed25519 AAAA0\n[10.0.0.6]:2222 ecdsa-sha2-nistp256 AAAA1\n"
    with pytest.raises(Exception, match="no pinned host key for node 1"):
        peers.known_hosts(NODES, lambda n: keys.get(n.instance_id) if n.rank == 0 else None)
