"""provision.provision's failover loop with --retry-until-up, against a fake planner and a fake attempt
(no cloud): a credentials/permission refusal blocks its cloud for good, so once every cloud left refused
us there is nothing to wait for; capacity and quota may clear and keep being retried."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from skybroker import provision
from skybroker.errors import CapacityError, CredentialsError, NoFeasibleError, QuotaError


class FakePlanner:
    """plan_fn: the first of `places` (cloud, region, zone) no block rules out."""

    def __init__(self, places):
        self.places, self.calls = places, 0

    def __call__(self, blocks):
        self.calls += 1
        for cloud, region, zone in self.places:
            if not any(b.matches(cloud, region, zone, "m1") for b in blocks):
                return SimpleNamespace(chosen=SimpleNamespace(cloud=cloud, region=region, zone=zone,
                                                              instance_type="m1", use_spot=False))
        raise NoFeasibleError("nothing fits")


@pytest.fixture
def fake(monkeypatch):
    """`outcomes[cloud]`: an exception every attempt there raises, or a list of them for its successive
    attempts (then they succeed). Sleeps are counted, and a runaway retry loop is cut short."""
    box = SimpleNamespace(outcomes={}, sleeps=[], tried=[])

    def attempt(cluster, cand, public_key, on_event, cloud_name=None):
        box.tried.append(cand.cloud)
        out = box.outcomes.get(cand.cloud)
        if isinstance(out, BaseException):
            raise out
        if out:
            raise out.pop(0)
        return ["i-1"]

    def sleep(s):
        box.sleeps.append(s)
        if len(box.sleeps) > 5:
            raise AssertionError("still retrying after 5 rounds: " + repr(box.tried))

    monkeypatch.setattr(provision, "_attempt", attempt)
    monkeypatch.setattr(provision.time, "sleep", sleep)
    return box


def _auth(cloud):
    return CredentialsError(f"{cloud}: AuthFailure", code="AuthFailure", hint=f"fix the {cloud} credentials")


@pytest.mark.parametrize("clouds", [("aws",), ("aws", "gcp")])
def test_retry_until_up_stops_once_every_cloud_refused_the_credentials(fake, clouds):
    fake.outcomes = {c: _auth(c) for c in clouds}
    planner = FakePlanner([(c, "r1", "z1") for c in clouds])
    events = []
    with pytest.raises(provision.ProvisionExhausted) as ei:
        provision.provision("c", planner, public_key=None, retry_until_up=True,
                            on_event=lambda k, m: events.append(k))
    assert fake.sleeps == [] and "retry" not in events  # no "retrying in 5s" for credentials
    exc = ei.value
    assert exc.exit_code == 4
    assert "refused our credentials or permissions" in exc.message and "AuthFailure" in exc.message
    assert exc.hint == "; ".join(f"fix the {c} credentials" for c in clouds)
    assert [a.cloud for a in exc.attempts] == list(clouds)


def test_without_retry_a_credentials_refusal_says_so_in_the_hint(fake):
    fake.outcomes = {"aws": _auth("aws")}
    with pytest.raises(provision.ProvisionExhausted) as ei:
        provision.provision("c", FakePlanner([("aws", "r1", "z1")]), public_key=None)
    assert ei.value.hint == "fix the aws credentials" and "--retry-until-up" not in ei.value.hint


@pytest.mark.parametrize("transient", [CapacityError("no capacity", code="ICE"), QuotaError("quota", code="Vcpu")])
def test_capacity_or_quota_elsewhere_keeps_being_retried(fake, transient):
    """aws refuses the credentials, gcp has no capacity for two rounds, then has: the launch waits for it."""
    fake.outcomes = {"aws": _auth("aws"), "gcp": [transient, transient]}
    planner = FakePlanner([("aws", "r1", "z1"), ("gcp", "r1", "z1")])
    cand, infos, attempts = provision.provision("c", planner, public_key=None, retry_until_up=True)
    assert cand.cloud == "gcp" and infos == ["i-1"]
    assert len(fake.sleeps) == 2  # two rounds waited for gcp's capacity/quota
    assert fake.tried.count("aws") == 1  # the refused cloud was never asked again
    assert [a.error for a in attempts] == ["CredentialsError", type(transient).__name__, type(transient).__name__]
