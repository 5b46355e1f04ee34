"""`broker jobs logs` of a managed job that has no output: said so, with what to do (no controller involved:
the jobs are rows put in the state directly)."""
from __future__ import annotations

from tests.cli.test_cli import run


def test_logs_of_a_job_without_output_say_so():
    from skybroker.jobs import store

    pending = store.insert("waits", "{}", {}, "r").id
    ended = store.insert("never", "{}", {}, "r").id
    store.update(ended, status=store.FAILED_NO_RESOURCE)
    r = run("jobs", "logs", str(pending))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert f"managed job {pending} is PENDING and has no output yet" in r.stderr
    assert f"broker jobs logs {pending} -f" in r.stderr
    r = run("jobs", "logs", str(ended))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "ended FAILED_NO_RESOURCE with no output" in r.stderr and f"broker events --job {ended}" in r.stderr
