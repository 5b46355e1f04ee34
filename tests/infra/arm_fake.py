"""A small local fake of Azure Resource Manager (ARM) for the real azure-mgmt-* SDKs, over HTTPS.

Shapes follow what the SDKs (azure-mgmt-resource 26, -compute 39, -network 33) send and expect:
  resource groups   PUT/GET/HEAD/DELETE /subscriptions/S/resourcegroups/RG   (DELETE: 202 + Location)
                    GET /subscriptions/S/resourcegroups?$filter=tagName eq 'K' [and tagValue eq 'V']
                    GET /subscriptions/S/resourceGroups/RG/resources
  resources         PUT/GET/DELETE .../resourceGroups/RG/providers/NS/TYPE/NAME[/CHILDTYPE/CHILDNAME]
                    (PUT: 201/200 + Azure-AsyncOperation; DELETE: 202 + Location + Azure-AsyncOperation,
                    204 when absent), GET .../providers/NS/TYPE (list, `$expand=instanceView` for VMs)
  VM actions        POST .../virtualMachines/VM/{start,deallocate,powerOff} (202 LROs),
                    GET .../virtualMachines/VM/instanceView, GET VM?$expand=instanceView
  operations        GET /subscriptions/S/providers/NS/locations/L/operations/ID  ({"status": ...})
                    GET /subscriptions/S/operationresults/ID                      (202 until done, then 200)
Every request must carry `api-version` and `Authorization: Bearer ...`. An LRO finishes after
`lro_polls` status polls; its side effects (provisioningState, power state, deletion) apply then.
Errors are ARM's: {"error": {"code", "message"}} with ARM's status codes.

Faults: capacity(region, code) — SkuNotAvailable is a synchronous 409 on the VM PUT, AllocationFailed
(and the other allocation codes) a failed LRO that leaves a Failed VM behind; quota(region) — 409
OperationNotAllowed on the VM PUT; auth(code) — 401 AuthenticationFailed / 403 AuthorizationFailed on
every call; stuck(region) — VM creates there stay InProgress for ever; evict(vm) — a Spot VM with eviction policy Delete disappears (its NIC and IP stay). 
The instance view's ProvisioningState status carries `time`, when the VM's last operation (create, start,
deallocate, power off) finished, as ARM's does.
fail_provisioning(vm) — the VM's provisioningState becomes Failed and its power state stays (ARM's provisioning
state is the last control-plane operation's, separate from the power state: a running VM whose extension timed
out is Failed and running).
throttle(n, retry_after) — the next n requests are ARM's throttling answer: 429 with a Retry-After header (ARM's
documented answer when a subscription's read/write or a resource provider's rate limit is reached; Compute's own
throttling answers 429 too, with code OperationNotAllowed and a Retry-After that may be many minutes).
start_capacity(vm) — the start of that deallocated VM fails to allocate, as ARM's start LRO does when there is no
capacity for the size (a failed LRO with AllocationFailed; the VM stays deallocated, other VMs' starts succeed).

Managed identities on a VM PUT, as ARM takes them: `identity: {type: SystemAssigned}` is stored and read
back with a `principalId` and `tenantId` (fresh GUIDs, kept across updates of the VM); `UserAssigned`
(or "SystemAssigned, UserAssigned") with `userAssignedIdentities: {<resource id>: {}}` is stored and read
back with a `principalId`/`clientId` per identity. A key that is not a well-formed
/subscriptions/S/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME is
ARM's synchronous 400 LinkedInvalidPropertyId naming the path `identity.userAssignedIdentities`; an
unknown `type`, UserAssigned without identities, or identities with a type that has no UserAssigned, a
400 InvalidParameter. Not reproduced: ARM also refuses (400) a well-formed id whose identity does not
exist or that the caller may not assign; the fake accepts any well-formed id.

Optional `nodes` (tests.infra.netns.NodePool): each running VM is backed by a real sshd node that accepts
the VM's SSH key; the node's IP becomes the VM's public and private IP; deallocate/evict kill it; a VM
started again is a new node with the VM's host key (a real VM keeps it on its disk). With
`host` = the node network's gateway the nodes reach the fake too (the certificate names that address).

Managed identities at work (tests/infra/arm_rbac.py): PATCH of a VM's `identity` (as
`virtual_machines.begin_update` sends it), role definitions and assignments, and requests made with a VM
identity's token (`token_for(ip)`, what the metadata fake hands the VM's node) authorized by the roles
assigned to it. A long-running operation started by a managed identity completes by itself (nobody polls
it: the node that asked may be gone), as ARM's do.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.infra.arm_rbac import MI_PREFIX, Rbac, action_for
from tests.infra.tls_server import TLSThreadingHTTPServer

SUBSCRIPTION = "00000000-0000-0000-0000-00000000feed"
TENANT = "00000000-0000-0000-0000-0000000be11a"
_UAI_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/"
                     r"userAssignedIdentities/[^/]+", re.IGNORECASE)
ALLOCATION_CODES = ("AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest")


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def make_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and `host` (also its own CA): (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "arm-fake")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(h))
                                                        for h in dict.fromkeys(("127.0.0.1", host))]
                                                       + [x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ArmFake:
    def __init__(self, subscription: str = SUBSCRIPTION, lro_polls: int = 1, nodes=None, host: str = "127.0.0.1"):
        self.subscription = subscription
        self.lro_polls = lro_polls
        self.nodes = nodes
        self.lock = threading.RLock()
        self.groups: dict[str, dict] = {}  # lower(rg) → resource group JSON
        self.resources: dict[str, dict] = {}  # lower(id) → resource JSON (children live in parents)
        self.power: dict[str, str] = {}  # lower(vm id) → running / deallocated / stopped / ...
        self.op_time: dict[str, str] = {}  # lower(vm id) → ISO time its last operation finished (instance view)
        self.node_of: dict[str, object] = {}  # lower(vm id) → netns Node
        self.host_keys: dict[str, bytes] = {}  # lower(vm id) → its node's private host key (its "disk")
        self.ops: dict[str, dict] = {}
        self.log: list[tuple[str, str, dict, object]] = []  # (method, path, query, json body)
        self.faults: dict = {"capacity": {}, "quota": {}, "auth": None, "start": {}, "throttle": None, "stuck": set()}
        self._ip_seq = 0
        self.rbac = Rbac(subscription, ArmError)
        self.rbac.known_principals = self._principals
        self.callers: list[tuple[str, str, str]] = []  # (principal id, method, path) of managed-identity calls
        self._dir = Path(tempfile.mkdtemp(prefix="arm-fake-"))
        self.ca_path, key = make_cert(self._dir, host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_path, key)
        self._server = TLSThreadingHTTPServer((host, 0), _handler(self), ctx)
        self.endpoint = f"https://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="arm-fake")
        self._thread.start()

    def env(self) -> dict[str, str]:
        """The environment that points skybroker's Azure client factory at this fake."""
        return {"BROKER_AZURE_ENDPOINT": self.endpoint, "BROKER_AZURE_FAKE_TOKEN": "1",
                "BROKER_AZURE_CA_BUNDLE": str(self.ca_path), "BROKER_AZURE_POLL": "0", "BROKER_AZURE_RETRIES": "0",
                "AZURE_SUBSCRIPTION_ID": self.subscription}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for node in list(self.node_of.values()):
            self._kill_node(node)

    # -- fault injection -------------------------------------------------------------------------
    def capacity(self, region: str, code: str = "SkuNotAvailable") -> None:
        self.faults["capacity"][region.lower()] = code  # or AllocationFailed, ZonalAllocationFailed, ...

    def quota(self, region: str, code: str = "OperationNotAllowed") -> None:
        self.faults["quota"][region.lower()] = code  # or QuotaExceeded

    def start_capacity(self, vm_name: str, code: str = "AllocationFailed") -> None:
        """Starting this (deallocated) VM fails to allocate: its start LRO fails, the VM stays deallocated."""
        self.faults["start"][vm_name.lower()] = code

    def throttle(self, count: int, retry_after: int = 1, method: str | None = None, contains: str = "",
                 code: str = "TooManyRequests") -> None:
        """The next `count` requests (of `method`, whose path contains `contains`) are refused as ARM throttles:
        429 with a Retry-After header (seconds) and {"error": {"code": code}}; nothing is done."""
        self.faults["throttle"] = {"count": count, "retry_after": retry_after, "method": method,
                                   "contains": contains.lower(), "code": code}

    def auth(self, code: str | None = "AuthenticationFailed") -> None:
        self.faults["auth"] = code  # or AuthorizationFailed (403), InvalidAuthenticationToken

    def stuck(self, region: str) -> None:
        """VM creates in this region never finish: the operation stays InProgress and the VM Creating, as an
        ARM create that hangs on the platform's side does (ARM itself gives up only after tens of minutes)."""
        self.faults["stuck"].add(region.lower())

    def clear_faults(self) -> None:
        self.faults = {"capacity": {}, "quota": {}, "auth": None, "start": {}, "throttle": None, "stuck": set()}
        self.rbac.deny_rbac = False
        self.rbac.assignments_allowed = None

    def fail_provisioning(self, vm_name: str) -> None:
        """The VM's last control-plane operation failed (an extension that timed out, a failed update): its
        provisioningState is Failed while its power state stays what it was, so a running VM keeps running
        (and billing), as ARM's do: the two states are separate."""
        with self.lock:
            vm = next(r for r in self.resources.values() if r["name"] == vm_name and r["type"].endswith("virtualMachines"))
            vm["properties"]["provisioningState"] = "Failed"

    def evict(self, vm_name: str) -> None:
        """Spot eviction with policy Delete: the VM (and its OS disk) are gone; NIC and IP stay."""
        with self.lock:
            vm = next(r for r in self.resources.values() if r["name"] == vm_name and r["type"].endswith("virtualMachines"))
            self._delete_resource(vm["id"].lower())

    # -- views for tests ---------------------------------------------------------------------------
    def find(self, type_suffix: str, group: str | None = None) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(r)) for r in self.resources.values() if r["type"].lower().endswith(type_suffix.lower())
                    and (group is None or f"/resourcegroups/{group.lower()}/" in r["id"].lower())]

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, dict, object]]:
        return [e for e in list(self.log) if (method is None or e[0] == method) and contains.lower() in e[1].lower()]

    # -- managed identities ----------------------------------------------------------------------------
    def _principals(self) -> set[str]:
        with self.lock:
            return {r["identity"]["principalId"] for r in self.resources.values()
                    if (r.get("identity") or {}).get("principalId")}

    def token_for(self, ip: str) -> str | None:
        """The token the instance metadata service gives the VM whose node has this address (None: that VM
        has no system-assigned identity)."""
        with self.lock:
            for key, node in self.node_of.items():
                if node.ip == ip:
                    pid = (self.resources.get(key, {}).get("identity") or {}).get("principalId")
                    return MI_PREFIX + pid if pid else None
        return None

    def _authorize(self, principal: str, method: str, parts: list[str]) -> None:
        low = [p.lower() for p in parts]
        if "operationresults" in low or "operations" in low[-2:-1]:
            return  # polling an operation: the caller's own
        action, rid = action_for(method, parts)
        self.rbac.authorize(principal, action, rid)
        if method == "DELETE" and len(parts) == 4:  # a group: ARM checks delete on what is in it too
            for res in self._in_group(low[3]):
                self.rbac.authorize(principal, f"{res['type']}/delete", res["id"])

    # -- request dispatch --------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body, headers) -> tuple[int, dict, object]:
        self.log.append((method, path, query, body))
        if not headers.get("Authorization", "").startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        token = headers["Authorization"][len("Bearer "):]
        principal = token[len(MI_PREFIX):] if token.startswith(MI_PREFIX) else None
        if principal is not None and principal not in self._principals():
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        th = self.faults["throttle"]
        if th and th["count"] > 0 and th["method"] in (None, method) and th["contains"] in path.lower():
            th["count"] -= 1
            raise ArmError(429, th["code"], "The request is being throttled as the limit has been reached for this "
                           "subscription. Please try again later.", headers={"Retry-After": str(th["retry_after"])})
        if self.faults["auth"]:
            code = self.faults["auth"]
            raise ArmError(403 if code == "AuthorizationFailed" else 401, code,
                           f"The client does not have authorization to perform action ({code}).")
        if "api-version" not in query:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        parts = [p for p in path.split("/") if p]
        low = [p.lower() for p in parts]
        if len(parts) < 2 or low[0] != "subscriptions":
            raise ArmError(404, "InvalidResourceType", f"no route for {path}")
        if parts[1] != self.subscription:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{parts[1]}' could not be found.")
        with self.lock:
            if principal is not None:
                self.callers.append((principal, method, path))
                self._authorize(principal, method, parts)
            self._caller = principal
            if "microsoft.authorization" in low:
                return self.rbac.handle(method, parts, body, principal,
                                        lambda scope: len(scope.split("/")) == 3 or scope.split("/")[-1].lower() in self.groups)
            rest, lrest = parts[2:], low[2:]
            if lrest[:1] == ["operationresults"] and len(rest) == 2:
                return self._op_result(rest[1])
            if lrest[:1] == ["providers"] and len(rest) == 6 and lrest[4] == "operations":
                return self._op_status(rest[5])
            if lrest == ["resourcegroups"] and method == "GET":
                return 200, {}, {"value": [g for g in self.groups.values() if _tag_filter(query.get("$filter"), g)]}
            if lrest[:1] != ["resourcegroups"] or len(rest) < 2:
                raise ArmError(404, "InvalidResourceType", f"no route for {path}")
            rg = lrest[1]
            if len(rest) == 2:
                return self._group(method, rest[1], body)
            group = self.groups.get(rg)
            if group is None:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rest[1]}' could not be found.")
            if lrest[2:] == ["resources"]:
                return 200, {}, {"value": [{k: r[k] for k in ("id", "name", "type", "location", "tags") if k in r}
                                           for r in self._in_group(rg)]}
            if lrest[2] != "providers" or len(rest) < 5:
                raise ArmError(404, "InvalidResourceType", f"no route for {path}")
            rtype = f"{rest[3]}/{rest[4]}"
            if len(rest) == 5:
                return 200, {}, {"value": [self._view(r, query) for r in self._in_group(rg) if r["type"].lower() == rtype.lower()]}
            rid = "/" + "/".join(parts[:8])
            if len(rest) == 7 and method == "POST":
                return self._vm_action(rid, lrest[6])
            if len(rest) == 7 and lrest[6] == "instanceview" and method == "GET":
                return 200, {}, self._instance_view(self._get(rid))
            if len(rest) == 8:
                return self._child(method, rid, rest[6], rest[7], body)
            if len(rest) != 6:
                raise ArmError(404, "InvalidResourceType", f"no route for {path}")
            if method == "GET":
                return 200, {}, self._view(self._get(rid), query)
            if method == "PATCH" and rtype.lower() == "microsoft.compute/virtualmachines":
                return self._patch_vm(rid, body)
            if method == "PUT":
                if group["properties"]["provisioningState"] == "Deleting":
                    raise ArmError(409, "ResourceGroupBeingDeleted", f"The resource group '{rest[1]}' is being deleted.")
                return self._put(rid, rtype, rest[5], body)
            if method == "DELETE":
                if rid.lower() not in self.resources:
                    return 204, {}, None
                return self._lro(202, None, group["location"], lambda: self._delete_resource(rid.lower()), location=True)
            raise ArmError(405, "MethodNotAllowed", f"{method} {path}")

    # -- resource groups ---------------------------------------------------------------------------
    def _group(self, method, name, body):
        key = name.lower()
        g = self.groups.get(key)
        if method in ("GET", "HEAD", "DELETE") and g is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
        if method in ("GET", "HEAD"):
            return (204 if method == "HEAD" else 200), {}, (None if method == "HEAD" else g)
        if method == "PUT":
            if not body or not body.get("location"):
                raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
            if g is not None and g["properties"]["provisioningState"] == "Deleting":
                raise ArmError(409, "ResourceGroupBeingDeleted", f"The resource group '{name}' is being deleted.")
            if g is not None and g["location"] != body["location"].lower():
                raise ArmError(409, "InvalidResourceGroupLocation",
                               f"Invalid resource group location '{body['location']}'. The Resource group already "
                               f"exists in location '{g['location']}'.")
            created = g is None
            g = {"id": f"/subscriptions/{self.subscription}/resourceGroups/{name}", "name": name,
                 "type": "Microsoft.Resources/resourceGroups", "location": body["location"].lower(),
                 "tags": body.get("tags") or {}, "properties": {"provisioningState": "Succeeded"}}
            self.groups[key] = g
            return (201 if created else 200), {}, g
        if method == "DELETE":
            g["properties"]["provisioningState"] = "Deleting"

            def done():
                for rid in [k for k in self.resources if f"/resourcegroups/{key}/" in k]:
                    self._delete_resource(rid)
                self.groups.pop(key, None)

            return self._lro(202, None, g["location"], done, location=True, async_header=False)
        raise ArmError(405, "MethodNotAllowed", method)

    def _in_group(self, rg: str) -> list[dict]:
        return [r for r in self.resources.values() if f"/resourcegroups/{rg}/" in r["id"].lower()]

    # -- long-running operations -------------------------------------------------------------------
    def _lro(self, status, body, region, effect, *, error=None, location=False, async_header=True, stuck=False):
        op = uuid.uuid4().hex
        self.ops[op] = {"polls": 0, "effect": effect, "error": error, "done": False, "stuck": stuck}
        if getattr(self, "_caller", None) is not None:  # a managed identity's (a node's): nobody will poll it
            threading.Timer(0.2, self._finish, args=(op,)).start()
        headers, base = {}, self.endpoint
        if async_header:
            headers["Azure-AsyncOperation"] = (f"{base}/subscriptions/{self.subscription}/providers/Microsoft.Fake/"
                                               f"locations/{region}/operations/{op}?api-version=2024-01-01")
        if location:
            headers["Location"] = f"{base}/subscriptions/{self.subscription}/operationresults/{op}?api-version=2024-01-01"
        return status, headers, body

    def _advance(self, op_id: str) -> dict:
        op = self.ops.get(op_id)
        if op is None:
            raise ArmError(404, "OperationNotFound", f"operation {op_id} not found")
        op["polls"] += 1
        if not op["done"] and op["polls"] >= self.lro_polls and not op.get("stuck"):
            op["done"] = True
            (op["effect"] or (lambda: None))()
        return op

    def _finish(self, op_id: str) -> None:
        with self.lock:
            op = self.ops[op_id]
            if not op["done"]:
                op["done"] = True
                (op["effect"] or (lambda: None))()

    def _op_status(self, op_id):
        op = self._advance(op_id)
        status = "InProgress" if not op["done"] else "Failed" if op["error"] else "Succeeded"
        doc = {"name": op_id, "startTime": _now(), "status": status}
        return 200, {}, {**doc, "error": op["error"]} if status == "Failed" else doc

    def _op_result(self, op_id):
        op = self._advance(op_id)
        if not op["done"]:
            return 202, {"Location": f"{self.endpoint}/subscriptions/{self.subscription}/operationresults/{op_id}?api-version=2024-01-01"}, None
        return (400, {}, {"error": op["error"]}) if op["error"] else (200, {}, None)

    # -- resources ---------------------------------------------------------------------------------
    def _get(self, rid: str) -> dict:
        if rid.lower() not in self.resources:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{rid.split('/providers/')[-1]}' was not found.")
        return self.resources[rid.lower()]

    def _ref(self, ref: dict | None, what: str) -> dict | None:
        if ref and ref.get("id", "").lower() not in self.resources:
            raise ArmError(400, "InvalidResourceReference", f"Resource {ref.get('id')} referenced by {what} was not found.")
        return self.resources[ref["id"].lower()] if ref else None

    def _put(self, rid, rtype, name, body):
        if not isinstance(body, dict) or not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        region = body["location"].lower()
        props = dict(body.get("properties") or {})
        existing = self.resources.get(rid.lower())
        res = {"id": rid, "name": name, "type": rtype, "location": region, "tags": body.get("tags") or {}}
        res.update({k: body[k] for k in ("sku", "zones") if k in body})
        kind = rtype.split("/")[-1].lower()
        error = None
        if kind == "virtualmachines":
            if body.get("identity") is not None:
                res["identity"] = _vm_identity(body["identity"], (existing or {}).get("identity"))
            error = self._check_vm(region, props)
            props.setdefault("vmId", (existing or {}).get("properties", {}).get("vmId") or str(uuid.uuid4()))
        elif kind == "virtualnetworks":
            props["subnets"] = [self._child_doc(rid, "subnets", s) for s in props.get("subnets", [])]
        elif kind == "networksecuritygroups":
            props["securityRules"] = [self._child_doc(rid, "securityRules", s) for s in props.get("securityRules", [])]
            props["defaultSecurityRules"] = _default_rules(rid)
        elif kind == "publicipaddresses":
            props["ipAddress"] = (existing or {}).get("properties", {}).get("ipAddress") or self._next_public_ip()
            props.setdefault("publicIPAllocationMethod", "Static")
        elif kind == "networkinterfaces":
            for i, cfg in enumerate(props.get("ipConfigurations", [])):
                cp = cfg.setdefault("properties", {})
                subnet = self._subnet(cp.get("subnet"))
                pip = self._ref(cp.get("publicIPAddress"), f"NIC {name}")
                old = ((existing or {}).get("properties", {}).get("ipConfigurations") or [{}] * (i + 1))[i]
                cp["privateIPAddress"] = old.get("properties", {}).get("privateIPAddress") or self._next_private_ip(subnet)
                cfg.setdefault("id", f"{rid}/ipConfigurations/{cfg.get('name', f'ipconfig{i}')}")
                if pip is not None:
                    pip["properties"]["ipConfiguration"] = {"id": cfg["id"]}
            self._ref(props.get("networkSecurityGroup"), f"NIC {name}")
            if existing and existing["properties"].get("virtualMachine"):
                props["virtualMachine"] = existing["properties"]["virtualMachine"]
        props["provisioningState"] = "Updating" if existing else "Creating"
        res["properties"] = props
        self.resources[rid.lower()] = res
        if kind == "virtualmachines":
            if not existing:
                self.power[rid.lower()] = "starting"
            for nic in props.get("networkProfile", {}).get("networkInterfaces", []):
                self._get(nic["id"])["properties"]["virtualMachine"] = {"id": rid}

        def effect():
            if rid.lower() not in self.resources:
                return
            res["properties"]["provisioningState"] = "Failed" if error else "Succeeded"
            self.op_time[rid.lower()] = _now()
            if kind == "virtualmachines":
                self.power[rid.lower()] = "stopped" if error else "running"
                if not error:
                    self._boot_node(res)

        stuck = kind == "virtualmachines" and not existing and region.lower() in self.faults["stuck"]
        return self._lro(200 if existing else 201, res, region, effect, error=error, stuck=stuck)

    def _check_vm(self, region: str, props: dict) -> dict | None:
        """Validate a VM body like ARM does; faults for the region. Returns an LRO error (or raises)."""
        hw = (props.get("hardwareProfile") or {}).get("vmSize")
        image = (props.get("storageProfile") or {}).get("imageReference")
        os_profile = props.get("osProfile") or {}
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not hw or not image or not os_profile.get("adminUsername") or not nics:
            raise ArmError(400, "InvalidParameter", "Required parameter 'hardwareProfile.vmSize', "
                           "'storageProfile.imageReference', 'osProfile.adminUsername' or "
                           "'networkProfile.networkInterfaces' is missing (null).")
        for nic in nics:
            self._ref(nic, "the virtual machine")
        code = self.faults["quota"].get(region)
        if code:
            raise ArmError(409, code, f"Operation could not be completed as it results in exceeding approved "
                                      f"standard{hw}Family Cores quota. Location: {region}.")
        code = self.faults["capacity"].get(region)
        if code == "SkuNotAvailable":
            raise ArmError(409, code, f"The requested VM size for resource '{hw}' is currently not available in "
                                      f"location '{region}'. Please try another size or deploy to a different location.")
        if code:
            return {"code": code, "message": f"Allocation failed. We do not have sufficient capacity for the "
                                             f"requested VM size in this region ({code})."}
        return None

    def _child_doc(self, parent: str, ctype: str, doc: dict) -> dict:
        doc = dict(doc)
        doc["id"] = f"{parent}/{ctype}/{doc.get('name')}"
        doc.setdefault("properties", {})["provisioningState"] = "Succeeded"
        doc["type"] = f"{parent.split('/')[6]}/{parent.split('/')[7]}/{ctype}"
        return doc

    def _child(self, method, parent_id, ctype, cname, body):
        parent = self._get(parent_id)
        items = parent["properties"].setdefault(ctype[0].lower() + ctype[1:], [])
        cur = next((c for c in items if c["name"].lower() == cname.lower()), None)
        if method == "GET":
            if cur is None:
                raise ArmError(404, "NotFound", f"Resource {parent_id}/{ctype}/{cname} not found.")
            return 200, {}, cur
        if method == "PUT":
            doc = self._child_doc(parent_id, ctype, {**(body or {}), "name": cname})
            items[:] = [c for c in items if c is not cur] + [doc]
            return self._lro(200 if cur else 201, doc, parent["location"], None)
        if method == "DELETE":
            if cur is None:
                return 204, {}, None
            items.remove(cur)
            return self._lro(202, None, parent["location"], None, location=True)
        raise ArmError(405, "MethodNotAllowed", method)

    def _subnet(self, ref):
        sid = (ref or {}).get("id", "")
        vnet = self.resources.get(sid.lower().split("/subnets/")[0])
        sub = next((s for s in (vnet or {}).get("properties", {}).get("subnets", []) if s["id"].lower() == sid.lower()), None)
        if sub is None:
            raise ArmError(400, "InvalidResourceReference", f"Subnet {sid} was not found.")
        return sub

    def _next_private_ip(self, subnet) -> str:
        net = ipaddress.ip_network(subnet["properties"].get("addressPrefix", "10.0.0.0/24"), strict=False)
        used = {c.get("properties", {}).get("privateIPAddress") for r in self.resources.values()
                for c in r.get("properties", {}).get("ipConfigurations", [])}
        return next(str(h) for h in list(net.hosts())[3:] if str(h) not in used)  # Azure reserves .1-.3

    def _next_public_ip(self) -> str:
        self._ip_seq += 1
        # loopback: nothing listens there, so a product that tries to reach a fake VM never leaves the machine
        return f"127.20.{self._ip_seq // 256 % 256}.{self._ip_seq % 256 or 1}"

    def _delete_resource(self, key: str) -> None:
        res = self.resources.pop(key, None)
        if res is None:
            return
        if res["type"].lower().endswith("virtualmachines"):
            self.power.pop(key, None)
            self._kill_node(self.node_of.pop(key, None))
            for nic in res["properties"].get("networkProfile", {}).get("networkInterfaces", []):
                n = self.resources.get(nic["id"].lower())
                if n:
                    n["properties"].pop("virtualMachine", None)

    # -- virtual machines --------------------------------------------------------------------------
    def _patch_vm(self, rid, body):
        """PATCH of a VM (VirtualMachineUpdate): its identity and tags; the rest of the body is not modelled."""
        vm = self._get(rid)
        body = body if isinstance(body, dict) else {}
        if "identity" in body:
            vm["identity"] = _vm_identity(body["identity"], vm.get("identity"))
        if "tags" in body:
            vm["tags"] = body["tags"] or {}
        return self._lro(200, vm, vm["location"], None)

    def _vm_action(self, rid, action):
        vm = self._get(rid)
        key = rid.lower()
        moves = {"start": ("starting", "running"), "deallocate": ("deallocating", "deallocated"),
                 "poweroff": ("stopping", "stopped")}
        if action not in moves:
            raise ArmError(400, "InvalidRequestContent", f"unsupported action {action}")
        during, after = moves[action]
        before = self.power.get(key)
        error = None
        code = self.faults["start"].get(vm["name"].lower()) if action == "start" else None
        if code:  # ARM: a deallocated VM's start can fail to allocate
            error = {"code": code, "message": f"Allocation failed. We do not have sufficient capacity for the "
                                              f"requested VM size in this region ({code})."}
        self.power[key] = during

        def effect():
            self.op_time[key] = _now()
            if error is not None:
                self.power[key] = before
            elif key in self.power:
                self.power[key] = after
                if after == "running":
                    self._boot_node(vm)
                elif after == "deallocated":
                    self._kill_node(self.node_of.pop(key, None))

        return self._lro(202, None, vm["location"], effect, error=error, location=True)

    def _instance_view(self, vm: dict) -> dict:
        state = vm["properties"]["provisioningState"]
        statuses = [{"code": f"ProvisioningState/{state.lower()}", "level": "Error" if state == "Failed" else "Info",
                     "displayStatus": f"Provisioning {state.lower()}"}]
        if vm["id"].lower() in self.op_time:  # when the last operation (create, start, deallocate) finished
            statuses[0]["time"] = self.op_time[vm["id"].lower()]
        power = self.power.get(vm["id"].lower())
        if power:
            statuses.append({"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"})
        return {"computerName": vm["properties"].get("osProfile", {}).get("computerName", vm["name"]),
                "osName": "ubuntu", "statuses": statuses}

    def _view(self, res: dict, query: dict) -> dict:
        if res["type"].lower().endswith("virtualmachines") and query.get("$expand", "").lower() == "instanceview":
            doc = json.loads(json.dumps(res))
            doc["properties"]["instanceView"] = self._instance_view(res)
            return doc
        return res

    # -- real sshd nodes (optional) ------------------------------------------------------------------
    def _boot_node(self, vm: dict) -> None:
        if self.nodes is None or vm["id"].lower() in self.node_of:
            return
        keys = vm["properties"].get("osProfile", {}).get("linuxConfiguration", {}).get("ssh", {}).get("publicKeys", [])
        node = self.nodes.add_node(keys[0]["keyData"], host_key=self.host_keys.get(vm["id"].lower()))
        self.host_keys[vm["id"].lower()] = node.host_key_file.read_bytes()  # kept across deallocate/start
        self.node_of[vm["id"].lower()] = node
        for nic_ref in vm["properties"]["networkProfile"]["networkInterfaces"]:
            for cfg in self._get(nic_ref["id"])["properties"].get("ipConfigurations", []):
                cfg["properties"]["privateIPAddress"] = node.ip
                pip = self._ref(cfg["properties"].get("publicIPAddress"), "NIC")
                if pip is not None:
                    pip["properties"]["ipAddress"] = node.ip

    def _kill_node(self, node) -> None:
        if node is not None and self.nodes is not None:
            try:
                self.nodes.kill(node)
            except Exception:  # noqa: BLE001, S110 - best effort (pool may be closed already)
                pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _vm_identity(ident, old: dict | None) -> dict:
    """A VM's `identity` as ARM stores and returns it (see the module docstring); raises ARM's 400s."""
    if not isinstance(ident, dict):
        raise ArmError(400, "InvalidParameter", "The value of parameter identity is invalid.")
    kind = str(ident.get("type") or "None")
    parts = {p.strip().lower() for p in kind.split(",")}
    if not parts <= {"systemassigned", "userassigned", "none"} or ("none" in parts and len(parts) > 1):
        raise ArmError(400, "InvalidParameter", f"The value '{kind}' of parameter 'identity.type' is invalid. "
                       "Allowed values are 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None'.")
    uai = ident.get("userAssignedIdentities") or {}
    if uai and "userassigned" not in parts:
        raise ArmError(400, "InvalidParameter", f"The identity type '{kind}' does not allow "
                       "'identity.userAssignedIdentities'; use 'UserAssigned'.")
    if "userassigned" in parts and not uai:
        raise ArmError(400, "InvalidParameter", "Parameter 'identity.userAssignedIdentities' is required for "
                       f"identity type '{kind}'.")
    for rid in uai:
        if not _UAI_ID.fullmatch(rid):
            raise ArmError(400, "LinkedInvalidPropertyId", f"Property id '{rid}' at path "
                           "'identity.userAssignedIdentities' is invalid. Expect fully qualified resource Id that "
                           "start with '/subscriptions/{subscriptionId}' or '/providers/{resourceProviderNamespace}/'.")
    old = old or {}
    doc: dict = {"type": kind}
    if "systemassigned" in parts:
        doc["principalId"] = old.get("principalId") or str(uuid.uuid4())
        doc["tenantId"] = TENANT
    if uai:
        before = old.get("userAssignedIdentities") or {}
        doc["userAssignedIdentities"] = {rid: before.get(rid) or {"principalId": str(uuid.uuid4()),
                                                                  "clientId": str(uuid.uuid4())} for rid in uai}
    return doc


def _tag_filter(flt: str | None, group: dict) -> bool:
    """ARM's resource-group $filter: `tagName eq 'K'` or `tagName eq 'K' and tagValue eq 'V'`."""
    if not flt:
        return True
    m = re.fullmatch(r"\s*tagName eq '([^']*)'(?:\s+and\s+tagValue eq '([^']*)')?\s*", flt)
    if not m:
        raise ArmError(400, "InvalidFilterInQueryString", f"unsupported $filter: {flt}")
    tags = {k.lower(): v for k, v in (group.get("tags") or {}).items()}
    if m.group(1).lower() not in tags:
        return False
    return m.group(2) is None or tags[m.group(1).lower()] == m.group(2)


def _default_rules(nsg_id: str) -> list[dict]:
    rules = [("AllowVnetInBound", 65000, "Allow", "VirtualNetwork", "VirtualNetwork"),
             ("AllowAzureLoadBalancerInBound", 65001, "Allow", "AzureLoadBalancer", "*"),
             ("DenyAllInBound", 65500, "Deny", "*", "*")]
    return [{"name": n, "id": f"{nsg_id}/defaultSecurityRules/{n}", "properties": {
        "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*", "sourceAddressPrefix": src,
        "destinationAddressPrefix": dst, "access": acc, "priority": pri, "direction": "Inbound",
        "provisioningState": "Succeeded"}} for n, pri, acc, src, dst in rules]


def _handler(fake: ArmFake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # 46 ms → 2 ms per call (delayed ACK vs. small writes)

        def log_message(self, *args):  # quiet
            pass

        def _do(self):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            try:
                status, headers, doc = fake.handle(self.command, url.path, query, body, self.headers)
            except ArmError as exc:
                status, headers, doc = exc.status, exc.headers, {"error": {"code": exc.code, "message": exc.message}}
            except Exception as exc:  # noqa: BLE001 - a fake bug shows as a 500 with the reason
                status, headers, doc = 500, {}, {"error": {"code": "InternalServerError", "message": repr(exc)}}
            data = b"" if doc is None or self.command == "HEAD" else json.dumps(doc).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _do

    return Handler
