"""A `broker launch` whose every call the cloud refuses on credentials, through the CLI: nothing was created,
so no INTERRUPTED record is left that only working credentials could remove (`broker down` failed with exit 4
until they worked again). Shared by the per-cloud test modules (AWS has its own, on moto's server)."""
from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO, broker_cmd


def _cli(args, env, cwd):
    return subprocess.run(broker_cmd() + args, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)


def assert_refused_launch_leaves_no_record(tmp_path, task_yaml: str, where: str, extra_env=None,
                                           cluster: str = "credx") -> None:
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(REPO)}
    (tmp_path / "task.yaml").write_text(task_yaml)
    p = _cli(["launch", "-y", "task.yaml", "-c", cluster], env, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    assert "CredentialsError" in out, out
    assert f"no instance of {cluster} was created on {where}" in out and "`broker gc`" in out, out
    assert "could not roll back" not in out and "Traceback" not in out, out
    p = _cli(["status", "--json"], env, tmp_path)
    assert p.returncode == 0 and cluster not in p.stdout, p.stdout + p.stderr
    p = _cli(["down", "-y", cluster], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr  # already gone, without asking the cloud
