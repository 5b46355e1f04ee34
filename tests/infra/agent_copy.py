"""The node agent installed the way the client installs it (AgentClient.install: the package and its
launcher under ``<dir>/.skybroker-node``), once per test process, for tests that drive the agent as the
broker does: ``python3 -S <launcher> <command>`` with HOME = one node."""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def installed_agent() -> Path:
    """The launcher of an agent copy made by AgentClient.install (removed when the process exits)."""
    from skybroker.runtime.agent_client import AGENT_PATH, AgentClient
    from skybroker.runtime.local_runner import LocalRunner

    where = Path(tempfile.mkdtemp(prefix="skybroker-agent-copy-"))
    atexit.register(shutil.rmtree, where, True)
    AgentClient(LocalRunner("agent-copy", where), sys.executable + " -S").install()
    return where / AGENT_PATH[2:]
