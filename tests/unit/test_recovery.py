"""The pure recovery decisions of managed jobs (skybroker/jobs/recovery.py): state + event → action."""
from __future__ import annotations

import pytest

from skybroker.jobs import recovery as R
from skybroker.jobs import store
from skybroker.optimizer import Block

HERE = {"cloud": "aws", "region": "us-east-1", "zone": "us-east-1a"}


def view(**kw) -> R.JobView:
    return R.JobView(**{**HERE, **kw})


# -- success ------------------------------------------------------------------------------------

def test_success_finishes_succeeded():
    a = R.decide(view(), R.Succeeded())
    assert isinstance(a, R.Finish)
    assert a.status == store.SUCCEEDED and a.exit_code == 0


# -- user failures ------------------------------------------------------------------------------

def test_user_failure_without_restarts_fails_with_exit_code():
    a = R.decide(view(), R.UserFailed(3))
    assert a == R.Finish(store.FAILED, 3, a.reason)


def test_a_crashed_runner_has_no_exit_code_and_none_is_invented():
    """A node whose runner crashed has no exit code: the job's status has none either (aggregate gave 1), and
    the managed job's reason says "no exit code", never "exit None" or "exit 1"."""
    from skybroker.backend_jobs import NodeJob, aggregate

    why = "agent error: FileExistsError: x"
    st = aggregate(1, [NodeJob(0, "FAILED", None, why)])
    assert st.status == "FAILED" and st.exit_code is None and st.crash == why
    gang = aggregate(1, [NodeJob(0, "FAILED", None, why), NodeJob(1, "FAILED", 3, "run exited with code 3")])
    assert gang.exit_code == 3  # a node that has one gives it
    a = R.decide(view(), R.UserFailed(None, reason=why))
    assert a == R.Finish(store.FAILED, None, f"run failed with no exit code: {why}")
    b = R.decide(view(max_restarts_on_errors=1), R.UserFailed(None, reason=why))
    assert isinstance(b, R.Relaunch) and f"(no exit code: {why})" in b.reason


def test_user_failure_restarts_within_max_restarts_on_errors_then_fails():
    actions = [R.decide(view(max_restarts_on_errors=2, restarts_on_errors=n), R.UserFailed(7)) for n in range(3)]
    for a in actions[:2]:
        assert isinstance(a, R.Relaunch)
        assert a.counts_as_error and a.same_cluster and a.same_place_first and a.block is None
    assert "restart 1/2" in actions[0].reason and "restart 2/2" in actions[1].reason
    assert isinstance(actions[2], R.Finish)
    assert actions[2].status == store.FAILED and actions[2].exit_code == 7


def test_setup_failure_is_failed_setup_once_restarts_are_used_up():
    a = R.decide(view(max_restarts_on_errors=1, restarts_on_errors=1), R.UserFailed(5, setup=True))
    assert isinstance(a, R.Finish) and a.status == store.FAILED_SETUP and a.exit_code == 5
    # within the budget a setup failure is restarted like any user failure
    b = R.decide(view(max_restarts_on_errors=1, restarts_on_errors=0), R.UserFailed(5, setup=True))
    assert isinstance(b, R.Relaunch) and b.counts_as_error
    # and with no budget at all it is FAILED_SETUP at once
    c = R.decide(view(), R.UserFailed(1, setup=True))
    assert isinstance(c, R.Finish) and c.status == store.FAILED_SETUP


@pytest.mark.parametrize("used", [0, 1, 5, 100])
def test_recover_on_exit_codes_always_restarts_and_does_not_count(used):
    v = view(max_restarts_on_errors=1, restarts_on_errors=used, recover_on_exit_codes=(42, 43))
    a = R.decide(v, R.UserFailed(42))
    assert isinstance(a, R.Relaunch)
    assert not a.counts_as_error and a.same_cluster
    # an exit code not in the list is still bound by max_restarts_on_errors
    b = R.decide(v, R.UserFailed(1))
    if used < 1:
        assert isinstance(b, R.Relaunch) and b.counts_as_error
    else:
        assert isinstance(b, R.Finish) and b.status == store.FAILED and b.exit_code == 1


def test_unknown_exit_code_is_not_matched_by_recover_on_exit_codes():
    a = R.decide(view(recover_on_exit_codes=(42,)), R.UserFailed(None))
    assert isinstance(a, R.Finish) and a.status == store.FAILED and a.exit_code is None


# -- preemption ---------------------------------------------------------------------------------

def test_preemption_eager_next_region_blocks_the_region():
    a = R.decide(view(strategy="EAGER_NEXT_REGION"), R.Preempted("spot termination"))
    assert isinstance(a, R.Relaunch)
    assert a.block == Block("aws", "us-east-1")
    assert not a.same_place_first and not a.counts_as_error and not a.same_cluster
    assert "preempted: spot termination" in a.reason and "aws/us-east-1" in a.reason


def test_preemption_eager_next_region_without_a_known_place_blocks_nothing():
    a = R.decide(R.JobView(strategy="EAGER_NEXT_REGION"), R.Preempted("cluster record disappeared"))
    assert isinstance(a, R.Relaunch) and a.block is None and not a.same_cluster


def test_preemption_failover_tries_the_same_place_first():
    a = R.decide(view(strategy="FAILOVER"), R.Preempted("instance gone"))
    assert isinstance(a, R.Relaunch)
    assert a.block is None and a.same_place_first and not a.counts_as_error and not a.same_cluster


def test_preemption_does_not_use_up_restarts_on_errors():
    a = R.decide(view(strategy="FAILOVER", max_restarts_on_errors=0, restarts_on_errors=0), R.Preempted("x"))
    assert isinstance(a, R.Relaunch) and not a.counts_as_error


# -- network ------------------------------------------------------------------------------------

def test_unreachable_within_the_grace_waits():
    for secs in (0.0, 10.0, R.NETWORK_GRACE_SECONDS - 1):
        a = R.decide(view(), R.Unreachable(secs))
        assert isinstance(a, R.Wait), secs
        assert 0 < a.seconds <= 5.0
        assert a.seconds <= R.NETWORK_GRACE_SECONDS - secs + 1e-9  # never sleeps past the grace


@pytest.mark.parametrize("strategy", ["EAGER_NEXT_REGION", "FAILOVER"])
def test_unreachable_beyond_the_grace_relaunches(strategy):
    a = R.decide(view(strategy=strategy), R.Unreachable(R.NETWORK_GRACE_SECONDS + 1))
    assert isinstance(a, R.Relaunch) and not a.same_cluster
    if strategy == "EAGER_NEXT_REGION":
        assert a.block == Block("aws", "us-east-1")
    else:
        assert a.same_place_first and a.block is None


# -- launch failures ----------------------------------------------------------------------------

def test_launch_failure_while_recovering_waits_with_backoff_then_no_resource():
    waits = []
    for n in range(R.RELAUNCH_ATTEMPTS):
        a = R.decide(view(recovering=True, launch_attempts=n), R.LaunchFailed("no capacity"))
        assert isinstance(a, R.Wait), n
        assert "no capacity" in a.reason
        waits.append(a.seconds)
    assert waits == sorted(waits) and waits[-1] > waits[0]  # backs off
    assert all(0 < w <= 60 for w in waits)  # bounded
    a = R.decide(view(recovering=True, launch_attempts=R.RELAUNCH_ATTEMPTS), R.LaunchFailed("no capacity"))
    assert isinstance(a, R.Finish) and a.status == store.FAILED_NO_RESOURCE
    assert "no capacity" in a.reason


def test_launch_refused_credentials_while_recovering_is_no_resource_at_once():
    """Waiting cannot fix credentials: no 'no capacity yet; retrying' rounds (the provisioner's verdict)."""
    a = R.decide(view(recovering=True, launch_attempts=0),
                 R.LaunchFailed("aws refused our credentials or permissions", credentials_only=True))
    assert isinstance(a, R.Finish) and a.status == store.FAILED_NO_RESOURCE
    assert "refused our credentials" in a.reason


def test_initial_launch_failure_is_no_resource_at_once():
    a = R.decide(view(recovering=False, launch_attempts=0), R.LaunchFailed("all regions exhausted"))
    assert isinstance(a, R.Finish) and a.status == store.FAILED_NO_RESOURCE
    assert a.reason == "all regions exhausted"


# -- cancel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("event", [R.Succeeded(), R.UserFailed(1), R.UserFailed(42), R.Preempted("x"),
                                   R.Unreachable(1.0), R.Unreachable(1e6), R.LaunchFailed("x")])
def test_cancel_requested_wins_over_everything(event):
    v = view(cancel_requested=True, recovering=True, max_restarts_on_errors=5, recover_on_exit_codes=(42,))
    assert isinstance(R.decide(v, event), R.Cancel)


def test_unknown_event_is_an_error():
    with pytest.raises(TypeError):
        R.decide(view(), object())


def test_a_reboot_restarts_on_the_same_cluster_a_bounded_number_of_times():
    why = "node rebooted while the job was RUNNING"
    for n in range(R.REBOOT_RESTARTS):
        a = R.decide(R.JobView(max_restarts_on_errors=0), R.Rebooted(why, n))
        assert isinstance(a, R.Relaunch) and a.same_cluster and not a.counts_as_error and not a.lost
        assert a.reason.startswith(R.REBOOTED) and why in a.reason and f"{n + 1}/{R.REBOOT_RESTARTS}" in a.reason
    a = R.decide(R.JobView(), R.Rebooted(why, R.REBOOT_RESTARTS))
    assert isinstance(a, R.Finish) and a.status == store.FAILED and a.exit_code is None and why in a.reason
    assert isinstance(R.decide(R.JobView(cancel_requested=True), R.Rebooted(why, 0)), R.Cancel)
