"""Managed jobs end to end on the `local` cloud (and, as root, on sshd nodes in network namespaces):
the real `broker jobs ...` CLI as subprocesses, the real controller process, real node agents.

A "preemption" on the local cloud kills every process of the node and deletes its directory, so the
cloud's view shows the instance gone. Jobs write a ledger to a host file (the local nodes are this
machine), which is the ground truth of what ran, independent of the logs under test.

Controllers are made quick (poll 0.3 s, checkpoint sync every 0.5 s, exit 1 s after the last job) and
every test kills whatever its BROKER_HOME left running.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from skybroker.clouds.local import _kill_node_processes
from tests.integration.local_helpers import (
    alive,
    broker,
    broker_bg,
    broker_home,
    kill_leftovers,
    kill_pids,
    pids_with_env,
    ssh_node_pools,
    wait_for,
    write_task,
    cluster_dir,
)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for checkpoint sync")

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED", "FAILED_CONTROLLER"}


@pytest.fixture(autouse=True)
def fast_controller(monkeypatch):
    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0.5")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "1")
    yield
    pid = controller_pid()
    if pid:
        kill_pids([pid])
    kill_leftovers(broker_home())


# ------------------------------------------------------------------------------------------ helpers
def controller_pid() -> int | None:
    p = broker_home() / "managed" / "controller.pid"
    try:
        pid = int(p.read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def job(jid: int):
    from skybroker.jobs import store

    return store.get(jid)


def events(jid: int) -> list[dict]:
    from skybroker.jobs import store

    return store.events(jid)


def queue() -> list[dict]:
    r = broker("jobs", "queue", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def launch_detached(task: Path, *extra) -> int:
    r = broker("jobs", "launch", task, "-y", "-d", *extra)
    assert r.returncode == 0, r.stderr
    m = re.search(r"managed job (\d+) submitted", r.stderr)
    assert m, r.stderr
    return int(m.group(1))


def diag(jid: int) -> str:
    """What the controller did, for failure messages."""
    j = job(jid)
    ev = "\n".join(f"  {e['ts']:.2f} {e['kind']}: {e['message']}" for e in events(jid))
    logp = broker_home() / "managed" / "controller.log"
    tail = logp.read_text()[-3000:] if logp.exists() else ""
    return f"job {jid}: {j.status if j else None} recoveries={j.recoveries if j else None}\n{ev}\n{tail}"


def until(pred, timeout: float, what: str, jid: int):
    try:
        return wait_for(pred, timeout, 0.05, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diag(jid)}") from None


def wait_status(jid: int, statuses, timeout: float = 30):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    return until(lambda: (j := job(jid)) is not None and j.status in statuses and j, timeout,
                 f"job {jid} in {statuses}", jid)


def cluster_root(jid: int) -> Path:
    return cluster_dir(f"job-{jid}")


def preempt_local(jid: int, rank: int = 0) -> None:
    node = cluster_root(jid) / f"node-{rank}"
    assert (node / "node.json").exists(), f"no node {node}"
    _kill_node_processes(node)
    shutil.rmtree(node, ignore_errors=True)


def local_job_pids() -> list[int]:
    return pids_with_env(f"HOME={broker_home()}/local/", prefix=True)


def ledger(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def synced_counter(jid: int) -> int:
    try:
        snap = broker_home() / "managed" / str(jid) / "checkpoint" / "current"  # the last complete snapshot
        return int((snap / "counter").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid}: (gone)"


def assert_clean(jid: int) -> None:
    assert not cluster_root(jid).exists() or not any(cluster_root(jid).iterdir()), \
        f"node dirs left: {list(cluster_root(jid).iterdir())}"
    # a process the teardown killed may take a moment to exit on a loaded machine; a leaked one (the jobs
    # cancelled here sleep for 30 s or more) is still there after the wait
    deadline = time.time() + 10
    while local_job_pids() and time.time() < deadline:
        time.sleep(0.1)
    left = local_job_pids()
    assert left == [], f"job processes left running: {[_cmdline(p) for p in left]}"
    r = broker("status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout


COUNTER_RUN = """\
f=$BROKER_CHECKPOINT_DIR/counter
i=$(cat "$f" 2>/dev/null || echo 0)
echo "segment start=$i sky=$SKYPILOT_TASK_ID broker=$BROKER_TASK_ID" >> "$LEDGER"
echo "start at $i"
while [ "$i" -lt {n} ]; do
  i=$((i+1)); echo "count $i"; echo "count $i" >> "$LEDGER"
  echo $i > "$f.tmp" && mv "$f.tmp" "$f"
  sleep 0.2
done
echo "final $i"
"""


# ------------------------------------------------------------------------------------------------ 1
def test_counter_survives_three_preemptions(tmp_path):
    n = 30
    led = tmp_path / "ledger"
    task = write_task(tmp_path / "count.yaml", name="count", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "use_spot": False, "job_recovery": "FAILOVER"},
                      run=COUNTER_RUN.replace("{n}", str(n)))
    jid = launch_detached(task)
    synced_before = []
    for k in range(3):
        wait_status(jid, "RUNNING")
        # let this segment make progress that the controller has synced back, then take the node away
        base = synced_counter(jid)
        until(lambda base=base: synced_counter(jid) >= base + 2, 15, f"checkpoint progress in segment {k}", jid)
        synced_before.append(synced_counter(jid))
        preempt_local(jid)
        until(lambda k=k: job(jid).recoveries == k + 1, 15, f"recovery {k + 1} recorded", jid)
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", (j.status, j.failure, events(jid))

    rows = [q for q in queue() if q["id"] == jid]
    assert rows and rows[0]["status"] == "SUCCEEDED" and rows[0]["recoveries"] == 3, rows
    assert rows[0]["exit_code"] == 0 and rows[0]["failure"] is None

    lines = ledger(led)
    segments = [dict(kv.split("=", 1) for kv in ln.split()[1:]) for ln in lines if ln.startswith("segment")]
    assert len(segments) == 4, lines
    # the task id is stable across recoveries, under both names
    assert {s["sky"] for s in segments} == {s["broker"] for s in segments} == {rows[0]["task_id"]}
    # no restart from 0: each new segment resumes at least at the checkpoint synced before its preemption
    starts = [int(s["start"]) for s in segments]
    assert starts[0] == 0
    for before, start in zip(synced_before, starts[1:]):
        assert start >= before > 0, (synced_before, starts)
    # every number counted; only numbers after a synced checkpoint may be counted again
    counts = [int(ln.split()[1]) for ln in lines if ln.startswith("count")]
    assert set(counts) == set(range(1, n + 1)), counts
    for x in {c for c in counts if counts.count(c) > 1}:
        assert any(x > b for b in synced_before), (x, synced_before)
    assert len(counts) - n <= sum(max(0, b2 - b1) for b1, b2 in zip(starts[1:], synced_before[1:] + [n])) + 3 * 5

    # `jobs logs` shows the output across recoveries with a marker per recovery (test 7 too)
    r = broker("jobs", "logs", jid)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for k in (1, 2, 3):
        assert re.search(rf"^=== broker: recovery {k} .*preempted.*===$", out, re.MULTILINE), out
    assert "start at 0" in out and f"final {n}" in out
    assert out.index("recovery 1") < out.index("recovery 2") < out.index("recovery 3") < out.index(f"final {n}")
    # the cluster is torn down at the end
    assert_clean(jid)


# ------------------------------------------------------------------------------------------------ 2
def _inprocess_controller(monkeypatch, grace: float | None = None):
    """A Controller in this process (threads), fast, so its calls can be observed."""
    from skybroker import settings
    from skybroker.jobs import controller as C
    from skybroker.jobs import recovery as R

    monkeypatch.setenv("BROKER_JOBS_POLL", "0.3")
    monkeypatch.setenv("BROKER_CONTROLLER_EXIT_GRACE", "0.5")
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "0.5")
    # 4 s SSH connects as controller.main() sets them (a teardown on a killed node waits the timeout out)
    monkeypatch.setenv("BROKER_SSH_CONNECT_TIMEOUT", str(settings.get("controller_ssh_timeout")))
    if grace is not None:
        monkeypatch.setattr(R, "NETWORK_GRACE_SECONDS", grace)
    ctl = C.Controller(workers=4)
    t = threading.Thread(target=ctl.run, daemon=True)
    return ctl, t


def _submit_inprocess(task_path: Path) -> int:
    from skybroker import api
    from skybroker.jobs import store
    from skybroker.spec import task_to_dict

    task = api.load_task(str(task_path), {})
    return store.insert(task.name, json.dumps(task_to_dict(task)), task.secret_dict, "test").id


def _spy_plan(monkeypatch) -> list:
    from skybroker import api

    calls = []
    real = api.plan

    def spy(task, blocklist=(), clouds=None, **kw):
        calls.append(tuple(blocklist))
        return real(task, blocklist, clouds, **kw)

    monkeypatch.setattr(api, "plan", spy)
    return calls


def test_eager_next_region_on_local_cloud_has_no_region_to_avoid(tmp_path, monkeypatch):
    """The local cloud has no region: EAGER_NEXT_REGION cannot block one and relaunches in place
    (the recorded decision says so), without any Block passed to the planner."""
    led = tmp_path / "ledger"
    task = write_task(tmp_path / "t.yaml", name="eager", envs={"LEDGER": str(led)},
                      resources={"infra": "local", "job_recovery": "EAGER_NEXT_REGION"},
                      run='echo "run $SKYPILOT_TASK_ID" >> "$LEDGER"; echo up; sleep 30')
    jid = _submit_inprocess(task)
    calls = _spy_plan(monkeypatch)
    ctl, t = _inprocess_controller(monkeypatch)
    t.start()
    try:
        wait_status(jid, "RUNNING")
        wait_for(lambda: len(ledger(led)) == 1, 10, 0.05, "first run")
        preempt_local(jid)
        wait_for(lambda: job(jid).recoveries == 1 and job(jid).status == "RUNNING", 15, 0.05, "relaunched")
        wait_for(lambda: len(ledger(led)) == 2, 10, 0.05, "second run")
        rec = [e for e in events(jid) if e["kind"] == "recovery"]
        assert len(rec) == 1 and "preempted" in rec[0]["message"] and "same place first" in rec[0]["message"]
        assert all(b == () for b in calls), calls
        from skybroker.jobs import store

        store.request_cancel(jid)
        assert wait_status(jid, TERMINAL).status == "CANCELLED"
    finally:
        t.join(20)
        ctl.pool.shutdown(wait=True)
    assert not t.is_alive()
    assert_clean(jid)


@pytest.fixture
def two_pools(tmp_path):
    """Two SSH node pools of one node each, "east" and "west", as two regions of the `ssh` cloud."""
    with ssh_node_pools("mj", {"east": 1, "west": 1}) as (pool, by_name):
        yield pool, by_name["east"][0], by_name["west"][0]


def test_eager_next_region_moves_to_the_other_pool_over_ssh(two_pools, tmp_path, monkeypatch):
    """Real end to end on sshd nodes: the job runs in pool "east"; the east node is killed; the
    controller relaunches with Block(ssh, east) and the job finishes in "west" from its checkpoint.
    (An SSH pool cannot tell a dead host from a partition, so the network grace is shortened.)"""
    pool, east, _west = two_pools
    task = write_task(tmp_path / "t.yaml", name="eager",
                      resources={"infra": "ssh", "job_recovery": "EAGER_NEXT_REGION"},
                      run=COUNTER_RUN.replace("{n}", "25").replace('>> "$LEDGER"', ">/dev/null"))
    jid = _submit_inprocess(task)
    calls = _spy_plan(monkeypatch)
    ctl, t = _inprocess_controller(monkeypatch, grace=1.0)
    t.start()
    try:
        wait_status(jid, "RUNNING", 60)
        assert job(jid).place.startswith("ssh") and "east" in job(jid).place, job(jid).place
        wait_for(lambda: synced_counter(jid) >= 3, 20, 0.05, "checkpoint synced")
        before = synced_counter(jid)
        pool.kill(east)
        j = wait_status(jid, TERMINAL, 90)
        assert j.status == "SUCCEEDED", (j.status, j.failure, events(jid))
        assert j.recoveries == 1 and "west" in j.place, (j.recoveries, j.place)
    finally:
        t.join(30)
        ctl.pool.shutdown(wait=True)
    from skybroker.optimizer import Block

    assert any(Block("ssh", "east") in c for c in calls), calls
    rec = [e["message"] for e in events(jid) if e["kind"] == "recovery"]
    assert len(rec) == 1 and "EAGER_NEXT_REGION: avoiding ssh/east" in rec[0], rec
    log = (broker_home() / "managed" / str(jid) / "run.log").read_text()
    m = re.findall(r"^start at (\d+)$", log, re.MULTILINE)
    assert m[0] == "0" and int(m[-1]) >= before, (m, before)
    assert "final 25" in log


# ------------------------------------------------------------------------------------------------ 3
def test_user_failures_restart_within_limit_and_recover_on_exit_codes(tmp_path):
    runs_a, runs_b = tmp_path / "runs-a", tmp_path / "runs-b"
    fail = write_task(tmp_path / "fail.yaml", name="fails", envs={"RUNS": str(runs_a)},
                      resources={"infra": "local", "job_recovery": {"max_restarts_on_errors": 2}},
                      run='echo run >> "$RUNS"; echo "attempt $(wc -l < "$RUNS")"; exit 3')
    flaky = write_task(tmp_path / "flaky.yaml", name="flaky", envs={"RUNS": str(runs_b)},
                       resources={"infra": "local", "job_recovery": {"recover_on_exit_codes": [42]}},
                       run='echo run >> "$RUNS"; n=$(wc -l < "$RUNS"); echo "try $n"; '
                           '[ "$n" -le 2 ] && exit 42; echo done')
    # the failing one in the foreground (its CLI exit code is the job's), the other alongside
    fg = broker_bg("jobs", "launch", fail, "-y")
    jb = launch_detached(flaky)
    out, err = fg.communicate(timeout=60)
    assert fg.returncode == 3, (fg.returncode, err)
    assert ledger(runs_a) == ["run"] * 3  # 1 run + 2 restarts
    ja = int(re.search(r"managed job (\d+) submitted", err).group(1))
    assert "FAILED" in err and "attempt 3" in out
    jb_final = wait_status(jb, TERMINAL, 40)
    assert jb_final.status == "SUCCEEDED", (jb_final.failure, events(jb))
    assert ledger(runs_b) == ["run"] * 3  # exit 42 twice, then success
    rows = {q["id"]: q for q in queue()}
    assert rows[ja]["status"] == "FAILED" and rows[ja]["exit_code"] == 3 and rows[ja]["restarts_on_errors"] == 2
    assert rows[jb]["status"] == "SUCCEEDED" and rows[jb]["restarts_on_errors"] == 0  # 42 does not count
    log = broker("jobs", "logs", jb).stdout
    assert log.count("=== broker: recovery") == 2 and "recover_on_exit_codes" in log and "done" in log
    assert "=== broker: recovery 1 at" in log and "=== broker: recovery 2 at" in log, log  # numbered per rerun
    for jid in (ja, jb):
        assert not cluster_root(jid).exists() or not any(cluster_root(jid).iterdir())
    assert local_job_pids() == []


def test_a_restart_after_a_failed_setup_runs_the_setup_again(tmp_path):
    tries = tmp_path / "tries"  # the setup fails the first time only; run needs what it leaves on the node
    task = write_task(tmp_path / "t.yaml", name="setupretry", envs={"TRIES": str(tries)},
                      resources={"infra": "local", "job_recovery": {"max_restarts_on_errors": 1}},
                      setup='echo try >> "$TRIES"; [ "$(wc -l < "$TRIES")" -ge 2 ] || exit 3; touch ~/set_up',
                      run="test -e ~/set_up && echo RAN")
    jid = launch_detached(task)
    final = wait_status(jid, TERMINAL, 60)
    assert final.status == "SUCCEEDED", diag(jid)  # the restart ran the setup, not only `run`
    assert tries.read_text().split() == ["try", "try"] and final.restarts_on_errors == 1
    assert "RAN" in broker("jobs", "logs", jid).stdout


# ------------------------------------------------------------------------------------------------ 4
@pytest.mark.parametrize("when", ["at-detection", "mid-relaunch"])
def test_cancel_during_recovering_leaves_nothing_running(tmp_path, when, monkeypatch):
    task = write_task(tmp_path / "t.yaml", name="cancelme", num_nodes=2,
                      resources={"infra": "local", "job_recovery": "FAILOVER"},
                      run='echo up; sleep 60')
    ctl = t = None
    if when == "at-detection":
        # The moment the controller has decided to recover (RECOVERING recorded, nothing relaunched yet),
        # the cancel is requested as `jobs cancel` does. An in-process controller makes that moment exact:
        # from a test process polling the status, a loaded machine let the relaunch run first.
        from skybroker.jobs import controller as C
        from skybroker.jobs import recovery as R
        from skybroker.jobs import store

        real_apply, asked = C.Controller._apply, []

        def apply_then_cancel(self, j, action):
            real_apply(self, j, action)
            if isinstance(action, R.Relaunch) and not asked:
                assert store.get(j.id).status == "RECOVERING"
                asked.append(store.request_cancel(j.id))

        monkeypatch.setattr(C.Controller, "_apply", apply_then_cancel)
        jid = _submit_inprocess(task)
        ctl, t = _inprocess_controller(monkeypatch)
        t.start()
    else:
        jid = launch_detached(task)
    try:
        wait_status(jid, "RUNNING")
        wait_for(lambda: len(local_job_pids()) >= 2, 10, 0.05, "job processes")
        preempt_local(jid, rank=1)
        if when == "mid-relaunch":
            wait_status(jid, "RECOVERING", 10)
            # while the relaunch is provisioning / installing / submitting
            until(lambda: sum(e["kind"] == "provision" for e in events(jid)) == 2, 10, "relaunch started", jid)
            r = broker("jobs", "cancel", jid, "-y")
            assert r.returncode == 0, r.stderr
        j = wait_status(jid, TERMINAL, 30)
    finally:
        if t is not None:
            t.join(20)
            ctl.pool.shutdown(wait=True)
    assert j.status == "CANCELLED", diag(jid)
    kinds = [e["kind"] for e in events(jid)]
    assert kinds.index("recovery") < kinds.index("cancel") < kinds.index("cancelled"), kinds
    if when == "at-detection":
        assert asked == [True]
        assert kinds.count("running") == 1 and kinds.count("provision") == 1, diag(jid)  # no relaunch
    time.sleep(0.5)  # anything started late by a racing relaunch would show up now
    assert_clean(jid)


# ------------------------------------------------------------------------------------------------ 5
def test_controller_killed_and_restarted_continues_the_job(tmp_path):
    led, release = tmp_path / "ledger", tmp_path / "release"
    # the job holds at count 5 until the test releases it: what the test looks at cannot end under load
    run = COUNTER_RUN.replace("{n}", "20").replace(
        "  sleep 0.2\n", '  sleep 0.2\n  if [ "$i" -eq 5 ]; then while [ ! -e "$RELEASE" ]; do sleep 0.1; done; fi\n')
    assert "RELEASE" in run
    task = write_task(tmp_path / "t.yaml", name="survivor", envs={"LEDGER": str(led), "RELEASE": str(release)},
                      resources={"infra": "local"}, run=run)
    jid = launch_detached(task)
    wait_status(jid, "RUNNING")
    wait_for(lambda: len(ledger(led)) >= 3, 10, 0.05, "job counting")
    meta = json.loads((cluster_root(jid) / "node-0" / "node.json").read_text())
    instance_seen = []
    pid = controller_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    time.sleep(0.5)
    assert job(jid).status == "RUNNING" and local_job_pids()  # the job runs on without its controller
    r = broker("jobs", "queue")  # starts a controller again since a job is active
    assert r.returncode == 0, r.stderr
    wait_for(lambda: controller_pid() not in (None, pid), 5, 0.05, "a new controller")
    time.sleep(1.0)  # a few polls of the new controller while the job still runs
    instance_seen.append(json.loads((cluster_root(jid) / "node-0" / "node.json").read_text())["instance_id"])
    release.write_text("")
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED", (j.failure, events(jid))
    lines = ledger(led)
    assert sum(ln.startswith("segment") for ln in lines) == 1, lines  # not restarted
    assert [int(ln.split()[1]) for ln in lines if ln.startswith("count")] == list(range(1, 21))
    assert j.recoveries == 0 and j.restarts_on_errors == 0
    # no duplicate cluster: provisioned once, the same instance served the whole job
    kinds = [e["kind"] for e in events(jid)]
    assert kinds.count("provision") == 1 and kinds.count("running") == 1, kinds
    assert meta["instance_id"] == instance_seen[0], (meta, instance_seen)
    assert sorted(p.name for p in (broker_home() / "local").iterdir()) in ([], [f"job-{jid}"])
    assert_clean(jid)
    assert "final 20" in broker("jobs", "logs", jid).stdout


def test_controller_killed_while_starting_makes_no_duplicate_cluster(tmp_path):
    led = tmp_path / "ledger"
    task = write_task(tmp_path / "t.yaml", name="early", envs={"LEDGER": str(led)}, num_nodes=2,
                      resources={"infra": "local"}, run=COUNTER_RUN.replace("{n}", "10"))
    jid = launch_detached(task)
    until(lambda: any(e["kind"] == "provision" for e in events(jid)), 15, "provisioning started", jid)
    pid = controller_pid()
    assert pid and job(jid).status == "STARTING"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5, 0.05, "controller dead")
    r = broker("jobs", "queue")  # resumes the job
    assert r.returncode == 0, r.stderr
    j = wait_status(jid, TERMINAL, 40)
    assert j.status == "SUCCEEDED", diag(jid)
    segments = [ln for ln in ledger(led) if ln.startswith("segment")]
    assert 1 <= len(segments) <= 2 * 2, segments  # 2 nodes; run again at most once after the kill
    root = broker_home() / "local"
    assert sorted(p.name for p in root.iterdir()) in ([], [f"job-{jid}"])
    assert_clean(jid)


# ------------------------------------------------------------------------------------------------ 6
def test_secrets_reach_the_job_and_are_not_stored_in_clear(tmp_path):
    secret = "s3cr3t-Value-" + os.urandom(6).hex()
    out = tmp_path / "seen"
    task = write_task(tmp_path / "t.yaml", name="secretive", envs={"OUT": str(out)},
                      secrets={"API_TOKEN": secret}, resources={"infra": "local"},
                      run='printf %s "$API_TOKEN" > "$OUT"; echo "token length ${#API_TOKEN}"; sleep 1')
    jid = launch_detached(task)
    wait_status(jid, "RUNNING")
    # while it runs: nothing under BROKER_HOME (state.db and its WAL, node sandboxes, logs) holds it
    wait_for(lambda: out.exists() and out.read_text() == secret, 15, 0.05, "secret in the job's env")
    j = wait_status(jid, TERMINAL, 30)
    assert j.status == "SUCCEEDED", j.failure
    assert j.secrets and secret.encode() not in j.secrets
    needle = secret.encode()
    leaks = []
    for p in broker_home().rglob("*"):
        if p.is_file() and needle in p.read_bytes():
            leaks.append(str(p))
    assert leaks == []
    db = broker_home() / "state.db"
    assert db.exists() and needle not in db.read_bytes()
    r = broker("jobs", "queue", "--json")
    assert secret not in r.stdout
    assert f"token length {len(secret)}" in broker("jobs", "logs", jid).stdout


# ------------------------------------------------------------------------------------------------ 7
def test_queue_columns_and_cancel_all(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="sleeper", resources={"infra": "local"}, run="echo up; sleep 60")
    ids = [launch_detached(task) for _ in range(2)]
    for jid in ids:
        wait_status(jid, "RUNNING")
    r = broker("jobs", "queue", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    header = next(ln for ln in r.stdout.splitlines() if "STATUS" in ln)
    cols = header.split()
    for c in ("ID", "NAME", "RESOURCES", "STATUS", "SUBMITTED", "DURATION", "RECOVERIES", "COST"):
        assert c in cols, header
    assert cols.index("ID") < cols.index("NAME") < cols.index("STATUS") < cols.index("RECOVERIES")
    for jid in ids:
        assert re.search(rf"^\s*{jid}\s+sleeper\s+.*RUNNING", r.stdout, re.MULTILINE), r.stdout
    rows = queue()
    assert {"id", "name", "resources", "status", "submitted_at", "duration", "recoveries", "cost"} <= set(rows[0])
    r = broker("jobs", "cancel", "--all", "-y")
    assert r.returncode == 0, r.stderr
    for jid in ids:
        assert wait_status(jid, TERMINAL, 30).status == "CANCELLED"
        assert not cluster_root(jid).exists()
    assert local_job_pids() == []
    assert broker("jobs", "cancel", "--all", "-y").returncode == 0  # nothing left: not an error
    r = broker("jobs", "cancel", "999", "-y")
    assert r.returncode == 5, (r.returncode, r.stderr)
    wait_for(lambda: controller_pid() is None, 10, 0.1, "controller exits when idle")


def test_no_resource_anywhere_is_exit_4_with_every_attempt(tmp_path):
    """A managed job the clouds refuse everywhere ends FAILED_NO_RESOURCE: `jobs launch` exits 4 as `launch` does
    (it exited 1) and says each attempt (the reason stopped at "attempts:")."""
    (broker_home() / "local").mkdir(parents=True, exist_ok=True)
    (broker_home() / "local" / "NO_SPOT_CAPACITY").write_text("")
    task = write_task(tmp_path / "sp.yaml", name="sp", resources={"infra": "local", "use_spot": True}, run="echo hi")
    r = broker("jobs", "launch", "-y", task, timeout=120)
    assert r.returncode == 4, r.stdout + r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    assert "FAILED_NO_RESOURCE" in text and "attempts: 1. local local spot: CapacityError NoSpotCapacity" in text, text


def test_a_gang_restarted_after_one_node_failed_stops_the_others_first(tmp_path):
    """Node 1 fails while node 0 still runs: before the restart on the same cluster (max_restarts_on_errors),
    node 0's part of the failed run is stopped; it never goes on beside the restarted gang."""
    led = tmp_path / "ledger"
    run = ('if [ -e "$LEDGER.r$SKYPILOT_NODE_RANK" ]; then n=2; else touch "$LEDGER.r$SKYPILOT_NODE_RANK"; n=1; fi\n'
           'echo "start $SKYPILOT_NODE_RANK $n" >> "$LEDGER"\n'
           'if [ $n = 1 ] && [ $SKYPILOT_NODE_RANK = 1 ]; then sleep 1; exit 3; fi\n'
           'if [ $n = 1 ]; then sleep 30; fi\n'
           'echo "end $SKYPILOT_NODE_RANK $n" >> "$LEDGER"\n')
    task = write_task(tmp_path / "t.yaml", name="gang", num_nodes=2, envs={"LEDGER": str(led)},
                      resources={"infra": "local", "job_recovery": {"max_restarts_on_errors": 1}}, run=run)
    jid = launch_detached(task)
    j = wait_status(jid, TERMINAL, 60)
    assert j.status == "SUCCEEDED" and j.restarts_on_errors == 1, diag(jid)
    lines = ledger(led)
    assert sorted(x for x in lines if x.startswith("end")) == ["end 0 2", "end 1 2"], lines  # node 0's first run stopped
    assert sorted(x for x in lines if x.startswith("start")) == ["start 0 1", "start 0 2", "start 1 1", "start 1 2"]
    assert_clean(jid)


def test_a_quiet_job_with_a_budget_is_stopped_before_it_exceeds_it(tmp_path, monkeypatch):
    """A job that prints nothing and writes no checkpoint is looked at seldom (its nodes' files say nothing
    changed); with a budget it is looked at in time: stopped FAILED_BUDGET before its cost reaches max_cost."""
    monkeypatch.setenv("BROKER_LOCAL_PRICES", "od=360,spot=360,disk=0")  # $0.10 a second
    monkeypatch.setenv("BROKER_CHECKPOINT_INTERVAL", "20")  # a quiet watched job: looked at every 100 s
    monkeypatch.setenv("BROKER_JOBS_POLL", "2")  # the budget looks 2 polls (4 s, $0.40) ahead
    task = write_task(tmp_path / "t.yaml", name="quiet", budget={"max_cost": 1.0, "hours": "1s"},
                      resources={"infra": "local"}, run="sleep 300")
    jid = launch_detached(task)
    j = wait_status(jid, TERMINAL | {"FAILED_BUDGET"}, 45)
    assert j.status == "FAILED_BUDGET", diag(jid)
    from skybroker.costs import ledger

    spent = sum(r.cost(ledger.now()) for r in ledger.runs(job_id=jid))
    assert 0 < spent <= 1.0, (spent, diag(jid))
    assert_clean(jid)
