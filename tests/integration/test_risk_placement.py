"""Risk-aware placement on the real controller: a preempted spot segment is recorded against its place,
and the next plan of a managed spot job prices that place higher (jobs/risk.py)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from skybroker.jobs import risk
from tests.integration.local_helpers import broker, broker_home, wait_for, write_task, cloud_name
from tests.integration.test_managed_jobs import fast_controller  # noqa: F401 - autouse: fast polls, cleanup

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")


def _job(jid: int) -> dict:
    r = broker("jobs", "queue", "--json")
    return next(j for j in json.loads(r.stdout) if j["id"] == jid)


def test_a_preemption_is_recorded_against_its_place_and_raises_its_expected_cost(tmp_path):
    from skybroker.clouds.local import LocalCloud

    task = write_task(tmp_path / "t.yaml", name="risky", resources={"infra": "local", "use_spot": True},
                      run="for i in $(seq 1 40); do echo $i; sleep 0.1; done")
    r = broker("jobs", "launch", "-y", "-d", str(task))
    assert r.returncode == 0, r.stderr
    jid = int(r.stderr.split("managed job ")[1].split()[0])
    wait_for(lambda: _job(jid)["status"] == "RUNNING", 60, what="job running")
    os.environ["BROKER_HOME"] = str(broker_home())
    LocalCloud().preempt(cloud_name(f"job-{jid}"), 0)
    wait_for(lambda: _job(jid)["status"] in ("SUCCEEDED", "FAILED", "FAILED_CONTROLLER"), 90, what="job ended")
    assert _job(jid)["status"] == "SUCCEEDED" and _job(jid)["recoveries"] == 1
    hist = risk.history()
    (place, seen), = [(k, v) for k, v in hist.items() if k[0] == "local"]
    assert seen.preemptions == 1, hist  # the preempted segment; the finished one added hours only
    assert seen.hours > 0
    assert risk.rate(seen) > risk.rate(None) * 0.99  # one preemption in a few seconds: riskier than the prior
    f = risk.risk_for(hist, 0.3)
    assert f(*place, True) > f("aws", "us-east-1", "use1-az1", "p3.2xlarge", True)
    # the job's market over time: two spot runs (before and after the preemption), one recovery between
    t = json.loads(broker("jobs", "timeline", str(jid), "--json").stdout)
    assert [s["market"] for s in t["segments"]] == ["spot", "spot"] and len(t["recoveries"]) == 1
    assert t["segments"][0]["end"] <= t["segments"][1]["start"]
    text = broker("jobs", "timeline", str(jid)).stdout
    assert "[" in text and "S" in text.split("[", 1)[1].split("]", 1)[0] and "MARKET" in text
