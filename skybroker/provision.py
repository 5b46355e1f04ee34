"""Cloud-agnostic provisioning with failover: provision the best candidate → on a typed error block its
scope (zone, region or cloud) → ask the optimizer again. Throttling (the cloud's API rate limit) blocks
nothing: the same place is retried with exponential backoff. A partial launch is rolled back before
moving on.

Nothing leaks: an intent is recorded before every create call, the instance ids the create returned are
recorded before waiting for them to run, and an interrupt (Ctrl-C, SIGTERM, SIGHUP: the CLI turns all
three into KeyboardInterrupt) lets the create call in flight return, then rolls back everything tagged
with the cluster before re-raising. A process killed outright (SIGKILL) leaves open intents that the next
mutating command reconciles (intents.py).
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import settings, state
from .clouds.base import InstanceInfo, ProvisionRequest
from .clouds.registry import get as get_provider
from .errors import BrokerError, NoFeasibleError, ProvisionError, Scope
from .failpoints import failpoint
from .optimizer import Block, Candidate


@dataclass(frozen=True)
class Attempt:
    cloud: str
    region: str | None
    zone: str | None
    instance_type: str
    use_spot: bool
    error: str  # error class name, e.g. CapacityError
    code: str | None  # the cloud's own error code
    message: str
    scope: str

    @property
    def place(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


def failover_event(a: Attempt) -> str:
    """The stored `failover` event of a failed attempt (parse_failover_event reads it back)."""
    return f"{a.place} {a.instance_type}: {a.error} {a.code or ''} {a.message}"


def parse_failover_event(message: str) -> dict | None:
    """{place, instance_type, error, code, message} of a stored `failover` event; None if it is not one."""
    import re

    m = re.match(r"^(\S+) (\S+): (\w+) (\S*) (.*)$", message, re.S)
    if not m:
        return None
    return {"place": m.group(1), "instance_type": m.group(2), "error": m.group(3), "code": m.group(4) or None,
            "message": m.group(5)}


_REQUEST_HINT = ("the cloud refused the request itself, so retrying will not help: fix what its message names "
                 "(instance type, image, disk, ...)")


class ProvisionExhausted(BrokerError):
    """Every place failed. `credentials_only`: every attempt was on a cloud that refused our credentials
    or permissions, so no retry can help (the CLI's --retry-until-up and the managed-jobs controller both
    stop on it)."""

    exit_code = 4

    def __init__(self, attempts: list[Attempt], reason: str, hint: str | None = None, *, credentials_only: bool = False,
                 exit_code: int | None = None):
        lines = [f"  {i + 1}. {a.place} {a.instance_type}{' spot' if a.use_spot else ''}: "
                 f"{a.error}{' ' + a.code if a.code else ''} — {a.message}" for i, a in enumerate(attempts)]
        super().__init__(f"could not provision anywhere ({reason}); attempts:\n" + "\n".join(lines), hint or
                         "retry later, use --retry-until-up, or relax the resources (other GPUs, regions, on-demand)",
                         exit_code)
        self.attempts = attempts
        self.credentials_only = credentials_only


def block_for(exc: ProvisionError, cand: Candidate) -> Block:
    if exc.scope == Scope.ZONE:
        return Block(cand.cloud, cand.region, cand.zone)
    if exc.scope in (Scope.REGION, Scope.RETRY):
        return Block(cand.cloud, cand.region)
    return Block(cand.cloud)


def request_for(cluster: str, cand: Candidate, public_key: str | None) -> ProvisionRequest:
    from . import config

    res = cand.resources
    image = None
    for region, img in res.image_id:
        if region in ("", cand.region):
            image = img
    from .catalog import images as image_tags

    if image_tags.is_tag(image):  # spec.py placed the entry where the tag exists
        image = image_tags.resolve(cand.cloud, cand.region, image)
    from .clouds import registry
    from .containers import is_container_image

    if is_container_image(image) and not registry.get(cand.cloud, sdk=False).capabilities.container_images:
        image = None  # a container image runs on the node (containers.py); the VM gets its default image
    if image is None:
        image = (config.get("image_id") or {}).get(cand.cloud)  # the config's default image for the cloud
    return ProvisionRequest(cluster=cluster, region=cand.region, zone=cand.zone, instance_type=cand.instance_type,
                            num_nodes=cand.num_nodes, use_spot=cand.use_spot, accelerator=cand.accelerator_name,
                            accelerator_count=cand.accelerator_count, disk_size=res.disk_size, ports=res.ports,
                            image_id=image, labels=res.labels, public_key=public_key,
                            accelerator_args=tuple(res.extra), options=res.options)


def provision(cluster: str, plan_fn: Callable[[list[Block]], "object"], *, public_key: str | None,
              on_event: Callable[[str, str], None] = lambda k, m: None, retry_until_up: bool = False,
              max_wait: float = 3600.0,
              on_place: Callable[[Candidate], None] = lambda c: None,
              cloud_name: str | None = None) -> tuple[Candidate, list[InstanceInfo], list[Attempt]]:
    """Provision `cluster` at the best place the plan offers, failing over until one works; its resources
    are named and tagged `cloud_name` (its name on the cloud, `cluster` when None).
    `on_place(cand)` is called before each attempt (the caller records where the cluster is going)."""
    attempts: list[Attempt] = []
    blocks: list[Block] = []
    refused: dict[str, ProvisionError] = {}  # cloud → its credentials/permission refusal (blocks it for good)
    backoff = 5.0
    started = time.time()
    while True:
        try:
            plan = plan_fn(blocks)
        except NoFeasibleError:
            if not attempts:
                raise
            if _only_refused(attempts, refused):  # no retry can help: waiting does not fix credentials
                hints = list(dict.fromkeys(e.hint for e in refused.values() if e.hint))
                raise ProvisionExhausted(attempts, f"{', '.join(sorted(refused))} refused our credentials or "
                                         "permissions: not retried", "; ".join(hints) or None,
                                         credentials_only=True) from None
            if retry_until_up and time.time() - started < max_wait:
                wait = min(backoff, 300.0) * (0.5 + random.random())
                on_event("retry", f"every candidate place failed; retrying in {wait:.0f}s (--retry-until-up)")
                time.sleep(wait)
                backoff *= 2
                blocks = [b for b in blocks if _permanent(b, attempts)]
                continue
            raise ProvisionExhausted(attempts, "every feasible place failed") from None
        cand: Candidate = plan.chosen
        on_place(cand)
        try:
            infos = _attempt(cluster, cand, public_key, on_event, cloud_name or cluster)
        except ProvisionError as exc:
            a = Attempt(cand.cloud, cand.region, cand.zone, cand.instance_type, cand.use_spot,
                        type(exc).__name__, exc.code, exc.message, exc.scope.value)
            attempts.append(a)
            state.add_event(cluster, "failover", failover_event(a))
            if exc.scope == Scope.REQUEST:  # waiting cannot help: the error's own hint and exit code (a bad image: 2)
                raise ProvisionExhausted(attempts, "the request itself was refused", exc.hint or _REQUEST_HINT,
                                         exit_code=exc.exit_code) from None
            if exc.scope == Scope.CLOUD:
                refused[cand.cloud] = exc
            blocks.append(block_for(exc, cand))
            on_event("failover", f"{a.error} on {a.place} ({a.code or a.message}); blocking {blocks[-1]} and re-planning")
            continue
        return cand, infos, attempts


def _attempt(cluster: str, cand: Candidate, public_key: str | None, on_event,
             cloud_name: str | None = None) -> list[InstanceInfo]:
    """One place: create (retrying the same place while the cloud throttles us), record the instance ids,
    wait for them. Any failure or interrupt rolls back what was created there before propagating."""
    from .costs import ledger

    prov = get_provider(cand.cloud)
    where = "/".join(p for p in (cand.cloud, cand.region, cand.zone) if p)
    cloud_name = cloud_name or cluster
    req = request_for(cloud_name, cand, public_key)
    retries, delay = settings.get("throttle_retries"), settings.get("throttle_backoff")
    for n in range(retries + 1):
        on_event("provision", f"provisioning {cand.num_nodes}× {cand.instance_type} on {where}"
                 f"{' (spot)' if cand.use_spot else ''}")
        intent = state.add_intent(cluster, cand.cloud, cand.region, cand.zone, cloud_name)
        ledger.open_attempt(cluster, cand, intent)  # billed from the create call, whatever becomes of it
        ids: list[str] = []
        try:
            failpoint("provision")
            ids = _finish_in_flight(lambda: prov.run_instances(req), on_event)
            state.set_intent(intent, "created", ids)
            ledger.attempt_created(intent, len(ids))
            failpoint("provision-wait")
            return _finish_in_flight(lambda: prov.wait_instances(req, ids), on_event)
        except ProvisionError as exc:
            _rollback(prov, cluster, cand, intent, on_event, cloud_name, created_nothing=exc.created_nothing,
                      ids=ids)
            if exc.scope != Scope.RETRY or n == retries:
                raise
            wait = delay * 2 ** n * (0.75 + 0.5 * random.random())
            on_event("throttled", f"{cand.cloud} is throttling our requests ({exc.code or exc.message}); "
                     f"retrying {where} in {wait:.1f}s")
            time.sleep(wait)
        except BaseException as exc:
            clean = _rollback(prov, cluster, cand, intent, on_event, cloud_name, ids=ids)
            if isinstance(exc, KeyboardInterrupt) and clean:
                on_event("cleanup", f"interrupted: rolled back the launch on {where}; no instance of {cluster} "
                         "is left running")
            raise
    raise AssertionError("unreachable")  # pragma: no cover


_cancel = threading.local()


def cancelled() -> bool:
    """True in a provisioning worker thread whose caller was interrupted: drivers check it between SDK
    calls so a Ctrl-C during e.g. security-group setup does not go on to launch instances."""
    ev = getattr(_cancel, "event", None)
    return ev is not None and ev.is_set()


def _finish_in_flight(fn, on_event):
    """Run a create call in a worker thread. On Ctrl-C (or SIGTERM/SIGHUP), let the in-flight call return
    first (so we know what it created; the driver starts no further call), then re-raise: the caller rolls
    back everything tagged with the cluster. A second interrupt stops waiting.

    Completion is signalled with an Event, not Thread.is_alive(): on CPython 3.11 a KeyboardInterrupt that
    lands inside Thread.join() marks the still-running thread as stopped."""
    box: dict = {}
    done = threading.Event()
    cancel = threading.Event()

    def work():
        _cancel.event = cancel
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=work, daemon=True, name="provision")
    t.start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        cancel.set()
        on_event("cleanup", "interrupted: waiting for the cloud call in flight to return, then cleaning up "
                 "(Ctrl-C again to stop waiting)")
        try:
            while not done.wait(0.1):
                pass
        except KeyboardInterrupt:
            pass
        raise KeyboardInterrupt from None
    if "error" in box:
        raise box["error"]
    return box["value"]


def _only_refused(attempts: list[Attempt], refused: dict) -> bool:
    """Every failed attempt was on a cloud that refused our credentials or permissions: its block stays
    across --retry-until-up rounds, so a new round could only plan nothing again. (A capacity, quota or
    throttling failure on another cloud may clear: that one is retried.)"""
    return bool(refused) and all(a.cloud in refused for a in attempts)


def _permanent(block: Block, attempts: list[Attempt]) -> bool:
    """Credentials problems stay blocked across retries; capacity and quota may clear."""
    return any(a.cloud == block.cloud and a.scope == "cloud" for a in attempts) and block.region is None


def _rollback(prov, cluster: str, cand: Candidate, intent: int, on_event, cloud_name: str | None = None,
              created_nothing: bool = False, ids: list[str] | None = None) -> bool:
    """Terminate what the attempt may have left. If the cloud cannot be asked (e.g. it refuses our
    credentials) but the driver knows its create call created no instance, the intent is closed as
    "refused": nothing with a cost can exist, so no record is kept that only working credentials could
    remove (a security group or firewall rule it may have made is tagged: `broker gc` finds it). Drivers
    say so through clouds.base.CreateLedger.

    The attempt's cost run (costs/ledger.py) is closed as `rolled back` if instances existed (the create call
    returned their ids, or the cloud lists them now: a partial create), dropped if none did; while a failed
    rollback may have left them it stays open (intents.reconcile settles it)."""
    from .costs import ledger

    try:
        if not created_nothing:  # (inside the try: a second Ctrl-C here is reported like one during terminate)
            ledger.attempt_created(intent, len(ids) if ids else _existing(prov, cloud_name or cluster, cand.region))
        for w in prov.terminate(cloud_name or cluster, cand.region) or ():
            on_event("warning", w)
        state.set_intent(intent, "cleaned")
        ledger.attempt_gone(intent, ledger.ROLLED_BACK)
        return True
    except BaseException as exc:  # noqa: BLE001 - cleanup must report, not mask the original error
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if created_nothing:
            state.set_intent(intent, "refused")
            ledger.attempt_gone(intent, ledger.ROLLED_BACK)
            on_event("warning", f"no instance of {cluster} was created on {cand.cloud}/{cand.region}; could not "
                     f"check it for a network resource (security group, firewall rule) left by the attempt ({msg}): "
                     "`broker gc` removes any once the cloud accepts the credentials")
            return True
        on_event("warning", f"could not roll back {cluster} on {cand.cloud}/{cand.region}: {msg}; "
                 f"run `broker down {cluster}` or `broker gc`")
        return False


def _existing(prov, cloud_name: str, region: str | None) -> int:
    """How many instances of the cluster the cloud lists (0 if it cannot be asked)."""
    try:
        return len(prov.query(cloud_name, region) or ())
    except Exception:  # noqa: BLE001 - the rollback's own terminate reports what is wrong
        return 0
