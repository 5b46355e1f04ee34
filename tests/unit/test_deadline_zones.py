"""Multi-zone deadline jobs (issue 17): the places a job's spot may run in (from the packaged catalog),
and the controller's side of the multi-zone policy (jobs/deadline.py), driven the way the controller
drives it: decide, launch where told (or be refused), get preempted, decide again."""
from __future__ import annotations

import numpy as np
import pytest

from skybroker.jobs.deadline import DeadlinePolicy, DeadlineState, zone_places
from skybroker.spec import task_from_dict
from skybroker.spot.policies import NONE, ON_DEMAND, SPOT

TICK = 600


def _task(infra="aws/us-west-2", by="60h", compute="48h", policy=None, tick="10m", overhead="12m"):
    dl = {"by": by, "compute": compute, "tick": tick, "overhead": overhead}
    if policy:
        dl["policy"] = policy
    res = {"infra": infra, "use_spot": True}
    if infra.startswith("aws"):
        res["instance_type"] = "p3.2xlarge"
    return task_from_dict({"name": "z", "resources": res, "deadline": dl, "run": "true"})


def test_zone_places_from_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_HOME", str(tmp_path))
    places, od = zone_places(_task())
    assert len(places) >= 2 and all(p["region"] == "us-west-2" and p["cloud"] == "aws" for p in places)
    prices = [p["spot_price"] for p in places]
    assert prices == sorted(prices) and len({p["zone"] for p in places}) == len(places)
    assert od > max(prices)
    assert zone_places(_task(infra="local", by="60s", compute="5s", tick="1s", overhead="2s")) is None


def test_old_state_without_zone_fields_loads():
    st = DeadlineState.load('{"progress_s": 5.0, "held": "spot", "last_at": null, "spot_retry_at": 0.0,'
                            ' "last_tick": 3, "want": "spot"}')
    assert st.zone == -1 and st.lost_zone == -1
    st.lost()
    assert st.held == "none" and st.lost_zone == -1  # single-zone state: no zone to report


def drive(dl: DeadlinePolicy, avail: np.ndarray):
    """The controller's loop over whole ticks: account progress, handle a preemption, decide, launch
    where the policy says (a refused spot launch is reported back). Returns (state, log)."""
    st, log = DeadlineState(), []
    for i in range(avail.shape[1]):
        now = float(i * TICK)
        dl.account(st, now, running=st.held != "none")
        if st.progress_s >= dl.done_s:
            return st, log, now
        if st.held == "spot" and not avail[st.zone, i]:
            log.append(("preempted", st.zone))
            st.lost()
        d = dl.decide(st, now, force=True)
        if d is SPOT and (st.held != "spot" or dl.moves(st)):
            pin = dl.place(st)
            z = next(k for k, p in enumerate(dl.places) if p["zone"] == pin["zone"])
            if avail[z, i]:
                dl.launched(st, SPOT)
                log.append(("spot", z))
            else:
                dl.spot_failed(st, now)
                log.append(("refused", z))
        elif d is ON_DEMAND and st.held != "on_demand":
            dl.launched(st, ON_DEMAND)
            log.append(("on_demand", -1))
        elif d is NONE and st.held != "none":
            st.held, st.zone, st.last_at = "none", -1, None
    return st, log, float(avail.shape[1] * TICK)


ZONES = ([{"cloud": "aws", "region": "r", "zone": "a", "spot_price": 0.35},
          {"cloud": "aws", "region": "r", "zone": "b", "spot_price": 0.40}], 3.06)


def test_refused_and_preempted_zones_are_left_for_the_other():
    task = _task(by="12h", compute="8h")
    T = 12 * 3600 // TICK
    avail = np.ones((2, T), bool)
    avail[0, :6] = False  # the cheap zone refuses at first
    avail[1, 20:] = False  # the other one goes away later; the cheap one is back by then
    dl = DeadlinePolicy(task, 0.0, ZONES)
    assert dl.policy.name == "mz_union"
    st, log, end = drive(dl, avail)
    assert st.progress_s >= dl.done_s and end <= task.deadline_hours * 3600
    assert log[0] == ("refused", 0) and ("spot", 1) in log
    assert ("preempted", 1) in log or ("spot", 0) in log  # moved back to the cheap zone at some point
    assert log.index(("spot", 1)) < max(i for i, e in enumerate(log) if e == ("spot", 0))
    assert st.failed_zone == -1 and st.lost_zone == -1  # each told once


@pytest.mark.parametrize("seed", range(6))
def test_deadline_met_whatever_the_zones_do(seed):
    rng = np.random.default_rng(seed)
    task = _task(by="10h", compute="8h")
    T = 10 * 3600 // TICK
    state = rng.random(2) < 0.5
    avail = np.zeros((2, T), bool)
    for t in range(T):
        state ^= rng.random(2) < 0.25
        avail[:, t] = state
    st, log, end = drive(DeadlinePolicy(task, 0.0, ZONES), avail)
    assert st.progress_s >= 8 * 3600, log
    assert end <= 10 * 3600
