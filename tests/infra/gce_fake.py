"""A small local fake of the Compute Engine REST API (v1), enough for skybroker's GCP driver to run the real
google-cloud-compute SDK (REST transport) against it.

    fake = GCEFake(project="test-project").start()   # fake.endpoint = "http://127.0.0.1:PORT"
    env = fake.env()          # BROKER_GCP_ENDPOINT, BROKER_GCP_ANONYMOUS=1, GOOGLE_CLOUD_PROJECT
    fake.exhaust("us-central1-a")           # inserts there end in a failed ZONE_RESOURCE_POOL_EXHAUSTED op
    fake.set_quota("us-central1", "NVIDIA_V100_GPUS")    # regional QUOTA_EXCEEDED (in the operation)
    fake.set_quota(None, "GPUS_ALL_REGIONS")              # project-wide quota
    fake.fail_auth(403)                     # every call: 403 forbidden (401: missing credentials)
    fake.stuck("us-central1-a")             # inserts there: the instance stays PROVISIONING, the op RUNNING
    fake.stuck("us-central1-a", boot=True)  # ... the op finishes, the instance never gets past STAGING
    fake.preempt("name")                    # a spot VM reclaimed (deleted, or TERMINATED if its action is STOP)
    fake.guest_shutdown("name")             # its OS powered off: the VM stops (TERMINATED), as on GCE
    fake.close()

Shapes follow GCE as the SDK sends and parses them (checked against compute_v1's REST transport):
camelCase JSON bodies; `POST .../zones/Z/instances` etc. return an Operation (`name`, `status`
PENDING/RUNNING/DONE, `targetLink`, and on failure `error.errors[]` + `httpErrorStatusCode` /
`httpErrorMessage`); `GET .../operations/OP` and `POST .../operations/OP/wait` poll it; list filters arrive
as `?filter=labels.KEY%3DVALUE` and are applied (`=`, `!=`, `:*`, AND-ed); aggregated lists are keyed by
"zones/Z"; errors are `{"error": {"code", "message", "errors": [{"reason", "domain", "message"}]}}`.
Like GCE, it rejects GPUs without onHostMaintenance=TERMINATE, guestAccelerators on a2/a3/g2 hosts,
SPOT with automaticRestart, bad names/labels, and duplicate names (409). Persistent disks (insert,
attachDisk/detachDisk, delete; in use → 400) are in tests/infra/gce_disks.py.

Lifecycle: delays (op_delay, boot_delay, stop_delay; default 0) move resources PROVISIONING → STAGING →
RUNNING, STOPPING → TERMINATED, and deletions, lazily by the clock, so polling paths get exercised.
The Cloud TPU API (v2) is served under `/v2/` by tests/infra/tpu_fake.py (`fake.tpu`).
Optional: `node_pool=` (tests/infra/netns.NodePool) makes every instance a real sshd node: the
`ssh-keys` metadata becomes its authorized key and natIP/networkIP its address; delete/stop/preempt
kill the node, start boots a new one.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.infra.gce_disks import GCEDisks

BASE = "https://www.googleapis.com/compute/v1"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_BUNDLED = ("a2-", "a3-", "a4-", "g2-", "g4-")


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str, domain: str = "global", status: str | None = None):
        super().__init__(message)
        self.body = {"error": {"code": code, "message": message,
                               "errors": [{"message": message, "domain": domain, "reason": reason}]}}
        if status:
            self.body["error"]["status"] = status
        self.code = code


def _not_found(path: str) -> ApiError:
    return ApiError(404, f"The resource '{path}' was not found", "notFound")


def _invalid(msg: str) -> ApiError:
    return ApiError(400, msg, "invalid")


def _matches(res: dict, flt: str | None) -> bool:
    """GCE list filter subset: `labels.k=v`, `labels.k!=v`, `labels.k:*`, `name=...`, `status=...`,
    `operationType="..."`, combined with spaces / AND / parentheses."""
    if not flt:
        return True
    for term in re.findall(r'[A-Za-z_.\-]+\s*(?:!=|=|:)\s*(?:"[^"]*"|[^\s()]+)', flt):
        m = re.match(r'([A-Za-z_.\-]+)\s*(!=|=|:)\s*"?([^"]*)"?$', term)
        field, op, value = m.groups()
        if field.startswith("labels."):
            have = res.get("labels", {}).get(field[7:])
        elif field in ("name", "status", "operationType", "zone", "targetLink"):
            have = res.get(field)
        else:
            raise _invalid(f"Invalid list filter expression '{term}'.")
        if op == ":" and value == "*":
            ok = have is not None
        elif op == "!=":
            ok = have != value
        else:
            ok = have is not None and str(have) == value
        if not ok:
            return False
    return True


class GCEFake(GCEDisks):
    def __init__(self, project: str = "test-project", *, op_delay: float = 0.0, boot_delay: float = 0.0,
                 stop_delay: float = 0.0, node_pool=None):
        self.project = project
        self.op_delay, self.boot_delay, self.stop_delay = op_delay, boot_delay, stop_delay
        self.node_pool = node_pool
        self.lock = threading.RLock()
        self._instances: dict[tuple[str, str], dict] = {}  # (zone, name) → resource (+ private "_" keys)
        self.firewalls: dict[str, dict] = {}
        self._disks: dict[tuple[str, str], dict] = {}  # (zone, name) → disk (tests/infra/gce_disks.py)
        self.operations: dict[tuple[str | None, str], dict] = {}  # (zone or None for global, name) → op
        self.requests: list[tuple[str, str, dict | None]] = []  # (method, path?query, body)
        self._capacity: dict[str, tuple[str, bool]] = {}  # zone → (code, spot_only)
        self._quota: dict[str | None, tuple[str, bool]] = {}  # region (None = all) → (metric, synchronous)
        self._auth: int | None = None
        self._stuck: dict[str, bool] = {}  # zone → boot (True: op done, never RUNNING; False: op never done)
        self._ids = itertools.count(1000)
        self._ips = itertools.count(2)
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""
        from .tpu_fake import TPUApi

        self.tpu = TPUApi(self)  # the Cloud TPU API on the same server, under /v2/

    # ------------------------------------------------------------------ server
    def start(self) -> GCEFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                try:
                    status, out = 200, fake._dispatch(self.command, self.path, body)
                except ApiError as exc:
                    status, out = exc.code, exc.body
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="gce-fake").start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for inst in list(self._instances.values()):
                self._kill_node(inst)

    def env(self) -> dict[str, str]:
        return {"BROKER_GCP_ENDPOINT": self.endpoint, "BROKER_GCP_ANONYMOUS": "1", "GOOGLE_CLOUD_PROJECT": self.project}

    # ------------------------------------------------------------------ fault injection / inspection
    def exhaust(self, zone: str, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", spot_only: bool = False) -> None:
        self._capacity[zone] = (code, spot_only)

    def restore(self, zone: str) -> None:
        self._capacity.pop(zone, None)

    def set_quota(self, region: str | None, metric: str = "CPUS", synchronous: bool = False) -> None:
        """Inserts in `region` (every region when None) exceed quota `metric` (e.g. NVIDIA_V100_GPUS, or a
        project-wide one like GPUS_ALL_REGIONS). GCE reports it in the insert's operation; `synchronous`
        makes the insert call itself fail with 403 quotaExceeded instead."""
        self._quota[region] = (metric, synchronous)

    def clear_quota(self, region: str | None = None) -> None:
        self._quota.pop(region, None)

    def stuck(self, zone: str, boot: bool = False) -> None:
        """Inserts in `zone` hang as GCE's do when a zone is short of capacity but does not say so: the
        instance stays PROVISIONING and its operation RUNNING (boot: the operation is DONE, the instance
        never gets past STAGING). Only creates: stop/delete work as usual."""
        self._stuck[zone] = boot

    def fail_auth(self, status: int | None = 403) -> None:
        self._auth = status

    def preempt(self, name: str) -> None:
        with self.lock:
            zone, inst = self._find(name)
            sched = inst.get("scheduling", {})
            if sched.get("provisioningModel") != "SPOT" and not sched.get("preemptible"):
                raise ValueError(f"{name} is not a spot/preemptible instance")
            self._kill_node(inst)
            if sched.get("instanceTerminationAction") == "STOP":
                inst["_status"] = [(time.time(), "TERMINATED")]
                inst["lastStopTimestamp"] = _now()
            else:
                del self._instances[(zone, name)]
                self._release(inst["selfLink"], [d for d in inst.get("disks", []) if not d.get("boot")])
            self._op(zone, "compute.instances.preempted", inst["selfLink"], user="system@google.com",
                     statusMessage="Instance was preempted.")

    def guest_shutdown(self, name: str) -> None:
        """The VM's own OS powered off (`shutdown -h now`): GCE stops it (STOPPING → TERMINATED after
        stop_delay, disks kept), exactly as instances.stop would, but with no API call."""
        with self.lock:
            _, inst = self._find(name)
            now = time.time()
            inst["_status"] = [(now, "STOPPING"), (now + self.stop_delay, "TERMINATED")]
            inst["lastStopTimestamp"] = _now()
            self._kill_node(inst)

    def instance(self, name: str) -> dict:
        with self.lock:
            return self._render(self._find(name)[1])

    def instances(self) -> list[dict]:
        with self.lock:
            self._reap()
            return [self._render(i) for i in self._instances.values()]

    def calls(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, dict | None]]:
        return [r for r in self.requests if (method is None or r[0] == method) and contains in r[1]]

    # ------------------------------------------------------------------ internals
    def _find(self, name: str) -> tuple[str, dict]:
        self._reap()
        for (zone, n), inst in self._instances.items():
            if n == name:
                return zone, inst
        raise KeyError(name)

    def _reap(self) -> None:
        now = time.time()
        for key in [k for k, i in self._instances.items() if i.get("_gone_at") is not None and i["_gone_at"] <= now]:
            inst = self._instances.pop(key)
            self._kill_node(inst)
            self._release(inst["selfLink"], [d for d in inst.get("disks", []) if not d.get("boot")])

    def _render(self, inst: dict) -> dict:
        now = time.time()
        status = [s for t, s in inst["_status"] if t <= now][-1]
        return {k: v for k, v in inst.items() if not k.startswith("_")} | {"status": status}

    def _op(self, zone: str | None, op_type: str, target: str, *, error: dict | None = None, http=None, delay=None,
            **extra) -> dict:
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:13]}-{uuid.uuid4().hex[:8]}"
        scope = f"zones/{zone}" if zone else "global"
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": op_type,
              "targetLink": target, "targetId": str(next(self._ids)), "status": "RUNNING", "user": "fake@example.com",
              "progress": 0, "insertTime": _now(), "startTime": _now(),
              "selfLink": f"{BASE}/projects/{self.project}/{scope}/operations/{name}", **extra}
        if zone:
            op["zone"] = f"{BASE}/projects/{self.project}/zones/{zone}"
        op["_done_at"] = time.time() + (self.op_delay if delay is None else delay)
        op["_error"], op["_http"] = error, http
        self.operations[(zone, name)] = op
        return self._op_view(op)

    def _op_view(self, op: dict) -> dict:
        if op["status"] != "DONE" and time.time() >= op["_done_at"]:
            op.update(status="DONE", progress=100, endTime=_now())
            if op["_error"]:
                op["error"] = {"errors": op["_error"]}
                op["httpErrorStatusCode"], op["httpErrorMessage"] = op["_http"]
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _kill_node(self, inst: dict) -> None:
        node = inst.pop("_node", None)
        if node is not None and self.node_pool is not None:
            self.node_pool.kill(node)

    def _boot_node(self, inst: dict) -> None:
        if self.node_pool is None:
            return
        keys = [i["value"] for i in inst.get("metadata", {}).get("items", []) if i.get("key") == "ssh-keys"]
        pubkeys = "\n".join(line.split(":", 1)[1] for k in keys for line in k.splitlines() if ":" in line)
        node = self.node_pool.add_node(pubkeys)
        inst["_node"] = node
        nic = inst["networkInterfaces"][0]
        nic["networkIP"] = node.ip
        for ac in nic.get("accessConfigs", []):
            ac["natIP"] = node.ip

    # ------------------------------------------------------------------ routing
    def _dispatch(self, method: str, raw_path: str, body: dict | None):
        url = urllib.parse.urlsplit(raw_path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        with self.lock:
            self.requests.append((method, raw_path, body))
        if self._auth == 401:
            raise ApiError(401, "Request is missing required authentication credential. Expected OAuth 2 access "
                           "token, login cookie or other valid authentication credential.", "required",
                           status="UNAUTHENTICATED")
        if self._auth:
            raise ApiError(403, f"Required 'compute.{method.lower()}' permission for 'projects/{self.project}'",
                           "forbidden", status="PERMISSION_DENIED")
        if url.path.startswith("/v2/"):  # the Cloud TPU API (tests/infra/tpu_fake.py)
            from .tpu_fake import TPUError

            try:
                return self.tpu.dispatch(method, url.path, query, body)
            except TPUError as exc:  # Google's newer JSON error: {code, message, status}, no errors[] list
                err = ApiError(exc.code, str(exc), "")
                err.body = exc.body
                raise err from None
        m = re.match(r"^/compute/v1/projects/([^/]+)/(.*)$", url.path)
        if not m:
            raise ApiError(404, f"Not found: {url.path}", "notFound")
        project, rest = m.groups()
        if project != self.project:
            raise ApiError(404, f"The resource 'projects/{project}' was not found", "notFound")
        routes = [
            ("GET", r"aggregated/instances", self._aggregated_instances),
            ("GET", r"aggregated/operations", self._aggregated_operations),
            ("POST", r"zones/([^/]+)/instances", self._insert),
            ("GET", r"zones/([^/]+)/instances", self._list),
            ("GET", r"zones/([^/]+)/instances/([^/]+)", self._get),
            ("DELETE", r"zones/([^/]+)/instances/([^/]+)", self._delete),
            ("POST", r"zones/([^/]+)/instances/([^/]+)/(stop|start|resume|suspend|setLabels)", self._action),
            *self._disk_routes(),
            ("GET", r"zones/([^/]+)/operations/([^/]+)", self._get_op),
            ("POST", r"zones/([^/]+)/operations/([^/]+)/wait", self._wait_op),
            ("GET", r"(global)/operations/([^/]+)", self._get_op),
            ("POST", r"(global)/operations/([^/]+)/wait", self._wait_op),
            ("POST", r"global/firewalls", self._fw_insert),
            ("GET", r"global/firewalls", self._fw_list),
            ("GET", r"global/firewalls/([^/]+)", self._fw_get),
            ("PATCH", r"global/firewalls/([^/]+)", self._fw_patch),
            ("DELETE", r"global/firewalls/([^/]+)", self._fw_delete),
        ]
        for verb, pattern, fn in routes:
            mm = re.fullmatch(pattern, rest)
            if verb == method and mm:
                if fn in (self._wait_op,):  # waits outside the lock
                    return fn(*mm.groups(), query=query, body=body)
                with self.lock:
                    self._reap()
                    return fn(*mm.groups(), query=query, body=body)
        raise ApiError(404, f"Not found: {method} {url.path}", "notFound")

    def _url(self, zone: str, name: str) -> str:
        return f"{BASE}/projects/{self.project}/zones/{zone}/instances/{name}"

    def _get_inst(self, zone: str, name: str) -> dict:
        inst = self._instances.get((zone, name))
        if inst is None:
            raise _not_found(f"projects/{self.project}/zones/{zone}/instances/{name}")
        return inst

    # ------------------------------------------------------------------ instances
    def _validate(self, zone: str, b: dict) -> None:
        name = b.get("name", "")
        if not _NAME.match(name):
            raise _invalid(f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        mt = b.get("machineType", "")
        mm = re.search(r"(?:zones/([^/]+)/)?machineTypes/([a-z0-9-]+)$", mt)
        if not mm or (mm.group(1) and mm.group(1) != zone):
            raise _invalid(f"Invalid value for field 'resource.machineType': '{mt}'.")
        for k, v in (b.get("labels") or {}).items():
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v):
                raise _invalid(f"Invalid value for field 'resource.labels': '{k}={v}'.")
        boots = [d for d in b.get("disks", []) if d.get("boot")]
        if len(boots) != 1 or not (boots[0].get("source") or boots[0].get("initializeParams", {}).get("sourceImage")):
            raise _invalid("Invalid value for field 'resource.disks': exactly one boot disk with a source is required.")
        sched = b.get("scheduling", {})
        gpus = b.get("guestAccelerators") or []
        if gpus and mm.group(2).startswith(_BUNDLED):
            raise _invalid(f"Machine type {mm.group(2)} comes with its accelerators; guestAccelerators are not allowed.")
        if gpus and sched.get("onHostMaintenance", "MIGRATE") != "TERMINATE":
            raise ApiError(400, "Instances with guest accelerators do not support live migration.", "badRequest")
        for g in gpus:
            if not re.search(rf"zones/{zone}/acceleratorTypes/[a-z0-9-]+$", g.get("acceleratorType", "")):
                raise _invalid(f"Invalid value for field 'resource.guestAccelerators[0].acceleratorType': "
                               f"'{g.get('acceleratorType')}'.")
        if sched.get("maxRunDuration") and sched.get("instanceTerminationAction") not in ("DELETE", "STOP"):
            raise _invalid("Invalid value for field 'resource.scheduling.instanceTerminationAction': ''. "
                           "Instance termination action must be specified when max run duration is set.")
        if sched.get("provisioningModel") == "SPOT" and (sched.get("automaticRestart", True)
                                                         or sched.get("onHostMaintenance") != "TERMINATE"):
            raise _invalid("Spot VMs require automaticRestart=false and onHostMaintenance=TERMINATE.")

    def _insert(self, zone, *, query, body):
        b = dict(body or {})
        self._validate(zone, b)
        name = b["name"]
        if (zone, name) in self._instances:
            raise ApiError(409, f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' already exists",
                           "alreadyExists")
        region = zone.rsplit("-", 1)[0]
        target = self._url(zone, name)
        spot = b.get("scheduling", {}).get("provisioningModel") == "SPOT"
        quota = self._quota.get(region) or self._quota.get(None)
        if quota:
            metric, sync = quota
            glob = "ALL_REGIONS" in metric
            where = "globally" if glob else f"in region {region}"
            msg = f"Quota '{metric}' exceeded.  Limit: 0.0 {where}."
            if sync:
                raise ApiError(403, msg, "quotaExceeded", domain="usageLimits")
            info = {"metricName": f"compute.googleapis.com/{metric.lower()}", "limit": 0,
                    "limitName": metric.replace("_", "-") + ("-per-project" if glob else "-per-project-region")}
            if not glob:
                info["dimensions"] = {"region": region}
            return self._op(zone, "insert", target, http=(403, "FORBIDDEN"), error=[
                {"code": "QUOTA_EXCEEDED", "message": msg, "errorDetails": [{"quotaInfo": info}]}])
        cap = self._capacity.get(zone)
        if cap and (spot or not cap[1]):
            msg = (f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources available to "
                   "fulfill the request.  Try a different zone, or try again later.")
            return self._op(zone, "insert", target, http=(503, "SERVICE UNAVAILABLE"),
                            error=[{"code": cap[0], "message": msg}])
        now = time.time()
        n = next(self._ips)
        inst = b | {
            "kind": "compute#instance", "id": str(next(self._ids)), "creationTimestamp": _now(),
            "zone": f"{BASE}/projects/{self.project}/zones/{zone}", "selfLink": target,
            "machineType": f"{BASE}/projects/{self.project}/zones/{zone}/machineTypes/{b['machineType'].rsplit('/', 1)[-1]}",
            "labelFingerprint": uuid.uuid4().hex[:12], "lastStartTimestamp": _now(),
            "_status": [(now, "PROVISIONING"), (now + self.boot_delay / 2, "STAGING"), (now + self.boot_delay, "RUNNING")],
        }
        nics = [dict(x) for x in b.get("networkInterfaces") or [{"network": "global/networks/default"}]]
        nics[0].update(name="nic0", networkIP=f"10.128.{n // 250}.{n % 250 + 2}")
        nics[0]["accessConfigs"] = [dict(ac, natIP=f"127.34.{n // 250 % 250}.{n % 250 + 2}")
                                    for ac in nics[0].get("accessConfigs", [])]
        inst["networkInterfaces"] = nics
        if zone in self._stuck:
            boot = self._stuck[zone]
            inst["_status"] = [(now, "PROVISIONING")] + ([(now + self.boot_delay, "STAGING")] if boot else [])
            self._instances[(zone, name)] = inst
            return self._op(zone, "insert", target, delay=None if boot else float("inf"))
        self._boot_node(inst)
        self._instances[(zone, name)] = inst
        return self._op(zone, "insert", target)

    def _list(self, zone, *, query, body):
        items = [self._render(i) for (z, _), i in self._instances.items() if z == zone]
        items = [i for i in items if _matches(i, query.get("filter"))]
        return {"kind": "compute#instanceList", "id": f"projects/{self.project}/zones/{zone}/instances",
                "items": items, "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/instances"}

    def _aggregated_instances(self, *, query, body):
        items: dict[str, dict] = {}
        for (zone, _), inst in sorted(self._instances.items()):
            r = self._render(inst)
            if _matches(r, query.get("filter")):
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(r)
        return {"kind": "compute#instanceAggregatedList", "id": f"projects/{self.project}/aggregated/instances",
                "items": items}

    def _get(self, zone, name, *, query, body):
        return self._render(self._get_inst(zone, name))

    def _delete(self, zone, name, *, query, body):
        inst = self._get_inst(zone, name)
        inst["_status"] = inst["_status"] + [(time.time(), "STOPPING")]
        inst["_gone_at"] = time.time() + self.stop_delay
        return self._op(zone, "delete", self._url(zone, name), delay=max(self.op_delay, self.stop_delay))

    def _action(self, zone, name, action, *, query, body):
        inst = self._get_inst(zone, name)
        now, status = time.time(), self._render(inst)["status"]
        if action in ("stop", "suspend"):
            if status in ("RUNNING", "PROVISIONING", "STAGING"):
                end = "TERMINATED" if action == "stop" else "SUSPENDED"
                inst["_status"] = [(now, "STOPPING" if action == "stop" else "SUSPENDING"), (now + self.stop_delay, end)]
                inst["lastStopTimestamp"] = _now()
                self._kill_node(inst)
        elif action in ("start", "resume"):
            if status in ("TERMINATED", "SUSPENDED"):
                inst["_status"] = [(now, "STAGING"), (now + self.boot_delay, "RUNNING")]
                inst["lastStartTimestamp"] = _now()
                self._boot_node(inst)
            elif status not in ("RUNNING", "STAGING", "PROVISIONING"):
                raise ApiError(400, f"The resource '{name}' is not ready", "resourceNotReady")
        else:  # setLabels
            if (body or {}).get("labelFingerprint") != inst["labelFingerprint"]:
                raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed",
                               "conditionNotMet", status="FAILED_PRECONDITION")
            inst["labels"] = dict((body or {}).get("labels") or {})
            inst["labelFingerprint"] = uuid.uuid4().hex[:12]
        return self._op(zone, action, self._url(zone, name))

    # ------------------------------------------------------------------ operations
    def _get_op(self, zone, name, *, query, body):
        op = self.operations.get((None if zone == "global" else zone, name))
        if op is None:
            raise _not_found(f"projects/{self.project}/{'global' if zone == 'global' else 'zones/' + zone}"
                             f"/operations/{name}")
        return self._op_view(op)

    def _wait_op(self, zone, name, *, query, body):
        """Like GCE: returns when the operation is DONE or after a while (here up to 2 s)."""
        deadline = time.time() + 2.0
        while True:
            with self.lock:
                view = self._get_op(zone, name, query=query, body=body)
            if view["status"] == "DONE" or time.time() >= deadline:
                return view
            time.sleep(0.01)

    def _aggregated_operations(self, *, query, body):
        items: dict[str, dict] = {}
        for (zone, _), op in self.operations.items():
            view = self._op_view(op)
            if _matches(view, query.get("filter")):
                items.setdefault(f"zones/{zone}" if zone else "global", {"operations": []})["operations"].append(view)
        return {"kind": "compute#operationAggregatedList", "items": items}

    # ------------------------------------------------------------------ firewalls
    def _fw_url(self, name: str) -> str:
        return f"{BASE}/projects/{self.project}/global/firewalls/{name}"

    def _fw_insert(self, *, query, body):
        b = dict(body or {})
        name = b.get("name", "")
        if not _NAME.match(name):
            raise _invalid(f"Invalid value for field 'resource.name': '{name}'.")
        if name in self.firewalls:
            raise ApiError(409, f"The resource 'projects/{self.project}/global/firewalls/{name}' already exists",
                           "alreadyExists")
        if not b.get("allowed") and not b.get("denied"):
            raise _invalid("Invalid value for field 'resource.allowed': at least one rule is required.")
        self.firewalls[name] = b | {"kind": "compute#firewall", "id": str(next(self._ids)), "selfLink": self._fw_url(name),
                                    "creationTimestamp": _now(), "direction": b.get("direction", "INGRESS"),
                                    "priority": b.get("priority", 1000)}
        return self._op(None, "insert", self._fw_url(name))

    def _fw_get(self, name, *, query, body):
        if name not in self.firewalls:
            raise _not_found(f"projects/{self.project}/global/firewalls/{name}")
        return self.firewalls[name]

    def _fw_list(self, *, query, body):
        return {"kind": "compute#firewallList", "items": [f for f in self.firewalls.values()
                                                          if _matches(f, query.get("filter"))]}

    def _fw_patch(self, name, *, query, body):
        fw = self._fw_get(name, query=query, body=body)
        fw.update({k: v for k, v in (body or {}).items() if k != "name"})
        return self._op(None, "patch", self._fw_url(name))

    def _fw_delete(self, name, *, query, body):
        self._fw_get(name, query=query, body=body)
        del self.firewalls[name]
        return self._op(None, "delete", self._fw_url(name))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())
