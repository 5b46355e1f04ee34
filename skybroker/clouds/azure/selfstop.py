"""Autostop on an Azure cluster itself: a guest shutdown leaves an Azure VM allocated (and billed), so an idle
node has to ask ARM. It does so as the VM's own system-assigned managed identity, allowed only what the
autostop needs on the cluster's resource group (which holds nothing but the cluster):

  stop  role "skybroker autostop (deallocate)": read and deallocate VMs. Every node deallocates its own VM
        (workers follow the head, as on AWS).
  down  role "skybroker autostop (delete)": read VMs and delete the group and what is in it (VMs, disks,
        NICs, IPs, the NSG and vnet). The head deletes the whole group; workers need no watcher.

Neither role can create anything. Both are custom role definitions made once per subscription (their ids and
names carry the subscription, so re-arming finds them and another subscription of the tenant makes its own), assigned at the group's scope to each VM's
principal; switching stop ↔ down removes the other assignment, `autostop --cancel` removes both (the
identity stays: with no assignment it can do nothing). Making them needs the right to write role definitions
and assignments (Owner or User Access Administrator); without it the arm fails with Azure's
AuthorizationFailed and the watcher on the user's machine guards the cluster instead (autostop.apply).

On the node the command below runs Python's standard library only: a token for ARM from the instance
metadata service (`/metadata/identity/oauth2/token`, header `Metadata: true`), then one ARM call. No
credential is ever written to the node; the token lives in that process for one call.
"""
from __future__ import annotations

import shlex
import uuid

from ...errors import BrokerError, InvalidRequestError, Place, ProvisionError

ROLE_ACTIONS = {
    "stop": ["Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/deallocate/action"],
    "down": ["Microsoft.Compute/virtualMachines/read", "Microsoft.Resources/subscriptions/resourceGroups/read",
             "Microsoft.Resources/subscriptions/resourceGroups/delete", "Microsoft.Compute/virtualMachines/delete",
             "Microsoft.Compute/disks/delete", "Microsoft.Network/networkInterfaces/delete",
             "Microsoft.Network/publicIPAddresses/delete", "Microsoft.Network/networkSecurityGroups/delete",
             "Microsoft.Network/virtualNetworks/delete"],
}
ROLE_NAMES = {"stop": "skybroker autostop (deallocate)", "down": "skybroker autostop (delete)"}  # + " <subscription>":
# role names are unique per tenant (directory), and a tenant may hold several subscriptions
PUBLIC_ARM = "https://management.azure.com"
VM_API, GROUP_API = "2024-07-01", "2021-04-01"


def role_id(sub: str, action: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"skybroker:autostop:{sub}:{action}"))


def assignment_name(scope: str, principal: str, action: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"skybroker:autostop:{scope.lower()}:{principal}:{action}"))


def _principals(drv, c, place, cluster) -> list[str]:
    """Give every VM of the cluster a system-assigned identity (keeping any user-assigned ones) and return
    the identities' principal ids."""
    from azure.mgmt.compute import models as cm

    from .driver import group_name

    rg = group_name(cluster)
    out = []
    for vm in drv._vms(c, place, cluster):
        ident = vm.identity
        kind = str(getattr(getattr(ident, "type", None), "value", getattr(ident, "type", None)) or "")
        if ident is not None and "SystemAssigned" in kind and ident.principal_id:
            out.append(ident.principal_id)
            continue
        users = dict(getattr(ident, "user_assigned_identities", None) or {})
        new = cm.VirtualMachineIdentity(
            type="SystemAssigned, UserAssigned" if users else "SystemAssigned",
            user_assigned_identities={k: {} for k in users} or None)
        poller = drv._call(place, c.compute.virtual_machines.begin_update, rg, vm.name,
                           cm.VirtualMachineUpdate(identity=new))
        updated = drv._call(place, poller.result)
        pid = getattr(updated.identity, "principal_id", None) if updated.identity else None
        if not pid:
            raise InvalidRequestError(f"Azure gave VM {vm.name} no managed identity", place, code="NoPrincipal")
        out.append(pid)
    return out


def prepare(drv, cluster: str, region: str | None, action: str) -> str:
    """Cloud-side set-up for the nodes' own autostop; returns the action that will happen (spot VMs, which
    the broker never stops, are torn down)."""
    from .driver import group_name

    place = Place("azure", region)
    c = drv._clients(place)
    vms = drv._vms(c, place, cluster)
    if not vms:
        raise InvalidRequestError(f"cluster {cluster} has no VM on Azure", place)
    real = "down" if action == "down" or any(str(getattr(vm.priority, "value", vm.priority) or "").lower() == "spot"
                                             for vm in vms) else "stop"
    auth = _authorization(drv, c, place)
    sub = c.subscription
    scope = f"/subscriptions/{sub}/resourceGroups/{group_name(cluster)}"
    role = _ensure_role(drv, auth, place, sub, real)
    _sweep_orphans(drv, c, auth, place)
    _mark_group(drv, c, place, cluster)
    from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

    for pid in _principals(drv, c, place, cluster):
        _delete_assignment(drv, auth, place, scope, assignment_name(scope, pid, "down" if real == "stop" else "stop"))
        try:
            drv._call(place, auth.role_assignments.create, scope, assignment_name(scope, pid, real),
                      RoleAssignmentCreateParameters(role_definition_id=role, principal_id=pid,
                                                     principal_type="ServicePrincipal"))
        except ProvisionError as exc:  # the same assignment made under another name is fine
            if exc.code != "RoleAssignmentExists":
                raise
    return real


def release(drv, cluster: str, region: str | None) -> None:
    """`autostop --cancel`: take both roles away from every VM's identity (the nodes can do nothing then)."""
    from .driver import group_name

    place = Place("azure", region)
    c = drv._clients(place)
    scope = f"/subscriptions/{c.subscription}/resourceGroups/{group_name(cluster)}"
    pids = [vm.identity.principal_id for vm in drv._vms(c, place, cluster)
            if vm.identity is not None and vm.identity.principal_id]
    if not pids:
        return
    auth = _authorization(drv, c, place)
    for pid in pids:
        for action in ROLE_ACTIONS:
            _delete_assignment(drv, auth, place, scope, assignment_name(scope, pid, action))


TAG_ARMED = "skybroker-autostop-roles"


def _mark_group(drv, c, place, cluster) -> None:
    """Tag the group so that `down` knows to take the roles back before deleting it."""
    from .driver import group_name

    rg = group_name(cluster)
    group = drv._call(place, c.resource.resource_groups.get, rg)
    if (group.tags or {}).get(TAG_ARMED) != "true":
        from azure.mgmt.resource.resources.models import ResourceGroup

        drv._call(place, c.resource.resource_groups.create_or_update, rg,
                  ResourceGroup(location=group.location, tags={**(group.tags or {}), TAG_ARMED: "true"}))


def _sweep_orphans(drv, c, auth, place) -> None:
    """ARM keeps role assignments whose scope was deleted (a cluster that deleted its own group leaves its
    identity's assignment behind, pointing at nothing). Ours are recognised by their role; each arm removes
    those whose group is gone."""
    ours = {role_id(c.subscription, a).lower() for a in ROLE_ACTIONS}
    stale = []
    for a in drv._call(place, lambda: list(auth.role_assignments.list_for_subscription())):
        if (a.role_definition_id or "").rsplit("/", 1)[-1].lower() not in ours:
            continue
        parts = (a.scope or "").split("/")
        if len(parts) == 5 and parts[3].lower() == "resourcegroups" and \
                not drv._call(place, c.resource.resource_groups.check_existence, parts[4]):
            stale.append(a)
    for a in stale:
        _delete_assignment(drv, auth, place, a.scope, a.name)


def forget(drv, c, place, cluster, group) -> None:
    """Before `down` deletes an armed group: its identities' assignments go first (ARM would keep them)."""
    if (group.tags or {}).get(TAG_ARMED) != "true":
        return
    try:
        release(drv, cluster, place.region)
    except BrokerError:  # never blocks a down: what is left is swept by the next arm (_sweep_orphans)
        pass


def _authorization(drv, c, place):
    from . import client as clients

    try:
        return clients.authorization(c.subscription)
    except ImportError:
        raise InvalidRequestError("the Azure authorization SDK is missing (autostop on the cluster needs it)", place,
                                  code="NoAuthorizationSDK", hint="pip install 'skybroker[azure]'") from None


def _ensure_role(drv, auth, place, sub: str, action: str) -> str:
    from azure.mgmt.authorization.models import Permission, RoleDefinition

    sub_scope = f"/subscriptions/{sub}"
    rid = role_id(sub, action)
    body = RoleDefinition(role_name=f"{ROLE_NAMES[action]} {sub}", role_type="CustomRole",
                          description="lets a skybroker node stop or delete its own cluster once idle "
                                      "(assigned at the cluster's resource group only)",
                          permissions=[Permission(actions=ROLE_ACTIONS[action], not_actions=[])],
                          assignable_scopes=[sub_scope])
    made = drv._call(place, auth.role_definitions.create_or_update, sub_scope, rid, body)
    return made.id or f"{sub_scope}/providers/Microsoft.Authorization/roleDefinitions/{rid}"


def _delete_assignment(drv, auth, place, scope: str, name: str) -> None:
    try:  # ARM answers 204 for an assignment that is not there; older API versions a 404
        drv._call(place, auth.role_assignments.delete, scope, name)
    except ProvisionError as exc:
        if exc.code not in ("RoleAssignmentNotFound", "HTTP404"):
            raise


# -- on the node ----------------------------------------------------------------------------------
_NODE_SCRIPT = r"""
import json, ssl, sys, urllib.parse as p, urllib.request as u
imds, arm, audience, ca, sub, rg, vm, action = sys.argv[1:9]
def call(method, url, headers, data=None):
    ctx = None
    if url.startswith("https"):
        ctx = ssl.create_default_context()  # the system's CAs, plus a custom endpoint's own
        if ca:
            ctx.load_verify_locations(cadata=ca)
    with u.urlopen(u.Request(url, data=data, method=method, headers=headers), context=ctx, timeout=30) as r:
        return r.status, r.read()
try:
    _, body = call("GET", imds + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
                   + p.quote(audience, safe=""), {"Metadata": "true"})
    token = json.loads(body)["access_token"]
    auth = {"Authorization": "Bearer " + token}
    group = arm + "/subscriptions/" + sub + "/resourceGroups/" + rg
    if action == "down":
        st, _ = call("DELETE", group + "?api-version=GROUP_API&forceDeletionTypes=Microsoft.Compute/virtualMachines", auth)
    else:
        st, _ = call("POST", group + "/providers/Microsoft.Compute/virtualMachines/" + vm
                     + "/deallocate?api-version=VM_API", auth, data=b"")
    print("azure %s accepted (HTTP %d)" % (action, st))
except Exception as e:
    msg = e.read()[:300].decode(errors="replace") if hasattr(e, "read") else ""
    sys.exit("azure %s failed: %s %s" % (action, e, msg))
""".replace("GROUP_API", GROUP_API).replace("VM_API", VM_API)


def node_command(sub: str, rg: str, vm: str, action: str, endpoint: str | None, ca: str | None, imds: str) -> str:
    """The shell command one node runs once idle; nothing secret is in it. A custom ARM endpoint (Azure
    Stack's, a sovereign cloud's) is used by the nodes too, with the CA bundle configured for it (its
    certificates travel in the command: the node has no copy of the file); the public endpoint is verified
    with the node's own CAs only (a bundle set for a proxy on this machine is not the nodes' business)."""
    arm = (endpoint or PUBLIC_ARM).rstrip("/")
    if ca and arm != PUBLIC_ARM:
        from pathlib import Path

        try:
            ca = Path(ca).read_text()
        except OSError as exc:
            raise InvalidRequestError(f"cannot read the Azure CA bundle {ca}: {exc.strerror or exc}",
                                      Place("azure"), hint="check BROKER_AZURE_CA_BUNDLE") from None
        if len(ca) > 100_000:  # one argument of the command: Linux caps it at 128 KiB
            raise InvalidRequestError("the Azure CA bundle is too large to hand to the nodes",
                                      Place("azure"), hint="point BROKER_AZURE_CA_BUNDLE at the endpoint's CA alone")
    else:
        ca = ""
    audience = PUBLIC_ARM + "/" if arm == PUBLIC_ARM else arm + "/"
    argv = ["python3", "-c", _NODE_SCRIPT, imds.rstrip("/"), arm, audience, ca or "", sub, rg, vm, action]
    return " ".join(shlex.quote(a) for a in argv)
