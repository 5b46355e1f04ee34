"""The managed-jobs controller: ONE background process on the user's side serving every managed job
(no controller VM to pay for). Started on demand (`jobs launch`, `jobs queue`, ...), exits when no job is
active, and is resumable: all state is in SQLite, clusters have deterministic names (job-<id>) and
provisioning is idempotent by tag, so killing it and starting it again loses no job and starts no
duplicate cluster.

Bring-up is the lifecycle's state machine (lifecycle.py), with the cluster owned by the job: any
bring-up failure tears the cluster down and comes back as a typed BringUpError, which is fed to the pure
recovery decision (recovery.py) — a node preempted or unreachable during bring-up is a preemption like
any other. Submission is idempotent: the job's submit token is recorded in the state before the submit,
and a restarted controller finds the job the token started instead of submitting it again, so a job
never runs twice because the controller died. The launch path is in launching.py (a part of Controller).

Scale: jobs are state machines stepped by a small thread pool (at most one step in flight per job). A job
on nodes that are directories here (local cloud) is stepped when its files change (runtime/channel.py: a
few stats per second, no process); a job on other nodes (SSH) when the agent's `watch` stream on its nodes
says so (runtime/stream_feed.py: status changes, log growth, beats; a stream that ends or stops beating is
a look at once, and a dropped connection asks the cloud first). A job neither feed watches (an agent
older than `watch`, a stream not up) is stepped when due (the interval grows with their number). Every
cluster a job is on keeps one open runtime across steps (channels.py): polls reuse its SSH connections.

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

from .. import clusters, settings, state
from ..backend import ClusterRuntime, local_homes
from ..errors import BrokerError
from ..failpoints import failpoint
from ..runtime.channel import ChangeFeed
from ..runtime.stream_feed import StreamFeed
from ..state_db import StateError
from . import checkpoint, logsync
from . import pipeline as P
from . import recovery as R
from . import store
from .channels import Runtimes
from .checkpoint import CKPT_REMOTE
from .deadline import DeadlinePolicy, DeadlineState
from .launching import Launching
from .store import FAILED_CONTROLLER, RECOVERING, RUNNING, STARTING, TERMINAL

TICK = 0.2
STATE_RETRY_S = 5.0  # a step that could not write the state database (locked, full disk) is tried again this late


def cluster_name(job_id: int) -> str:
    return f"job-{job_id}"


def log(msg: str) -> None:
    print(f"{time.strftime('%F %T')} {msg}", flush=True)


class Controller(Launching):
    def __init__(self, workers: int | None = None):
        self.pool = ThreadPoolExecutor(max_workers=workers or settings.get("controller_workers"), thread_name_prefix="job")
        self.inflight: dict[int, Future] = {}
        self.next_at: dict[int, float] = {}
        self.unreachable_since: dict[int, float] = {}
        self.last_ckpt: dict[int, float] = {}
        self.launch_attempts: dict[int, int] = {}
        self.deadlines: dict[int, DeadlinePolicy] = {}
        self.failed_seen: dict[int, tuple] = {}  # job → the (cluster, cluster job) whose failure was seen once
        self.noticed: dict[int, int] = {}  # job → the cluster job whose preemption notice was recorded
        self.feed = ChangeFeed(every=0.9, also=(CKPT_REMOTE,), also_gap=settings.get("checkpoint_interval"))
        # the other clusters: the agent's `watch` stream on each node (one session on the kept connection)
        self.sfeed = StreamFeed(also=CKPT_REMOTE, also_gap=settings.get("checkpoint_interval"))
        self.rts = Runtimes()  # one open runtime per cluster a job is on: its SSH connections reused by every poll
        self._lock = threading.Lock()
        from .pools import PoolRunner

        self.pools = PoolRunner(self)  # job pools: workers kept up for `jobs launch --pool` (pools.py)

    # -- loop -----------------------------------------------------------------------------------
    def run(self, keep_going=None) -> None:
        """Step the active jobs. Standalone: until no job is active for a while. In a server
        (`keep_going` given): while keep_going() says so (the server is the leader), idle or not."""
        try:
            self._run(keep_going)
        finally:
            self.sfeed.close()
            self.rts.sweep(())  # every connection kept open for polls is closed

    def _run(self, keep_going) -> None:
        from ..costs import ledger

        ledger.reconcile()  # runs a previous controller left open while their clusters went away
        idle_since = None
        while keep_going is None or keep_going():
            jobs = store.active_brief()
            now = time.time()
            for jid in [j for j, f in self.inflight.items() if f.done()]:
                del self.inflight[jid]
            has_pools = self.pools.tick(now)  # a pool keeps the controller up: it watches the workers
            if keep_going is None and not jobs and not self.inflight and not has_pools:
                idle_since = idle_since or now
                if now - idle_since > settings.get("controller_exit_grace"):
                    return
            else:
                idle_since = None
            running = sum(1 for j in jobs if j.status == RUNNING)
            interval = max(settings.get("jobs_poll"), running / 20.0)  # ~20 polls/s at most across all jobs
            for j in jobs:  # a watched job: when its state changes, its output at most per interval
                if j.id in self.inflight:
                    continue
                key = (j.id, j.cluster)  # a recovered or pool job may be on another cluster with the same job id
                if not (j.cancel_requested or (j.status == RUNNING and self._changed(j, key, interval))) and \
                        self.next_at.get(j.id, 0) > now:
                    continue
                watched = self.feed.watching(key) or self.sfeed.watching(key)
                self.next_at[j.id] = now + (5 * settings.get("checkpoint_interval") if watched else interval)
                self.inflight[j.id] = self.pool.submit(self.step_safe, j.id)
            self.feed.forget((j.id, j.cluster) for j in jobs)
            self.sfeed.forget((j.id, j.cluster) for j in jobs)
            self.rts.sweep(j.cluster for j in jobs if j.cluster)  # a cluster no job is on any more: closed
            time.sleep(min(1.0, TICK * max(1.0, len(jobs) / 100)))  # a round costs O(jobs): 1 s apart at 500+

    def _changed(self, j, key, interval: float) -> bool:
        """Whether to look at a running job now: ChangeFeed for nodes that are directories here (stats, no
        process), else the agents' `watch` streams (StreamFeed); neither watching: the caller's interval."""
        if self.feed.changed(key, j.cluster_job_id, lambda: local_homes(j.cluster), interval):
            return True
        if self.feed.watching(key):
            return False
        return self.sfeed.changed(key, j.cluster_job_id, lambda: self._stream_source(j.cluster), interval)

    def _stream_source(self, name: str):
        rec = state.get_cluster(name)
        if rec is None:
            return None
        rt = self.rts.get(rec)
        return name, [rt.agent(n) for n in rt.nodes]

    def step_safe(self, jid: int) -> None:
        try:
            self.step(jid)
        except StateError as exc:  # our own database, not the job: leave the job as it is and look again later
            log(f"job {jid}: the state database cannot be written now, the job is left as it is and looked at again "
                f"in {STATE_RETRY_S:.0f} s: {exc}")
            self.next_at[jid] = time.time() + STATE_RETRY_S
        except Exception as exc:  # noqa: BLE001 - a controller bug must not take other jobs down
            log(f"job {jid}: controller error: {exc}\n{traceback.format_exc()}")
            j = store.get(jid)
            if j is not None and j.status not in TERMINAL:
                self._end(j, FAILED_CONTROLLER, None, f"controller error: {exc}")

    def step(self, jid: int) -> None:
        j = store.get(jid)
        if j is None or j.status in TERMINAL:
            return
        token = state.current_user.set(j.user_name)  # server mode: the job's cluster is its user's
        try:
            self._step(j)
        finally:
            state.current_user.reset(token)

    def _step(self, j) -> None:
        if j.outcome:  # it ended and its teardown was cut short (the controller stopped): finish that, nothing else
            o = json.loads(j.outcome)
            return self._end(j, o["status"], o.get("exit_code"), o.get("reason") or "")
        if j.cancel_requested:
            return self._cancel(j)
        if P.stage_succeeded(j):  # the controller stopped between a stage's success and the next stage
            self._teardown(j)
            return self._advance(j)
        if j.pool and j.status in (store.PENDING, STARTING, RECOVERING):
            return self.pools.launch_job(j)  # a free worker of its pool instead of a cluster of its own
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






    # -- monitoring -----------------------------------------------------------------------------
    def _monitor(self, j) -> None:
        rec = state.get_cluster(j.cluster) if j.cluster else None
        task = self._task(j)
        if rec is None:
            return self._apply(j, R.decide(self._view(j, task), R.Preempted("cluster record disappeared")))
        if self._over_budget(j, task):
            return
        if self.sfeed.lost((j.id, j.cluster)):  # a node's stream lost its connection: ask the cloud first, not
            lost = self._lost_instances(rec)  # a poll that would wait out the connect timeout on a dead node
            if lost:
                return self._apply(j, R.decide(self._view(j, task), R.Preempted(lost)))
        with self.rts.use(rec) as rt:  # kept open across polls: no new SSH connection per look
            try:
                st = logsync.poll(j, rt)  # status and new output: one agent call per node
            except StateError:
                raise  # our database, not the node: never taken for an unreachable node (step_safe retries)
            except (BrokerError, OSError):  # OSError: a local node's sandbox vanished under its runner
                st = None
            healthy = st is not None and bool(st.nodes) and \
                not any(n.status in ("UNREACHABLE", "UNKNOWN") for n in st.nodes)
            if not healthy:
                self.rts.drop(rec.name)  # the next look connects afresh
            if healthy and st.notice:  # the cloud announced the preemption: the job was given SIGTERM
                return self._on_notice(j, task, rt, st)
            if healthy:
                self.unreachable_since.pop(j.id, None)
                if st.done and st.status == "SUCCEEDED" and P.has_next(j):
                    self.last_ckpt[j.id] = 0  # hand the checkpoint directory over to the next stage: a last copy
                    if self._maybe_checkpoint(j, rt) is False:
                        store.add_event(j.id, "warning", "the last checkpoint copy of this stage failed: the next "
                                        "stage starts from the last complete copy")
                else:
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
                if self.failed_seen.get(j.id) != (j.cluster, j.cluster_job_id):
                    # a node lost under its job fails the job before the cloud shows the loss: look once more
                    self.failed_seen[j.id] = (j.cluster, j.cluster_job_id)
                    self.next_at[j.id] = time.time() + settings.get("jobs_poll")
                    return None
                if self._restart_adopted(j, rt):  # a restart the previous controller submitted runs there
                    return None
                if any(n.status not in logsync.TERMINAL_STATUSES for n in st.nodes):  # the gang failed on one
                    try:  # node: its parts still running on the others stop first (a restart runs it once)
                        rt.cancel([j.cluster_job_id])
                    except BrokerError as exc:
                        store.add_event(j.id, "warning", f"the failed run's other nodes were not stopped: {exc}")
                if "node rebooted while the job was" in (st.crash or ""):  # procs.reconcile's reason
                    n = sum(e["kind"] == "recovery" and e["message"].startswith(R.REBOOTED) for e in store.events(j.id))
                    return self._apply(j, R.decide(self._view(j, task), R.Rebooted(st.crash, n)))
                return self._apply(j, R.decide(self._view(j, task),
                                               R.UserFailed(st.exit_code, setup=st.status == "FAILED_SETUP",
                                                            reason=st.crash)))
            lost = self._lost_instances(rec)
            if lost:
                return self._apply(j, R.decide(self._view(j, task), R.Preempted(lost)))
            since = self.unreachable_since.setdefault(j.id, time.time())
            return self._apply(j, R.decide(self._view(j, task), R.Unreachable(time.time() - since)))

    def _on_notice(self, j, task, rt, st) -> None:
        """Act on the notice, not on the loss: once the job has stopped (its SIGTERM grace), copy the
        checkpoint it wrote one last time while the node still answers, and relaunch now."""
        if self.noticed.get(j.id) != j.cluster_job_id:
            self.noticed[j.id] = j.cluster_job_id
            store.add_event(j.id, "notice", f"preemption notice: {st.notice}")
        if not st.done:
            self.next_at[j.id] = time.time() + 0.5  # within the grace the job is writing its checkpoint
            return
        self.last_ckpt[j.id] = 0  # force a last copy now
        self._maybe_checkpoint(j, rt)
        return self._apply(j, R.decide(self._view(j, task), R.Preempted(f"notice: {st.notice}")))

    def _lost_instances(self, rec) -> str | None:
        """The cloud's view: why instances are gone, or None if all are alive."""
        from ..clouds.base import RUNNING as I_RUNNING
        from ..clouds.registry import get as get_provider

        prov = get_provider(rec.cloud)
        try:
            infos = prov.query(rec.cloud_name, rec.region, include_gone=prov.capabilities.gone_reasons)
        except BrokerError:
            return None  # cannot tell: treat as unreachable, not lost
        alive = [i for i in infos if i.state == I_RUNNING]
        if len(alive) >= rec.num_nodes:
            return None
        reasons = {i.state_reason for i in infos if i.state_reason and i.state != I_RUNNING}
        why = ", ".join(sorted(reasons)) or "instance gone"
        return f"{rec.num_nodes - len(alive)} of {rec.num_nodes} instance(s) lost ({why})"

    def _maybe_checkpoint(self, j, rt: ClusterRuntime, done: bool = False) -> bool | None:
        """A new complete snapshot of the head node's checkpoint directory (checkpoint.py): a copy
        interrupted halfway never replaces the last complete one. True/False: copied or failed; None: not due."""
        now = time.time()
        if done or now - self.last_ckpt.get(j.id, 0) < settings.get("checkpoint_interval"):
            return None
        self.last_ckpt[j.id] = now
        from ..storage.mounts import checkpoint_mount

        if checkpoint_mount(json.loads(j.task)):
            return  # in a mounted bucket: the job's writes are the checkpoint
        head = rt.nodes[0]
        try:
            checkpoint.take(store.job_dir(j.id), lambda dst, prev: rt.runner(head).sync_down(
                f"~/{CKPT_REMOTE}", str(dst), link_dest=str(prev) if prev else None))
        except (BrokerError, OSError) as exc:
            log(f"job {j.id}: checkpoint sync failed (the last complete copy is kept): {exc}")
            return False
        return True

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
            self._observe_spot(j, preempted=False)
            self._end_segment(j)
            if action.status == store.SUCCEEDED and P.has_next(j):
                P.mark_done(store.get(j.id))  # recorded before the teardown: a restart goes on from here
                self._teardown(j)
                return self._advance(store.get(j.id))
            return self._end(j, action.status, action.exit_code, action.reason)
        if isinstance(action, R.Relaunch):
            self._observe_spot(j, preempted=action.lost)
            self._end_segment(j)
            self._marker(j, action.reason)
            if action.same_cluster and state.get_cluster(j.cluster or "") is not None:
                fields = {"restarts_on_errors": j.restarts_on_errors + (1 if action.counts_as_error else 0)}
                store.update(j.id, **fields)
                return self._resubmit(store.get(j.id))
            if j.deadline_state:  # the instances are gone: nothing is held, the policy decides afresh
                dst = DeadlineState.load(j.deadline_state)
                dst.lost()
                store.update(j.id, deadline_state=dst.dump())
            meta = {"blocks": [b.__dict__ for b in ([action.block] if action.block else [])]}
            rec = state.get_cluster(j.cluster) if j.cluster else None
            if action.same_place_first and rec is not None:
                meta["pin"] = {"cloud": rec.cloud, "region": rec.region, "zone": rec.zone}
            store.update(j.id, status=RECOVERING, recoveries=j.recoveries + 1, blocked=json.dumps(meta),
                         submit_token=None)
            self.next_at[j.id] = 0
            return
        raise TypeError(f"unknown action {action!r}")

    def _over_budget(self, j, task, launching: bool = False) -> bool:
        """Stop a job about to exceed its budget (costs/budget.py): FAILED_BUDGET, never silently."""
        from ..costs import budget

        why, left = budget.managed_check(j.id, task, launching, 2 * settings.get("jobs_poll"))
        if why is None and left is not None:  # a quiet job (looked at seldom) is looked at before it can reach it
            self.next_at[j.id] = min(self.next_at.get(j.id, float("inf")), time.time() + max(0.0, left))
        if why is not None:
            store.add_event(j.id, "budget", why)
            self._cancel(j, store.FAILED_BUDGET, why)
        return why is not None

    def _marker(self, j, reason: str, count: bool = True) -> None:
        # numbered by the reruns so far, relaunches and same-cluster restarts alike (`recoveries` counts only the
        # former, so two restarts after user-code failures both said "recovery 1")
        what = f"recovery {sum(e['kind'] == 'recovery' for e in store.events(j.id)) + 1}" if count else "switch"
        with open(store.job_dir(j.id) / "run.log", "a") as f:
            f.write(f"=== broker: {what} at {time.strftime('%F %T')}: {reason} ===\n")
        store.add_event(j.id, "recovery" if count else "switch", reason)

    def _observe_spot(self, j, preempted: bool) -> None:
        """What a spot segment showed about its place (hours run, preempted or not): risk-aware placement."""
        rec = state.get_cluster(j.cluster) if j.cluster else None
        if rec is None or not rec.use_spot or not j.segment_start:
            return
        from . import risk

        try:
            risk.record((rec.cloud, rec.region, rec.zone, rec.instance_type or ""),
                        (time.time() - j.segment_start) / 3600, preempted)
        except Exception as exc:  # noqa: BLE001 - an observation lost must not stop a recovery
            log(f"job {j.id}: could not record the spot observation: {exc}")

    def _end_segment(self, j) -> None:
        if j.segment_start and j.segment_price is not None:
            cost = j.cost + (time.time() - j.segment_start) / 3600 * j.segment_price
            store.update(j.id, cost=cost, segment_start=None, segment_price=None)

    def _teardown(self, j) -> None:
        if j.pool:
            return self.pools.release(j)  # the worker goes back to its pool, which keeps it up
        name = j.cluster or P.stage_cluster(j)
        self.rts.drop(name)
        try:
            clusters.down([name], on_event=lambda k, m: store.add_event(j.id, k, m) if k in ("warning", "skip") else None,
                          only_owner=f"managed:{j.id}")
        except BrokerError as exc:
            store.add_event(j.id, "warning", f"teardown of {name} failed: {exc.message}; `broker down {name}`")

    def _end(self, j, status: str, exit_code, reason: str) -> None:
        """End the job: its outcome recorded, its cluster torn down (or worker given back), then the terminal
        status. A controller stopped in between finds the outcome (_step) and ends it the same way: a job that
        ended is never taken for preempted because its cluster is gone, so it never runs again."""
        store.update(j.id, outcome=json.dumps({"status": status, "exit_code": exit_code, "reason": reason}))
        self._teardown(j)
        failpoint("after-teardown")
        self._finish(store.get(j.id), status, exit_code, reason)

    def _finish(self, j, status: str, exit_code, reason: str) -> None:
        fields, reason = P.finish_fields(j, status, exit_code, reason)
        store.update(j.id, status=status, exit_code=exit_code, ended_at=time.time(),
                     failure=(reason or None) if status != store.SUCCEEDED else None, **fields)
        store.add_event(j.id, status.lower(), reason)
        log(f"job {j.id}: {status} ({reason})")
        from ..storage.mounts import release  # the job's `persistent: false` buckets go with it

        for w in release(f"owner:managed:{j.id}"):
            store.add_event(j.id, "warning", w)

    # -- pipelines (pipeline.py) ----------------------------------------------------------------
    def _advance(self, j) -> None:
        P.advance(j)
        for d in (self.launch_attempts, self.deadlines, self.noticed, self.unreachable_since, self.last_ckpt):
            d.pop(j.id, None)
        self.next_at[j.id] = 0

    def _cancel(self, j, status: str = store.CANCELLED, reason: str = "cancelled by the user") -> None:
        if status == store.CANCELLED:
            store.update(j.id, status=store.CANCELLING)
        rec = state.get_cluster(j.cluster) if j.cluster and (not j.pool or self.pools.holds(j)) else None
        if rec is not None:
            rt = ClusterRuntime(rec)
            try:
                rt.cancel([j.cluster_job_id] if j.pool and j.cluster_job_id else None)
            except BrokerError:
                pass
            finally:
                rt.close()
        self._end_segment(store.get(j.id))
        self._end(j, status, None, reason)





def main() -> int:
    from filelock import FileLock, Timeout

    from ..paths import ensure_home, private_dir

    d = private_dir(ensure_home() / "managed")
    # liveness polls should not wait long on a dead node: the controller connects with a short timeout
    os.environ.setdefault("BROKER_SSH_CONNECT_TIMEOUT", str(settings.get("controller_ssh_timeout")))
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
        from .pool_store import all_pools

        if not store.active() and not all_pools():
            return 0


if __name__ == "__main__":
    sys.exit(main())
