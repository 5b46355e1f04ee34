"""A job whose node runner crashes (found by exploratory testing): it was FAILED with an empty log, the reason
only in the node's jobs/N/runner.err and the agent's row. The crash here is real, no failpoint: a file
mount onto ~/sky_workdir makes it a file, and the runner cannot create the job's working directory there
(FileExistsError naming the node's path). The follower of launch and logs, `queue` (a REASON column and
`--json` `reason`) and a managed job's events now say why, on one line, with no env value in it (the
node's path is also an env value of the task here: it must come out as ***). The job has no exit code (its
runner never got one): none is invented (it was 1 in `queue`, `--json` and the managed job's events); the CLI
following it still exits 1 (README, exit codes)."""
from __future__ import annotations

import json

from tests.integration.local_helpers import broker, broker_home, write_task
from tests.integration.test_managed_jobs import (TERMINAL, diag, events, fast_controller,  # noqa: F401
                                                 launch_detached, wait_status)

WHY = "agent error: FileExistsError: [Errno 17] File exists: '***/"


def _task(tmp_path, cluster_dir: str):
    f = tmp_path / "afile"
    f.write_text("not a directory\n")
    return write_task(tmp_path / "t.yaml", name="crash", envs={"NODE_ROOT": cluster_dir},
                      file_mounts={"~/sky_workdir": str(f)}, run="echo never-printed")


def test_a_crashed_runner_says_why_in_launch_logs_and_queue(tmp_path):
    secret = str(broker_home() / "local")  # a prefix of the path the runner's error names (local/<name on the cloud>/...)
    task = _task(tmp_path, secret)
    try:
        r = broker("launch", "-y", "-c", "cr", task, timeout=120)
        assert r.returncode == 1, (r.returncode, r.stderr)
        line = next(ln for ln in r.stderr.splitlines() if ln.startswith("Job 1 FAILED"))
        assert WHY in line and "/node-0/sky_workdir'" in line, r.stderr
        assert "node-0: FAILED (no exit code): " in line, line
        for out in (r.stdout, r.stderr):
            assert secret not in out and "Traceback" not in out, out
        r = broker("queue", "cr")
        assert r.returncode == 0, r.stderr
        assert "REASON" in r.stdout and WHY in r.stdout and secret not in r.stdout, r.stdout
        row = next(ln for ln in r.stdout.splitlines() if ln.split()[:1] == ["1"])
        toks = row.split()
        assert toks[toks.index("FAILED") + 1] == "-", row  # EXIT: none (it showed 1)
        (j,) = json.loads(broker("queue", "cr", "--json").stdout)
        assert j["reason"].startswith(WHY) and j["nodes"][0]["reason"] == j["reason"], j
        assert j["exit_code"] is None and j["nodes"][0]["exit_code"] is None, j
        for args in (("logs", "cr", "1", "-f"), ("logs", "cr", "1")):
            r = broker(*args)
            assert r.returncode == (1 if "-f" in args else 0), (args, r.returncode, r.stderr)
            assert WHY in r.stderr and secret not in r.stderr + r.stdout and "Traceback" not in r.stderr, r.stderr
    finally:
        broker("down", "-y", "cr", timeout=120)


def test_a_managed_job_whose_runner_crashed_has_the_reason_in_its_events(tmp_path):
    task = _task(tmp_path, str(broker_home() / "local"))
    jid = launch_detached(task)
    j = wait_status(jid, TERMINAL, 90)
    assert j.status == "FAILED", diag(jid)
    (end,) = [e for e in events(jid) if e["kind"] == "failed"]
    assert "run failed with no exit code: " + WHY in end["message"], diag(jid)
    assert j.exit_code is None, diag(jid)
    assert str(broker_home() / "local") not in end["message"] and WHY in (j.failure or ""), diag(jid)
