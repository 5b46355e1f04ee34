"""A small fake of the Cloud TPU API (v2, REST), served by tests/infra/gce_fake.py's server under `/v2/`, so the
real google-cloud-tpu SDK (TpuClient, REST transport, pointed at BROKER_GCP_ENDPOINT like the Compute clients)
runs against it.

    fake = GCEFake(node_pool=pool).start()      # fake.tpu is this API
    fake.tpu.exhaust("us-central2-b")           # creates there end in a failed operation: RESOURCE_EXHAUSTED
    fake.tpu.set_quota("us-central2-b")         # ... RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure detail
    fake.tpu.preempt("node-id")                 # a spot TPU VM reclaimed: state PREEMPTED, its hosts die
    fake.tpu.stuck("us-central2-b")             # creates there hang: node CREATING, operation never done
    fake.tpu.nodes()                            # the stored node resources

What it reproduces, as the API reference and the SDK's REST transport define it:
- Routes: `POST /v2/projects/P/locations/Z/nodes?nodeId=N` (create), `GET .../nodes` (list, paged by
  `pageSize`/`pageToken` → `nextPageToken`; `page_size` here defaults to 2 so paging is exercised),
  `GET|DELETE .../nodes/N`, `POST .../nodes/N:stop|:start`, `GET .../operations/OP`; the same for
  `queuedResources` (create with `queuedResourceId`, get, list, delete with `force`).
- Bodies in camelCase as the SDK sends and parses them: Node {name (full resource name), acceleratorType,
  runtimeVersion, state CREATING → READY, STOPPING → STOPPED, STARTING → READY, DELETING, PREEMPTED,
  networkEndpoints [{ipAddress, port 8470, accessConfig {externalIp}}] — one per host of the slice —,
  networkConfig {enableExternalIps}, schedulingConfig {spot, preemptible}, labels, metadata, tags}.
  Long-running operations as google.longrunning.Operation JSON: `name`, `metadata`
  (`@type` …tpu.v2.OperationMetadata), `done`, and `response` (`@type` …tpu.v2.Node) or `error`
  (google.rpc.Status: `code` 8 RESOURCE_EXHAUSTED for a stockout, with the API's "There is no more capacity
  in the zone" message, and for a quota also a `google.rpc.QuotaFailure` detail). HTTP errors as Google's
  JSON error {code, message, status}: 400 INVALID_ARGUMENT (bad node id, unknown accelerator type, no
  runtime version, labels), 404 NOT_FOUND, 409 ALREADY_EXISTS, 400 FAILED_PRECONDITION (stop of a
  multi-host slice, which the API refuses), and the GCE fake's auth faults.
- Hosts per slice (what decides how many networkEndpoints a node has): v2-N/v3-N: N cores, 8 per host; v4-N
  and v5p-N: N TensorCores, 8 per host; v5litepod-N/v6e-N: N chips, one host up to 8, else 4 chips per
  host. With the GCE fake's `node_pool`, every host is a real sshd node (the `ssh-keys` metadata is its
  authorized key; its address is the endpoint's ipAddress and externalIp); delete, stop and preempt kill
  them, start boots new ones.
- Queued resources: created ACCEPTED, then ACTIVE with their node created as above (FAILED with the same
  error when the zone is exhausted); deleting one with `force=true` deletes its node.
Not reproduced: operation delays (everything completes within the call, except creates in a `stuck` zone,
whose operation stays `done: false` and whose node stays CREATING), guest attributes, reimaging,
maintenance events, multislice, reservations, per-project limits beyond the ones set.
"""
from __future__ import annotations

import itertools
import re
import urllib.parse

_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_TYPE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$")
NODE_TYPE = "type.googleapis.com/google.cloud.tpu.v2.Node"
QR_TYPE = "type.googleapis.com/google.cloud.tpu.v2.QueuedResource"
META_TYPE = "type.googleapis.com/google.cloud.tpu.v2.OperationMetadata"
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


def hosts(accelerator_type: str) -> int:
    gen, n = _TYPE.match(accelerator_type).groups()
    n = int(n)
    if gen in ("v5litepod", "v6e"):
        return 1 if n <= 8 else n // 4
    return max(1, n // 8)


class TPUError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code = code
        self.body = {"error": {"code": code, "message": message, "status": status or STATUS.get(code, "UNKNOWN")}}


class TPUApi:
    def __init__(self, gce):
        self.gce = gce  # the GCE fake: its lock, node pool, project, auth faults and request log
        self._nodes: dict[tuple[str, str], dict] = {}  # (zone, id) → node (+ private "_" keys)
        self._queued: dict[tuple[str, str], dict] = {}
        self._ops: dict[tuple[str, str], dict] = {}
        self._exhausted: set[str] = set()
        self._quota: set[str] = set()
        self._stuck: set[str] = set()
        self._op_ids = itertools.count(1)
        self.page_size = 2

    # ------------------------------------------------------------------ test controls
    def exhaust(self, zone: str) -> None:
        self._exhausted.add(zone)

    def set_quota(self, zone: str) -> None:
        self._quota.add(zone)

    def stuck(self, zone: str) -> None:
        self._stuck.add(zone)

    def restore(self, zone: str) -> None:
        self._stuck.discard(zone)
        self._exhausted.discard(zone)
        self._quota.discard(zone)

    def nodes(self) -> list[dict]:
        with self.gce.lock:
            return [self._view(n) for n in self._nodes.values()]

    def node(self, node_id: str) -> dict:
        with self.gce.lock:
            for (_, nid), n in self._nodes.items():
                if nid == node_id:
                    return self._view(n)
        raise KeyError(node_id)

    def preempt(self, node_id: str) -> None:
        with self.gce.lock:
            for (_, nid), n in self._nodes.items():
                if nid == node_id:
                    n["state"] = "PREEMPTED"
                    self._kill(n)

    # ------------------------------------------------------------------ plumbing
    def _view(self, n: dict) -> dict:
        return {k: v for k, v in n.items() if not k.startswith("_")}

    def _base(self, zone: str) -> str:
        return f"projects/{self.gce.project}/locations/{zone}"

    def _op(self, zone: str, *, response: dict | None = None, rtype: str = NODE_TYPE, error: dict | None = None,
            verb: str = "create", target: str = "") -> dict:
        name = f"{self._base(zone)}/operations/operation-{next(self._op_ids)}"
        op = {"name": name, "metadata": {"@type": META_TYPE, "createTime": "2026-12-02T00:00:00Z",
                                         "target": target, "verb": verb, "apiVersion": "v2"}, "done": True}
        if error is not None:
            op["error"] = error
        elif response is not None:
            op["response"] = {"@type": rtype, **self._view(response)}
        else:
            op["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        self._ops[(zone, name.rsplit("/", 1)[-1])] = op
        return op

    def _kill(self, n: dict) -> None:
        for node in n.pop("_hosts", []) or []:
            if self.gce.node_pool is not None:
                self.gce.node_pool.kill(node)
        for ep in n.get("networkEndpoints", []):
            ep.pop("ipAddress", None)
            ep.get("accessConfig", {}).pop("externalIp", None)

    def _boot(self, n: dict) -> None:
        count = hosts(n["acceleratorType"])
        keys = (n.get("metadata") or {}).get("ssh-keys", "")
        pubkeys = "\n".join(line.split(":", 1)[1] for line in keys.splitlines() if ":" in line)
        eps, booted = [], []
        for i in range(count):
            if self.gce.node_pool is not None:
                node = self.gce.node_pool.add_node(pubkeys)
                booted.append(node)
                ip = node.ip
            else:
                ip = f"10.130.0.{next(self.gce._ips)}"
            ep = {"ipAddress": ip, "port": 8470}
            if (n.get("networkConfig") or {}).get("enableExternalIps"):
                ep["accessConfig"] = {"externalIp": ip}
            eps.append(ep)
        n["networkEndpoints"], n["_hosts"] = eps, booted

    def _stockout(self, zone: str) -> dict | None:
        if zone in self._quota:
            return {"code": 8, "message": f"Quota limit 'TPUV4sPerProjectPerZoneForTPUAPI' has been exceeded. "
                    f"Limit: 0 in zone {zone}.", "details": [{
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{"subject": f"project:{self.gce.project}",
                                        "description": "TPUV4sPerProjectPerZoneForTPUAPI"}]}]}
        if zone in self._exhausted:
            return {"code": 8, "message": f'There is no more capacity in the zone "{zone}"; you can try in '
                    "another zone where Cloud TPU Nodes are offered (see https://cloud.google.com/tpu/docs/regions) "
                    "[EID: 0x1a2b3c4d5e6f7a8b]", "details": []}
        return None

    # ------------------------------------------------------------------ routing
    def dispatch(self, method: str, path: str, query: dict, body: dict | None):
        m = re.match(r"^/v2/projects/([^/]+)/locations/([^/]+)/(.*)$", path)
        if not m:
            raise TPUError(404, f"Not found: {path}")
        project, zone, rest = m.groups()
        if project != self.gce.project:
            raise TPUError(403, f"Permission 'tpu.nodes.list' denied on 'projects/{project}'")
        routes = [("POST", r"nodes", self._create), ("GET", r"nodes", self._list),
                  ("GET", r"nodes/([^/:]+)", self._get), ("DELETE", r"nodes/([^/:]+)", self._delete),
                  ("POST", r"nodes/([^/:]+):(stop|start)", self._action),
                  ("GET", r"operations/([^/]+)", self._get_op),
                  ("POST", r"queuedResources", self._qr_create), ("GET", r"queuedResources", self._qr_list),
                  ("GET", r"queuedResources/([^/:]+)", self._qr_get),
                  ("DELETE", r"queuedResources/([^/:]+)", self._qr_delete)]
        for verb, pattern, fn in routes:
            mm = re.fullmatch(pattern, rest)
            if verb == method and mm:
                with self.gce.lock:
                    return fn(zone, *mm.groups(), query=query, body=body or {})
        raise TPUError(404, f"Not found: {method} {path}")

    # ------------------------------------------------------------------ nodes
    def _validate(self, node_id: str, b: dict) -> None:
        if not _ID.match(node_id or ""):
            raise TPUError(400, f"Invalid node id '{node_id}': must match [a-z]([-a-z0-9]*[a-z0-9])?")
        if not _TYPE.match(b.get("acceleratorType", "")):
            raise TPUError(400, f"Invalid accelerator type '{b.get('acceleratorType')}'")
        if not b.get("runtimeVersion"):
            raise TPUError(400, "Field runtime_version is required")
        for k, v in (b.get("labels") or {}).items():
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(str(v)):
                raise TPUError(400, f"Invalid label {k}={v}")

    def _new_node(self, zone: str, node_id: str, b: dict) -> dict:
        self._validate(node_id, b)
        if (zone, node_id) in self._nodes:
            raise TPUError(409, f"Resource '{self._base(zone)}/nodes/{node_id}' already exists")
        n = {"name": f"{self._base(zone)}/nodes/{node_id}", "acceleratorType": b["acceleratorType"],
             "runtimeVersion": b["runtimeVersion"], "state": "CREATING", "labels": dict(b.get("labels") or {}),
             "metadata": dict(b.get("metadata") or {}), "networkConfig": dict(b.get("networkConfig") or {}),
             "schedulingConfig": dict(b.get("schedulingConfig") or {}), "tags": list(b.get("tags") or []),
             "createTime": "2026-12-02T00:00:00Z", "apiVersion": "V2"}
        self._nodes[(zone, node_id)] = n
        return n

    def _create(self, zone, *, query, body):
        node_id = query.get("nodeId", "")
        n = self._new_node(zone, node_id, body)
        err = self._stockout(zone)
        if err is not None:
            del self._nodes[(zone, node_id)]
            return self._op(zone, error=err, target=n["name"])
        if zone in self._stuck:
            op = self._op(zone, target=n["name"])
            op["done"] = False
            del op["response"]
            return op
        self._boot(n)
        n["state"] = "READY"
        return self._op(zone, response=n, target=n["name"])

    def _list(self, zone, *, query, body):
        items = sorted((n for (z, _), n in self._nodes.items() if z == zone), key=lambda n: n["name"])
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("pageSize") or self.page_size), self.page_size)
        page = items[start:start + size]
        out = {"nodes": [self._view(n) for n in page]}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def _find(self, zone, node_id) -> dict:
        n = self._nodes.get((zone, node_id))
        if n is None:
            raise TPUError(404, f"Resource '{self._base(zone)}/nodes/{node_id}' was not found")
        return n

    def _get(self, zone, node_id, *, query, body):
        return self._view(self._find(zone, node_id))

    def _delete(self, zone, node_id, *, query, body):
        n = self._find(zone, node_id)
        self._kill(n)
        del self._nodes[(zone, node_id)]
        return self._op(zone, verb="delete", target=n["name"])

    def _action(self, zone, node_id, action, *, query, body):
        n = self._find(zone, node_id)
        if action == "stop":
            if len(n.get("networkEndpoints", [])) > 1:
                raise TPUError(400, "Stop is not supported for multi-host TPU slices", "FAILED_PRECONDITION")
            if n["state"] not in ("READY", "STOPPED"):
                raise TPUError(400, f"Node is in state {n['state']}", "FAILED_PRECONDITION")
            self._kill(n)
            n["state"] = "STOPPED"
        else:
            if n["state"] not in ("STOPPED", "READY"):
                raise TPUError(400, f"Node is in state {n['state']}", "FAILED_PRECONDITION")
            if n["state"] == "STOPPED":
                self._boot(n)
                n["state"] = "READY"
        return self._op(zone, response=n, verb=action, target=n["name"])

    def _get_op(self, zone, op_id, *, query, body):
        op = self._ops.get((zone, op_id))
        if op is None:
            raise TPUError(404, f"Operation '{self._base(zone)}/operations/{op_id}' was not found")
        return op

    # ------------------------------------------------------------------ queued resources
    def _qr_view(self, qr: dict) -> dict:
        return {k: v for k, v in qr.items() if not k.startswith("_")}

    def _qr_create(self, zone, *, query, body):
        qid = query.get("queuedResourceId", "")
        if not _ID.match(qid):
            raise TPUError(400, f"Invalid queued resource id '{qid}'")
        if (zone, qid) in self._queued:
            raise TPUError(409, f"Resource '{self._base(zone)}/queuedResources/{qid}' already exists")
        specs = ((body.get("tpu") or {}).get("nodeSpec") or [])
        if len(specs) != 1:
            raise TPUError(400, "Exactly one tpu.node_spec is supported")
        spec = specs[0]
        node_id = spec.get("nodeId", "")
        qr = {"name": f"{self._base(zone)}/queuedResources/{qid}", "tpu": body.get("tpu"),
              "state": {"state": "ACCEPTED"}, "createTime": "2026-12-02T00:00:00Z"}
        for k in ("spot", "guaranteed", "queueingPolicy"):
            if k in body:
                qr[k] = body[k]
        node_body = dict(spec.get("node") or {})
        if "spot" in body:
            node_body["schedulingConfig"] = {**(node_body.get("schedulingConfig") or {}), "spot": True}
        self._validate(node_id, node_body)
        self._queued[(zone, qid)] = qr
        err = self._stockout(zone)
        if err is not None:
            qr["state"] = {"state": "FAILED", "failedData": {"error": err}}
        else:
            n = self._new_node(zone, node_id, node_body)
            n["queuedResource"] = qr["name"]
            self._boot(n)
            n["state"] = "READY"
            qr["state"] = {"state": "ACTIVE"}
        return self._op(zone, response=qr, rtype=QR_TYPE, target=qr["name"])

    def _qr_get(self, zone, qid, *, query, body):
        qr = self._queued.get((zone, qid))
        if qr is None:
            raise TPUError(404, f"Resource '{self._base(zone)}/queuedResources/{qid}' was not found")
        return self._qr_view(qr)

    def _qr_list(self, zone, *, query, body):
        return {"queuedResources": [self._qr_view(q) for (z, _), q in self._queued.items() if z == zone]}

    def _qr_delete(self, zone, qid, *, query, body):
        qr = self._queued.get((zone, qid))
        if qr is None:
            raise TPUError(404, f"Resource '{self._base(zone)}/queuedResources/{qid}' was not found")
        owned = [(k, n) for k, n in self._nodes.items() if n.get("queuedResource") == qr["name"]]
        if owned and query.get("force") not in ("true", "True", "1"):
            raise TPUError(400, "The queued resource still has a node: delete it first or pass force",
                           "FAILED_PRECONDITION")
        for k, n in owned:
            self._kill(n)
            del self._nodes[k]
        del self._queued[(zone, qid)]
        return self._op(zone, verb="delete", target=qr["name"])


def parse_query(raw_path: str) -> tuple[str, dict]:
    url = urllib.parse.urlsplit(raw_path)
    return url.path, {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
