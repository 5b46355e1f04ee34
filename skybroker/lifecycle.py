"""The cluster lifecycle: ONE state machine, used by `broker launch` and by the managed-jobs controller.

    preflight → provision → ready → agent → sync → container → prepare → submit → running

  preflight  before anything is created: the task's local sources exist, rsync is there for remote
             nodes; a failure creates nothing
  provision  failover across places (provision.py); each failed attempt is rolled back there
  ready      every node accepts commands (SSH up); a node whose instance vanishes meanwhile is LOST
  agent      the node agent installed on every node
  sync       workdir and file mounts on every node
  container  a `docker:` image_id: the image pulled and its container started on every node (the engine
             was checked at the agent stage); setup and run then execute in it (containers.py)
  prepare    the driver's own step (managed jobs restore the checkpoint here)
  submit     the job on every node, two-phase and idempotent by submit token (backend_submit.py)

Every failure is a BringUpError naming its stage and what it means (`Failure`): LOST (the cloud took
the instances), UNREACHABLE (alive to the cloud, not to us), REFUSED (no place would take us), USER (bad
input), INTERRUPTED (Ctrl-C / SIGTERM / SIGHUP), ERROR (anything else). `teardown_policy` decides in one
place what happens to the cluster: a cluster this bring-up created is terminated unless the caller asked
to keep it (`broker launch --keep-on-failure`); a cluster that existed before (reused) stays up; the
error says which. A managed job's controller gets the same error and feeds it to its pure recovery
decision (LOST/UNREACHABLE during bring-up are a preemption: it relaunches).

Around the machine: failures.py classifies what a stage raised into a `Failure`; cluster_ops.py
terminates and starts clusters (the same code for `down`, gc, reconciliation and autostop).

Fault injection for tests: failpoints.py (a pause, an error or a hard exit at the start or end of a stage).
"""
from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from . import state
from .cluster_ops import check_owner, check_user, left_behind, start_locked, terminate, write_ssh_config
from .errors import BrokerError, Interrupted, LeftBehind, SpecError
from .failpoints import failpoint
from .state import INIT, INTERRUPTED, STOPPED, UP, ClusterRecord, NodeRecord

Event = Callable[[str, str], None]


class Stage(str, enum.Enum):
    PREFLIGHT = "preflight"
    PROVISION = "provision"
    READY = "ready"
    AGENT = "agent"
    SYNC = "sync"
    CONTAINER = "container"
    PREPARE = "prepare"
    SUBMIT = "submit"
    RUNNING = "running"


_DOING = {Stage.PREFLIGHT: "checking the task", Stage.PROVISION: "provisioning",
          Stage.READY: "waiting for the nodes to accept commands", Stage.AGENT: "installing the node agent",
          Stage.SYNC: "syncing (or cloning) the workdir and file mounts",
          Stage.CONTAINER: "pulling the container image and starting its container", Stage.PREPARE: "preparing the nodes",
          Stage.SUBMIT: "submitting the job", Stage.RUNNING: "running"}


class Failure(str, enum.Enum):
    LOST = "lost"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    USER = "user"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class BringUpError(BrokerError):
    """A bring-up failed at `stage`; `failure` says what it means, `torn_down` what became of the cluster."""

    def __init__(self, cluster: str, stage: Stage, failure: Failure, cause: BaseException, note: str):
        self.cluster, self.stage, self.failure, self.cause, self.note = cluster, stage, failure, cause, note
        self.why = why = "interrupted" if isinstance(cause, KeyboardInterrupt) else (
            getattr(cause, "message", None) or str(cause) or type(cause).__name__)
        hint = getattr(cause, "hint", None)
        super().__init__(f"launch of {cluster} failed while {_DOING[stage]}: {why}\n{note}", hint)
        if failure == Failure.INTERRUPTED:
            self.exit_code = 130
        elif isinstance(cause, BrokerError):
            self.exit_code = cause.exit_code
        self.torn_down = None


@dataclass(frozen=True)
class Teardown:
    terminate: bool
    note: str


def teardown_policy(cluster: str, created: bool, keep: bool, owner: str | None) -> Teardown:
    """What to do with a cluster whose bring-up failed (the one place this is decided)."""
    if not created:
        return Teardown(False, f"cluster {cluster} existed before this launch and stays up; "
                               f"`broker down {cluster}` removes it")
    if owner:
        return Teardown(True, f"cluster {cluster} was terminated; the managed job decides what happens next")
    if keep:
        return Teardown(False, f"cluster {cluster} was kept as asked (--keep-on-failure); "
                               f"`broker down {cluster}` removes it")
    return Teardown(True, f"cluster {cluster} was terminated, nothing is left running "
                          "(--keep-on-failure keeps a failed cluster for debugging)")


# ----------------------------------------------------------------------------------------------

@dataclass
class BringUp:
    """What one bring-up needs. `plan_fn(blocks)` plans a new cluster; `prepare(rt)` is the driver's own
    step before submit, returning environment per node rank; `token` makes submission idempotent."""

    task: object
    cluster: str
    plan_fn: Callable | None = None
    owner: str | None = None
    keep_on_failure: bool = False
    retry_until_up: bool = False
    task_id: str | None = None
    extra_env: dict = field(default_factory=dict)
    prepare: Callable | None = None
    token: str | None = None
    on_event: Event = lambda k, m: None


@dataclass
class Running:
    cluster: str
    job_id: int
    attempts: list
    reused: bool
    adopted: bool = False  # the submit token had already started the job: nothing was submitted again
    runtime: object = None


def preflight(task, cluster: str | None = None) -> None:
    """What can be checked before anything is created or the user is asked to confirm."""
    from . import settings

    settings.check_all()  # a bad BROKER_* value (or config `settings:`) is refused here, not mid-bring-up
    if any(m.is_bucket for m in task.file_mounts):
        from .storage import mounts

        mounts.preflight(task)  # store SDKs and credentials, before anything is created
    if task.workdir and not os.path.isdir(task.workdir):
        raise SpecError(f"workdir {task.workdir} is not a directory", "fix the path (relative to where you run "
                        "broker) or drop `workdir`", source=task.source, field="workdir")
    for m in (m for m in task.file_mounts if not m.is_bucket):
        if not os.path.exists(m.source):
            raise SpecError(f"source {m.source} does not exist", "fix the local path of the mount",
                            source=task.source, field=f"file_mounts.{m.remote}")
        if not os.access(m.source, os.R_OK):
            raise SpecError(f"source {m.source} is not readable", None, source=task.source,
                            field=f"file_mounts.{m.remote}")
    if task.git_url:  # a ref that does not exist is refused before anything is created
        from .runtime import gitclone

        gitclone.preflight(task)
    if getattr(task, "volumes", ()):
        from .volumes import ops as volumes

        volumes.preflight(task, cluster)  # every applied volume exists and is free: before anything is created
    if (task.workdir or task.file_mounts) and _remote(task):  # remote nodes: rsync over SSH
        from .runtime.sync import require_rsync

        require_rsync()


def require_fit(task, rec: ClusterRecord, *, managed: bool = False) -> None:
    """Refuse (exit 2, nothing run) a task the existing cluster `rec` cannot satisfy: `broker launch -c`
    on a cluster that exists, `broker exec`, and (node count only, `managed`) a managed job's or pool
    worker's cluster (offer_fit.cluster_misfit decides)."""
    from .errors import UsageError
    from .offer_fit import cluster_desc, cluster_misfit

    why = cluster_misfit(task, rec, None if managed else cluster_spec(rec), managed=managed)
    if why is not None:
        what = f"task {task.name}" if task.name else "the task"
        raise UsageError(f"{what} does not fit existing cluster {rec.name}: {why}; cluster {rec.name} has "
                         f"{cluster_desc(rec)}",
                         f"use another cluster name (`-c NEW`) to launch a new one, or `broker down {rec.name}` "
                         "first")


def cluster_spec(rec: ClusterRecord):
    """The catalog's InstanceSpec of the cluster's machine, or None (a cloud without a catalog, or a type
    the catalog no longer has)."""
    from .clouds import registry

    if not rec.cloud or not rec.instance_type or not registry.known(rec.cloud):
        return None
    if not registry.get(rec.cloud, sdk=False).capabilities.priced:
        return None
    from . import catalog
    from .offer_fit import _accelerator_of

    try:
        specs = catalog.named(rec.cloud, rec.instance_type)
    except (BrokerError, OSError):
        return None
    acc, count = _accelerator_of(rec.accelerators)
    for s in specs:
        if (s.accelerator_name or None) == acc and (acc is None or abs(s.accelerator_count - count) < 1e-6):
            return s
    return specs[0] if len(specs) == 1 else None


def _sync_what(task) -> str:
    if task.git_url:
        ref = f" at {task.git_ref}" if task.git_ref else ""
        return f"cloning the git workdir{ref} on every node" + (" and syncing file mounts" if task.file_mounts else "")
    return "syncing workdir and file mounts to every node"


def bring_up(b: BringUp) -> Running:
    """Provision (or reuse) the cluster and start the task on it, holding the cluster's lock."""
    from .locks import cluster_lock

    preflight(b.task, b.cluster)
    with cluster_lock(b.cluster, on_wait=lambda m: b.on_event("wait", m)):
        return _bring_up_locked(b)


def _bring_up_locked(b: BringUp) -> Running:
    from .backend import ClusterRuntime

    from . import reconcile

    name, task = b.cluster, b.task
    rec = prior = state.get_cluster(name)
    if rec is not None:  # server mode: not another user's cluster, made since the server checked (refused,
        check_user(rec)  # nothing done); it may have stopped or terminated itself (autostop on the cluster)
        rec = reconcile.fresh(rec, locked=True)
    if rec is not None:  # before anything is done to it: half-made, stopped or up
        try:
            check_owner(rec, b.owner)
        except BrokerError as exc:
            raise _fail(b, rec, Stage.PREFLIGHT, False, exc) from None
    if rec is not None and rec.status in (UP, STOPPED) and b.plan_fn is not None:  # or been terminated in the
        # cloud's console: relaunched afresh (without a plan, e.g. a pool's job, the reuse fails as LOST)
        rec = reconcile.unless_gone(rec, locked=True)
    # the record of a cluster found gone just now (by either check): the new one keeps its autostop (_mark_up)
    gone = prior if rec is None and prior is not None and prior.status in (UP, STOPPED) else None
    if gone is not None:
        why = (f": launching it afresh, with its autostop ({gone.autostop_minutes} min"
               f"{', then down' if gone.autostop_down else ''}) unless the task sets one"
               if gone.autostop_minutes is not None else
               " (its instances were terminated outside the broker): launching it afresh")
        b.on_event("refresh", f"cluster {name} no longer exists on {gone.infra}{why}")
    if rec is not None and rec.status in (INIT, INTERRUPTED):
        adopted = _adopt_half_made(rec, b)
        if adopted is not None:
            return adopted
        b.on_event("cleanup", f"cluster {name} was left half-made by an interrupted launch: removing it first")
        terminate(rec, b.on_event)
        rec = None
    created, attempts, resources = False, [], None
    stage = Stage.PROVISION
    rt = None
    try:
        if rec is not None and rec.status in (UP, STOPPED):  # checked before a stopped cluster is started
            stage = Stage.PREFLIGHT
            require_fit(task, rec, managed=b.owner is not None)
            stage = Stage.PROVISION
        if rec is not None and rec.status == STOPPED:
            b.on_event("start", f"starting stopped cluster {name}")
            rec = start_locked(rec, b.on_event)
        if rec is not None and rec.status == UP:
            b.on_event("reuse", f"reusing cluster {name} ({rec.infra}, {rec.num_nodes} node(s))")
        else:
            created = True
            rec, attempts, resources = _provision(b)
            rt = ClusterRuntime(rec)
            stage = Stage.READY
            b.on_event("wait", f"waiting for {len(rec.nodes)} node(s) to accept commands")
            failpoint("ready")
            rt.wait_ready()
            stage = Stage.AGENT
            b.on_event("agent", "installing the node agent")
            failpoint("agent")
            rt.install_agent()
            rt.install_peers()
            image = rt.container_image(task)
            if image:
                rt.check_container_engine(image)
            failpoint("after-agent")
        rt = rt or ClusterRuntime(rec)
        if b.token and not created:
            stage = Stage.SUBMIT
            job_id = rt.find_token(b.token)
            if job_id is not None:
                b.on_event("adopt", f"job {job_id} (submit token {b.token}) is already on {name}: not submitting again")
                return Running(name, job_id, attempts, True, adopted=True, runtime=rt)
        stage = Stage.SYNC
        if getattr(task, "volumes", ()):
            from .volumes import ops as volumes

            volumes.attach(rt, task, b.on_event)  # before file mounts: they may land on a volume
            failpoint("after-volumes")
        from .runtime import identity

        identity.upload(rt, task, b.on_event)  # config.<cloud>.remote_identity: LOCAL_CREDENTIALS, before setup
        if task.workdir or task.file_mounts or task.git_url:
            b.on_event("sync", _sync_what(task))
            failpoint("sync")
            rt.sync(task, b.on_event)
        image = rt.container_image(task)
        if image:
            stage = Stage.CONTAINER
            b.on_event("container", f"pulling {image} and starting its container on {len(rec.nodes)} node(s)")
            failpoint("container")
            rt.start_containers(task, image)
        by_rank = None
        if b.prepare is not None:
            stage = Stage.PREPARE
            b.on_event("prepare", "preparing the nodes")
            failpoint("prepare")
            by_rank = b.prepare(rt)
        stage = Stage.SUBMIT
        b.on_event("submit", f"submitting the job to {len(rec.nodes)} node(s)")
        failpoint("submit")
        job_id = _submit(rt, rec, task, not created, b, by_rank)
        if created:  # a new cluster is UP once its job is on it: a launch killed before that is INTERRUPTED
            _mark_up(rec, resources, rt, gone)
        failpoint("after-submit")
        return Running(name, job_id, attempts, not created, runtime=rt)
    except BaseException as exc:
        if rt is not None:
            rt.close()
        if isinstance(exc, BringUpError):
            raise
        raise _fail(b, rec, stage, created, exc) from (None if isinstance(exc, KeyboardInterrupt) else exc)


def _mark_up(rec: ClusterRecord, resources, rt=None, gone: ClusterRecord | None = None) -> None:
    """The new cluster is UP, with its autostop (autostop.for_new_cluster; `gone`: the record it replaces)."""
    rec.status = UP
    state.save_cluster(rec)
    state.close_intents(rec.name, state="adopted")
    state.add_event(rec.name, "up", f"up on {rec.infra}")
    write_ssh_config(rec)
    from . import autostop

    auto = autostop.for_new_cluster(rec, resources, gone)
    if auto:
        autostop.apply(rec, auto.idle_minutes, auto.down, rt=rt)


def _adopt_half_made(rec: ClusterRecord, b: BringUp) -> Running | None:
    """A cluster whose bring-up died right after its job was submitted (before it was marked UP): with the
    same submit token, the job is found there and adopted instead of the cluster being rebuilt (which
    would run the job a second time)."""
    from .backend import ClusterRuntime

    if not b.token or not rec.nodes:
        return None
    rt = ClusterRuntime(rec)
    try:
        job_id = rt.find_token(b.token)
    except BrokerError:
        job_id = None
    if job_id is None:
        rt.close()
        return None
    _mark_up(rec, None, rt)
    b.on_event("adopt", f"job {job_id} (submit token {b.token}) is already on {rec.name}: not submitting again")
    return Running(rec.name, job_id, [], True, adopted=True, runtime=rt)


def _provision(b: BringUp) -> tuple[ClusterRecord, list, object]:
    from . import provision

    if b.plan_fn is None:
        raise BrokerError(f"cluster {b.cluster} does not exist, and no plan was given to create it")
    public_key = None
    if _remote(b.task):
        from .paths import broker_home
        from .runtime.keys import ensure_user_key

        _, public_key = ensure_user_key(broker_home())
    kept = state.get_cluster(b.cluster)  # a DEGRADED cluster provisioned again: its row stays, and so does its
    # name on the cloud (a cluster from before schema v19 has no suffix; save_cluster never renames one)
    rec = ClusterRecord(name=b.cluster, cloud="", region=None, zone=None, instance_type=None, accelerators=None,
                        use_spot=False, num_nodes=b.task.num_nodes, hourly_price=0.0, status=INIT,
                        launched_at=time.time(), owner=b.owner,
                        name_on_cloud=kept.cloud_name if kept is not None else state.cloud_name_for(b.cluster))

    from .clouds import registry
    from .runtime import identity

    def on_place(cand):  # the row says where the cluster is going before anything is created there
        identity.preflight(b.task, cand.cloud)  # LOCAL_CREDENTIALS for that cloud: its files exist (exit 2)
        if any(m.is_bucket for m in b.task.file_mounts):
            from .storage import mounts

            mounts.preflight_place(b.task, cand.cloud)  # a `name:` storage the cloud's store would refuse (exit 2)
        registry.get(cand.cloud, sdk=False).preflight_place(cand.region)  # its SSH key(s) load (exit 2)
        rec.cloud, rec.region, rec.zone = cand.cloud, cand.region, cand.zone
        rec.instance_type, rec.accelerators, rec.use_spot = cand.instance_type, cand.accelerators(), cand.use_spot
        rec.hourly_price, rec.resources = cand.total, cand.resources.describe()
        rec.ports = ",".join(cand.resources.ports) or None
        state.save_cluster(rec)

    state.add_event(b.cluster, "launch", "provisioning")
    cand, infos, attempts = provision.provision(b.cluster, b.plan_fn, public_key=public_key, on_event=b.on_event,
                                                retry_until_up=b.retry_until_up, on_place=on_place,
                                                cloud_name=rec.cloud_name)
    from . import config

    ordered = sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))
    user = (config.get("ssh_user") or {}).get(cand.cloud)  # the login user of the config's image
    rec.nodes = [NodeRecord(i.instance_id, rank, i.public_ip or i.private_ip or "", i.private_ip, user or i.ssh_user,
                            i.ssh_port, i.home, i.identity_file) for rank, i in enumerate(ordered)]
    rec.num_nodes = len(rec.nodes)
    rec.zone = cand.zone or ordered[0].zone
    state.save_cluster(rec)
    from .costs import ledger

    ledger.open_run(rec, cand)  # the instances exist: billing starts, at the price of this plan
    failpoint("after-provision")
    return rec, attempts, cand.resources


def _remote(task) -> bool:
    from .clouds import registry

    for r in task.candidates:
        if r.cloud is None or not registry.known(r.cloud) or registry.get(r.cloud, sdk=False).capabilities.remote:
            return True
    return False


def _submit(rt, rec, task, reused: bool, b: BringUp, by_rank) -> int:
    """The job onto every node. Its setup goes along each time: a node's agent skips it only if it succeeded
    on that node before (backend_submit.GangSubmit.submit), which the launch then says."""
    notice = rt.provider.preemption_notice() if (b.owner and rec.use_spot) else None  # managed spot jobs
    job_id = rt.submit(task, job_name=task.name, task_id=b.task_id, extra_env=b.extra_env,
                       env_by_rank=by_rank, token=b.token, notice=notice)
    done = rt.setup_done_on
    if reused and done:
        if len(done) == len(rt.nodes):
            b.on_event("setup", "setup unchanged since the last launch on this cluster: skipped")
        else:
            rest = sorted(n.rank for n in rt.nodes if n.rank not in done)
            b.on_event("setup", f"setup unchanged, done before on node(s) {', '.join(map(str, done))}: skipped "
                                f"there; it runs on node(s) {', '.join(map(str, rest))}")
    b.on_event("submitted", f"job {job_id} submitted to {rec.name}")
    return job_id


def _fail(b: BringUp, rec, stage: Stage, created: bool, exc: BaseException) -> BringUpError:
    from .failures import classify

    failure = classify(rec, exc)
    if stage == Stage.PROVISION:  # every attempt was rolled back by the provisioner
        if created:
            _drop_if_empty(b.cluster)
        note = f"nothing of cluster {b.cluster} is left running" if created else \
            f"cluster {b.cluster} existed before this launch and stays up"
        if created and state.open_intents(b.cluster):  # a rollback failed: what it created may still run
            note = (f"cluster {b.cluster} may still have instances on the cloud (a rollback failed): "
                    f"`broker down {b.cluster}` removes them once the cloud can be asked")
        err = BringUpError(b.cluster, stage, failure, exc, note)
        err.torn_down = created
        return err
    policy = teardown_policy(b.cluster, created, b.keep_on_failure, b.owner)
    note = policy.note
    if policy.terminate and rec is not None:
        b.on_event("cleanup", f"{_DOING[stage]} failed: terminating {b.cluster} so nothing is left running")
        try:
            left_behind(b.cluster, terminate(rec, b.on_event))
        except LeftBehind as texc:  # the record is gone: gc, not down, removes the rest
            note = f"{texc.message}; {texc.hint}"
        except BaseException as texc:  # noqa: BLE001 - report both
            note = (f"terminating cluster {b.cluster} failed too ({getattr(texc, 'message', texc)}); "
                    f"`broker down {b.cluster}` or `broker gc` removes it")
    elif created and rec is not None:  # kept as asked
        rec.status = UP if stage not in (Stage.READY, Stage.AGENT) else INTERRUPTED
        state.save_cluster(rec)
        state.close_intents(b.cluster, state="adopted")
    err = BringUpError(b.cluster, stage, failure, exc, note)
    err.torn_down = policy.terminate
    return err


def _drop_if_empty(name: str) -> None:
    """The INIT row of a launch that created nothing (or rolled everything back) goes; with an open
    intent left (a rollback failed) it stays, and is reconciled later."""
    cur = state.get_cluster(name)
    if cur is not None and cur.status == INIT and not state.open_intents(name):
        state.delete_cluster(name)


def interrupted_message(err: BringUpError) -> Interrupted:
    """The CLI's message for a bring-up stopped by Ctrl-C / SIGTERM."""
    detail = f" ({err.why})" if err.why != "interrupted" else ""
    return Interrupted(f"launch interrupted while {_DOING[err.stage]}{detail}; {err.note}")
