"""GCE driver (google-cloud-compute, REST transport).

One instance per node, labelled skybroker-cluster / skybroker-user / skybroker-rank and found by the cluster
label (an aggregated list across zones), so a retried launch resumes instead of duplicating; instance names
are deterministic (`<cluster>-<user hash>-<rank>`), so a repeated insert gets 409 instead of a twin.
Per cluster: a firewall rule `skybroker-<cluster>` (tcp 22 + the task's ports from anywhere) and
`skybroker-<cluster>-internal` (everything between the cluster's instances), both targeting the network
tag `skybroker-<cluster>` that every instance carries. The user's key goes in the `ssh-keys` metadata
(`broker:<public key>`); the boot disk is Ubuntu 22.04 (with NVIDIA drivers for GPU hosts) unless the
task names an image. Names, labels, the insert body and reading an instance back: instances.py.

Spot = `scheduling.provisioningModel=SPOT` with `instanceTerminationAction=DELETE`, chosen deliberately:
a managed job relaunches elsewhere anyway, and a STOPped spot VM would keep billing for its disk. So a
preempted instance simply disappears from `instances.list`; GCE leaves a `compute.instances.preempted`
system operation behind, which `query_all` reports as the state reason.

Operations are polled with our own ZoneOperationsClient/GlobalOperationsClient (`wait`), built by the
same client factory (the SDK's `operation.result()` ignores the endpoint override). Zones: the catalog
uses GCE zone names (us-central1-a) directly.
"""
from __future__ import annotations

import time

from ... import settings
from ...errors import CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError
from ..base import (
    PENDING,
    RUNNING,
    STOPPED,
    STOPPING,
    TAG_CLUSTER,
    TAG_HOME,
    TAG_USER,
    TERMINATED,
    Capabilities,
    CreateLedger,
    InstanceInfo,
    ProvisionRequest,
    Provider,
    TaggedResource,
    home_tag,
    http_refusal,
)
from ...task_config import option
from ..common import call_typed
from . import client as clients
from . import firewall, tpu
from .firewall import fw_name
from .errors import OperationError, classify
from .instances import (SSH_USER, _info, _label, _label_key, _last, _ordered, _rank, _state, _user, instance_body,
                        instance_name, region_of)
from .volumes import PersistentDisks

PREEMPTED_OP = "compute.instances.preempted"


def _wait_seconds() -> float:
    return settings.get("gcp_wait")


def _poll() -> float:
    return settings.get("gcp_poll")


# With no cpus/memory given, an N1 host for these GPUs is sized like the matching AWS instance
# (GUIDE §1): vCPUs ≥ table[count] (K80: 4 per GPU, any other: 8 per GPU), memory ≥ 4 GiB per vCPU.
N1_DEFAULT_CPUS = {
    "V100": {1: 8, 2: 16, 4: 32, 8: 64},
    "P100": {1: 8, 2: 16, 4: 32, 8: 64},
    "T4": {1: 4, 2: 8, 4: 48},
}


def wait_op(project: str, op, zone: str | None = None, creating: bool = False):
    """Wait for a zone (or global) operation to be DONE; raise OperationError if it failed. An operation
    still running after BROKER_GCP_WAIT is an InvalidRequestError, or, for creates (`creating`), the zone's
    failure (CapacityError PROVISION_TIMEOUT: the provisioner tears down what exists and fails over)."""
    from google.cloud import compute_v1

    done = compute_v1.Operation.Status.DONE
    deadline = time.time() + _wait_seconds()
    while op.status != done:
        if time.time() > deadline:
            place = Place("gcp", region_of(zone) if zone else None, zone)
            msg = f"GCE operation {op.name} not done after {_wait_seconds():.0f}s"
            if creating:
                raise CapacityError(msg, place, code="PROVISION_TIMEOUT", hint="BROKER_GCP_WAIT sets how long to wait")
            raise InvalidRequestError(msg, place)
        if zone:
            op = clients.zone_operations().wait(project=project, zone=zone, operation=op.name)
        else:
            op = clients.global_operations().wait(project=project, operation=op.name)
        if op.status != done:
            time.sleep(_poll())
    if op.error and op.error.errors:
        raise OperationError(op)
    return op


class GCPCloud(PersistentDisks, Provider):
    name = "gcp"
    catalog = "gcp"
    capabilities = Capabilities(stop=True, spot=True, firewall=True, gone_reasons=True, self_stop=True, volumes=True,
                                peer_ssh=True)
    sdk_modules = ("google.cloud.compute_v1", "google.cloud.tpu_v2")
    sdk_extra = "gcp"
    default_ssh_user = SSH_USER
    notice_kind, notice_url = "gcp", "http://metadata.google.internal/computeMetadata/v1/instance/preempted"

    def check(self):
        from ...check import check_gcp

        return check_gcp()

    def credential_files(self):
        from .. import credfiles

        return credfiles.gcp()

    def credential_hint(self) -> str:
        from .. import credfiles

        return credfiles.HINTS["gcp"]

    def classify(self, exc, place):
        return classify(exc, place)

    def default_shape(self, res, spec):
        """GPUs attached to an N1 host: size the host like the matching AWS instance."""
        if not res.accelerator or not spec.instance_type.startswith("n1-"):
            return None
        from ...resources import DEFAULT_MEMORY_PER_CPU, Amount

        n = int(res.accelerator_count)
        table = N1_DEFAULT_CPUS.get(res.accelerator.upper()) or {}
        need = table.get(n, (4 if res.accelerator.upper() == "K80" else 8) * n)
        return Amount(float(need), at_least=True), Amount(DEFAULT_MEMORY_PER_CPU, per_cpu=True)

    def regions(self) -> list:
        return [None] + super().regions()  # None: the project's global resources (firewall rules)

    # -- helpers ---------------------------------------------------------------------------------
    def _call(self, place: Place, fn, *args, **kw):
        """Run an SDK call, translating refusals into typed errors."""
        return call_typed(classify, place, fn, *args, **kw)

    def _list(self, project: str, cluster: str | None, region: str | None) -> list:
        """Instances with the cluster label (any cluster when None), in the region's zones (all when None)."""
        from google.cloud import compute_v1

        flt = f"labels.{TAG_CLUSTER}={cluster}" if cluster else f"labels.{TAG_CLUSTER}:*"
        req = compute_v1.AggregatedListInstancesRequest(project=project, filter=flt)
        out = []
        for scope, scoped in clients.instances().aggregated_list(request=req):
            zone = _last(scope)
            if region and region_of(zone) != region:
                continue
            out.extend(scoped.instances)
        return out

    def _wait_op(self, project: str, op, zone: str | None = None, creating: bool = False):
        return wait_op(project, op, zone, creating)

    def _wait_all(self, project: str, place: Place, ops: list[tuple[str | None, object]], ignore=(),
                  creating: bool = False) -> None:
        """Wait for every operation (so nothing is in flight), then raise the first failure (failures with
        an error code in `ignore` are not failures)."""
        first = None
        for zone, op in ops:
            try:
                self._wait_op(project, op, zone, creating)
            except OperationError as exc:
                if not set(exc.codes) <= set(ignore):
                    first = first or classify(exc, place)
            except ProvisionError as exc:
                first = first or exc
            except Exception as exc:
                typed = classify(exc, place)
                if typed is None:
                    raise
                first = first or typed
        if first is not None:
            raise first

    def _each(self, project: str, place: Place, insts, method: str) -> None:
        """Call instances.<method>_unary on each instance and wait for the operations; an instance that is
        already gone (deleted, or a spot VM preempted meanwhile) is skipped."""
        from google.api_core.exceptions import NotFound

        ops = []
        for inst in insts:
            zone = _last(inst.zone)
            try:
                ops.append((zone, getattr(clients.instances(), method + "_unary")(project=project, zone=zone,
                                                                                  instance=inst.name)))
            except NotFound:
                continue
            except Exception as exc:  # noqa: BLE001 - classified; in-flight operations finish first
                self._wait_all(project, place, ops, ignore=("RESOURCE_NOT_FOUND",))
                raise (classify(exc, place) or exc) from None
        self._wait_all(project, place, ops, ignore=("RESOURCE_NOT_FOUND",))

    def _wait_until(self, project, place, cluster, region, ok, what: str) -> list:
        deadline = time.time() + _wait_seconds()
        while True:
            insts = self._call(place, self._list, project, cluster, region)
            if ok(insts):
                return insts
            if time.time() > deadline:
                raise InvalidRequestError(f"instances of {cluster} not {what} after {_wait_seconds():.0f}s", place)
            time.sleep(_poll())

    def _wait_running(self, project, place, cluster, region, n, limit: float | None = None) -> list[InstanceInfo]:
        deadline = time.time() + (limit or _wait_seconds())
        while True:
            infos = [_info(i) for i in self._call(place, self._list, project, cluster, region)]
            live = [i for i in infos if i.state in (PENDING, RUNNING)]
            if len(live) >= n and all(i.state == RUNNING and (i.public_ip or i.private_ip) for i in live):
                return _ordered(live)
            if len(live) < n:  # created and then gone: a spot VM preempted while starting
                raise CapacityError(f"{n - len(live)} instance(s) of {cluster} disappeared while starting "
                                    "(spot capacity reclaimed?)", place, code="PREEMPTED_DURING_PROVISIONING")
            if time.time() > deadline:
                if limit:  # the task's provision_timeout: give up on this zone, fail over
                    raise CapacityError(f"instances of {cluster} not running within the task's provision_timeout "
                                        f"({limit:.0f}s)", place, code="PROVISION_TIMEOUT")
                late = sorted(i.instance_id for i in live if i.state != RUNNING or not (i.public_ip or i.private_ip))
                raise CapacityError(f"instances of {cluster} not running after {_wait_seconds():.0f}s (not ready: "
                                    f"{', '.join(late) or '-'})", place, code="BOOT_TIMEOUT",
                                    hint="BROKER_GCP_WAIT sets how long to wait")
            time.sleep(_poll())

    # -- provision -------------------------------------------------------------------------------
    def refused_answer(self, exc: BaseException) -> bool:
        from google.api_core.exceptions import GoogleAPICallError

        return isinstance(exc, GoogleAPICallError) and http_refusal(exc.code)

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        with CreateLedger(self.refused_answer).guard() as ledger:  # e.g. every call refused our credentials
            return self._run_instances(req, ledger)

    def _run_instances(self, req: ProvisionRequest, ledger: CreateLedger) -> list[str]:
        place = Place("gcp", req.region, req.zone, req.instance_type)
        if tpu.is_tpu(req.accelerator):  # a TPU VM slice: the Cloud TPU API, not Compute (tpu.py)
            return self._run_tpu(req, place, ledger)
        project = self._call(place, clients.project)
        live = [i for i in self._call(place, self._list, project, req.cluster, req.region) if _state(i) != TERMINATED]
        ledger.found(live)
        zone = _last(live[0].zone) if live else req.zone  # a cluster stays in one zone
        if not zone:
            raise InvalidRequestError("GCE needs a zone to create instances in", place)
        place = Place("gcp", req.region or region_of(zone), zone, req.instance_type)
        if any(_state(i) == STOPPING for i in live):
            live = self._wait_until(project, place, req.cluster, req.region,
                                    lambda xs: all(_state(i) != STOPPING for i in xs), "stopped")
        self._resume(project, place, [i for i in live if _state(i) == STOPPED])
        self._call(place, firewall.ensure, project, req.cluster, tuple(req.ports))
        missing = req.num_nodes - len(live)
        if missing > 0:
            from google.api_core.exceptions import Conflict

            have = {_rank(i) for i in live}
            ranks = [r for r in range(req.num_nodes) if r not in have][:missing]
            public_key = req.public_key or _public_key()
            ops = []
            for rank in ranks:
                body = instance_body(req, project, zone, rank, public_key)
                try:
                    with ledger.create():
                        ops.append((zone, clients.instances().insert_unary(project=project, zone=zone,
                                                                           instance_resource=body)))
                except Conflict:
                    ledger.sent()
                    continue  # the name exists: a retried or concurrent launch created it; counted below
                except Exception as exc:  # noqa: BLE001 - classified; in-flight inserts finish first
                    self._wait_all(project, place, ops, creating=True)
                    raise (classify(exc, place) or exc) from None
            self._wait_all(project, place, ops, creating=True)
            return [i.name for i in live] + [instance_name(req.cluster, r) for r in ranks]
        return [i.name for i in live]

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        place = Place("gcp", req.region, req.zone, req.instance_type)
        project = self._call(place, clients.project)
        if tpu.is_tpu(req.accelerator):
            return self._call(place, tpu.wait, project, req.cluster, req.zone, place)
        limit = option(req, "gcp.provision_timeout")  # config.gcp.managed_instance_group.provision_timeout
        return self._wait_running(project, place, req.cluster, req.region, req.num_nodes,
                                  float(limit) if limit else None)

    def _run_tpu(self, req: ProvisionRequest, place: Place, ledger: CreateLedger) -> list[str]:
        if not req.zone:
            raise InvalidRequestError("a TPU VM needs a zone", place)
        if req.num_nodes != 1:
            raise InvalidRequestError(f"num_nodes: {req.num_nodes} TPU slices: a cluster is one slice (its hosts are "
                                      "the nodes; pick a larger slice, e.g. tpu-v4-16 for 2 hosts)", place)
        project = self._call(place, clients.project)
        self._call(place, firewall.ensure, project, req.cluster, tuple(req.ports))
        labels = {_label_key(k): _label(v) for k, v in req.labels}
        labels.update({TAG_CLUSTER: _label(req.cluster), TAG_USER: _label(_user()), TAG_HOME: home_tag()})
        ledger.sent()  # tpu.create is several calls (a refused one is not told apart from a lost answer)
        return self._call(place, tpu.create, req, project, req.zone, req.public_key or _public_key(), _user(),
                          fw_name(req.cluster), labels)

    def _tpu_nodes(self, project: str, place: Place, cluster: str | None, region: str | None) -> list:
        """The cluster's TPU slices; none when this project does not use Cloud TPU (API off, SDK absent)."""
        try:
            return self._call(place, tpu.list_nodes, project, cluster, region)
        except CredentialsError:  # the TPU API is disabled or not granted: GCE alone works
            return []
        except ImportError:
            return []

    def _resume(self, project, place, stopped) -> None:
        suspended = [i for i in stopped if i.status == "SUSPENDED"]
        self._each(project, place, [i for i in stopped if i.status != "SUSPENDED"], "start")
        self._each(project, place, suspended, "resume")

    # -- the rest of the protocol ------------------------------------------------------------------
    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        """Live instances; with include_gone also the instances that are gone because GCE preempted them
        (state_reason `compute.instances.preempted`, from the system operation GCE records for each)."""
        from google.cloud import compute_v1

        place = Place("gcp", region)
        project = self._call(place, clients.project)
        infos = [_info(i) for i in self._call(place, self._list, project, cluster, region)]
        if not infos:  # no GCE instance: perhaps a TPU slice (a cluster is one or the other)
            slices = self._tpu_nodes(project, place, cluster, region)
            if slices:
                got = [i for n in slices for i in tpu._infos(n)]
                return got if include_gone else [i for i in got if i.state != TERMINATED]
        if not include_gone:
            return _ordered([i for i in infos if i.state != TERMINATED])
        seen = {i.instance_id for i in infos}
        prefix = instance_name(cluster, 0)[:-1]
        req = compute_v1.AggregatedListGlobalOperationsRequest(project=project, filter=f'operationType="{PREEMPTED_OP}"')
        for scope, scoped in self._call(place, lambda: list(clients.global_operations().aggregated_list(request=req))):
            zone = _last(scope)
            if region and region_of(zone) != region:
                continue
            for op in scoped.operations:
                name = _last(op.target_link)
                if name.startswith(prefix) and name[len(prefix):].isdigit() and name not in seen:
                    seen.add(name)
                    infos.append(InstanceInfo(instance_id=name, state=TERMINATED, zone=zone, spot=True,
                                              state_reason=PREEMPTED_OP, rank_hint=int(name[len(prefix):])))
        return _ordered(infos)

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        place = Place("gcp", region)
        project = self._call(place, clients.project)
        insts = [i for i in self._call(place, self._list, project, cluster, region) if i.status != "DEPROVISIONING"]
        self._each(project, place, insts, "delete")
        if insts:
            self._wait_until(project, place, cluster, region, lambda xs: not xs, "deleted")
        else:  # no GCE instance: perhaps a TPU slice (region None: in any TPU zone)
            self._call(place, tpu.delete, project, self._tpu_nodes(project, place, cluster, region))
        warns = self._delete_ephemeral(project, place, cluster, region)  # its ephemeral disks go with it
        if region is not None and self._call(place, self._list, project, cluster, None):
            return warns  # the cluster still has instances in another region: its firewall rules stay
        self._call(place, firewall.delete, project, cluster)
        return warns

    def stop(self, cluster: str, region: str | None) -> None:
        place = Place("gcp", region)
        project = self._call(place, clients.project)
        insts = [i for i in self._call(place, self._list, project, cluster, region) if _state(i) in (PENDING, RUNNING)]
        if not insts:
            slices = [n for n in self._tpu_nodes(project, place, cluster, region) if n.state.name in ("READY",)]
            return self._call(place, tpu.stop, slices)
        self._each(project, place, insts, "stop")
        if insts:
            self._wait_until(project, place, cluster, region,
                             lambda xs: all(_state(i) in (STOPPED, TERMINATED) for i in xs), "stopped")

    # Autostop on the cluster: a guest shutdown stops a GCE VM (TERMINATED, disks kept), so `stop` needs no
    # credential on the nodes (workers follow the head as on AWS). Deleting needs an API call with a
    # service account allowed compute.instances.delete on the cluster's VMs only: not given to nodes, so
    # `--down` (and spot, which the broker never stops) stays with the watcher on the user's machine.
    def prepare_self_stop(self, cluster: str, region: str | None, action: str) -> str:
        infos = self.query(cluster, region)
        if any(tpu.TAG_TPU in i.tags for i in infos):
            raise InvalidRequestError("a TPU VM cannot stop itself from its own hosts", Place("gcp", region))
        if action == "down" or any(i.spot for i in infos):
            raise InvalidRequestError("a GCE VM cannot delete itself without a service account on the node",
                                      Place("gcp", region))
        return "stop"

    def self_stop_command(self, cluster: str, node, head, action: str):
        from ..base import SelfStop

        follow = None if node.rank == head.rank else f"{head.private_ip or head.ip}:{head.ssh_port or 22}"
        return SelfStop("sudo -n shutdown -h now", follow=follow)

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        place = Place("gcp", region)
        project = self._call(place, clients.project)
        insts = [i for i in self._call(place, self._list, project, cluster, region) if _state(i) != TERMINATED]
        if not insts:
            slices = self._tpu_nodes(project, place, cluster, region)
            if slices:
                self._call(place, tpu.start, [n for n in slices if n.state.name == "STOPPED"])
                zone = slices[0].name.split("/locations/", 1)[1].split("/", 1)[0]
                return self._call(place, tpu.wait, project, cluster, zone, place)
        if any(_state(i) == STOPPING for i in insts):
            insts = self._wait_until(project, place, cluster, region,
                                     lambda xs: all(_state(i) != STOPPING for i in xs), "stopped")
        self._resume(project, place, [i for i in insts if _state(i) == STOPPED])
        return self._wait_running(project, place, cluster, region, len(insts))

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        place = Place("gcp", region)
        project = self._call(place, clients.project)
        self._call(place, firewall.ensure, project, cluster, tuple(ports))

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Every skybroker-labelled instance in a region; with region None, the project's skybroker
        firewall rules (global resources; their description names the cluster). For `broker gc`."""
        place = Place("gcp", region)
        project = self._call(place, clients.project)
        if region is None:
            out = []
            for fw in self._call(place, lambda: list(clients.firewalls().list(project=project))):
                desc = fw.description or ""
                if fw.name.startswith("skybroker-") and desc.startswith("skybroker cluster "):
                    body, _, home = desc[len("skybroker cluster "):].partition("; home ")
                    cluster = body.split(":")[0].strip()
                    out.append(TaggedResource(self.name, None, cluster, "firewall", fw.name, live=False,
                                              home=home.strip() or None))
            return out
        out = [TaggedResource(self.name, region, inst.labels[TAG_CLUSTER], "instance", inst.name,
                              home=inst.labels.get(TAG_HOME))
               for inst in self._call(place, self._list, project, None, region) if _state(inst) != TERMINATED]
        out += [TaggedResource(self.name, region, n.labels[TAG_CLUSTER], "tpu", n.name.rsplit("/", 1)[-1],
                               home=n.labels.get(TAG_HOME))
                for n in self._tpu_nodes(project, place, None, region)]
        return out + self._tagged_disks(project, place, region)


PROVIDER = GCPCloud


def _public_key() -> str:
    from ...paths import broker_home
    from ...runtime.keys import ensure_user_key

    return ensure_user_key(broker_home())[1]
