"""A local fake of the Kubernetes API server subset skybroker's Kubernetes driver uses, driven by the
official `kubernetes` Python client, whose pods can be real sshd nodes (tests/infra/netns.NodePool).

    fake = K8sFake(nodes=[node("n1", cpu="8", memory="32Gi", gpus=2, gpu_label="NVIDIA-A100-SXM4-40GB")],
                   node_pool=pool).start()
    fake.write_kubeconfig(path)          # a kubeconfig whose context "fake" points here (token auth)
    fake.deny("create", "pods")          # RBAC: 403 Forbidden (and SelfSubjectAccessReview says no)
    fake.quota("compute", {"requests.nvidia.com/gpu": "1"})   # a ResourceQuota in the namespace
    fake.fail_auth()                     # every call 401 Unauthorized
    fake.delete_pod("c-1a2b-0")          # `kubectl delete pod` (a preemption: the pod is gone)
    fake.lose_node("n1")                 # the node goes NotReady: its pods turn Ready=False, then are deleted
    fake.close()

Why a fake: no kube-apiserver is reachable from the package registries here (Debian 12 ships only
kubectl and etcd; PyPI and npm have no apiserver binary; envtest/kind download binaries at run time).

What it reproduces, as the API server does (and as the client sends it):
- Paths: GET /api/v1/nodes; GET|POST /api/v1/namespaces/{ns}/{pods,services,secrets};
  GET|DELETE /api/v1/namespaces/{ns}/{pods,services,secrets}/{name}; PUT .../services/{name};
  GET /api/v1/namespaces/{ns}/resourcequotas; POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews;
  GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=22 as a websocket (RFC 6455 handshake,
  subprotocol `v4.channel.k8s.io`: per port a data channel 0 and an error channel 1, each opened by a
  frame carrying the port number as two little-endian bytes; client frames masked), bridged to the
  pod's port 22 over TCP.
- Lists: `{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion"}, "items": [...]}`,
  `labelSelector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, AND-ed by
  commas. No watch, no pagination (`limit`/`continue`), no fieldSelector: the driver polls lists.
- Errors: `Status` objects (`kind: Status`, `status: Failure`, `message`, `reason`, `details`, `code`):
  401 Unauthorized, 403 Forbidden (RBAC, and ResourceQuota admission: `exceeded quota: ...`),
  404 NotFound, 409 AlreadyExists, 422 Invalid (with `details.causes[]`: bad names, a missing image,
  unparseable quantities, extended-resource requests without equal limits), 429 TooManyRequests.
- Objects get `uid`, `resourceVersion`, `creationTimestamp`; pods start `Pending` and are scheduled by a
  small scheduler: a node with enough free allocatable cpu/memory/GPUs (minus the requests of the pods on
  it), Ready and not cordoned, matching `nodeSelector` / required node affinity (`In`), whose taints
  (NoSchedule) are tolerated. Otherwise `PodScheduled=False, reason Unschedulable`, message
  "0/N nodes are available: N Insufficient nvidia.com/gpu." Scheduled pods become `Running` with a
  `podIP` (the sshd node's address, booted with the key of the Secret the pod mounts), Ready=True,
  containerStatuses running; a missing image name `does-not-exist` gives ErrImagePull → ImagePullBackOff.
- Deletion: `deletionTimestamp` set, the pod disappears after its grace period (capped by
  `max_grace`); its sshd node is killed at once. Services: `clusterIP: None` (headless), ClusterIP,
  NodePort (nodePorts assigned), LoadBalancer (an ingress IP in status).
Not reproduced: other API groups, watch, field selectors, patch, server-side apply, events.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DEC = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def qty(text) -> float:
    s = str(text).strip()
    for suf, mult in _BIN.items():
        if s.endswith(suf):
            return float(s[:-2]) * mult
    if s and s[-1] in _DEC:
        return float(s[:-1]) * _DEC[s[-1]]
    return float(s)


def node(name: str, cpu="8", memory="32Gi", gpus: int = 0, gpu_label: str | None = None,
         gpu_key="nvidia.com/gpu.product", resource="nvidia.com/gpu", labels=None, taints=None) -> dict:
    alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
    lbl = {"kubernetes.io/hostname": name, **(labels or {})}
    if gpus:
        alloc[resource] = str(gpus)
        if gpu_label:
            lbl[gpu_key] = gpu_label
    return {"metadata": {"name": name, "labels": lbl, "uid": str(uuid.uuid4())},
            "spec": {"taints": taints or []},
            "status": {"allocatable": dict(alloc), "capacity": dict(alloc),
                       "conditions": [{"type": "Ready", "status": "True"}]}}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": message, "reason": reason, "details": details or {}, "code": code}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _parse_selector(sel: str | None):
    terms = []
    if not sel:
        return terms
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", sel):
        part = part.strip()
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if m:
            terms.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", part)
        if m:
            terms.append((m.group(1), {"==": "=", "=": "=", "!=": "!="}[m.group(2)], m.group(3)))
            continue
        if part.startswith("!"):
            terms.append((part[1:], "!exists", None))
        elif re.fullmatch(r"[\w./-]+", part):
            terms.append((part, "exists", None))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return terms


def _selected(labels: dict, terms) -> bool:
    for key, op, val in terms:
        have = labels.get(key)
        if op == "=":
            ok = have == val
        elif op == "!=":
            ok = have != val
        elif op == "exists":
            ok = key in labels
        elif op == "!exists":
            ok = key not in labels
        elif op == "in":
            ok = have is not None and have in val
        else:  # notin
            ok = have is None or have not in val
        if not ok:
            return False
    return True


class K8sFake:
    def __init__(self, nodes=None, *, node_pool=None, namespace="default", token="fake-token", boot_delay=0.0,
                 max_grace: float = 0.0, eviction_delay: float = 1.0):
        self.nodes = {n["metadata"]["name"]: n for n in (nodes or [node("n1")])}
        self.node_pool = node_pool
        self.namespaces = {namespace, "kube-system"}
        self.token = token
        self.boot_delay, self.max_grace, self.eviction_delay = boot_delay, max_grace, eviction_delay
        self.lock = threading.RLock()
        self.objects: dict[str, dict[tuple[str, str], dict]] = {"pods": {}, "services": {}, "secrets": {},
                                                                 "resourcequotas": {}}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.denied: set[tuple[str, str]] = set()
        self._auth_fail = False
        self.throttle = 0  # the next N requests get 429
        self._rv = itertools.count(100)
        self._ips = itertools.count(2)
        self._ports = itertools.count(30000)
        self._nodes_of: dict[str, object] = {}  # pod uid → sshd node
        self.forwarded = 0  # portforward websockets opened
        self._server = None
        self.endpoint = ""

    # ------------------------------------------------------------------ control
    def write_kubeconfig(self, path, context="fake", namespace=None) -> str:
        import yaml

        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "fake-cluster", "cluster": {"server": self.endpoint}}],
               "users": [{"name": "fake-user", "user": {"token": self.token}}],
               "contexts": [{"name": context, "context": {"cluster": "fake-cluster", "user": "fake-user",
                                                          **({"namespace": namespace} if namespace else {})}}]}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return str(path)

    def deny(self, verb: str, resource: str) -> None:
        self.denied.add((verb, resource))

    def fail_auth(self, on: bool = True) -> None:
        self._auth_fail = on

    def quota(self, name: str, hard: dict, namespace="default") -> None:
        with self.lock:
            self.objects["resourcequotas"][(namespace, name)] = {
                "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
                "spec": {"hard": dict(hard)}, "status": {"hard": dict(hard), "used": {}}}

    def pods(self, namespace="default") -> list[dict]:
        with self.lock:
            self._tick()
            return [copy.deepcopy(p) for (ns, _), p in self.objects["pods"].items() if ns == namespace]

    def get(self, kind: str, name: str, namespace="default") -> dict | None:
        with self.lock:
            return copy.deepcopy(self.objects[kind].get((namespace, name)))

    def delete_pod(self, name: str, namespace="default") -> None:
        with self.lock:
            pod = self.objects["pods"].pop((namespace, name), None)
        if pod is not None:
            self._kill(pod)

    def evict(self, name: str, namespace="default") -> None:
        """Kubelet eviction (node pressure): the pod stays, Failed with reason Evicted; its processes die."""
        with self.lock:
            pod = self.objects["pods"][(namespace, name)]
            pod["status"].update(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
            pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        self._kill(pod)

    def lose_node(self, name: str) -> None:
        """The node stops answering: NotReady at once, its pods Ready=False, deleted after eviction_delay
        (the taint-based eviction of the node lifecycle controller); their processes die."""
        with self.lock:
            nd = self.nodes[name]
            nd["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]
            for pod in self.objects["pods"].values():
                if pod["spec"].get("nodeName") == name:
                    pod["status"]["conditions"] = [c if c["type"] != "Ready" else {**c, "status": "False"}
                                                   for c in pod["status"].get("conditions", [])]
                    pod["metadata"].setdefault("deletionTimestamp", _now())
                    pod["_gone_at"] = time.time() + self.eviction_delay
                    self._kill(pod)

    # ------------------------------------------------------------------ server
    def start(self) -> "K8sFake":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                    if self.headers.get("Upgrade", "").lower() == "websocket":
                        return fake._websocket(self)
                    status, out = fake._dispatch(self.command, self.path, body, self.headers)
                except ApiError as exc:
                    status, out = exc.code, exc.body
                except ValueError as exc:
                    status, out = 400, ApiError(400, "BadRequest", f"invalid JSON: {exc}").body
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="k8s-fake").start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            pods = list(self.objects["pods"].values())
            self.objects["pods"].clear()
        for p in pods:
            self._kill(p)

    # ------------------------------------------------------------------ routing
    def _auth(self, headers) -> None:
        if self._auth_fail or headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _rbac(self, verb: str, resource: str, ns: str | None) -> None:
        if (verb, resource) in self.denied:
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise ApiError(403, "Forbidden", f'{resource} is forbidden: User "fake-user" cannot {verb} resource '
                           f'"{resource}" in API group ""{where}', {"kind": resource})

    def _dispatch(self, method: str, raw_path: str, body, headers):
        url = urllib.parse.urlsplit(raw_path)
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        with self.lock:
            self.requests.append((method, raw_path, body))
        self._auth(headers)
        if self.throttle > 0:
            self.throttle -= 1
            raise ApiError(429, "TooManyRequests", "the server has received too many requests and has asked us to "
                           "try again later", {"retryAfterSeconds": 1})
        path = url.path
        with self.lock:
            self._tick()
            if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
                attrs = (body or {}).get("spec", {}).get("resourceAttributes", {})
                out = copy.deepcopy(body)
                out["status"] = {"allowed": (attrs.get("verb"), attrs.get("resource")) not in self.denied}
                return 201, out
            if path == "/api/v1/nodes" and method == "GET":
                self._rbac("list", "nodes", None)
                terms = _parse_selector(q.get("labelSelector"))
                items = [copy.deepcopy(n) for n in self.nodes.values() if _selected(n["metadata"]["labels"], terms)]
                return 200, self._list("NodeList", items)
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(pods|services|secrets|resourcequotas)(?:/([^/]+))?", path)
            if not m:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            ns, kind, name = m.groups()
            if ns not in self.namespaces:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete", "PUT": "update"}[method]
            self._rbac(verb, kind, ns)
            store = self.objects[kind]
            if kind == "resourcequotas":
                self._refresh_quotas(ns)
            if method == "GET" and not name:
                terms = _parse_selector(q.get("labelSelector"))
                items = [self._view(o) for (n2, _), o in sorted(store.items()) if n2 == ns
                         and _selected(o["metadata"].get("labels") or {}, terms)]
                return 200, self._list({"pods": "PodList", "services": "ServiceList", "secrets": "SecretList",
                                        "resourcequotas": "ResourceQuotaList"}[kind], items)
            if method == "POST" and not name:
                return 201, self._view(self._create(ns, kind, body or {}))
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "method not allowed")
            obj = store.get((ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})
            if method == "GET":
                return 200, self._view(obj)
            if method == "DELETE":
                return 200, self._delete(ns, kind, name, q)
            if method == "PUT":
                if kind != "services":
                    raise ApiError(405, "MethodNotAllowed", "method not allowed")
                if (body or {}).get("metadata", {}).get("resourceVersion") != obj["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on services "{name}": the object '
                                   "has been modified; please apply your changes to the latest version and try again")
                new = copy.deepcopy(body)
                new["metadata"].update(uid=obj["metadata"]["uid"], resourceVersion=str(next(self._rv)),
                                       creationTimestamp=obj["metadata"]["creationTimestamp"], namespace=ns)
                self._service_status(new)
                store[(ns, name)] = new
                return 200, self._view(new)
        raise ApiError(405, "MethodNotAllowed", "method not allowed")

    def _list(self, kind: str, items: list) -> dict:
        return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(next(self._rv))}, "items": items}

    @staticmethod
    def _view(obj: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ create / delete
    def _invalid(self, kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
        msg = f'{kind[:-1].capitalize()} "{name}" is invalid: ' + "; ".join(f"{f}: {m}" for f, m in causes)
        return ApiError(422, "Invalid", msg, {"name": name, "kind": kind,
                                              "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                                         for f, m in causes]})

    def _create(self, ns: str, kind: str, body: dict) -> dict:
        md = body.get("metadata") or {}
        name = md.get("name") or ""
        causes = []
        if not _NAME.match(name) or len(name) > (63 if kind != "secrets" else 253):
            causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                           "lower case alphanumeric characters or '-'"))
        for k, v in (md.get("labels") or {}).items():
            if len(str(v)) > 63 or not re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?", str(v)):
                causes.append(("metadata.labels", f'Invalid value: "{v}"'))
        if kind == "pods":
            causes += self._validate_pod(body)
        if causes:
            raise self._invalid(kind, name, causes)
        if (ns, name) in self.objects[kind]:
            raise ApiError(409, "AlreadyExists", f'{kind} "{name}" already exists', {"name": name, "kind": kind})
        obj = copy.deepcopy(body)
        obj["metadata"] = {**md, "namespace": ns, "uid": str(uuid.uuid4()), "resourceVersion": str(next(self._rv)),
                           "creationTimestamp": _now()}
        if kind == "pods":
            self._admit_quota(ns, name, obj)
            obj["status"] = {"phase": "Pending", "conditions": [], "qosClass": "Burstable"}
            obj["_boot_at"] = None
        elif kind == "services":
            self._service_status(obj)
        self.objects[kind][(ns, name)] = obj
        if kind == "pods":
            self._schedule(obj)
        return obj

    def _validate_pod(self, body: dict) -> list[tuple[str, str]]:
        causes = []
        spec = body.get("spec") or {}
        cs = spec.get("containers") or []
        if not cs:
            causes.append(("spec.containers", "Required value"))
        for i, c in enumerate(cs):
            if not c.get("image"):
                causes.append((f"spec.containers[{i}].image", "Required value"))
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for part, vals in (("requests", req), ("limits", lim)):
                for r, v in vals.items():
                    try:
                        qty(v)
                    except ValueError:
                        causes.append((f"spec.containers[{i}].resources.{part}[{r}]", f'Invalid value: "{v}"'))
            for r in set(req) | set(lim):
                if "/" in r and not r.startswith("kubernetes.io/") and req.get(r) != lim.get(r):
                    causes.append((f"spec.containers[{i}].resources.requests[{r}]",
                                   f"Invalid value: \"{req.get(r)}\": must be equal to {r} limit of {lim.get(r)}"))
        for v in spec.get("volumes") or []:
            if "secret" in v and not v["secret"].get("secretName"):
                causes.append(("spec.volumes.secret.secretName", "Required value"))
        return causes

    @staticmethod
    def _pod_requests(pod: dict) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in pod["spec"].get("containers") or []:
            res = c.get("resources") or {}
            for r, v in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
                out[r] = out.get(r, 0.0) + qty(v)
        return out

    def _admit_quota(self, ns: str, name: str, pod: dict) -> None:
        want = self._pod_requests(pod)
        for (qns, qname), q in self.objects["resourcequotas"].items():
            if qns != ns:
                continue
            used = self._quota_used(ns)
            hard = q["spec"]["hard"]
            over = []
            for key, limit in hard.items():
                base = key.split(".", 1)[1] if key.startswith(("requests.", "limits.")) else key
                add = 1.0 if base in ("pods", "count/pods") else want.get(base, 0.0)
                if used.get(base, 0.0) + add > qty(limit) + 1e-9:
                    over.append((key, add, used.get(base, 0.0), limit))
            if over:
                req = ",".join(f"{k}={a:g}" for k, a, _, _ in over)
                use = ",".join(f"{k}={u:g}" for k, _, u, _ in over)
                lim = ",".join(f"{k}={lm}" for k, _, _, lm in over)
                raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: exceeded quota: {qname}, requested: '
                               f"{req}, used: {use}, limited: {lim}", {"name": name, "kind": "pods"})

    def _refresh_quotas(self, ns: str) -> None:
        """status.used of the namespace's quotas, as the quota admission and controller keep it."""
        used = self._quota_used(ns)
        for (qns, _), q in self.objects["resourcequotas"].items():
            if qns == ns:
                q["status"]["used"] = {k: f"{used.get(k.split('.', 1)[1] if k.startswith(('requests.', 'limits.')) else k, 0):g}"
                                       for k in q["spec"]["hard"]}

    def _quota_used(self, ns: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for (pns, _), p in self.objects["pods"].items():
            if pns != ns or p["status"].get("phase") in ("Failed", "Succeeded"):
                continue
            for r, v in self._pod_requests(p).items():
                used[r] = used.get(r, 0.0) + v
            used["pods"] = used.get("pods", 0.0) + 1
            used["count/pods"] = used["pods"]
        return used

    def _service_status(self, svc: dict) -> None:
        spec = svc.setdefault("spec", {})
        if spec.get("clusterIP") != "None":
            spec.setdefault("clusterIP", f"10.96.0.{next(self._ips) % 250}")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            for p in spec.get("ports") or []:
                p.setdefault("nodePort", next(self._ports))
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]} if spec.get("type") == "LoadBalancer"
                         else {}}

    def _delete(self, ns: str, kind: str, name: str, q: dict) -> dict:
        obj = self.objects[kind][(ns, name)]
        if kind != "pods":
            del self.objects[kind][(ns, name)]
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "kind": kind, "uid": obj["metadata"]["uid"]}}
        grace = float(q.get("gracePeriodSeconds", obj["spec"].get("terminationGracePeriodSeconds", 30)))
        obj["metadata"].setdefault("deletionTimestamp", _now())
        obj["metadata"]["deletionGracePeriodSeconds"] = int(grace)
        obj["_gone_at"] = time.time() + min(grace, self.max_grace)
        self._kill(obj)
        view = self._view(obj)
        self._tick()
        return view

    # ------------------------------------------------------------------ scheduler and kubelet
    def _tick(self) -> None:
        now = time.time()
        for key, pod in list(self.objects["pods"].items()):
            if pod.get("_gone_at") is not None and now >= pod["_gone_at"]:
                del self.objects["pods"][key]
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            if not pod["spec"].get("nodeName"):
                self._schedule(pod)
            elif pod["status"]["phase"] == "Pending" and pod.get("_boot_at") is not None and now >= pod["_boot_at"]:
                self._start(pod)

    def _free(self, nd: dict) -> dict[str, float]:
        alloc = {r: qty(v) for r, v in nd["status"]["allocatable"].items()}
        for p in self.objects["pods"].values():
            if p["spec"].get("nodeName") == nd["metadata"]["name"] and p["status"]["phase"] not in ("Failed", "Succeeded"):
                for r, v in self._pod_requests(p).items():
                    alloc[r] = alloc.get(r, 0.0) - v
        return alloc

    def _schedule(self, pod: dict) -> None:
        want = self._pod_requests(pod)
        reasons: dict[str, int] = {}
        for nd in self.nodes.values():
            why = self._unfit(pod, nd, want)
            if why is None:
                pod["spec"]["nodeName"] = nd["metadata"]["name"]
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
                pod["_boot_at"] = time.time() + self.boot_delay
                if self.boot_delay == 0:
                    self._start(pod)
                return
            reasons[why] = reasons.get(why, 0) + 1
        msg = f"0/{len(self.nodes)} nodes are available: " + ", ".join(f"{n} {w}" for w, n in sorted(reasons.items())) + "."
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": msg, "lastTransitionTime": _now()}]

    def _unfit(self, pod: dict, nd: dict, want: dict) -> str | None:
        labels = nd["metadata"]["labels"]
        ready = {c["type"]: c["status"] for c in nd["status"]["conditions"]}.get("Ready")
        if ready != "True" or nd["spec"].get("unschedulable"):
            return "node(s) were unschedulable"
        for k, v in (pod["spec"].get("nodeSelector") or {}).items():
            if labels.get(k) != v:
                return "node(s) didn't match Pod's node affinity/selector"
        req = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
               .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms")
        if req and not any(all(e["operator"] == "In" and labels.get(e["key"]) in e["values"]
                               for e in t.get("matchExpressions") or []) for t in req):
            return "node(s) didn't match Pod's node affinity/selector"
        tol = pod["spec"].get("tolerations") or []
        for t in nd["spec"].get("taints") or []:
            if t.get("effect") == "NoSchedule" and not any(
                    x.get("key") == t["key"] and (x.get("operator") == "Exists" or x.get("value") == t.get("value"))
                    for x in tol):
                return f"node(s) had untolerated taint {{{t['key']}: {t.get('value', '')}}}"
        free = self._free(nd)
        for r, v in want.items():
            if free.get(r, 0.0) < v - 1e-9:
                return f"Insufficient {r}"
        return None

    def _start(self, pod: dict) -> None:
        c = pod["spec"]["containers"][0]
        if c["image"].startswith("does-not-exist"):
            pod["status"]["containerStatuses"] = [{"name": c["name"], "ready": False, "restartCount": 0, "image": c["image"],
                                                   "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                         "message": f'Back-off pulling image "{c["image"]}"'}}}]
            return
        ip = f"10.244.0.{next(self._ips) % 250}"
        if self.node_pool is not None:
            key = self._authorized_keys(pod)
            n = self.node_pool.add_node(key)
            self._nodes_of[pod["metadata"]["uid"]] = n
            ip = n.ip
        st = pod["status"]
        st.update(phase="Running", podIP=ip, podIPs=[{"ip": ip}], hostIP="192.0.2.10", startTime=_now())
        st["conditions"] = [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                            {"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "True"}]
        st["containerStatuses"] = [{"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
                                    "started": True, "state": {"running": {"startedAt": _now()}}}]

    def _authorized_keys(self, pod: dict) -> str:
        ns = pod["metadata"]["namespace"]
        for v in pod["spec"].get("volumes") or []:
            if "secret" in v:
                sec = self.objects["secrets"].get((ns, v["secret"]["secretName"]))
                if sec is not None and "authorized_keys" in (sec.get("data") or {}):
                    return base64.b64decode(sec["data"]["authorized_keys"]).decode()
        return ""

    def _kill(self, pod: dict) -> None:
        n = self._nodes_of.pop(pod["metadata"]["uid"], None)
        if n is not None and self.node_pool is not None:
            self.node_pool.kill(n)

    # ------------------------------------------------------------------ portforward (websocket)
    def _websocket(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        with self.lock:
            self.requests.append(("GET", h.path, None))
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward", url.path)
        try:
            self._auth(h.headers)
            if not m:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            ns, name = m.groups()
            self._rbac("create", "pods/portforward", ns)
            with self.lock:
                self._tick()
                pod = self.objects["pods"].get((ns, name))
                if pod is None:
                    raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
                ip = pod["status"].get("podIP")
                if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                    raise ApiError(400, "BadRequest", f"pod {name} is not running")
            ports = [int(p) for p in q.get("ports", "").split(",") if p]
            if len(ports) != 1:
                raise ApiError(400, "BadRequest", "this fake forwards exactly one port")
            protos = [p.strip() for p in (h.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
            if "v4.channel.k8s.io" not in protos:
                raise ApiError(400, "BadRequest", "unsupported websocket subprotocol")
        except ApiError as exc:
            data = json.dumps(exc.body).encode()
            h.send_response(exc.code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        accept = base64.b64encode(hashlib.sha1((h.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()).decode()
        h.send_response(101, "Switching Protocols")
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept)
        h.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        h.end_headers()
        h.wfile.flush()
        h.close_connection = True
        ws = h.connection
        port = ports[0]
        self.forwarded += 1
        _ws_send(ws, bytes([0]) + struct.pack("<H", port))
        _ws_send(ws, bytes([1]) + struct.pack("<H", port))
        try:
            tcp = socket.create_connection((ip, port), timeout=5)
        except OSError as exc:
            _ws_send(ws, bytes([1]) + f"error forwarding port {port} to pod: {exc}".encode())
            _ws_send(ws, struct.pack(">H", 1000), opcode=8)
            return
        tcp.settimeout(None)
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _FrameReader(ws)
        try:
            while True:
                r, _, _ = select.select([ws, tcp], [], [], 1.0)
                if tcp in r:
                    data = tcp.recv(65536)
                    if not data:
                        break
                    _ws_send(ws, b"\x00" + data)
                if ws in r:
                    frames = reader.read()
                    if frames is None:
                        break
                    for opcode, payload in frames:
                        if opcode == 8:
                            raise _Closed()
                        if opcode == 9:
                            _ws_send(ws, payload, opcode=10)
                        elif opcode in (1, 2) and payload and payload[0] == 0:
                            tcp.sendall(payload[1:])
        except (_Closed, OSError):
            pass
        finally:
            tcp.close()
            try:
                _ws_send(ws, struct.pack(">H", 1000), opcode=8)
            except OSError:
                pass


class _Closed(Exception):
    pass


def _ws_send(sock, payload: bytes, opcode: int = 2) -> None:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    sock.sendall(head + payload)


class _FrameReader:
    """Incremental parser of (masked) client frames; read() returns complete frames or None at EOF."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def read(self):
        data = self.sock.recv(65536)
        if not data:
            return None
        self.buf += data
        out = []
        while True:
            if len(self.buf) < 2:
                return out
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return out
                n, off = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return out
                n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
            masked = b1 & 0x80
            need = off + (4 if masked else 0) + n
            if len(self.buf) < need:
                return out
            payload = self.buf[off + (4 if masked else 0):need]
            if masked:
                mask = self.buf[off:off + 4]
                key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
                payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
            self.buf = self.buf[need:]
            out.append((b0 & 0x0F, payload))
