"""Pieces every SSH-reachable cloud shares: the runner for a node, the user's key."""
from __future__ import annotations

from ..paths import broker_home


def host_keys():
    from ..runtime.keys import HostKeyStore

    return HostKeyStore(broker_home() / "known_hosts.json")


def user_key_path() -> str:
    from ..runtime.keys import ensure_user_key

    path, _ = ensure_user_key(broker_home())
    return str(path)


def ssh_runner(cluster: str, node, default_user: str = "ubuntu"):
    """An SSHRunner for a NodeRecord; the host key is pinned per instance id."""
    from .. import settings
    from ..runtime.ssh_runner import SSHRunner

    key = node.identity_file or user_key_path()
    timeout = settings.get("ssh_connect_timeout")
    return SSHRunner(f"{cluster}-node-{node.rank}", node.ip, node.ssh_port or 22, node.ssh_user or default_user,
                     key, host_keys(), connect_timeout=timeout, instance_id=node.instance_id)


def call_typed(classify, place, fn, *args, **kw):
    """Run an SDK call, translating the cloud's refusals into typed errors (ProvisionError subclasses
    with a scope) with the driver's `classify(exc, place)`; anything it does not recognise (a bug) is
    re-raised as is. In a provisioning worker whose caller was interrupted (Ctrl-C), no new call starts."""
    from ..errors import Interrupted, ProvisionError
    from ..provision import cancelled

    if cancelled():
        raise Interrupted("provisioning cancelled")
    try:
        return fn(*args, **kw)
    except ProvisionError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below
        typed = classify(exc, place)
        if typed is None:
            raise
        raise typed from None
