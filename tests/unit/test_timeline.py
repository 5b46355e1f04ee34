"""A managed job's market timeline (costs/timeline.py): segments from ledger runs, and the one-line bar."""
from __future__ import annotations

import pytest

from skybroker.costs.ledger import Interval, Run
from skybroker.costs.timeline import bar, segments


def _run(i, market, start, end, price=1.0):
    return Run(id=i, cluster="job-1", job_id=1, cloud="aws", region="us-east-1", zone="use1-az1",
               instance_type="p3.2xlarge", accelerators="V100:1", resources="V100:1", num_nodes=1, market=market,
               price=price, od_price=3.0, disk_gb=0, disk_price=0, started_at=start, ended_at=end,
               intervals=[Interval("up", start, end)])


def test_segments_are_the_runs_in_order_with_their_cost():
    runs = [_run(2, "on-demand", 7200, None, 3.0), _run(1, "spot", 0, 3600, 1.0)]
    s = segments(runs, at=9000)
    assert [x["market"] for x in s] == ["spot", "on-demand"]
    assert s[0]["hours"] == pytest.approx(1.0) and s[0]["cost"] == pytest.approx(1.0)
    assert s[1]["end"] is None and s[1]["hours"] == pytest.approx(0.5) and s[1]["cost"] == pytest.approx(1.5)
    assert s[0]["place"] == "aws/us-east-1/use1-az1"


def test_bar_shows_each_slice_market_and_the_gaps():
    s = segments([_run(1, "spot", 0, 3600), _run(2, "on-demand", 7200, 10800)], at=10800)
    assert bar(s, 0, 10800, 3) == "S·O"
    assert bar(s, 0, 10800, 12) == "SSSS····OOOO"
    assert bar(s, 0, 0, 10) == "" and bar(s, 0, 10, 0) == ""
    running = segments([_run(1, "spot", 0, None)], at=100)
    assert bar(running, 0, 100, 4) == "SSSS"
