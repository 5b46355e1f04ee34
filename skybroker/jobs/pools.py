"""Job pools in the managed-jobs controller (SkyPilot's `sky jobs pool`): workers kept up for many jobs.

A pool is a task (`pool: {workers: N}`, resources, setup, file mounts) and a size. Each worker is a
cluster (`pool-<pool>-<idx>`) brought up through the ONE lifecycle state machine (lifecycle.bring_up, on
the cheapest fit, spot allowed) whose first job is the pool's setup (and `run`, if the pool has one): it
runs once per worker. A managed job launched with `--pool` does not provision: it waits for a free worker
(first come first served, pool_sched.pick_worker), claims it with one conditional UPDATE (never two jobs
on one worker), and the same lifecycle, reusing the worker's cluster, syncs the job's workdir and submits
it, idempotently by the job's submit token. From there on the job is an ordinary managed job (monitor,
logs, cancel, restarts on errors in controller.py); only "tear down its cluster" becomes "give the worker
back" (release).

A worker whose instances are lost (preempted, gone) is replaced where the pure recovery decision says
(recovery.py, the pool task's `job_recovery`); the job it ran is re-queued (a Relaunch like any managed
job's, with a fresh submit token) and runs on the next free worker, once. Scaling (apply with another
size) and teardown (`pool down`) are decided by pool_sched.resize: idle workers go at once, busy ones
after their job. Steps run on the controller's thread pool, at most one in flight per pool and per worker.
"""
from __future__ import annotations

import json
import time

from .. import clusters, lifecycle, settings, state
from ..backend import ClusterRuntime
from ..errors import BrokerError, NoFeasibleError
from ..lifecycle import Failure
from ..optimizer import Block
from . import pipeline as P
from . import pool_sched as S
from . import pool_store as PS
from . import recovery as R
from . import store


def _views(ws) -> list[S.WorkerView]:
    return [S.WorkerView(w.idx, w.status, w.job_id) for w in ws]


def _task(p):
    from .pool_ops import stored_task

    return stored_task(p)


class PoolRunner:
    """The controller's pool part: `tick` (on the loop thread) schedules steps; the steps run in threads."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.attempts: dict[tuple[str, int], int] = {}
        self.queued_noted: set[int] = set()
        self.setup_failed_seen: dict[tuple[str, int], tuple] = {}  # worker → the (recoveries, setup job) seen failed once

    # -- scheduling (loop thread) ---------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Schedule due pool and worker steps; True while any pool exists (the controller stays up)."""
        ctl = self.ctl
        pools = PS.all_pools()
        for p in pools:
            ws = PS.workers(p.name)
            wkeys = [f"w:{p.name}:{w.idx}" for w in ws]
            busy = any(k in ctl.inflight for k in wkeys)
            key = f"pool:{p.name}"
            if key not in ctl.inflight and ctl.next_at.get(key, 0) <= now and not (p.down_requested and busy):
                ctl.next_at[key] = now + settings.get("jobs_poll")
                ctl.inflight[key] = ctl.pool.submit(self._safe, self.step_pool, p.name)
            if p.down_requested or key in ctl.inflight:
                continue
            for w, k in zip(ws, wkeys):
                if k in ctl.inflight or ctl.next_at.get(k, 0) > now:
                    continue
                ctl.next_at[k] = now + settings.get("jobs_poll") * (3 if w.status in (PS.READY, PS.BUSY) else 1)
                ctl.inflight[k] = ctl.pool.submit(self._safe, self.step_worker, p.name, w.idx)
        return bool(pools)

    def _safe(self, fn, *args) -> None:
        from .controller import log

        p = PS.get(args[0])
        token = state.current_user.set(p.user_name if p else None)  # server mode: the workers are its user's
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a pool bug must not take the controller down
            import traceback

            log(f"pool step {fn.__name__}{args}: {exc}\n{traceback.format_exc()}")
        finally:
            state.current_user.reset(token)

    # -- the pool: size and teardown ------------------------------------------------------------
    def step_pool(self, name: str) -> None:
        p = PS.get(name)
        if p is None:
            return
        ws = PS.workers(name)
        if p.down_requested:
            active = PS.jobs_of(name)
            for j in active:
                if not j.cancel_requested:
                    store.request_cancel(j.id)
            if active:
                return  # their steps cancel them (and give the workers back); the pool goes after
            for w in ws:
                self._remove(p, w, "the pool is torn down")
            PS.delete(name)
            return
        plan = S.resize(p.workers, _views(ws))
        for i in plan.add:
            PS.add_worker(name, i)
            state.add_event(PS.cluster_name(name, i), "pool", f"worker {i} of pool {name}: added")
        for w in ws:
            if f"w:{name}:{w.idx}" in self.ctl.inflight:
                continue
            # a REMOVING worker goes even if the pool grew back meanwhile (resize adds it again, fresh)
            if w.status == PS.REMOVING or (w.idx in plan.remove and PS.retire(name, w.idx)):  # never a claimed one
                self._remove(p, w, f"the pool was resized to {p.workers}")

    def _remove(self, p, w, why: str) -> None:
        state.add_event(w.cluster, "pool", f"worker {w.idx} of pool {p.name}: removed ({why})")
        try:
            clusters.down([w.cluster], only_owner=f"pool:{p.name}")
        except BrokerError as exc:
            state.add_event(w.cluster, "warning", f"teardown failed: {exc.message}; `broker down {w.cluster}`")
            return  # the row stays: tried again next step
        PS.remove_worker(p.name, w.idx)

    # -- one worker -----------------------------------------------------------------------------
    def step_worker(self, name: str, idx: int) -> None:
        p, w = PS.get(name), PS.worker(name, idx)
        if p is None or w is None or p.down_requested:
            return
        if w.status in (PS.PROVISIONING, PS.RECOVERING) and idx < p.workers:
            return self._bring_up(p, w)
        rec = state.get_cluster(w.cluster)
        if w.status == PS.SETTING_UP:
            return self._check_setup(p, w, rec)
        if w.status == PS.BUSY:
            j = store.get(w.job_id) if w.job_id is not None else None
            if j is None or j.status in store.TERMINAL:  # the job ended without giving the worker back
                self._give_back(w, rec)
            return  # a busy worker's health is its job's monitor's business (controller.py)
        if w.status == PS.READY:
            lost = self._lost(rec)
            if lost:
                self._replace(p, w, rec, lost)

    def _lost(self, rec) -> str | None:
        if rec is None:
            return "its cluster record disappeared"
        try:
            gone = ClusterRuntime(rec).lost_nodes()
        except (BrokerError, OSError):
            return None
        return f"{len(gone)} of {rec.num_nodes} instance(s) gone" if gone else None

    def _unreachable(self, rec) -> str | None:
        """After a job was re-queued: a worker that is alive to the cloud but does not answer (the job
        gave up on it) is replaced too, not handed to the next job."""
        rt = ClusterRuntime(rec)
        try:
            for n in rt.nodes:
                try:
                    if not rt.runner(n).alive(timeout=10):
                        return f"node {n.rank} does not answer"
                except (BrokerError, OSError):
                    return f"node {n.rank} does not answer"
        finally:
            rt.close()
        return None

    def _view(self, p, w, rec) -> R.JobView:
        task = _task(p)
        jr = next((r.job_recovery for r in task.candidates if r.job_recovery), None)
        return R.JobView(strategy=jr.strategy if jr else "EAGER_NEXT_REGION", cloud=rec.cloud if rec else None,
                         region=rec.region if rec else None, zone=rec.zone if rec else None,
                         recovering=w.recoveries > 0 or w.status == PS.RECOVERING,
                         launch_attempts=self.attempts.get((p.name, w.idx), 0))

    def _replace(self, p, w, rec, why: str) -> None:
        """A lost worker: the recovery decision says where its replacement goes (recovery.py)."""
        self._apply(p, w, R.decide(self._view(p, w, rec), R.Preempted(why)))

    def _apply(self, p, w, action) -> None:
        key = (p.name, w.idx)
        if isinstance(action, R.Relaunch):
            meta = {"blocks": [action.block.__dict__] if action.block else []}
            PS.update_worker(p.name, w.idx, status=PS.RECOVERING, recoveries=w.recoveries + 1, blocked=json.dumps(meta),
                             message=action.reason, setup_job=None)
            state.add_event(w.cluster, "recovery", f"worker {w.idx} of pool {p.name}: {action.reason}")
            self.ctl.next_at[f"w:{p.name}:{w.idx}"] = 0
        elif isinstance(action, R.Wait):
            PS.update_worker(p.name, w.idx, message=action.reason)
            self.ctl.next_at[f"w:{p.name}:{w.idx}"] = time.time() + action.seconds
        elif isinstance(action, R.Finish):
            self.attempts.pop(key, None)
            PS.update_worker(p.name, w.idx, status=PS.FAILED, message=action.reason, setup_job=None)
            state.add_event(w.cluster, "pool", f"worker {w.idx} of pool {p.name}: failed ({action.reason})")
            try:
                clusters.down([w.cluster], only_owner=f"pool:{p.name}")
            except BrokerError:
                pass

    def _bring_up(self, p, w) -> None:
        from .. import api

        task = _task(p)
        if w.status == PS.RECOVERING or w.recoveries:  # whatever is left of the lost cluster
            try:
                clusters.down([w.cluster], only_owner=f"pool:{p.name}")
            except BrokerError as exc:
                PS.update_worker(p.name, w.idx, message=f"teardown of the lost cluster failed: {exc.message}")
                return
        meta = json.loads(w.blocked or "{}")
        blocks = [Block(**b) for b in meta.get("blocks", [])]

        def plan_fn(extra):
            try:
                return api.plan(task, blocks + list(extra), managed=True, check_budget=False)
            except NoFeasibleError:
                if blocks:  # EAGER_NEXT_REGION found nowhere else: back to the avoided region
                    return api.plan(task, list(extra), managed=True, check_budget=False)
                raise

        def on_event(kind, msg):
            if kind in ("launch", "provision", "wait", "agent", "sync", "submit", "attempt", "failover", "warning"):
                PS.update_worker(p.name, w.idx, message=msg)

        try:
            run = lifecycle.bring_up(lifecycle.BringUp(
                task=task, cluster=w.cluster, plan_fn=plan_fn, owner=f"pool:{p.name}",
                task_id=f"broker-pool-{p.name}-{w.idx}", token=f"pool-{p.name}-{w.idx}-{w.recoveries}",
                on_event=on_event))
        except lifecycle.BringUpError as err:
            first = err.why.splitlines()[0] if err.why else err.failure.value
            if err.failure == Failure.USER:
                return self._apply(p, w, R.Finish(store.FAILED, None, f"the pool's task cannot run as given: {first}"))
            self.attempts[(p.name, w.idx)] = self.attempts.get((p.name, w.idx), 0) + 1
            view = self._view(p, w, None)
            if err.failure == Failure.REFUSED:
                from .launching import refused_credentials

                return self._apply(p, w, R.decide(R.JobView(recovering=True, launch_attempts=view.launch_attempts),
                                                  R.LaunchFailed(first, refused_credentials(err))))
            if err.failure in (Failure.LOST, Failure.UNREACHABLE):
                return self._apply(p, w, R.decide(view, R.Preempted(f"lost while bringing it up ({first})")))
            return self._apply(p, w, R.decide(view, R.BringUpFailed(lifecycle._DOING[err.stage], first)))
        run.runtime.close()
        rec = state.get_cluster(w.cluster)
        PS.update_worker(p.name, w.idx, status=PS.SETTING_UP, setup_job=run.job_id,
                         message=f"setup running on {rec.infra if rec else w.cluster}")

    def _check_setup(self, p, w, rec) -> None:
        lost = self._lost(rec)
        if lost:
            return self._replace(p, w, rec, lost)
        rt = ClusterRuntime(rec)
        try:
            st = rt.job(w.setup_job)
        except (BrokerError, OSError):
            return  # unreachable for now: asked again next step (a lost node shows above)
        finally:
            rt.close()
        if not st.done:
            return
        if st.status != "SUCCEEDED" and self.setup_failed_seen.get((p.name, w.idx)) != (w.recoveries, w.setup_job):
            # a node being preempted fails its setup before the cloud shows the loss: look once more (as a job's
            # monitor does, controller.py), and a loss seen then replaces the worker instead of failing it
            self.setup_failed_seen[(p.name, w.idx)] = (w.recoveries, w.setup_job)
            PS.update_worker(p.name, w.idx, message=f"setup ended {st.status} (exit {st.exit_code}): looking once "
                             "more in case the node was lost")
            self.ctl.next_at[f"w:{p.name}:{w.idx}"] = time.time() + settings.get("jobs_poll")
            return
        self.setup_failed_seen.pop((p.name, w.idx), None)
        self.attempts.pop((p.name, w.idx), None)
        if st.status == "SUCCEEDED":
            PS.update_worker(p.name, w.idx, status=PS.READY, message=f"ready on {rec.infra} ({rec.instance_type}"
                             f"{' spot' if rec.use_spot else ''})")
            state.add_event(w.cluster, "pool", f"worker {w.idx} of pool {p.name}: setup done, ready")
            return
        exited = f"exit {st.exit_code}" if st.exit_code is not None else f"no exit code: {st.crash or 'its runner died'}"
        self._apply(p, w, R.Finish(store.FAILED_SETUP, st.exit_code, f"the pool's setup failed ({exited}) "
                                   f"on {w.cluster}; fix it and `broker jobs pool apply` again"))

    # -- jobs on workers (called from the controller's job steps) -------------------------------
    def launch_job(self, j) -> None:
        ctl = self.ctl
        p = PS.get(j.pool)
        if p is None or p.down_requested:
            return ctl._cancel(j, store.CANCELLED, f"pool {j.pool} is gone")
        held = PS.holder_of(j.id)
        if held is not None and j.status == store.RECOVERING and not j.submit_token:
            self.release(j, probe=True)  # re-queued (its worker was lost, or it failed to start there)
            held = None
        if held is None:
            held = self._claim(p, j)
            if held is None:
                return
        self._start_on(p, held, j)

    def _claim(self, p, j):
        ws = PS.workers(p.name)
        holding = {w.job_id for w in ws if w.job_id is not None}
        waiting = [x.id for x in PS.jobs_of(p.name) if x.status in (store.PENDING, store.RECOVERING)
                   and x.id not in holding and not x.cancel_requested]
        idx = S.pick_worker(j.id, waiting, S.free_workers(p.workers, _views(ws)))
        if idx is None or not PS.claim(p.name, idx, j.id):
            if j.id not in self.queued_noted:
                self.queued_noted.add(j.id)
                ahead = sum(1 for x in waiting if x < j.id)
                store.add_event(j.id, "queued", f"waiting for a free worker of pool {p.name} ({len(ws)} worker(s), "
                                f"{ahead} job(s) ahead)")
            return None
        self.queued_noted.discard(j.id)
        w = PS.worker(p.name, idx)
        store.update(j.id, cluster=w.cluster)
        store.add_event(j.id, "assigned", f"worker {idx} of pool {p.name} ({w.cluster})")
        return w

    def _start_on(self, p, w, j) -> None:
        ctl = self.ctl
        from .launching import _CancelledDuringLaunch

        task = ctl._task(j)
        recovering = j.status == store.RECOVERING
        token = j.submit_token or f"mj{j.id}-{j.recoveries}-{j.restarts_on_errors}-{int(time.time() * 1000)}"
        store.update(j.id, status=store.RECOVERING if recovering else store.STARTING, cluster=w.cluster,
                     submit_token=token)

        def prepare(rt):
            if store.get(j.id).cancel_requested:
                raise _CancelledDuringLaunch()
            return ctl._restore_checkpoint(j, rt)

        try:
            run = lifecycle.bring_up(lifecycle.BringUp(
                task=task, cluster=w.cluster, plan_fn=None, owner=f"managed:{j.id}", task_id=P.stage_task_id(j),
                extra_env=S.job_env(j.job_rank or 0, j.num_jobs or 1, p.name), prepare=prepare, token=token,
                on_event=lambda k, m: store.add_event(j.id, k, m)))
        except lifecycle.BringUpError as err:
            j = store.get(j.id)
            if isinstance(err.cause, _CancelledDuringLaunch):
                return ctl._cancel(j)
            first = err.why.splitlines()[0] if err.why else err.failure.value
            store.add_event(j.id, "bring-up", f"failed on worker {w.idx} ({err.failure.value}): {first}")
            if err.failure == Failure.USER:
                return ctl._apply(j, R.Finish(store.FAILED, None, f"the task cannot run as given: {first}"))
            ctl.launch_attempts[j.id] = ctl.launch_attempts.get(j.id, 0) + 1
            event = R.Preempted(f"worker {w.idx} lost ({first})") if err.failure in (Failure.LOST, Failure.UNREACHABLE) \
                else R.BringUpFailed(lifecycle._DOING[err.stage], first)
            return ctl._apply(j, R.decide(ctl._view(j, task, recovering), event))
        run.runtime.close()
        ctl.launch_attempts.pop(j.id, None)
        rec = state.get_cluster(w.cluster)
        now = time.time()
        store.update(j.id, status=store.RUNNING, cluster_job_id=run.job_id, place=rec.infra if rec else None,
                     segment_start=now, segment_price=rec.hourly_price if rec else 0.0, started_at=j.started_at or now,
                     **({} if run.adopted else {"log_offsets": "{}"}))
        store.add_event(j.id, "running", ("already running" if run.adopted else "running") +
                        f" on worker {w.idx} of pool {p.name} ({rec.infra if rec else w.cluster})")
        ctl.last_ckpt[j.id] = now
        if store.get(j.id).cancel_requested:
            ctl._cancel(store.get(j.id))

    def holds(self, j) -> bool:
        """Whether the job's cluster is (still) its own to cancel on: for a pool job, the worker it holds."""
        w = PS.holder_of(j.id)
        return w is not None and w.cluster == j.cluster

    def release(self, j, probe: bool = False) -> None:
        """Give the job's worker back: READY if its instances are alive (and, with probe, answer), else
        replaced (recovery.py)."""
        w = PS.holder_of(j.id)
        if w is None:
            return
        self._give_back(w, state.get_cluster(w.cluster), probe)

    def _give_back(self, w, rec, probe: bool = False) -> None:
        p = PS.get(w.pool)
        lost = self._lost(rec) or (self._unreachable(rec) if probe else None)
        if lost and p is not None:  # still BUSY (no job can claim it) until it is marked for replacement
            PS.update_worker(w.pool, w.idx, job_id=None)
            self._replace(p, PS.worker(w.pool, w.idx), rec, lost)
        else:
            PS.update_worker(w.pool, w.idx, status=PS.READY, job_id=None)
        self.ctl.next_at[f"pool:{w.pool}"] = 0  # a freed slot: resize may remove it, queued jobs may take it
