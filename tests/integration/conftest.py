"""Fixtures for real-sshd test nodes (tests/infra/netns.py) and an isolated BROKER_HOME."""
from __future__ import annotations

import pytest

from tests.infra.netns import NodePool, missing_requirements


@pytest.fixture
def runtime_home(tmp_path):
    """An isolated BROKER_HOME for runtime tests."""
    home = tmp_path / "broker-home"
    home.mkdir()
    return home


@pytest.fixture(scope="session")
def node_key(tmp_path_factory):
    """(private key path, public key) accepted by every node of `node_pool`."""
    from skybroker.runtime.keys import ensure_user_key

    return ensure_user_key(tmp_path_factory.mktemp("node-key-home"))


@pytest.fixture(scope="session")
def node_pool():
    """A NodePool (bridge + sshd-in-netns nodes); skipped when the machine cannot run one."""
    why = missing_requirements()
    if why:
        pytest.skip(f"sshd test nodes unavailable: {why}")
    pool = NodePool()
    try:
        yield pool
    finally:
        pool.close()
