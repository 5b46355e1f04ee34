"""A job for a pool on a catalog cloud is judged by the machines its ready workers got, not only by the
pool's spec: the pool's `cpus: 4+` got 4-vCPU machines, which a job's `cpus: 4` fits (the spec check alone
refused it, since 4+ does not guarantee exactly 4); a job the machines cannot hold is refused naming them."""
from __future__ import annotations

import pytest

from skybroker import spec, state
from skybroker.errors import SpecError
from skybroker.jobs import pool_ops
from skybroker.jobs import pool_store as PS


def _task(resources: dict, **kw):
    return spec.task_from_dict({"resources": resources, "run": "true", **kw}, source="t.yaml")


@pytest.fixture
def pool(monkeypatch):
    pool_task = _task({"infra": "aws/us-east-1", "cpus": "4+"}, pool={"workers": 1})
    rec = state.ClusterRecord("pool-p-0", "aws", "us-east-1", "use1-az1", "m6i.xlarge", None, False, 1, 0.192,
                              state.UP, 0.0)
    workers = {"now": [PS.Worker("p", 0, "pool-p-0", PS.READY)]}
    pool = type("P", (), {"name": "p", "down_requested": False})()
    monkeypatch.setattr(pool_ops, "get", lambda name: pool)
    monkeypatch.setattr("skybroker.jobs.pools._task", lambda p: pool_task)
    monkeypatch.setattr(PS, "workers", lambda name: workers["now"])
    monkeypatch.setattr(state, "get_cluster", lambda name: rec if name == "pool-p-0" else None)
    submitted = []
    monkeypatch.setattr(pool_ops.store, "insert", lambda *a, **k: submitted.append(a) or a)
    monkeypatch.setattr(pool_ops.ops, "ensure_controller", lambda: None)
    monkeypatch.setattr(pool_ops.ops, "_prepared", lambda t: (t, None))
    return workers, submitted


def test_a_job_that_the_workers_machines_fit_is_accepted(pool):
    workers, submitted = pool
    pool_ops.launch("p", _task({"cpus": 4, "memory": 16}))
    assert len(submitted) == 1
    workers["now"] = [PS.Worker("p", 0, "pool-p-0", PS.PROVISIONING)]  # no ready worker: the spec decides
    with pytest.raises(SpecError, match="resources.cpus"):
        pool_ops.launch("p", _task({"cpus": 4}))


@pytest.mark.parametrize("resources, needle", [
    ({"cpus": 8}, "m6i.xlarge has 4 vCPUs"),
    ({"memory": "32+"}, "m6i.xlarge has 4 vCPUs, 16 GiB"),
    ({"accelerators": "V100"}, "accelerators V100:1"),
])
def test_a_job_the_workers_machines_cannot_hold_is_refused_naming_them(pool, resources, needle):
    with pytest.raises(SpecError) as ei:
        pool_ops.launch("p", _task(resources))
    assert ei.value.exit_code == 2 and "pool-p-0" in ei.value.message and needle in ei.value.message, ei.value.message
