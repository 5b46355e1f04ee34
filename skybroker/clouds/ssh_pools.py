"""SSH node pools: machines the user already has, declared in BROKER_HOME/ssh_node_pools.yaml:

    mypool:
      user: ubuntu
      identity_file: ~/.ssh/id_ed25519
      hosts:
        - 10.0.0.5
        - {ip: 10.0.0.6, port: 2222, user: admin}
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..paths import broker_home


@dataclass(frozen=True)
class PoolHost:
    ip: str
    port: int
    user: str
    identity_file: str | None
    identity_field: str | None = field(default=None, compare=False)  # where the file declares it


@dataclass(frozen=True)
class Pool:
    name: str
    hosts: tuple[PoolHost, ...]


def pools_file() -> Path:
    return broker_home() / "ssh_node_pools.yaml"


def load_pools() -> list[Pool]:
    path = pools_file()
    if not path.exists():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", "fix the node pool file", source=str(path)) from None
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of pool name → pool", None, source=str(path))
    pools = []
    for name, spec in data.items():
        fp = str(name)
        if not isinstance(spec, dict) or not isinstance(spec.get("hosts"), list) or not spec["hosts"]:
            raise SpecError("a pool needs a non-empty `hosts` list", None, source=str(path), field=fp)
        hosts = []
        for i, h in enumerate(spec["hosts"]):
            h = {"ip": h} if isinstance(h, str) else h
            if not isinstance(h, dict) or not h.get("ip"):
                raise SpecError("a host is an IP/hostname or {ip, port, user, identity_file}", None,
                                source=str(path), field=f"{fp}.hosts[{i}]")
            user = h.get("user") or spec.get("user") or os.environ.get("USER", "root")
            ident = h.get("identity_file") or spec.get("identity_file")
            where = f"{fp}.hosts[{i}].identity_file" if h.get("identity_file") else f"{fp}.identity_file"
            hosts.append(PoolHost(str(h["ip"]), int(h.get("port", 22)), str(user),
                                  os.path.expanduser(ident) if ident else None, where if ident else None))
        pools.append(Pool(fp, tuple(hosts)))
    return pools


def check_keys(pool: Pool) -> None:
    """Every `identity_file` the pool's hosts use is a usable private key (exit 2 naming the file, the
    pool and the field), checked before a host is claimed: a missing key would otherwise only show as
    nodes that never accept commands."""
    from ..runtime.keys import key_problem

    seen = set()
    for h in pool.hosts:
        if h.identity_file is None or h.identity_file in seen:
            continue
        seen.add(h.identity_file)
        why = key_problem(h.identity_file)
        if why:
            raise SpecError(why, "name the private key that the pool's hosts accept (readable, "
                            "without a passphrase), or drop `identity_file` to use the broker's own key",
                            source=str(pools_file()), field=h.identity_field)


# -- hosts `down` could not clean -----------------------------------------------------------------------
# A host that was unreachable (or refused us) when its cluster was torn down may still run that cluster's
# jobs and hold its files. It is recorded here (BROKER_HOME/ssh_pool_dirty.json: user@ip:port → {cluster,
# why, at}) and no launch is given it until it has been cleaned: the next claim in its pool cleans every
# such host that answers first (ssh.py), and only then is it free again.

def _dirty_file() -> Path:
    return broker_home() / "ssh_pool_dirty.json"


def dirty_hosts() -> dict[str, dict]:
    import json

    try:
        data = json.loads(_dirty_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_dirty(change) -> None:
    """Read-modify-write the record under a lock (concurrent downs and launches)."""
    import fcntl
    import json

    path = _dirty_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = dirty_hosts()
        change(data)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)


@contextmanager
def cleaning():
    """Held while dirty hosts are cleaned (ssh.py), by one process of this BROKER_HOME at a time: a launch
    that waited rereads the record, so a host that another launch cleaned and took is not cleaned again
    (its cleanup would cancel the new cluster's jobs and remove its files)."""
    import fcntl

    path = _dirty_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".clean.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def mark_dirty(address: str, cluster: str, why: str) -> None:
    import time

    _update_dirty(lambda d: d.__setitem__(address, {"cluster": cluster, "why": why, "at": time.time()}))


def clear_dirty(address: str) -> None:
    _update_dirty(lambda d: d.pop(address, None))
