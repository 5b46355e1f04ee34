"""One cloud failing does not stop `down` or `status --refresh` for the clusters on the others: fake
providers in the registry (one refusing the credentials, one healthy), real state under BROKER_HOME."""
from __future__ import annotations

import pytest

from skybroker import clusters, state
from skybroker.clouds import registry
from skybroker.clouds.base import RUNNING, InstanceInfo, Provider
from skybroker.errors import BrokerError, CredentialsError
from skybroker.state import ClusterRecord, NodeRecord
from tests.conftest import cli_runner


class FakeCloud(Provider):
    """`refuse`: every call raises a CredentialsError (as a cloud with its keys unset does). Otherwise
    the instances of `live` clusters are RUNNING, those of any other cluster are gone."""

    def __init__(self, name: str, refuse: bool = False):
        self.name, self.refuse = name, refuse
        self.live: set[str] = set()
        self.terminated: list[str] = []

    def _check(self):
        if self.refuse:
            raise CredentialsError(f"no usable {self.name} credentials", code="NoCredentials",
                                   hint=f"log in to {self.name}")

    def query(self, cluster, region=None, include_gone=False):
        self._check()
        return [InstanceInfo(f"{cluster}-0", RUNNING, "10.0.0.1")] if cluster in self.live else []

    def terminate(self, cluster, region=None):
        self._check()
        self.terminated.append(cluster)
        self.live.discard(cluster)
        return []


@pytest.fixture
def clouds(monkeypatch):
    fakes = {"aws": FakeCloud("aws", refuse=True), "gcp": FakeCloud("gcp")}
    monkeypatch.setattr(registry, "_instances", dict(fakes))
    return fakes


def _cluster(name: str, cloud: str) -> None:
    state.save_cluster(ClusterRecord(name, cloud, "r1", "z1", "m1", None, False, 1, 0.5, state.UP, 1.0,
                                     nodes=[NodeRecord(f"{name}-0", 0, "10.0.0.1", "10.0.0.1", "u", 22, None, None)]))


@pytest.mark.parametrize("order", [["a1", "g1", "g2"], ["g1", "a1", "g2"]])
def test_down_tears_down_every_cluster_it_can_then_reports_the_failure(clouds, order):
    for n in order:
        _cluster(n, "aws" if n.startswith("a") else "gcp")
    clouds["gcp"].live |= {"g1", "g2"}
    events = []
    with pytest.raises(BrokerError) as ei:
        clusters.down(order, on_event=lambda k, m: events.append((k, m)))
    assert sorted(clouds["gcp"].terminated) == ["g1", "g2"]  # the healthy cloud's clusters stop billing
    assert {r.name for r in state.list_clusters()} == {"a1"}  # the one that failed stays, to retry
    exc = ei.value
    assert exc.exit_code == 4  # the failure's own code
    assert "could not tear down 1 cluster: a1 (aws/r1/z1): no usable aws credentials" in exc.message
    assert "torn down: g1, g2" in exc.message
    assert exc.hint == "log in to aws; then `broker down a1` again"
    assert ("failed", "could not tear down a1 (aws/r1/z1): no usable aws credentials") in events


def test_down_reports_every_failure(clouds):
    clouds["gcp"].refuse = True
    _cluster("a1", "aws")
    _cluster("g1", "gcp")
    with pytest.raises(BrokerError) as ei:
        clusters.down(["a1", "g1"])
    assert ei.value.message == ("could not tear down 2 clusters:\n  a1 (aws/r1/z1): no usable aws credentials\n"
                                "  g1 (gcp/r1/z1): no usable gcp credentials")
    assert ei.value.hint == "log in to aws; log in to gcp; then `broker down a1 g1` again"
    assert ei.value.exit_code == 4


def test_down_of_one_cluster_raises_its_own_error(clouds):
    """The teardown of one cluster (a managed job's, a pool worker's, autostop's) keeps its error as it was."""
    _cluster("a1", "aws")
    with pytest.raises(CredentialsError, match="^no usable aws credentials$"):
        clusters.down(["a1"])


def test_status_refresh_refreshes_every_cluster_it_can(clouds):
    _cluster("a1", "aws")
    _cluster("a2", "aws")
    _cluster("g1", "gcp")  # deleted out of band: the cloud has no instance of it
    _cluster("g2", "gcp")
    clouds["gcp"].live.add("g2")
    recs = clusters.status(refresh=True)
    assert [r.name for r in recs] == ["a1", "a2", "g2"]
    assert "g1" in clouds["gcp"].terminated and state.get_cluster("g1") is None  # found gone: removed
    by = {r.name: r for r in recs}
    assert by["g2"].refresh_error is None and by["g2"].status == state.UP
    for n in ("a1", "a2"):  # kept as recorded, saying why
        assert by[n].status == state.UP
        assert by[n].refresh_error == {"message": "no usable aws credentials", "hint": "log in to aws", "exit_code": 4}
    assert state.get_cluster("a1").refresh_error is None  # never stored


def test_status_json_and_warnings_say_which_cluster_was_not_refreshed(clouds, monkeypatch, capsys):
    import json

    from skybroker import api
    from skybroker.commands import cluster as C

    monkeypatch.setattr(C, "use_api", lambda: api)
    _cluster("a1", "aws")
    _cluster("g1", "gcp")
    clouds["gcp"].live.add("g1")
    r = cli_runner().invoke(C.status, ["--refresh", "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    out = json.loads(r.stdout)
    assert [(c["name"], c["refresh_error"] and c["refresh_error"]["message"]) for c in out] == [
        ("a1", "no usable aws credentials"), ("g1", None)]
    assert "Warning: could not refresh a1 (aws/r1/z1): no usable aws credentials" in r.stderr
