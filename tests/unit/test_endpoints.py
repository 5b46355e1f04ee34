"""`broker status --ip / --endpoints / --endpoint PORT` from a cluster's record (SkyPilot's options)."""
from __future__ import annotations

import pytest

from skybroker import endpoints as E
from skybroker.errors import UsageError
from skybroker.state import ClusterRecord, NodeRecord


def rec(cloud="aws", status="UP", ports="8888,9000-9002", nodes=2):
    return ClusterRecord("c", cloud, "us-east-1", None, "m6i.large", None, False, nodes, 0.1, status, 0.0,
                         nodes=[NodeRecord(f"i-{r}", r, f"10.0.0.{r + 1}") for r in reversed(range(nodes))],
                         ports=ports)


def test_every_opened_port_is_at_the_head_nodes_address():
    assert E.head_ip(rec()) == "10.0.0.1"
    assert E.endpoints(rec()) == {8888: "10.0.0.1:8888", 9000: "10.0.0.1:9000", 9001: "10.0.0.1:9001",
                                  9002: "10.0.0.1:9002"}
    assert E.endpoints(rec(), 9001) == {9001: "10.0.0.1:9001"}


@pytest.mark.parametrize("r, port, needle", [
    (rec(ports=None), None, "opened no ports"),
    (rec(), 7000, "port 7000 is not among the ports cluster c opened (8888,9000-9002)"),
    (rec(status="STOPPED"), None, "cluster c is STOPPED"),
    (rec(cloud="kubernetes"), None, "kubectl get service skybroker-c-ports"),
])
def test_what_has_no_endpoint_is_exit_2_saying_why(r, port, needle):
    with pytest.raises(UsageError) as ei:
        E.endpoints(r, port)
    assert ei.value.exit_code == 2 and needle in ei.value.message + " " + ei.value.hint

