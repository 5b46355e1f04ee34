"""The managed-jobs controller's launch path (a part of `Controller`, see controller.py): the deadline policy's
market and zone, the plan (blocks, FAILOVER's same place first), the lifecycle's bring-up with the checkpoint
restored before the job starts, and a failed bring-up turned into a recovery event."""
from __future__ import annotations

import json
import time

from .. import lifecycle, state
from ..backend import ClusterRuntime
from ..errors import NoFeasibleError
from ..failpoints import failpoint
from ..lifecycle import Failure
from ..optimizer import Block
from ..spot.policies import NONE as D_NONE, SPOT as D_SPOT
from . import checkpoint
from . import pipeline as P
from . import recovery as R
from . import store
from .checkpoint import CKPT_REMOTE
from .deadline import DeadlinePolicy, DeadlineState, market_name, wants_zones, zone_places
from .store import RECOVERING, RUNNING, STARTING


class Launching:
    """Controller methods that bring a job's cluster up (mixed into Controller)."""

    def _launch(self, j, recovering: bool) -> None:
        from .. import api

        task = self._task(j)
        name = P.stage_cluster(j)
        dl, dst, market, zone_pin = self._deadline(j, task), None, None, None
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
            zone_pin = dl.place(dst)
            if zone_pin is not None:  # multi-zone: the policy picked the zone
                task = _pinned(task, zone_pin)
        token = j.submit_token or f"mj{j.id}-{j.recoveries}-{j.restarts_on_errors}-{int(time.time() * 1000)}"
        # recorded before anything is submitted: a restarted controller finds the job this token started
        store.update(j.id, status=RECOVERING if recovering else STARTING, cluster=name, submit_token=token)
        if recovering:
            self._teardown(j)  # whatever is left of the lost cluster
        meta = json.loads(j.blocked or "{}") if (j.blocked or "").startswith("{") else {}
        # the multi-zone policy's zone is a choice made knowing the losses: neither the recovery strategy's
        # blocks (EAGER_NEXT_REGION) nor FAILOVER's "same place first" pin overrides it
        blocks = [] if zone_pin else [Block(**b) for b in meta.get("blocks", [])]
        pin = None if zone_pin else meta.get("pin")

        def plan_fn(extra):
            if pin and not extra:
                try:
                    return api.plan(_pinned(task, pin), managed=True, check_budget=False)
                except NoFeasibleError:
                    pass
            try:
                return api.plan(task, blocks + list(extra), managed=True, check_budget=False)
            except NoFeasibleError:
                if blocks:  # EAGER_NEXT_REGION found nowhere else: go back to the avoided region
                    return api.plan(task, list(extra), managed=True, check_budget=False)
                raise

        def prepare(rt: ClusterRuntime):
            if store.get(j.id).cancel_requested:  # cancelled while provisioning: start nothing
                raise _CancelledDuringLaunch()
            return self._restore_checkpoint(j, rt)

        if store.get(j.id).cancel_requested:  # cancelled after this step began: do not provision
            return self._cancel(store.get(j.id))
        if self._over_budget(j, task, launching=True):
            return
        try:
            run = lifecycle.bring_up(lifecycle.BringUp(
                task=task, cluster=name, plan_fn=plan_fn, owner=f"managed:{j.id}", task_id=P.stage_task_id(j),
                prepare=prepare, token=token, on_event=lambda k, m: store.add_event(j.id, k, m)))
        except lifecycle.BringUpError as err:
            if isinstance(err.cause, _CancelledDuringLaunch):
                return self._cancel(store.get(j.id))
            return self._bring_up_failed(store.get(j.id), task, err, recovering, dl, dst, market)
        run.runtime.close()
        self.launch_attempts.pop(j.id, None)
        rec = state.get_cluster(name)
        now = time.time()
        store.update(j.id, status=RUNNING, cluster_job_id=run.job_id, place=rec.infra if rec else None,
                     segment_start=now, segment_price=rec.hourly_price if rec else 0.0,
                     started_at=j.started_at or now, blocked=json.dumps({"blocks": []}),
                     **({} if run.adopted else {"log_offsets": "{}"}))
        store.add_event(j.id, "running", ("already running" if run.adopted else "running") +
                        f" on {rec.infra if rec else name} ({rec.instance_type if rec else ''}"
                        f"{' spot' if rec and rec.use_spot else ''})")
        self.last_ckpt[j.id] = now
        if j.stages:
            P.mark_started(store.get(j.id), rec)
        if dl is not None:
            dl.launched(dst, market)
            store.update(j.id, deadline_state=dst.dump())
            store.add_event(j.id, "policy", f"{dl.policy.name}: running on {market_name(market)}")
        if store.get(j.id).cancel_requested:
            self._cancel(store.get(j.id))

    def _resubmit(self, j) -> None:
        """Rerun on the same (healthy) cluster after a user-code failure, with a fresh submit token (recorded
        before the submit: a controller stopped before it recorded the new run finds it, _restart_adopted)."""
        rec = state.get_cluster(j.cluster)
        task = self._task(j)
        token = f"mj{j.id}-{j.recoveries}-{j.restarts_on_errors}-{int(time.time() * 1000)}"
        store.update(j.id, submit_token=token)
        with self.rts.use(rec) as rt:
            env = self._restore_checkpoint(j, rt)
            # with its setup: each node's agent skips it where it succeeded and runs it where it failed
            job_id = rt.submit(task, job_name=task.name, task_id=P.stage_task_id(j), env_by_rank=env, token=token)
        failpoint("after-resubmit")
        now = time.time()
        store.update(j.id, status=RUNNING, cluster_job_id=job_id, log_offsets="{}", segment_start=now,
                     segment_price=rec.hourly_price)

    def _restart_adopted(self, j, rt: ClusterRuntime) -> bool:
        """The job's run on the cluster failed, but its recorded submit token started another run there: a
        restart the previous controller submitted and was stopped before recording. That run is the job's
        now (True); deciding on the failure again would start it a second time."""
        found = rt.find_token(j.submit_token) if j.submit_token else None
        if found is None or found == j.cluster_job_id:
            return False
        now = time.time()
        store.update(j.id, cluster_job_id=found, log_offsets="{}", segment_start=j.segment_start or now,
                     segment_price=j.segment_price if j.segment_start else rt.rec.hourly_price)
        store.add_event(j.id, "adopt", f"job {found} (submit token {j.submit_token}) is already on {j.cluster}: "
                        "the restart is running, not submitting it again")
        self.next_at[j.id] = 0
        return True

    def _bring_up_failed(self, j, task, err, recovering: bool, dl, dst, market) -> None:
        """A bring-up failure (the lifecycle already tore the cluster down) as a recovery event."""
        first = err.why.splitlines()[0] if err.why else str(err.failure.value)
        if err.failure == Failure.REFUSED and err.why:  # "could not provision anywhere ...; attempts:" + one per line
            first = " ".join(line.strip() for line in err.why.splitlines() if line.strip())
        store.add_event(j.id, "bring-up", f"failed while {lifecycle._DOING[err.stage]} ({err.failure.value}): {first}")
        if err.failure == Failure.REFUSED:
            creds = refused_credentials(err)
            if creds:  # waiting (or another market) cannot fix credentials: the job ends now, with the hint
                first += f" ({err.hint})" if err.hint else ""
            elif dl is not None and market is D_SPOT:  # the only probe of spot availability a broker has
                then = dl.spot_failed(dst, time.time())
                dst.want = None
                store.update(j.id, deadline_state=dst.dump())
                store.add_event(j.id, "policy", f"no spot capacity ({first}): {then}; asking the policy again")
                self.next_at[j.id] = 0
                return
            self.launch_attempts[j.id] = self.launch_attempts.get(j.id, 0) + 1
            return self._apply(j, R.decide(self._view(j, task, recovering), R.LaunchFailed(first, creds)))
        if err.failure in (Failure.LOST, Failure.UNREACHABLE):
            event = R.Preempted(f"{'instance lost' if err.failure == Failure.LOST else 'node unreachable'} while "
                                f"{lifecycle._DOING[err.stage]} ({first})")
            return self._apply(j, R.decide(self._view(j, task, recovering), event))
        if err.failure == Failure.USER:
            return self._end(j, store.FAILED, None, f"the task cannot run as given: {first}")
        self.launch_attempts[j.id] = self.launch_attempts.get(j.id, 0) + 1
        return self._apply(j, R.decide(self._view(j, task, recovering),
                                       R.BringUpFailed(lifecycle._DOING[err.stage], first)))

    def _deadline(self, j, task):
        if task.deadline_hours is None or task.expected_hours is None:
            return None
        if j.id not in self.deadlines:
            zones = zone_places(task) if wants_zones(task) and task.candidates else None
            self.deadlines[j.id] = DeadlinePolicy(task, j.submitted_at, zones)
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
        if want.value == dst.held and not dl.moves(dst):
            return
        store.add_event(j.id, "policy", f"{dl.policy.name}: switch from {dst.held} to {market_name(want)} "
                        f"(progress {dst.progress_s / 3600:.3f} h of {dl.done_s / 3600:.3f} h, "
                        f"elapsed {(now - j.submitted_at) / 3600:.3f} h)")
        self._observe_spot(j, preempted=False)
        self._end_segment(j)
        self._marker(j, f"deadline policy switches from {dst.held} to {market_name(want)}", count=False)
        store.update(j.id, status=RECOVERING, blocked=json.dumps({"blocks": []}))
        self.next_at[j.id] = 0

    def _restore_checkpoint(self, j, rt: ClusterRuntime) -> dict[int, dict]:
        """The last complete checkpoint snapshot onto every node (the directory is claimed first, so a
        teardown of a host we do not own removes it)."""
        from ..runtime.runner import run_parallel
        from ..storage.mounts import checkpoint_mount

        in_bucket = checkpoint_mount(json.loads(j.task))
        if in_bucket:  # the checkpoint lives in a mounted bucket: nothing to restore
            return {n.rank: {"BROKER_CHECKPOINT_DIR": in_bucket} for n in rt.nodes}
        snap = checkpoint.current(store.job_dir(j.id))
        has = snap is not None and any(snap.iterdir())

        def one(node):
            r = rt.runner(node)
            rt.agent(node, r).claim([f"~/{CKPT_REMOTE}"])
            home = r.run('printf %s "$HOME"', timeout=30).stdout.strip()
            path = f"{home}/{CKPT_REMOTE}"
            if has:
                r.sync_up(str(snap), path, ignore_files=False, delete=True)
            else:
                r.run(f"mkdir -p {CKPT_REMOTE}", cwd="~", timeout=30)
            return node.rank, {"BROKER_CHECKPOINT_DIR": path}

        return dict(run_parallel(rt.nodes, one))


class _CancelledDuringLaunch(Exception):
    pass


def refused_credentials(err) -> bool:
    """The bring-up failed because every cloud it tried refused our credentials or permissions (the
    provisioner's own verdict, as `--retry-until-up` uses it)."""
    return bool(getattr(err.cause, "credentials_only", False))


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
