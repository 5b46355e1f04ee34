"""Pure scheduling decisions of job pools (jobs/pool_sched.py) and the `pool:` field of a task."""
from __future__ import annotations

import pytest

from skybroker.errors import SpecError
from skybroker.jobs import pool_sched as S
from skybroker.jobs.pool_store import BUSY, PROVISIONING, READY
from skybroker.spec import task_from_dict


def W(idx, status=READY, job=None):
    return S.WorkerView(idx, status, job)


def test_resize_adds_missing_workers_and_keeps_the_rest():
    assert S.resize(3, [W(0), W(2, BUSY, 5)]) == S.Resize(add=(1,))
    assert S.resize(2, []) == S.Resize(add=(0, 1))


def test_scale_down_removes_idle_workers_now_and_busy_ones_after_their_job():
    r = S.resize(1, [W(0, BUSY, 1), W(1), W(2, BUSY, 2), W(3, PROVISIONING)])
    assert r.remove == (1, 3) and r.draining == (2,) and r.add == ()


def test_down_removes_every_worker():
    assert S.resize(4, [W(0, BUSY, 1), W(1)], down=True).remove == (0, 1)


def test_free_workers_are_ready_idle_and_within_the_size():
    ws = [W(0), W(1, BUSY, 3), W(2, PROVISIONING), W(3)]
    assert S.free_workers(4, ws) == [0, 3]
    assert S.free_workers(3, ws) == [0]  # worker 3 is on its way out


def test_pick_worker_is_first_come_first_served():
    assert S.pick_worker(10, [10, 11, 12], [4, 1]) == 1
    assert S.pick_worker(11, [10, 11, 12], [4, 1]) == 4
    assert S.pick_worker(12, [10, 11, 12], [4, 1]) is None  # the third job waits
    assert S.pick_worker(12, [12], [2]) == 2  # the older ones got theirs
    assert S.pick_worker(5, [], []) is None


def _task(**res):
    return task_from_dict({"resources": res, "run": "x"})


def test_a_job_fits_a_pool_that_has_what_it_asks_for():
    pool = _task(accelerators="H100:2", cpus="16+", infra="gcp")
    assert S.misfit(_task(accelerators="H100:1"), pool) is None
    assert S.misfit(_task(), pool) is None
    assert S.misfit(_task(cpus="8+", infra="gcp"), pool) is None
    assert S.misfit(_task(cpus="2+"), _task(infra="aws")) is None  # the CPU default: 8+ vCPUs


@pytest.mark.parametrize("job,field", [
    ({"accelerators": "A100:1"}, "resources.accelerators"),
    ({"accelerators": "H100:4"}, "resources.accelerators"),
    ({"infra": "aws"}, "resources.infra"),
    ({"cpus": "32+"}, "resources.cpus"),
    ({"cpus": 16}, "resources.cpus"),  # exactly 16: a 16+ worker may have more
    ({"disk_size": 1000}, "resources.disk_size"),
    ({"instance_type": "a3-highgpu-2g"}, "resources.instance_type"),
])
def test_a_job_that_asks_for_more_names_the_field(job, field):
    pool = _task(accelerators="H100:2", cpus="16+", infra="gcp")
    bad = S.misfit(_task(**job), pool)
    assert bad is not None and bad[0] == field, bad


def test_a_job_fits_when_one_of_the_pools_options_does():
    pool = task_from_dict({"resources": {"any_of": [{"accelerators": "L4:1"}, {"accelerators": "A100:1"}]},
                           "run": "x"})
    assert S.misfit(_task(accelerators="A100:1"), pool) is None
    assert S.misfit(_task(accelerators="H100:1"), pool)[0] == "resources.accelerators"
    assert S.misfit(task_from_dict({"num_nodes": 2, "run": "x"}), pool)[0] == "num_nodes"


def test_job_env_has_skypilots_names_and_ours():
    env = S.job_env(2, 5, "p")
    assert env["SKYPILOT_JOB_RANK"] == env["BROKER_JOB_RANK"] == "2"
    assert env["SKYPILOT_NUM_JOBS"] == env["BROKER_NUM_JOBS"] == "5" and env["BROKER_POOL"] == "p"


def test_pool_field_is_parsed_and_checked():
    assert task_from_dict({"pool": {"workers": 3}, "setup": "x"}).pool_workers == 3
    assert task_from_dict({"run": "x"}).pool_workers is None
    for bad, field in (({"workers": -1}, "pool.workers"), ({"workers": "two"}, "pool.workers"),
                       ({"min_workers": 1}, "pool.min_workers"), ("big", "pool")):
        with pytest.raises(SpecError) as e:
            task_from_dict({"pool": bad})
        assert e.value.field == field


def test_a_local_pools_workers_are_this_machine():
    """Found by exploratory testing: a local pool's workers (this machine's vCPUs) were judged by SkyPilot's
    8+ default, so `cpus: 2` on a 2-vCPU machine was refused and `cpus: 8+` accepted."""
    import os

    n = os.cpu_count() or 1
    pool = _task(infra="local")
    assert S.misfit(_task(cpus=str(n)), pool) is None
    assert S.misfit(_task(cpus=f"{n}+"), pool) is None
    bad = S.misfit(_task(cpus=f"{n + 1}+"), pool)
    assert bad is not None and bad[0] == "resources.cpus"
    assert S.misfit(_task(cpus=str(4 * n)), pool) is not None
