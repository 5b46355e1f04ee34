"""Azure driver: one resource group per cluster (`skybroker-<cluster>`, tagged), holding a vnet + subnet, a
network security group (tcp 22 + the task's ports from anywhere, anything from inside the vnet: network.py),
and per node a Standard static public IP, a NIC and a VM. Teardown is one delete of the resource group, so nothing
is orphaned; a retried launch finds the group and resumes.

Places: our Azure catalog has no zones, an offer is a region (zone None). A CapacityError (scope zone)
blocks (azure, region, None), i.e. the whole region the optimizer chose: zone == region here.

Spot: priority Spot, eviction policy Delete, billingProfile.maxPrice -1 (pay up to the on-demand price,
never evicted for price). An evicted Spot VM with policy Delete is *deleted* by Azure: it simply
disappears from `query` (its NIC and public IP stay in the group). `query_all` reports such a node (a
rank NIC with no VM) as terminated with state_reason "Evicted" for spot clusters ("Deleted" otherwise).
"""
from __future__ import annotations

import os
import time

from ... import settings
from ...errors import CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError
from ..base import (PENDING, RUNNING, STOPPED, STOPPING, TAG_CLUSTER, TAG_HOME, TAG_USER, TERMINATED, Capabilities,
                    CreateLedger, InstanceInfo, ProvisionRequest, Provider, TaggedResource, home_tag, http_refusal)
from ..common import call_typed
from . import client as clients
from . import network
from .errors import classify

TAG_RANK = "skybroker-rank"
TAG_SPOT = "skybroker-spot"
SSH_USER = "broker"
OS_DISK_SKU = "StandardSSD_LRS"  # what costs/disks.py prices Azure's disks at: change both together
UBUNTU = ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "latest")
GPU_IMAGE = ("microsoft-dsvm", "ubuntu-hpc", "2204", "latest")  # Ubuntu 22.04 with NVIDIA drivers
_POWER = {"running": RUNNING, "starting": PENDING, "stopping": STOPPING, "deallocating": STOPPING,
          "stopped": STOPPED, "deallocated": STOPPED}


def _user() -> str:
    return os.environ.get("USER") or "user"


def _s(value) -> str:
    """An SDK enum or string as its wire value."""
    return str(getattr(value, "value", value) or "")


def group_name(cluster: str) -> str:
    return f"skybroker-{cluster}"


def _vm_name(cluster: str, rank: int) -> str:
    return f"{cluster}-{rank}"


def _identity(cm, req) -> dict:
    """config.azure.remote_identity: SERVICE_ACCOUNT = a system-assigned managed identity, a resource id =
    that user-assigned identity; anything else (NO_UPLOAD, LOCAL_CREDENTIALS): none."""
    from ...task_config import option

    v = option(req, "azure.remote_identity")
    if v == "SERVICE_ACCOUNT":
        return {"identity": cm.VirtualMachineIdentity(type="SystemAssigned")}
    if v and v.startswith("/"):
        return {"identity": cm.VirtualMachineIdentity(type="UserAssigned", user_assigned_identities={v: {}})}
    return {}


def _not_found(exc: BaseException) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404


class AzureCloud(Provider):
    name = "azure"
    catalog = "azure"
    # self_stop: a guest shutdown leaves an Azure VM allocated (and billed), so a node deallocates itself (or
    # deletes its cluster's group) through ARM as its own managed identity, allowed only that (selfstop.py).
    capabilities = Capabilities(stop=True, spot=True, firewall=True, gone_reasons=True, self_stop=True,
                                peer_ssh=True)
    sdk_modules = ("azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource", "azure.identity")
    sdk_extra = "azure"
    default_ssh_user = SSH_USER
    notice_kind, notice_url = "azure", "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"

    def __init__(self):
        self._groups_cache: tuple[float, list] | None = None

    def check(self):
        from ...check import check_azure

        return check_azure()

    def credential_files(self):
        from .. import credfiles

        return credfiles.azure()

    def credential_hint(self) -> str:
        from .. import credfiles

        return credfiles.HINTS["azure"]

    def classify(self, exc, place):
        return classify(exc, place)

    # -- helpers ---------------------------------------------------------------------------------
    def _call(self, place: Place, fn, *args, **kw):
        """Run an SDK call (or wait on a poller), translating refusals into typed errors."""
        return call_typed(classify, place, fn, *args, **kw)

    def _clients(self, place: Place) -> clients.Clients:
        sub = clients.subscription()
        if not sub:
            raise CredentialsError("no Azure subscription configured", place, code="NoSubscription",
                                   hint="set AZURE_SUBSCRIPTION_ID or run `az account set --subscription ID`")
        return self._call(place, clients.clients, sub)

    def _vms(self, c, place, cluster, any_region: bool = False) -> list:
        """The cluster's VMs in place.region with their instance view ([] when the group does not exist).
        The group name is global to the subscription while our protocol speaks per region (like EC2):
        VMs in another region are not this call's business."""
        try:
            vms = list(c.compute.virtual_machines.list(group_name(cluster), expand="instanceView"))
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return []
            raise classify(exc, place) or exc from None
        if any_region or not place.region:
            return vms
        return [vm for vm in vms if (vm.location or "").lower() == place.region.lower()]

    def _network_view(self, c, place, cluster) -> tuple[dict, dict, list]:
        """NIC id → (private ip, public ip) and the NICs themselves."""
        rg = group_name(cluster)
        try:
            pips = {p.id.lower(): p.ip_address for p in c.network.public_ip_addresses.list(rg)}
            nics = list(c.network.network_interfaces.list(rg))
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return {}, {}, []
            raise classify(exc, place) or exc from None
        out = {}
        for nic in nics:
            cfg = (nic.ip_configurations or [None])[0]
            if cfg is None:
                continue
            pub = cfg.public_ip_address.id.lower() if cfg.public_ip_address and cfg.public_ip_address.id else None
            out[nic.id.lower()] = (cfg.private_ip_address, pips.get(pub) if pub else None)
        return out, pips, nics

    def _info(self, vm, ips: dict) -> InstanceInfo:
        tags = dict(vm.tags or {})
        statuses = (vm.instance_view.statuses if vm.instance_view else None) or []
        codes = [s.code or "" for s in statuses]
        power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), None)
        state = _POWER.get(power or "", PENDING)
        if _s(vm.provisioning_state).lower() == "failed" and power not in ("running", "starting"):
            state = TERMINATED  # a create that failed (AllocationFailed); a running VM whose last operation failed
            # (an extension that timed out, an update) still runs and bills: ARM's two states are separate
        nic_ids = [n.id.lower() for n in ((vm.network_profile.network_interfaces or []) if vm.network_profile else [])]
        private, public = ips.get(nic_ids[0], (None, None)) if nic_ids else (None, None)
        rank = tags.get(TAG_RANK)
        last = next((s.time for s in statuses if (s.code or "").startswith("ProvisioningState/") and s.time), None)
        return InstanceInfo(
            instance_id=vm.vm_id or vm.name, state=state, public_ip=public, private_ip=private, ssh_user=SSH_USER,
            ssh_port=22, zone=None, spot=_s(vm.priority).lower() == "spot", tags=tags,
            state_reason="ProvisioningFailed" if state == TERMINATED else None,
            rank_hint=int(rank) if rank is not None and rank.isdigit() else None,
            since=last.timestamp() if last is not None and state == STOPPED else None)  # the deallocation's end

    def _infos(self, c, place, cluster) -> list[InstanceInfo]:
        vms = self._vms(c, place, cluster)
        ips = self._network_view(c, place, cluster)[0] if vms else {}
        infos = [self._info(vm, ips) for vm in vms]
        return sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))

    def _wait(self, pollers, place, deadline: float | None = None) -> None:
        """Wait for every poller; raise the first typed error (after all of them are done). A provisioning worker
        whose caller was interrupted (Ctrl-C) stops waiting at once: what the calls create is in the cluster's
        group, which the rollback deletes (a VM create can take minutes to finish). Past `deadline` (VM
        creates: BROKER_AZURE_WAIT) an operation still running is the place's failure (CapacityError: the
        provisioner deletes the group and fails over), not a wait for ever."""
        from ...errors import Interrupted
        from ...provision import cancelled

        first = None
        for p in pollers:
            while not p.done():
                if cancelled():
                    raise Interrupted("provisioning cancelled")
                if deadline is not None and time.time() > deadline:
                    raise CapacityError(f"VM creation in {place.region} did not finish in "
                                        f"{settings.get('azure_wait'):.0f}s", place, code="PROVISION_TIMEOUT",
                                        hint="BROKER_AZURE_WAIT sets how long to wait")
                try:
                    p.wait(0.2)
                except Exception:  # noqa: BLE001 - the operation failed: result() below types the error
                    break
            try:
                self._call(place, p.result)
            except ProvisionError as exc:
                first = first or exc
        if first is not None:
            raise first

    # -- protocol --------------------------------------------------------------------------------
    def refused_answer(self, exc: BaseException) -> bool:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
            return True  # no token (azure.identity): nothing was sent to ARM
        return isinstance(exc, HttpResponseError) and http_refusal(exc.status_code)

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        with CreateLedger(self.refused_answer).guard() as ledger:  # e.g. every call refused our credentials
            return self._run_instances(req, ledger)

    def _run_instances(self, req: ProvisionRequest, ledger: CreateLedger) -> list[str]:
        from azure.mgmt.resource.resources.models import ResourceGroup

        place = Place("azure", req.region, req.zone, req.instance_type)
        if not req.region:
            raise InvalidRequestError("Azure needs a region", place)
        image = self._image(req, place)  # a malformed image_id is the task's mistake: refused before anything is made
        c = self._clients(place)
        rg = group_name(req.cluster)
        existing = self._ensure_group_location(c, place, req)
        ledger.found(existing)
        with ledger.create():  # the group holds what follows (public IPs, VMs): once it may exist, so may they
            self._call(place, c.resource.resource_groups.create_or_update, rg, ResourceGroup(
                location=req.region, tags={TAG_CLUSTER: req.cluster, TAG_USER: _user(), TAG_HOME: home_tag()}))
        self._groups_cache = None
        failed = [vm for vm in existing if self._info(vm, {}).state == TERMINATED]  # a failed create: made again
        self._wait([self._call(place, c.compute.virtual_machines.begin_delete, rg, vm.name) for vm in failed], place)
        live = [vm for vm in existing if vm not in failed]
        stopped = [vm.name for vm in live if self._info(vm, {}).state in (STOPPED, STOPPING)]
        self._wait([self._call(place, c.compute.virtual_machines.begin_start, rg, n) for n in stopped], place)
        subnet_id, nsg_id = network.ensure(self, c, place, req)
        have = {int(vm.tags[TAG_RANK]) for vm in live if (vm.tags or {}).get(TAG_RANK, "").isdigit()}
        ranks = [r for r in range(req.num_nodes) if r not in have][:max(0, req.num_nodes - len(live))]
        if ranks:
            self._create_nodes(c, place, req, ranks, subnet_id, nsg_id, image)
        return [self._info(vm, {}).instance_id for vm in self._vms(c, place, req.cluster)]

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        place = Place("azure", req.region, req.zone, req.instance_type)
        return self._wait_running(self._clients(place), place, req.cluster, req.num_nodes)

    def _ensure_group_location(self, c, place, req) -> list:
        """The cluster's existing VMs. A group left in another region with no VMs (an earlier failed
        attempt whose rollback did not finish) is deleted; one with VMs is a different cluster."""
        rg = group_name(req.cluster)
        try:
            group = c.resource.resource_groups.get(rg)
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return []
            raise classify(exc, place) or exc from None
        vms = self._vms(c, place, req.cluster, any_region=True)
        if group.location.lower() == req.region.lower():
            return vms
        if vms:
            raise InvalidRequestError(f"cluster {req.cluster} already has VMs in Azure region {group.location}",
                                      place, hint=f"`broker down {req.cluster}` first, or launch it in {group.location}")
        self._delete_group(c, place, rg)
        return []

    def _image(self, req, place):
        from azure.mgmt.compute.models import ImageReference

        if req.image_id:
            img = str(req.image_id)
            if img.startswith("/"):  # a managed image or gallery image version resource id
                return ImageReference(id=img)
            parts = img.split(":")
            if len(parts) != 4:
                err = InvalidRequestError(f"resources.image_id: {img!r} is neither an Azure image "
                                          "publisher:offer:sku:version nor a resource id", place, code="InvalidImage",
                                          hint="e.g. image_id: Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:"
                                          "latest, or /subscriptions/.../images/NAME")
                err.exit_code = 2  # bad input (README: exit codes)
                raise err
            pub, offer, sku, ver = parts
        else:
            pub, offer, sku, ver = GPU_IMAGE if req.accelerator else UBUNTU
        return ImageReference(publisher=pub, offer=offer, sku=sku, version=ver)

    def _public_key(self, req) -> str:
        if req.public_key:
            return req.public_key.strip()
        from ...paths import broker_home
        from ...runtime.keys import ensure_user_key

        return ensure_user_key(broker_home())[1].strip()

    def _create_nodes(self, c, place, req, ranks, subnet_id, nsg_id, image) -> None:
        from azure.mgmt.compute import models as cm
        from azure.mgmt.network import models as nm

        rg = group_name(req.cluster)
        base = {TAG_CLUSTER: req.cluster, TAG_USER: _user(), TAG_HOME: home_tag()}
        key = self._public_key(req)
        ip_pollers = [self._call(place, c.network.public_ip_addresses.begin_create_or_update, rg,
                                 f"{_vm_name(req.cluster, r)}-ip", nm.PublicIPAddress(
                                     location=req.region, tags={**base, TAG_RANK: str(r)},
                                     sku=nm.PublicIPAddressSku(name="Standard"),
                                     public_ip_allocation_method="Static", public_ip_address_version="IPv4"))
                      for r in ranks]
        self._wait(ip_pollers, place)
        nic_pollers = []
        for r, ipp in zip(ranks, ip_pollers):
            nic = nm.NetworkInterface(
                location=req.region, tags={**base, TAG_RANK: str(r), TAG_SPOT: str(bool(req.use_spot)).lower()},
                network_security_group=nm.NetworkSecurityGroup(id=nsg_id),
                ip_configurations=[nm.NetworkInterfaceIPConfiguration(
                    name="ipconfig1", subnet=nm.Subnet(id=subnet_id), private_ip_allocation_method="Dynamic",
                    public_ip_address=nm.PublicIPAddress(id=ipp.result().id))])
            nic_pollers.append(self._call(place, c.network.network_interfaces.begin_create_or_update, rg,
                                          f"{_vm_name(req.cluster, r)}-nic", nic))
        self._wait(nic_pollers, place)
        vm_pollers = []
        for r, nicp in zip(ranks, nic_pollers):
            name = _vm_name(req.cluster, r)
            spot = {"priority": "Spot", "eviction_policy": "Delete",
                    "billing_profile": cm.BillingProfile(max_price=-1)} if req.use_spot else {}
            vm = cm.VirtualMachine(
                **spot, **_identity(cm, req), location=req.region, tags={**dict(req.labels), **base, TAG_RANK: str(r)},
                hardware_profile=cm.HardwareProfile(vm_size=req.instance_type),
                storage_profile=cm.StorageProfile(image_reference=image, os_disk=cm.OSDisk(
                    name=f"{name}-os", create_option="FromImage", disk_size_gb=int(req.disk_size),
                    delete_option="Delete", managed_disk=cm.ManagedDiskParameters(storage_account_type=OS_DISK_SKU))),
                os_profile=cm.OSProfile(computer_name=name, admin_username=SSH_USER, linux_configuration=cm.LinuxConfiguration(
                    disable_password_authentication=True, ssh=cm.SshConfiguration(public_keys=[cm.SshPublicKey(
                        path=f"/home/{SSH_USER}/.ssh/authorized_keys", key_data=key)]))),
                network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(
                    id=nicp.result().id, primary=True)]))
            vm_pollers.append(self._call(place, c.compute.virtual_machines.begin_create_or_update, rg, name, vm))
        self._wait(vm_pollers, place, deadline=time.time() + settings.get("azure_wait"))

    def _wait_running(self, c, place, cluster, n) -> list[InstanceInfo]:
        wait = settings.get("azure_wait")
        deadline = time.time() + wait
        while True:
            infos = [i for i in self._infos(c, place, cluster) if i.state != TERMINATED]
            if len(infos) >= n and all(i.state == RUNNING and (i.public_ip or i.private_ip) for i in infos):
                return infos
            if time.time() > deadline:
                raise CapacityError(f"VMs of {cluster} not running after {wait:.0f}s ({len(infos)} of {n} found)",
                                    place, code="BOOT_TIMEOUT", hint="BROKER_AZURE_WAIT sets how long to wait")
            time.sleep(max(clients.poll_interval(), 0.05))

    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        """Live VMs; with include_gone also nodes that are gone: a rank NIC with no VM is an evicted (spot)
        or deleted VM."""
        place = Place("azure", region)
        c = self._clients(place)
        infos = self._infos(c, place, cluster)
        if not include_gone:
            return [i for i in infos if i.state != TERMINATED]
        ips, _, nics = self._network_view(c, place, cluster)
        ranks = {i.rank_hint for i in infos}
        for nic in nics:
            tags = nic.tags or {}
            rank = tags.get(TAG_RANK, "")
            if rank.isdigit() and int(rank) not in ranks and not nic.virtual_machine:
                spot = tags.get(TAG_SPOT) == "true"
                infos.append(InstanceInfo(instance_id=_vm_name(cluster, int(rank)), state=TERMINATED,
                                          private_ip=ips.get(nic.id.lower(), (None, None))[0], ssh_user=SSH_USER,
                                          spot=spot, tags=dict(tags), state_reason="Evicted" if spot else "Deleted",
                                          rank_hint=int(rank)))
        return infos

    def _delete_group(self, c, place, rg: str) -> None:
        try:
            poller = c.resource.resource_groups.begin_delete(rg, force_deletion_types="Microsoft.Compute/virtualMachines")
            poller.result()
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return
            raise classify(exc, place) or exc from None
        finally:
            self._groups_cache = None

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        """Delete the cluster's resource group — unless it lives in another region (then it is that
        region's cluster: a failed launch elsewhere must not roll it back)."""
        place = Place("azure", region)
        c = self._clients(place)
        rg = group_name(cluster)
        try:
            group = c.resource.resource_groups.get(rg)
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return []
            raise classify(exc, place) or exc from None
        if region and (group.location or "").lower() != region.lower():
            return []
        from . import selfstop

        selfstop.forget(self, c, place, cluster, group)
        self._delete_group(c, place, rg)
        return []

    def stop(self, cluster: str, region: str | None) -> None:
        place = Place("azure", region)
        c = self._clients(place)
        rg = group_name(cluster)
        names = [vm.name for vm in self._vms(c, place, cluster)
                 if self._info(vm, {}).state in (RUNNING, PENDING)]
        self._wait([self._call(place, c.compute.virtual_machines.begin_deallocate, rg, n) for n in names], place)

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        place = Place("azure", region)
        c = self._clients(place)
        rg = group_name(cluster)
        vms = [vm for vm in self._vms(c, place, cluster) if self._info(vm, {}).state != TERMINATED]
        names = [vm.name for vm in vms if self._info(vm, {}).state in (STOPPED, STOPPING)]
        self._wait([self._call(place, c.compute.virtual_machines.begin_start, rg, n) for n in names], place)
        return self._wait_running(c, place, cluster, len(vms))

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        place = Place("azure", region)
        c = self._clients(place)
        rg = group_name(cluster)
        try:
            nsg = c.network.network_security_groups.get(rg, network.NSG)
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                raise InvalidRequestError(f"cluster {cluster} has no network security group on Azure", place) from None
            raise classify(exc, place) or exc from None
        network.add_rules(self, c, place, rg, nsg, tuple(ports))

    # -- autostop on the cluster itself (selfstop.py) ---------------------------------------------
    def prepare_self_stop(self, cluster: str, region: str | None, action: str) -> str:
        from . import selfstop

        return selfstop.prepare(self, cluster, region, action)

    def release_self_stop(self, cluster: str, region: str | None) -> None:
        from . import selfstop

        selfstop.release(self, cluster, region)

    def self_stop_command(self, cluster: str, node, head, action: str):
        from ..base import SelfStop
        from . import selfstop

        if action == "down" and node.rank != head.rank:
            return None  # the head deletes the whole group
        cmd = selfstop.node_command(clients.subscription() or "", group_name(cluster), _vm_name(cluster, node.rank),
                                    action, clients.endpoint(), os.environ.get("BROKER_AZURE_CA_BUNDLE"),
                                    settings.get("azure_imds"))
        follow = None if node.rank == head.rank else f"{head.private_ip or head.ip}:{head.ssh_port or 22}"
        return SelfStop(cmd, follow=follow)

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Every skybroker-tagged resource group in a region, and its VMs (a group with no VM still holds
        network resources: an orphan too). For `broker gc`."""
        place = Place("azure", region)
        c = self._clients(place)
        now = time.time()
        if self._groups_cache is None or now - self._groups_cache[0] > 10:  # gc asks once per region
            groups = self._call(place, lambda: list(c.resource.resource_groups.list(filter=f"tagName eq '{TAG_CLUSTER}'")))
            self._groups_cache = (now, groups)
        out: list[TaggedResource] = []
        for g in self._groups_cache[1]:
            if region and (g.location or "").lower() != region.lower():
                continue
            cluster = (g.tags or {}).get(TAG_CLUSTER)
            if not cluster:
                continue
            home = (g.tags or {}).get(TAG_HOME)
            out.append(TaggedResource(self.name, g.location, cluster, "resource-group", g.name, live=False, home=home))
            out += [TaggedResource(self.name, g.location, cluster, "instance", self._info(vm, {}).instance_id,
                                   home=home) for vm in self._vms(c, place, cluster)]
        return out


PROVIDER = AzureCloud
