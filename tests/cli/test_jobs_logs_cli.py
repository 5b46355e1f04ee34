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


def test_jobs_queue_skip_finished_shows_only_jobs_that_have_not_ended():
    """SkyPilot's `sky jobs queue -s`: the jobs not yet ended, in the table and in --json. (The test holds the
    controller's lock, so `jobs queue` starts no controller that would step these hand-made rows.)"""
    import json

    from filelock import FileLock

    from skybroker.jobs import store
    from skybroker.paths import ensure_home, private_dir

    lock = FileLock(str(private_dir(ensure_home() / "managed") / "controller.lock"))
    lock.acquire(timeout=5)
    running = store.insert("still-going", "{}", {}, "r").id
    store.update(running, status=store.RUNNING)
    done = store.insert("was-done", "{}", {}, "r").id
    store.update(done, status=store.SUCCEEDED)
    failed = store.insert("was-failed", "{}", {}, "r").id
    store.update(failed, status=store.FAILED)
    r = run("jobs", "queue")
    assert r.returncode == 0 and "was-done" in r.stdout and "still-going" in r.stdout, r.stderr
    for args in (("jobs", "queue", "-s"), ("jobs", "queue", "--skip-finished")):
        r = run(*args)
        assert r.returncode == 0, r.stderr
        assert "still-going" in r.stdout and "was-done" not in r.stdout and "was-failed" not in r.stdout
    r = run("jobs", "queue", "-s", "--json")
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)] == [running]
    lock.release()


def test_jobs_cancel_of_an_ended_job_says_how_it_ended():
    from skybroker.jobs import store

    done = store.insert("was-done", "{}", {}, "r").id
    store.update(done, status=store.SUCCEEDED)
    r = run("jobs", "cancel", str(done))
    assert r.returncode == 0, r.stderr
    assert f"managed job {done} already ended SUCCEEDED: nothing to cancel" in r.stderr
    assert store.get(done).status == store.SUCCEEDED
    r = run("jobs", "cancel", "--all", "-y")
    assert r.returncode == 0 and "nothing to cancel: no managed job is active" in r.stderr, r.stderr
