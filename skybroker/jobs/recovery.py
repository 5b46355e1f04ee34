"""Recovery decisions for managed jobs: small pure functions (state + event → action). The controller
loop around them only observes and executes; every decision is recorded as an event.

Events the controller observes:
  Succeeded            every node finished with exit code 0
  UserFailed           the user's code failed (exit code; during setup or run) on healthy instances
  Preempted            the cloud took instances away (spot termination, instance gone)
  Rebooted             a node rebooted under the job (its agent found a new boot id): the instances are
                       there, the work in memory is not; restarted on the same cluster, REBOOT_RESTARTS times
  Unreachable          instances look alive to the cloud but the broker cannot reach them (network)
  LaunchFailed         no place could be provisioned (retried during a recovery, unless every cloud
                       refused our credentials: then FAILED_NO_RESOURCE at once)
  BringUpFailed        bring-up failed for another reason (e.g. a node without python3); the cluster was
                       torn down by the lifecycle
A preemption during bring-up (the lifecycle's LOST / UNREACHABLE) is an ordinary Preempted: the job
relaunches like after any loss.
Actions: Finish(status), Relaunch(block, same_place_first, counts_as_error), Restart (same cluster),
Wait(seconds), Cancel.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..optimizer import Block
from . import store

NETWORK_GRACE_SECONDS = 60.0  # how long a network outage is waited out before the node counts as lost
RELAUNCH_ATTEMPTS = 5  # provisioning rounds during a recovery before FAILED_NO_RESOURCE
REBOOT_RESTARTS = 3  # restarts after a node rebooted under the job (a run that reboots its node stops there)
REBOOTED = "node rebooted under the job"  # how the restart's event begins (the controller counts them)


@dataclass(frozen=True)
class JobView:
    strategy: str = "EAGER_NEXT_REGION"
    max_restarts_on_errors: int = 0
    recover_on_exit_codes: tuple[int, ...] = ()
    restarts_on_errors: int = 0
    cancel_requested: bool = False
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    recovering: bool = False
    launch_attempts: int = 0


# events
@dataclass(frozen=True)
class Succeeded:
    pass


@dataclass(frozen=True)
class UserFailed:
    exit_code: int | None
    setup: bool = False
    reason: str | None = None  # the node's reason when it says more than the exit code (its runner crashed)


@dataclass(frozen=True)
class Preempted:
    reason: str


@dataclass(frozen=True)
class Rebooted:
    reason: str
    restarts: int = 0  # restarts after a reboot so far


@dataclass(frozen=True)
class Unreachable:
    seconds: float


@dataclass(frozen=True)
class LaunchFailed:
    message: str
    credentials_only: bool = False  # every cloud tried refused our credentials: waiting cannot help


@dataclass(frozen=True)
class BringUpFailed:
    stage: str
    message: str


# actions
@dataclass(frozen=True)
class Finish:
    status: str
    exit_code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Relaunch:
    block: Block | None = None
    same_place_first: bool = False
    counts_as_error: bool = False
    reason: str = ""
    same_cluster: bool = False  # the instances are healthy (user-code failure): rerun on them
    lost: bool = False  # the instances were lost (preempted or unreachable for good)


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str = ""


@dataclass(frozen=True)
class Cancel:
    pass


def decide(view: JobView, event) -> object:
    if view.cancel_requested:
        return Cancel()
    if isinstance(event, Succeeded):
        return Finish(store.SUCCEEDED, 0, "all nodes exited 0")
    if isinstance(event, UserFailed):
        code = event.exit_code
        why = f": {event.reason}" if event.reason else ""
        exited = f"exit {code}" if code is not None else "no exit code"  # its runner crashed: no code invented
        if code is not None and code in view.recover_on_exit_codes:
            return Relaunch(None, same_place_first=True, counts_as_error=False, same_cluster=True,
                            reason=f"exit code {code} is in recover_on_exit_codes: restarting")
        if view.restarts_on_errors < view.max_restarts_on_errors:
            n = view.restarts_on_errors + 1
            return Relaunch(None, same_place_first=True, counts_as_error=True, same_cluster=True,
                            reason=f"user code failed ({exited}{why}); restart {n}/{view.max_restarts_on_errors}")
        status = store.FAILED_SETUP if event.setup else store.FAILED
        return Finish(status, code, f"{'setup' if event.setup else 'run'} failed with "
                      f"{'exit code %s' % code if code is not None else 'no exit code'}{why}")
    if isinstance(event, Preempted):
        return _relaunch_after_loss(view, f"preempted: {event.reason}")
    if isinstance(event, Rebooted):  # not the user's failure: SkyPilot recovers a job whose cluster went down
        if event.restarts < REBOOT_RESTARTS:
            return Relaunch(None, same_place_first=True, same_cluster=True,
                            reason=f"{REBOOTED} ({event.reason}): restarting it on the same cluster "
                            f"({event.restarts + 1}/{REBOOT_RESTARTS})")
        return Finish(store.FAILED, None, f"{event.reason}; the node rebooted under the job {event.restarts + 1} "
                      "times: not restarted again")
    if isinstance(event, Unreachable):
        if event.seconds < NETWORK_GRACE_SECONDS:
            return Wait(min(5.0, NETWORK_GRACE_SECONDS - event.seconds),
                        f"instances alive but unreachable for {event.seconds:.0f}s: waiting out the network")
        return _relaunch_after_loss(view, f"unreachable for {event.seconds:.0f}s: treating the node as lost")
    if isinstance(event, BringUpFailed):
        if view.launch_attempts < RELAUNCH_ATTEMPTS:
            return Relaunch(None, same_place_first=False, reason=f"bring-up failed while {event.stage}: "
                            f"{event.message}; relaunching (attempt {view.launch_attempts + 1}/{RELAUNCH_ATTEMPTS})")
        return Finish(store.FAILED_CONTROLLER, None, f"bring-up failed {RELAUNCH_ATTEMPTS} times, last while "
                      f"{event.stage}: {event.message}")
    if isinstance(event, LaunchFailed):
        if view.recovering and view.launch_attempts < RELAUNCH_ATTEMPTS and not event.credentials_only:
            return Wait(min(60.0, 5.0 * 2 ** view.launch_attempts), f"no capacity yet ({event.message}); retrying")
        return Finish(store.FAILED_NO_RESOURCE, None, event.message)
    raise TypeError(f"unknown event {event!r}")


def _relaunch_after_loss(view: JobView, reason: str) -> Relaunch:
    if view.strategy == "EAGER_NEXT_REGION" and view.cloud and view.region:
        return Relaunch(Block(view.cloud, view.region), same_place_first=False, reason=reason +
                        f"; EAGER_NEXT_REGION: avoiding {view.cloud}/{view.region}", lost=True)
    return Relaunch(None, same_place_first=True, reason=reason + "; FAILOVER: same place first", lost=True)
