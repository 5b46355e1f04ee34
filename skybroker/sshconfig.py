"""`ssh <cluster>` and VS Code Remote after a launch: one ssh config file per cluster under
BROKER_HOME/ssh/ (`<cluster>` is the head, `<cluster>-worker1` … the others), with the host keys the
broker pinned (never "accept any key"), and one `Include` line in ~/.ssh/config that picks them all up.
Written when a cluster comes up (or restarts: IPs may change), removed on `down`. Only for providers
whose nodes are remote machines. `BROKER_SSH_CONFIG=0` leaves ~/.ssh/config alone (the per-cluster files
are still written, for `broker ssh`).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import settings
from .paths import broker_home, private_dir

MARK = "# added by skybroker: `ssh <cluster>` works after `broker launch` (remove this line to opt out)"


def config_dir() -> Path:
    return broker_home() / "ssh"


def cluster_file(name: str) -> Path:
    return config_dir() / f"{name}.conf"


def host_alias(name: str, rank: int) -> str:
    return name if rank == 0 else f"{name}-worker{rank}"


def write(rec) -> Path | None:
    """(Re)write the cluster's ssh config; None for providers without remote nodes."""
    from .clouds import registry
    from .clouds.common import host_keys, user_key_path

    if not rec.cloud or not registry.known(rec.cloud):
        return None
    prov = registry.get(rec.cloud, sdk=False)
    if not prov.capabilities.remote or not rec.nodes:
        return None
    store = host_keys()
    blocks = [f"# skybroker cluster {rec.name} ({rec.infra}); generated, rewritten on start, removed on down"]
    for n in sorted(rec.nodes, key=lambda n: n.rank):
        lines = [f"Host {host_alias(rec.name, n.rank)}", f"  HostName {n.ip}", f"  User {n.ssh_user or prov.default_ssh_user}",
                 f"  Port {n.ssh_port or 22}", f"  IdentityFile {n.identity_file or user_key_path()}",
                 "  IdentitiesOnly yes", "  StrictHostKeyChecking yes"]
        if store.get(n.instance_id) is not None:
            lines += [f"  UserKnownHostsFile {store.known_hosts_file(n.instance_id)}",
                      f"  HostKeyAlias {store.alias(n.instance_id)}"]
        blocks.append("\n".join(lines))
    path = cluster_file(rec.name)
    private_dir(config_dir())
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n\n".join(blocks) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    _ensure_include()
    return path


def remove(name: str) -> None:
    try:
        cluster_file(name).unlink()
    except FileNotFoundError:
        pass


def _ensure_include() -> None:
    if not settings.get("ssh_config"):
        return
    user_cfg = Path.home() / ".ssh" / "config"
    line = f"Include {config_dir()}/*.conf"
    try:
        text = user_cfg.read_text()
    except FileNotFoundError:
        text = ""
    except OSError:
        return
    if line in text:
        return
    user_cfg.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = user_cfg.with_name(".config.skybroker-tmp")
    tmp.write_text(f"{MARK}\n{line}\n\n" + text)  # first: an Include inside a Host block would be conditional
    os.chmod(tmp, 0o600)
    os.replace(tmp, user_cfg)
