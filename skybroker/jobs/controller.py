"""The managed-jobs controller: ONE background process on the user's side serving every managed job
(no controller VM to pay for). Started on demand (`jobs launch`, `jobs queue`, ...), exits when no job is
active, and is resumable: all state is in SQLite, clusters have deterministic names (job-<id>) and
provisioning is idempotent by tag, so killing it and starting it again loses no job and starts no
duplicate cluster.

Scale: jobs are state machines stepped by a small thread pool (at most one step in flight per job); a
job is polled when due, with the poll interval growing with the number of running jobs, so hundreds of
jobs cost a handful of threads, not one polling thread each.

    python -m skybroker.jobs.controller
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

from .. import clusters, state
from ..backend import ClusterRuntime
from ..errors import BrokerError, NoFeasibleError
from ..optimizer import Block
from ..spot.policies import NONE as D_NONE, SPOT as D_SPOT
from . import recovery as R
from . import store
from .deadline import DeadlinePolicy, DeadlineState, market_name
from .store import FAILED_CONTROLLER, RECOVERING, RUNNING, STARTING, TERMINAL

TICK = 0.2
POLL_MIN = float(os.environ.get("BROKER_JOBS_POLL", "2"))
CKPT_INTERVAL = float(os.environ.get("BROKER_CHECKPOINT_INTERVAL", "30"))
EXIT_GRACE = float(os.environ.get("BROKER_CONTROLLER_EXIT_GRACE", "10"))
WORKERS = int(os.environ.get("BROKER_CONTROLLER_WORKERS", "8"))
CKPT_REMOTE = "broker_checkpoint"  # under the node's home; exported as BROKER_CHECKPOINT_DIR


def cluster_name(job_id: int) -> str:
    return f"job-{job_id}"


def log(msg: str) -> None:
    print(f"{time.strftime('%F %T')} {msg}", flush=True)


class Controller:
    def __init__(self, workers: int = WORKERS):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self.inflight: dict[int, Future] = {}
        self.next_at: dict[int, float] = {}
        self.unreachable_since: dict[int, float] = {}
        self.last_ckpt: dict[int, float] = {}
        self.launch_attempts: dict[int, int] = {}
        self.pending_lines: dict[tuple[int, int], str] = {}
        self.deadlines: dict[int, DeadlinePolicy] = {}
        self._lock = threading.Lock()

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        idle_since = None
        while True:
            jobs = store.active()
            now = time.time()
            for jid in [j for j, f in self.inflight.items() if f.done()]:
                del self.inflight[jid]
            if not jobs and not self.inflight:
                idle_since = idle_since or now
                if now - idle_since > EXIT_GRACE:
                    return
            else:
                idle_since = None
            running = sum(1 for j in jobs if j.status == RUNNING)
            interval = max(POLL_MIN, running / 20.0)  # ~20 polls/s at most across all jobs
            for j in jobs:
                if j.id in self.inflight:
                    continue
                urgent = bool(j.cancel_requested)
                if not urgent and self.next_at.get(j.id, 0) > now:
                    continue
                self.next_at[j.id] = now + interval
                self.inflight[j.id] = self.pool.submit(self.step_safe, j.id)
            time.sleep(TICK)

    def step_safe(self, jid: int) -> None:
        try:
            self.step(jid)
        except Exception as exc:  # noqa: BLE001 - a controller bug must not take other jobs down
            log(f"job {jid}: controller error: {exc}\n{traceback.format_exc()}")
            j = store.get(jid)
            if j is not None and j.status not in TERMINAL:
                self._teardown(j)
                self._finish(j, FAILED_CONTROLLER, None, f"controller error: {exc}")

    def step(self, jid: int) -> None:
        j = store.get(jid)
        if j is None or j.status in TERMINAL:
            return
        if j.cancel_requested:
            return self._cancel(j)
        if j.status in (store.PENDING, STARTING):
            return self._launch(j, recovering=False)
        if j.status == RECOVERING:
            return self._launch(j, recovering=True)
        if j.status == RUNNING:
            return self._monitor(j)
        if j.status == store.CANCELLING:
            return self._cancel(j)

    # -- launching ------------------------------------------------------------------------------
    def _task(self, j):
        from ..spec import task_from_stored

        return task_from_stored(json.loads(j.task), store.decrypt(j.secrets))

    def _view(self, j, task, recovering=False) -> R.JobView:
        jr = next((r.job_recovery for r in task.candidates if r.job_recovery), None)
        rec = state.get_cluster(j.cluster) if j.cluster else None
        return R.JobView(
            strategy=jr.strategy if jr else "EAGER_NEXT_REGION",
            max_restarts_on_errors=jr.max_restarts_on_errors if jr else 0,
            recover_on_exit_codes=jr.recover_on_exit_codes if jr else (),
            restarts_on_errors=j.restarts_on_errors, cancel_requested=bool(j.cancel_requested),
            cloud=rec.cloud if rec else None, region=rec.region if rec else None, zone=rec.zone if rec else None,
            recovering=recovering, launch_attempts=self.launch_attempts.get(j.id, 0))

    def _launch(self, j, recovering: bool) -> None:
        from .. import api
        from ..provision import ProvisionExhausted

        task = self._task(j)
        name = cluster_name(j.id)
        dl, dst, market = self._deadline(j, task), None, None
        if dl is not None:  # deadline-aware: the spot policy picks the market (or to wait)
            dst = DeadlineState.load(j.deadline_state)
            now = time.time()
            market = dl.decide(dst, now, force=dst.want is None)
            if market is D_NONE:
                store.update(j.id, status=RECOVERING if recovering else store.PENDING, deadline_state=dst.dump())
                if recovering:
                    self._teardown(j)
                store.add_event(j.id, "policy", f"{dl.policy.name}: wait (progress {dst.progress_s / 3600:.2f} h "
                                f"of {dl.done_s / 3600:.2f} h)")
                self.next_at[j.id] = now + dl.tick_s
                return
            task = _with_market(task, market is D_SPOT)
        store.update(j.id, status=RECOVERING if recovering else STARTING, cluster=name)
        if recovering:
            self._teardown(j)  # whatever is left of the lost cluster
        meta = json.loads(j.blocked or "{}") if (j.blocked or "").startswith("{") else {}
        blocks = [Block(**b) for b in meta.get("blocks", [])]
        pin = meta.get("pin")

        def plan_fn(extra):
            if pin and not extra:
                try:
                    return api.plan(_pinned(task, pin))
                except NoFeasibleError:
                    pass
            try:
                return api.plan(task, blocks + list(extra))
            except NoFeasibleError:
                if blocks:  # EAGER_NEXT_REGION found nowhere else: go back to the avoided region
                    return api.plan(task, list(extra))
                raise

        def prepare(rt: ClusterRuntime):
            if store.get(j.id).cancel_requested:  # cancelled while provisioning: start nothing
                raise _CancelledDuringLaunch()
            return self._restore_checkpoint(j, rt)

        if store.get(j.id).cancel_requested:  # cancelled after this step began: do not provision
            return self._cancel(store.get(j.id))
        try:
            res = clusters.launch(task, cluster=name, plan_fn=plan_fn, detach=True, task_id=j.task_id,
                                  prepare=prepare, on_event=lambda k, m: store.add_event(j.id, k, m))
        except _CancelledDuringLaunch:
            return self._cancel(store.get(j.id))
        except (ProvisionExhausted, NoFeasibleError) as exc:
            if dl is not None and market is D_SPOT:  # the only probe of spot availability a broker has
                dl.spot_failed(dst, time.time())
                dst.want = None
                store.update(j.id, deadline_state=dst.dump())
                store.add_event(j.id, "policy", f"no spot capacity ({exc.message.splitlines()[0]}): spot counts "
                                f"as unavailable for a while; asking the policy again")
                self.next_at[j.id] = 0
                return
            self.launch_attempts[j.id] = self.launch_attempts.get(j.id, 0) + 1
            action = R.decide(self._view(j, task, recovering), R.LaunchFailed(exc.message.splitlines()[0]))
            return self._apply(j, action)
        self.launch_attempts.pop(j.id, None)
        rec = state.get_cluster(name)
        now = time.time()
        store.update(j.id, status=RUNNING, cluster_job_id=res.job_id, place=rec.infra if rec else None,
                     segment_start=now, segment_price=rec.hourly_price if rec else 0.0,
                     started_at=j.started_at or now, log_offsets="{}", blocked=json.dumps({"blocks": []}))
        store.add_event(j.id, "running", f"running on {rec.infra if rec else name} "
                        f"({rec.instance_type if rec else ''}{' spot' if rec and rec.use_spot else ''})")
        self.last_ckpt[j.id] = now
        if dl is not None:
            dst.held, dst.last_at = market.value, None
            store.update(j.id, deadline_state=dst.dump())
            store.add_event(j.id, "policy", f"{dl.policy.name}: running on {market_name(market)}")
        if store.get(j.id).cancel_requested:
            self._cancel(store.get(j.id))

    def _deadline(self, j, task):
        if task.deadline_hours is None or task.expected_hours is None:
            return None
        if j.id not in self.deadlines:
            self.deadlines[j.id] = DeadlinePolicy(task, j.submitted_at)
        return self.deadlines[j.id]

    def _deadline_tick(self, j, task, running: bool) -> None:
        """Account progress and let the policy switch markets (spot ↔ on-demand, or wait)."""
        dl = self._deadline(j, task)
        if dl is None:
            return
        dst = DeadlineState.load(j.deadline_state)
        now = time.time()
        dl.account(dst, now, running)
        want = dl.decide(dst, now)
        store.update(j.id, deadline_state=dst.dump())
        if want.value == dst.held:
            return
        store.add_event(j.id, "policy", f"{dl.policy.name}: switch from {dst.held} to {market_name(want)} "
                        f"(progress {dst.progress_s / 3600:.3f} h of {dl.done_s / 3600:.3f} h, "
                        f"elapsed {(now - j.submitted_at) / 3600:.3f} h)")
        self._end_segment(j)
        self._marker(j, f"deadline policy switches from {dst.held} to {market_name(want)}", count=False)
        store.update(j.id, status=RECOVERING, blocked=json.dumps({"blocks": []}))
        self.next_at[j.id] = 0

    def _restore_checkpoint(self, j, rt: ClusterRuntime) -> dict[int, dict]:
        from ..runtime.runner import run_parallel

        local = store.job_dir(j.id) / "checkpoint"
        has = local.is_dir() and any(local.iterdir())

        def one(node):
            r = rt.runner(node)
            home = r.run('printf %s "$HOME"', timeout=30).stdout.strip()
            path = f"{home}/{CKPT_REMOTE}"
            if has:
                r.sync_up(str(local), path, ignore_files=False)
            else:
                r.run(f"mkdir -p {CKPT_REMOTE}", cwd="~", timeout=30)
            return node.rank, {"BROKER_CHECKPOINT_DIR": path}

        return dict(run_parallel(rt.nodes, one))

    # -- monitoring -----------------------------------------------------------------------------
    def _monitor(self, j) -> None:
        rec = state.get_cluster(j.cluster) if j.cluster else None
        task = self._task(j)
        if rec is None:
            return self._apply(j, R.decide(self._view(j, task), R.Preempted("cluster record disappeared")))
        rt = ClusterRuntime(rec)
        try:
            try:
                st = rt.job(j.cluster_job_id)
            except (BrokerError, OSError):  # OSError: a local node's sandbox vanished under its runner
                st = None
            healthy = st is not None and not any(n.status in ("UNREACHABLE", "UNKNOWN") for n in st.nodes)
            if healthy:  # a dead node would only cost another connect timeout
                self._fetch_logs(j, rt, rec)
            if healthy:
                self.unreachable_since.pop(j.id, None)
                self._maybe_checkpoint(j, rt, done=st.done)
                if not st.done:
                    return self._deadline_tick(j, task, running=st.status == "RUNNING")
                if st.status == "SUCCEEDED":
                    return self._apply(j, R.decide(self._view(j, task), R.Succeeded()))
                if st.status == "CANCELLED":
                    return self._apply(j, R.Finish(store.CANCELLED, None, "cancelled on the cluster"))
                lost = self._lost_instances(rec)
                if lost:
                    return self._apply(j, R.decide(self._view(j, task), R.Preempted(lost)))
                return self._apply(j, R.decide(self._view(j, task),
                                               R.UserFailed(st.exit_code, setup=st.status == "FAILED_SETUP")))
            lost = self._lost_instances(rec)
            if lost:
                return self._apply(j, R.decide(self._view(j, task), R.Preempted(lost)))
            since = self.unreachable_since.setdefault(j.id, time.time())
            return self._apply(j, R.decide(self._view(j, task), R.Unreachable(time.time() - since)))
        finally:
            rt.close()

    def _lost_instances(self, rec) -> str | None:
        """The cloud's view: why instances are gone, or None if all are alive."""
        from ..clouds.base import RUNNING as I_RUNNING
        from ..clouds.registry import get_cloud

        cloud = get_cloud(rec.cloud)
        try:
            infos = cloud.query(rec.name, rec.region)
        except BrokerError:
            return None  # cannot tell: treat as unreachable, not lost
        alive = [i for i in infos if i.state == I_RUNNING]
        if len(alive) >= rec.num_nodes:
            return None
        reasons = set()
        if hasattr(cloud, "query_all"):
            try:
                reasons = {i.state_reason for i in cloud.query_all(rec.name, rec.region) if i.state_reason}
            except BrokerError:
                pass
        why = ", ".join(sorted(reasons)) or "instance gone"
        return f"{rec.num_nodes - len(alive)} of {rec.num_nodes} instance(s) lost ({why})"

    def _fetch_logs(self, j, rt: ClusterRuntime, rec) -> None:
        from ..backend import AGENT, PY

        offsets = json.loads(j.log_offsets or "{}")
        multi = len(rt.nodes) > 1
        out = []
        for node in rt.nodes:
            off = int(offsets.get(str(node.rank), 0))
            try:
                res = rt.runner(node).run(f"{PY} {AGENT} logs {j.cluster_job_id} --offset {off}", timeout=30)
            except (BrokerError, OSError):
                continue
            if res.exit_code != 0 or not res.stdout:
                continue
            offsets[str(node.rank)] = off + len(res.stdout.encode())
            key = (j.id, node.rank)
            text = self.pending_lines.pop(key, "") + res.stdout
            lines = text.split("\n")
            if lines[-1]:
                self.pending_lines[key] = lines[-1]
            for line in lines[:-1]:
                out.append(f"(node-{node.rank}) {line}" if multi else line)
        if out:
            with open(store.job_dir(j.id) / "run.log", "a") as f:
                f.write("\n".join(out) + "\n")
        store.update(j.id, log_offsets=json.dumps(offsets))

    def _maybe_checkpoint(self, j, rt: ClusterRuntime, done: bool = False) -> None:
        now = time.time()
        if done or now - self.last_ckpt.get(j.id, 0) < CKPT_INTERVAL:
            return
        self.last_ckpt[j.id] = now
        head = rt.nodes[0]
        local = store.job_dir(j.id) / "checkpoint"
        try:
            rt.runner(head).sync_down(f"~/{CKPT_REMOTE}", str(local))
        except (BrokerError, OSError) as exc:
            log(f"job {j.id}: checkpoint sync failed: {exc}")

    # -- actions --------------------------------------------------------------------------------
    def _apply(self, j, action) -> None:
        if isinstance(action, R.Cancel):
            return self._cancel(j)
        if isinstance(action, R.Wait):
            self.next_at[j.id] = time.time() + action.seconds
            if j.status in (STARTING, RECOVERING):
                store.update(j.id, status=RECOVERING)
            store.add_event(j.id, "wait", action.reason)
            return
        if isinstance(action, R.Finish):
            self._end_segment(j)
            self._teardown(j)
            return self._finish(j, action.status, action.exit_code, action.reason)
        if isinstance(action, R.Relaunch):
            self._end_segment(j)
            self._marker(j, action.reason)
            if action.same_cluster and state.get_cluster(j.cluster or "") is not None:
                fields = {"restarts_on_errors": j.restarts_on_errors + (1 if action.counts_as_error else 0)}
                store.update(j.id, **fields)
                return self._resubmit(store.get(j.id))
            if j.deadline_state:  # the instances are gone: nothing is held, the policy decides afresh
                dst = DeadlineState.load(j.deadline_state)
                dst.held, dst.want, dst.last_at = D_NONE.value, None, None
                store.update(j.id, deadline_state=dst.dump())
            meta = {"blocks": [b.__dict__ for b in ([action.block] if action.block else [])]}
            rec = state.get_cluster(j.cluster) if j.cluster else None
            if action.same_place_first and rec is not None:
                meta["pin"] = {"cloud": rec.cloud, "region": rec.region, "zone": rec.zone}
            store.update(j.id, status=RECOVERING, recoveries=j.recoveries + 1, blocked=json.dumps(meta))
            self.next_at[j.id] = 0
            return
        raise TypeError(f"unknown action {action!r}")

    def _resubmit(self, j) -> None:
        rec = state.get_cluster(j.cluster)
        task = self._task(j)
        rt = ClusterRuntime(rec)
        try:
            env = self._restore_checkpoint(j, rt)
            job_id = rt.submit(task, job_name=task.name, task_id=j.task_id, run_setup=False, env_by_rank=env)
        finally:
            rt.close()
        now = time.time()
        store.update(j.id, status=RUNNING, cluster_job_id=job_id, log_offsets="{}", segment_start=now,
                     segment_price=rec.hourly_price)

    def _marker(self, j, reason: str, count: bool = True) -> None:
        what = f"recovery {j.recoveries + 1}" if count else "switch"
        with open(store.job_dir(j.id) / "run.log", "a") as f:
            f.write(f"=== broker: {what} at {time.strftime('%F %T')}: {reason} ===\n")
        store.add_event(j.id, "recovery" if count else "switch", reason)

    def _end_segment(self, j) -> None:
        if j.segment_start and j.segment_price is not None:
            cost = j.cost + (time.time() - j.segment_start) / 3600 * j.segment_price
            store.update(j.id, cost=cost, segment_start=None, segment_price=None)

    def _teardown(self, j) -> None:
        name = j.cluster or cluster_name(j.id)
        try:
            clusters.down([name])
        except BrokerError as exc:
            store.add_event(j.id, "warning", f"teardown of {name} failed: {exc.message}; `broker down {name}`")

    def _finish(self, j, status: str, exit_code, reason: str) -> None:
        store.update(j.id, status=status, exit_code=exit_code, ended_at=time.time(),
                     failure=(reason or None) if status != store.SUCCEEDED else None)
        store.add_event(j.id, status.lower(), reason)
        log(f"job {j.id}: {status} ({reason})")

    def _cancel(self, j) -> None:
        store.update(j.id, status=store.CANCELLING)
        rec = state.get_cluster(j.cluster) if j.cluster else None
        if rec is not None:
            rt = ClusterRuntime(rec)
            try:
                rt.cancel(None)
            except BrokerError:
                pass
            finally:
                rt.close()
        self._end_segment(store.get(j.id))
        self._teardown(j)
        self._finish(store.get(j.id), store.CANCELLED, None, "cancelled by the user")


class _CancelledDuringLaunch(Exception):
    pass


def _with_market(task, spot: bool):
    """The task with every resources candidate on spot (or on-demand), as the deadline policy chose."""
    from dataclasses import replace

    return replace(task, groups=tuple(tuple(replace(r, use_spot=spot) for r in g) for g in task.groups))


def _pinned(task, pin: dict):
    """The task restricted to the place it ran last (FAILOVER: same place first)."""
    from dataclasses import replace

    groups = tuple(tuple(replace(r, cloud=pin["cloud"], region=pin["region"], zone=pin["zone"])
                         for r in g if r.cloud in (None, pin["cloud"])) for g in task.groups)
    groups = tuple(g for g in groups if g)
    return replace(task, groups=groups) if groups else task


def main() -> int:
    from filelock import FileLock, Timeout

    from ..paths import ensure_home

    d = ensure_home() / "managed"
    d.mkdir(exist_ok=True)
    # liveness polls should not wait long on a dead node: the controller connects with a short timeout
    os.environ.setdefault("BROKER_SSH_CONNECT_TIMEOUT", "4")
    lock = FileLock(str(d / "controller.lock"))
    while True:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return 0  # another controller serves the jobs
        try:
            (d / "controller.pid").write_text(str(os.getpid()))
            log(f"controller started (pid {os.getpid()})")
            Controller().run()
            log("no active jobs: controller exiting")
        finally:
            lock.release()
        # a job submitted while we were exiting saw the lock held and started no controller: serve it
        if not store.active():
            return 0


if __name__ == "__main__":
    sys.exit(main())
