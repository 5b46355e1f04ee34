"""SSH between the nodes of a cluster, as SkyPilot's clusters have it: `ssh <ip>` from any node to any other
(each address in $SKYPILOT_NODE_IPS) works without a password or a host-key prompt, so launchers that log in
to the other nodes (DeepSpeed's pdsh/ssh launcher with a hostfile, `mpirun -H`, Horovod) run unchanged.

At bring-up, on providers that declare `peer_ssh` (instances made for the cluster: never an SSH pool's own
machines), the broker makes one ed25519 key pair for the cluster and puts on every node:
  ~/.ssh/skybroker_peer(.pub)      the pair (0600 / 0644); it opens only this cluster's nodes
  ~/.ssh/authorized_keys           + the public half (once)
  ~/.ssh/skybroker_known_hosts     every node's host key, as this machine pinned it (no trust on first use)
  ~/.ssh/config                    a block between markers: Host <each node's address> → that key, the
                                   login user and port, that known_hosts file, StrictHostKeyChecking yes
The private half never touches this machine's disk (made in memory) and is sent over the SSH connection
like the agent's files. The nodes go with the cluster, and so does all this.
"""
from __future__ import annotations

import shlex

from ..errors import BrokerError

KEY = "~/.ssh/skybroker_peer"
KNOWN_HOSTS = "~/.ssh/skybroker_known_hosts"
BEGIN, END = "# >>> skybroker cluster peers >>>", "# <<< skybroker cluster peers <<<"


def make_pair(cluster: str) -> tuple[bytes, str]:
    """(private key in OpenSSH format, public key line): a fresh ed25519 pair, in memory only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} skybroker-peer-{cluster}"


def address(node) -> str:
    """How the nodes reach each other (the address in $SKYPILOT_NODE_IPS)."""
    return node.private_ip or node.ip


def known_hosts(nodes, host_key) -> str:
    """known_hosts lines for every node, from `host_key(node)` → (type, base64) as pinned here."""
    lines = []
    for n in nodes:
        pinned = host_key(n)
        if pinned is None:
            raise BrokerError(f"no pinned host key for node {n.rank} ({n.instance_id})")
        where = address(n) if int(n.ssh_port or 22) == 22 else f"[{address(n)}]:{int(n.ssh_port)}"
        lines.append(f"{where} {pinned[0]} {pinned[1]}")
    return "\n".join(lines) + "\n"


def config_block(nodes, default_user: str | None) -> str:
    out = [BEGIN]
    for n in nodes:
        out += [f"Host {address(n)}", f"  User {n.ssh_user or default_user or 'root'}", f"  Port {int(n.ssh_port or 22)}",
                f"  IdentityFile {KEY}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {KNOWN_HOSTS}",
                "  StrictHostKeyChecking yes", "  BatchMode yes"]
    out.append(END)
    return "\n".join(out) + "\n"


def install_script(public_line: str, block: str) -> str:
    """The node's part (POSIX sh): the public key authorized once, the config block replaced (the rest of
    the user's ~/.ssh/config untouched), modes as sshd wants them."""
    return f"""set -e
umask 077
mkdir -p ~/.ssh && chmod 700 ~/.ssh
touch ~/.ssh/authorized_keys ~/.ssh/config
grep -qxF {shlex.quote(public_line)} ~/.ssh/authorized_keys || printf '%s\\n' {shlex.quote(public_line)} >> ~/.ssh/authorized_keys
tmp=$(mktemp ~/.ssh/.config.XXXXXX)
awk -v b={shlex.quote(BEGIN)} -v e={shlex.quote(END)} '$0==b{{skip=1}} !skip{{print}} $0==e{{skip=0}}' ~/.ssh/config > "$tmp"
printf '%s' {shlex.quote(block)} >> "$tmp"
mv "$tmp" ~/.ssh/config
chmod 600 ~/.ssh/config ~/.ssh/authorized_keys
"""


def install(rt) -> None:
    """Node-to-node SSH on every node of a multi-node cluster (ClusterRuntime `rt`), in parallel."""
    from .runner import run_parallel

    nodes = rt.nodes
    if len(nodes) < 2 or not rt.provider.capabilities.peer_ssh:
        return
    private, public = make_pair(rt.rec.name)
    hosts = known_hosts(nodes, rt.host_key).encode()
    script = install_script(public, config_block(nodes, rt.provider.default_ssh_user))

    def one(node):
        r = rt.runner(node)
        r.put_file(private, KEY, 0o600)
        r.put_file((public + "\n").encode(), KEY + ".pub", 0o644)
        r.put_file(hosts, KNOWN_HOSTS, 0o644)
        res = r.run(script)
        if res.exit_code != 0:
            raise BrokerError(f"could not set up node-to-node SSH on node {node.rank}: "
                              f"{(res.stderr or res.stdout or '').strip()[:300]}")

    run_parallel(nodes, one)
