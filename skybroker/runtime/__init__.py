"""Node runtime: command runners (local sandbox, SSH), workdir sync, SSH keys.

Light at import: the runners (and paramiko) load on first attribute access.
"""
from __future__ import annotations

from skybroker.runtime.runner import (CommandRunner, CommandTimeout, HostKeyMismatch, NodeUnreachable,
                                      RunResult, run_parallel)

__all__ = [
    "CommandRunner", "CommandTimeout", "HostKeyMismatch", "NodeUnreachable", "RunResult",
    "run_parallel", "LocalRunner", "SSHRunner", "HostKeyStore", "ensure_user_key",
]

_LAZY = {
    "LocalRunner": "skybroker.runtime.local_runner",
    "SSHRunner": "skybroker.runtime.ssh_runner",
    "HostKeyStore": "skybroker.runtime.keys",
    "ensure_user_key": "skybroker.runtime.keys",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'skybroker.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
