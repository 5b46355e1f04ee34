"""Job pools at the CLI, where no controller is involved: a pool's task is not launched as a job (exit 2,
with the pool command as the hint) and its dry run is the plan of one worker."""
from __future__ import annotations

import json

import yaml

from tests.cli.test_cli import run

POOL = {"pool": {"workers": 2}, "resources": {"accelerators": "V100:1"}, "setup": "echo setup"}


def _pool_file(tmp_path):
    p = tmp_path / "pool.yaml"
    p.write_text(yaml.safe_dump(POOL))
    return p


def test_launching_a_pool_task_says_to_apply_it(tmp_path):
    f = _pool_file(tmp_path)
    for cmd in (["launch", "-y"], ["jobs", "launch", "-y"]):
        r = run(*cmd, str(f))
        assert r.returncode == 2, r.stderr
        assert "pool's task" in r.stderr and f"broker jobs pool apply -p NAME {f}" in r.stderr
        assert "Traceback" not in r.stderr


def test_dryrun_of_a_pool_task_is_the_plan_of_a_worker(tmp_path):
    f = _pool_file(tmp_path)
    r = run("launch", "--dryrun", str(f))
    assert r.returncode == 0, r.stderr
    assert "n1-highmem-8 + V100:1" in r.stdout and "pool task: 2 worker(s) of this plan" in r.stderr
    r = run("jobs", "pool", "apply", "-p", "mypool", "--dryrun", "--json", str(f), "--workers", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["workers"] == 3 and out["worker_plan"]["chosen"]["instance_type"] == "n1-highmem-8"


def test_pool_command_errors_exit_cleanly(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"run": "echo hi"}))
    r = run("jobs", "pool", "apply", "-p", "mypool", "--dryrun", str(job))  # not a pool's task
    assert r.returncode == 2 and "pool" in r.stderr and "Traceback" not in r.stderr
    r = run("jobs", "launch", "--num-jobs", "3", "-y", str(job))
    assert r.returncode == 2 and "--num-jobs needs --pool" in r.stderr
    r = run("jobs", "launch", "--pool", "nosuch", "-y", str(job))
    assert r.returncode == 5 and "pool nosuch not found" in r.stderr
    r = run("jobs", "pool", "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_a_bad_pool_name_or_worker_count_is_refused_before_the_plan(tmp_path):
    """Before: the plan was printed, then (only when not a dry run) the name or count was refused; a dry run
    passed with a name the real apply refuses."""
    f = _pool_file(tmp_path)
    for extra in ([], ["--dryrun"]):
        r = run("jobs", "pool", "apply", "-p", "Bad_Name", "-y", *extra, str(f))
        assert r.returncode == 2 and "'Bad_Name' is not a pool name" in r.stderr, r.stderr
        assert "n1-highmem-8" not in r.stdout + r.stderr and "worker(s) of this plan" not in r.stderr
        r = run("jobs", "pool", "apply", "-p", "ok", "-y", "--workers", "-1", *extra, str(f))
        assert r.returncode == 2 and "--workers -1 is not a worker count" in r.stderr, r.stderr
        assert "n1-highmem-8" not in r.stdout + r.stderr
