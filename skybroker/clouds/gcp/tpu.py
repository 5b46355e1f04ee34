"""TPU VMs on GCP, through the Cloud TPU API v2 (google-cloud-tpu, REST transport, the same endpoint override
and credentials as the Compute clients: client.py).

A TPU cluster is one TPU node (a slice) named `<cluster>-<user hash>-tpu`, labelled like the GCE instances
(skybroker-cluster / skybroker-user, plus skybroker-tpu=1). Each host of the slice — one per network
endpoint, e.g. 2 for a v4-16 — is one node of the cluster (ranks in endpoint order), so `run` executes on every
host, as SkyPilot does for TPU pods. The user's key goes in the `ssh-keys` metadata as for GCE; the slice
carries the cluster's network tag, so the cluster's firewall rules (driver.py) apply to it. The runtime
version is `accelerator_args.runtime_version`, else a base image for the TPU generation.

Spot = `schedulingConfig.spot`. A preempted slice stays listed in state PREEMPTED (and still has to be
deleted): `query(include_gone=True)` reports its hosts TERMINATED with state reason `tpu.nodes.preempted`,
and `terminate` deletes it. `accelerator_args.gcp_queued_resource: true` creates the slice through a queued
resource (the API's queue for capacity; spot or guaranteed as the task says), waits until it is ACTIVE and
deletes the queued resource with its node on `down`.

Errors: HTTP refusals go through errors.classify like every GCE call. A create that the API accepts but
cannot fulfil ends in a failed long-running operation (or a FAILED queued resource) carrying a
google.rpc.Status: code 8 (RESOURCE_EXHAUSTED) is a stockout of the zone — or, with a QuotaFailure detail,
the zone's TPU quota (TPU quotas are per zone) — so both fail over to the next zone (TPUOperationError).
"""
from __future__ import annotations

import hashlib
import time

from ...errors import CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError, QuotaError, Scope
from ..base import PENDING, RUNNING, STOPPED, STOPPING, TAG_CLUSTER, TERMINATED, InstanceInfo
from . import client as clients

TAG_TPU = "skybroker-tpu"
PREEMPTED_REASON = "tpu.nodes.preempted"
# A runtime (VM image) per generation when the task names none: the base Ubuntu images of Cloud TPU.
DEFAULT_RUNTIME = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                   "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
_STATE = {"CREATING": PENDING, "READY": RUNNING, "RESTARTING": PENDING, "REIMAGING": PENDING, "DELETING": TERMINATED,
          "REPAIRING": PENDING, "STOPPED": STOPPED, "STOPPING": STOPPING, "STARTING": PENDING,
          "PREEMPTED": TERMINATED, "TERMINATED": TERMINATED, "HIDING": STOPPING, "HIDDEN": STOPPED,
          "UNHIDING": PENDING}


class ZoneQuotaError(QuotaError):
    """A zone's TPU quota (Cloud TPU quotas are per zone): another zone may still have room."""

    scope = Scope.ZONE


class TPUOperationError(Exception):
    """A TPU create that ended in a failed operation or queued resource: its google.rpc.Status."""

    def __init__(self, code: int, message: str, detail_types: tuple[str, ...] = ()):
        self.code, self.detail_types = int(code or 0), detail_types
        super().__init__(message or f"TPU operation failed with code {code}")


def classify_operation(exc: TPUOperationError, place: Place) -> ProvisionError:
    msg = str(exc)
    if exc.code == 8:  # RESOURCE_EXHAUSTED
        if any(t.endswith("google.rpc.QuotaFailure") for t in exc.detail_types):
            return ZoneQuotaError(msg, place, code="RESOURCE_EXHAUSTED:QUOTA",
                                  hint="request more TPU quota for the zone (IAM & Admin → Quotas)")
        return CapacityError(msg, place, code="RESOURCE_EXHAUSTED")
    if exc.code in (14, 10, 4):  # UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED: this zone, now
        return CapacityError(msg, place, code={14: "UNAVAILABLE", 10: "ABORTED", 4: "DEADLINE_EXCEEDED"}[exc.code])
    if exc.code in (7, 16):
        return CredentialsError(msg, place, code="PERMISSION_DENIED" if exc.code == 7 else "UNAUTHENTICATED")
    return InvalidRequestError(msg, place, code=str(exc.code))


def is_tpu(accelerator: str | None) -> bool:
    return bool(accelerator) and accelerator.lower().startswith("tpu-")


def accelerator_type(accelerator: str) -> str:
    """Our catalog's accelerator name (`tpu-v4-8`) → the API's acceleratorType (`v4-8`)."""
    return accelerator.lower()[len("tpu-"):]


def node_id(cluster: str, user: str) -> str:
    return f"{cluster}-{hashlib.sha256(user.encode()).hexdigest()[:4]}-tpu"


def zones(region: str | None) -> list[str]:
    """The zones that offer TPU VMs (in `region`; all of them when None), from the catalog."""
    from ... import catalog

    return sorted({o.zone for s in catalog.named("gcp", "TPU-VM") for o in catalog.offers(s)
                   if o.zone and (region is None or o.region == region)})


def _arg(args, key: str) -> str | None:
    for k, v in args:
        if k == key:
            return v
    return None


# ---------------------------------------------------------------------------------------------- reading
def _infos(node) -> list[InstanceInfo]:
    """One InstanceInfo per host of the slice."""
    from google.cloud import tpu_v2

    state = tpu_v2.Node.State(node.state).name
    ours = _STATE.get(state, PENDING)
    nid = node.name.rsplit("/", 1)[-1]
    zone = node.name.split("/locations/", 1)[1].split("/", 1)[0]
    spot = bool(node.scheduling_config.spot or node.scheduling_config.preemptible)
    reason = PREEMPTED_REASON if state == "PREEMPTED" else None
    eps = list(node.network_endpoints) or [None]
    out = []
    for i, ep in enumerate(eps):
        public = ep.access_config.external_ip if ep is not None and ep.access_config else None
        out.append(InstanceInfo(instance_id=f"{nid}-w{i}", state=ours, public_ip=public or None,
                                private_ip=(ep.ip_address if ep is not None else None) or None, ssh_user="broker",
                                ssh_port=22, zone=zone, spot=spot, tags=dict(node.labels), rank_hint=i,
                                state_reason=reason))
    return out


def list_nodes(project: str, cluster: str | None, region: str | None, zone: str | None = None) -> list:
    """The broker's TPU nodes (of `cluster`; any when None) in the TPU zones of `region`. The API has no
    label filter: the pages are filtered here."""
    out = []
    for z in ([zone] if zone else zones(region)):
        for node in clients.tpu().list_nodes(parent=f"projects/{project}/locations/{z}"):
            have = node.labels.get(TAG_CLUSTER)
            if have is not None and (cluster is None or have == cluster) and node.labels.get(TAG_TPU):
                out.append(node)
    return out


def api_available(exc: BaseException) -> bool:
    """False for the refusals that only say this project does not use Cloud TPU (API disabled, no permission,
    SDK not installed): a GCE cluster's lookups must not fail for want of a TPU API."""
    from google.api_core import exceptions as gex

    return not isinstance(exc, (ImportError, gex.PermissionDenied, gex.Forbidden, gex.NotFound))


# ---------------------------------------------------------------------------------------------- creating
def create(req, project: str, zone: str, public_key: str, user: str, network_tag: str, labels: dict) -> list[str]:
    """Create the slice (idempotent: an existing node of the same name is the cluster's)."""
    from google.api_core import exceptions as gex
    from google.cloud import tpu_v2

    acc = accelerator_type(req.accelerator)
    runtime = _arg(req.accelerator_args, "tpu_runtime_version") or DEFAULT_RUNTIME.get(acc.split("-")[0],
                                                                                       "tpu-ubuntu2204-base")
    nid = node_id(req.cluster, user)
    parent = f"projects/{project}/locations/{zone}"
    body = tpu_v2.Node(accelerator_type=acc, runtime_version=runtime,
                       network_config=tpu_v2.NetworkConfig(enable_external_ips=True),
                       scheduling_config=tpu_v2.SchedulingConfig(spot=bool(req.use_spot)),
                       labels={**labels, TAG_TPU: "1"}, tags=[network_tag],
                       metadata={"ssh-keys": f"{req.user}:{public_key.strip()}"})
    try:
        if _arg(req.accelerator_args, "tpu_gcp_queued_resource") in ("True", "true", "1"):
            _create_queued(project, zone, nid, parent, body, bool(req.use_spot))
        else:
            op = clients.tpu().create_node(parent=parent, node_id=nid, node=body)
            _result(op, creating=Place("gcp", zone.rsplit("-", 1)[0], zone))
    except gex.Conflict:  # 409 ALREADY_EXISTS
        pass  # a retried or concurrent launch created it: the cluster's own slice
    return [nid]


def _result(op, creating: Place | None = None) -> None:
    """Wait for a TPU long-running operation; a failed one raises TPUOperationError with its Status. One
    still running after BROKER_GCP_WAIT is an InvalidRequestError, or, for a create (`creating`: its
    place), the zone's failure (CapacityError PROVISION_TIMEOUT: torn down, failed over)."""
    import concurrent.futures

    from google.api_core import exceptions as gex

    from ... import settings

    try:
        op.result(timeout=settings.get("gcp_wait"))
    except (TimeoutError, concurrent.futures.TimeoutError):  # distinct classes before Python 3.11
        msg = f"TPU operation {op.operation.name} not done after {settings.get('gcp_wait'):.0f}s"
        if creating is not None:
            raise CapacityError(msg, creating, code="PROVISION_TIMEOUT", hint="BROKER_GCP_WAIT sets how long to wait") from None
        raise InvalidRequestError(msg, Place("gcp")) from None
    except gex.GoogleAPICallError:
        raw = op.operation
        if raw.HasField("error"):
            raise TPUOperationError(raw.error.code, raw.error.message,
                                    tuple(d.type_url for d in raw.error.details)) from None
        raise


def _create_queued(project: str, zone: str, nid: str, parent: str, body, spot: bool) -> None:
    from google.cloud import tpu_v2

    from ... import settings

    Q = tpu_v2.QueuedResource
    qr = Q(tpu=Q.Tpu(node_spec=[Q.Tpu.NodeSpec(parent=parent, node_id=nid, node=body)]))
    if spot:
        qr.spot = Q.Spot()
    else:
        qr.guaranteed = Q.Guaranteed()
    name = f"{parent}/queuedResources/{nid}"
    _result(clients.tpu().create_queued_resource(parent=parent, queued_resource_id=nid, queued_resource=qr),
            creating=Place("gcp", zone.rsplit("-", 1)[0], zone))
    try:
        deadline = time.time() + settings.get("gcp_wait")
        while True:
            got = clients.tpu().get_queued_resource(name=name)
            state = tpu_v2.QueuedResourceState.State(got.state.state).name
            if state == "ACTIVE":
                return
            if state in ("FAILED", "SUSPENDED"):
                err = got.state.failed_data.error
                raise TPUOperationError(err.code, err.message or f"queued resource {nid} {state}",
                                        tuple(d.type_url for d in err.details))
            if time.time() > deadline:
                raise CapacityError(f"queued resource {nid} not ACTIVE after {settings.get('gcp_wait'):.0f}s (state "
                                    f"{state})", Place("gcp", zone.rsplit("-", 1)[0], zone), code="QUEUED")
            time.sleep(settings.get("gcp_poll"))
    except BaseException:
        # a failed, timed-out or interrupted request is withdrawn: left queued it would create a slice later that
        # nothing watches, and left FAILED it would block the next request of that name (409)
        from google.api_core import exceptions as gex

        try:
            _result(clients.tpu().delete_queued_resource(request={"name": name, "force": True}))
        except gex.NotFound:
            pass
        raise


def wait(project: str, cluster: str, zone: str, place: Place) -> list[InstanceInfo]:
    """Until the slice is READY and every host has an address."""
    from ... import settings

    deadline = time.time() + settings.get("gcp_wait")
    while True:
        nodes = list_nodes(project, cluster, None, zone)
        infos = [i for n in nodes for i in _infos(n)]
        if infos and all(i.state == RUNNING and (i.public_ip or i.private_ip) for i in infos):
            return infos
        if not nodes or any(i.state == TERMINATED for i in infos):
            raise CapacityError(f"the TPU slice of {cluster} disappeared or was preempted while starting",
                                place, code="PREEMPTED_DURING_PROVISIONING")
        if time.time() > deadline:
            raise CapacityError(f"the TPU slice of {cluster} is not ready after {settings.get('gcp_wait'):.0f}s",
                                place, code="BOOT_TIMEOUT", hint="BROKER_GCP_WAIT sets how long to wait")
        time.sleep(settings.get("gcp_poll"))


# ---------------------------------------------------------------------------------------------- the rest
def query(project: str, cluster: str, region: str | None, include_gone: bool) -> list[InstanceInfo]:
    infos = [i for n in list_nodes(project, cluster, region) for i in _infos(n)]
    return infos if include_gone else [i for i in infos if i.state != TERMINATED]


def delete(project: str, nodes) -> None:
    """Delete the slices (a queued resource's with it) and wait for the operations."""
    from google.api_core import exceptions as gex

    ops = []
    for node in nodes:
        try:
            if node.queued_resource:
                ops.append(clients.tpu().delete_queued_resource(request={"name": node.queued_resource, "force": True}))
            else:
                ops.append(clients.tpu().delete_node(name=node.name))
        except gex.NotFound:
            continue
    for op in ops:
        _result(op)


def stop(nodes) -> None:
    for node in nodes:
        if len(node.network_endpoints) > 1:
            raise InvalidRequestError("a multi-host TPU slice cannot be stopped (the TPU API refuses it): use `down`",
                                      Place("gcp"))
        _result(clients.tpu().stop_node(request={"name": node.name}))


def start(nodes) -> None:
    for node in nodes:
        _result(clients.tpu().start_node(request={"name": node.name}))

