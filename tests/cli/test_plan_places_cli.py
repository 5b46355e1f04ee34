"""Through the real CLI: allowed_clouds holds for a task's or the flag's cloud (launch and jobs launch), an
unknown region or SSH pool is exit 2 naming it, and the local cloud refuses at plan time what it cannot run."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO, broker_cmd


@pytest.fixture
def where(tmp_path):
    (tmp_path / "aws-only.yaml").write_text("allowed_clouds: [aws]\n")
    (tmp_path / "g.yaml").write_text("name: g\nresources:\n  infra: gcp\n  cpus: 4\nrun: echo hi\n")
    (tmp_path / "p.yaml").write_text("name: p\nresources:\n  cpus: 4\nrun: echo hi\n")
    (tmp_path / "big.yaml").write_text("name: big\nnum_nodes: 300\nresources:\n  infra: local\nrun: echo hi\n")
    return tmp_path


def _run(where, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "BROKER_"))}
    env.update(BROKER_HOME=str(where / "home"), HOME=str(where), PYTHONPATH=str(REPO))
    return subprocess.run(broker_cmd() + list(args), env=env, cwd=where, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv, code, needles", [
    (["--config", "aws-only.yaml", "launch", "--dryrun", "g.yaml"], 2,
     ["resources.infra (or --infra)", "gcp is not among the config's allowed_clouds (aws)", "aws-only.yaml"]),
    (["--config", "aws-only.yaml", "launch", "--dryrun", "--infra", "azure", "p.yaml"], 2,
     ["azure is not among the config's allowed_clouds (aws)"]),
    (["--config", "aws-only.yaml", "launch", "--dryrun", "--infra", "local", "p.yaml"], 2,
     ["local is not among the config's allowed_clouds (aws)"]),
    (["--config", "aws-only.yaml", "jobs", "launch", "--dryrun", "g.yaml"], 2, ["allowed_clouds (aws)"]),
    (["launch", "--dryrun", "--infra", "ssh/nopool", "p.yaml"], 2, ["no SSH node pool 'nopool'", "ssh_node_pools.yaml"]),
    (["launch", "--dryrun", "--infra", "aws/nowhere-1", "p.yaml"], 2, ["no region 'nowhere-1' on aws", "us-east-1"]),
    (["launch", "--dryrun", "big.yaml"], 3, ["local at most 250", "num_nodes: 250"]),
], ids=["task-infra", "infra-flag", "local", "jobs", "ssh-pool", "region", "local-nodes"])
def test_places_the_plan_may_not_use(where, argv, code, needles):
    r = _run(where, *argv)
    assert r.returncode == code, r.stdout + r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Standard_D2as_v5" not in r.stderr and "retry" not in r.stderr
