"""A local fake of the Lambda Cloud REST API (v1), enough for skybroker's Lambda driver, with instances
that can be real sshd nodes (tests/infra/netns.NodePool).

    fake = LambdaFake(node_pool=pool).start()    # fake.endpoint = "http://127.0.0.1:PORT/api/v1"
    env = fake.env()        # BROKER_LAMBDA_ENDPOINT, LAMBDA_API_KEY, fast launch pacing / polling
    fake.no_capacity("us-east-1", "gpu_1x_a100")   # that region has no capacity for the type
    fake.quota = 1          # at most 1 live instance on the account: launches beyond → global/quota-exceeded
    fake.fail_auth()        # every call: 401 global/invalid-api-key
    fake.launch_interval = 12.0   # launches closer together than this → 429 (Lambda's launch rate limit)
    fake.vanish(instance_id)      # the instance is gone (terminated outside skybroker, host failure)
    fake.close()

What it reproduces (from Lambda's published OpenAPI description, v1.5.x, and the docs' notes):
- Paths: GET /instances, GET /instances/{id}, POST /instance-operations/launch,
  POST /instance-operations/terminate, GET /instance-types, GET|POST /ssh-keys, DELETE /ssh-keys/{id},
  GET|PUT /firewall-rules. Bodies are JSON; successes are `{"data": ...}`.
- Auth: `Authorization: Bearer <key>` or HTTP Basic with the key as user name; anything else is 401
  `global/invalid-api-key`.
- Errors: `{"error": {"code", "message", "suggestion"}, "field_errors": {...}}` with the documented codes
  (global/invalid-api-key 401, global/invalid-parameters 400, global/object-does-not-exist 404,
  global/quota-exceeded 400, instance-operations/launch/insufficient-capacity 400). A 429 has a plain
  text body (its shape is not documented; the client must not depend on it).
- Launch: region_name, instance_type_name and exactly one existing ssh_key_names entry are required;
  quantity 1 (the documented maximum), name ≤ 64 characters; unknown fields are rejected
  (global/invalid-parameters), except the documented optional `image`, `file_system_names`,
  `user_data`, `tags`. The response holds `instance_ids`.
- Instance-types: each type with `instance_type` (name, description, gpu_description,
  price_cents_per_hour, specs {vcpus, memory_gib, storage_gib, gpus}) and `regions_with_capacity_available`.
- Instances: status booting → active (after boot_delay; the node boots then), terminating → gone (after
  term_delay); fields id, name, ip, private_ip, status, ssh_key_names, file_system_names, region
  {name, description}, instance_type, hostname. No pagination (the API has none).
- Firewall rules: account-wide; PUT replaces the whole list ({"data": [...]}); each rule has protocol
  (tcp/udp/icmp/all), port_range [lo, hi] (tcp/udp/all), source_network (CIDR), description. The
  initial list is Lambda's default (SSH from anywhere, ICMP).
Not reproduced: file systems, images listing, reservations, restart, per-region firewall rulesets.
"""
from __future__ import annotations

import base64
import csv
import ipaddress
import itertools
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CATALOG = Path(__file__).resolve().parents[2].parent / "shared" / "catalogs-upstream" / "lambda" / "vms.csv"
LAUNCH_FIELDS = {"region_name", "instance_type_name", "ssh_key_names", "file_system_names", "quantity", "name",
                 "image", "user_data", "tags"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, suggestion: str | None = None, field_errors=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "message": message, "suggestion": suggestion}}
        if field_errors:
            self.body["field_errors"] = field_errors


def _invalid(msg: str, field: str | None = None) -> ApiError:
    fe = {field: {"code": "global/invalid-parameters", "message": msg}} if field else None
    return ApiError(400, "global/invalid-parameters", msg, None, fe)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "global/object-does-not-exist", f"Specified {what} does not exist.")


def _types_from_catalog() -> dict[str, dict]:
    """instance type → (specs, price, regions) from the shared upstream catalog (or a small default)."""
    out: dict[str, dict] = {}
    rows = list(csv.DictReader(open(CATALOG))) if CATALOG.is_file() else [
        {"InstanceType": "gpu_1x_a100", "AcceleratorName": "A100", "AcceleratorCount": "1.0", "vCPUs": "30.0",
         "MemoryGiB": "200.0", "Price": "1.99", "Region": r} for r in ("us-east-1", "us-west-1", "us-south-1")]
    for r in rows:
        t = out.setdefault(r["InstanceType"], {"gpu": r["AcceleratorName"], "gpus": int(float(r["AcceleratorCount"] or 0)),
                                               "vcpus": int(float(r["vCPUs"])), "mem": int(float(r["MemoryGiB"])),
                                               "cents": round(float(r["Price"]) * 100), "regions": []})
        t["regions"].append(r["Region"])
    return out


class LambdaFake:
    def __init__(self, *, api_key: str = "secret-test-key", node_pool=None, boot_delay: float = 0.0,
                 term_delay: float = 0.0):
        self.api_key = api_key
        self.node_pool = node_pool
        self.boot_delay, self.term_delay = boot_delay, term_delay
        self.lock = threading.RLock()
        self.types = _types_from_catalog()
        self.capacity: dict[str, set[str]] = {t: set(v["regions"]) for t, v in self.types.items()}
        self.instances: dict[str, dict] = {}
        self.ssh_keys: list[dict] = []
        self.firewall_rules: list[dict] = [
            {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "Allow SSH"},
            {"protocol": "icmp", "source_network": "0.0.0.0/0", "description": "Allow ICMP"}]
        self.requests: list[tuple[str, str, dict | None]] = []
        self.quota: int | None = None
        self.launch_interval = 0.0
        self._last_launch = 0.0
        self._auth_fail = False
        self._ips = itertools.count(10)
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------ control
    def env(self) -> dict[str, str]:
        return {"BROKER_LAMBDA_ENDPOINT": self.endpoint, "LAMBDA_API_KEY": self.api_key,
                "BROKER_LAMBDA_LAUNCH_INTERVAL": "0", "BROKER_LAMBDA_POLL": "0.05", "BROKER_LAMBDA_BACKOFF": "0.05"}

    def no_capacity(self, region: str, instance_type: str | None = None) -> None:
        with self.lock:
            for t in ([instance_type] if instance_type else list(self.capacity)):
                self.capacity[t].discard(region)

    def fail_auth(self, on: bool = True) -> None:
        self._auth_fail = on

    def vanish(self, instance_id: str) -> None:
        with self.lock:
            inst = self.instances.pop(instance_id, None)
        if inst is not None:
            self._kill(inst)

    def live(self) -> list[dict]:
        with self.lock:
            self._tick()
            return [self._view(i) for i in self.instances.values() if i["status"] != "terminated"]

    # ------------------------------------------------------------------ server
    def start(self) -> "LambdaFake":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                    status, out = 200, {"data": fake._dispatch(self.command, self.path, body, self.headers)}
                    data, ctype = json.dumps(out).encode(), "application/json"
                except ApiError as exc:
                    status, data, ctype = exc.status, json.dumps(exc.body).encode(), "application/json"
                except _RateLimited:
                    status, data, ctype = 429, b"Too Many Requests", "text/plain"
                except ValueError:
                    exc = _invalid("Request body is not valid JSON.")
                    status, data, ctype = exc.status, json.dumps(exc.body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="lambda-fake").start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            insts = list(self.instances.values())
            self.instances.clear()
        for inst in insts:
            self._kill(inst)

    # ------------------------------------------------------------------ routing
    def _authorized(self, headers) -> bool:
        if self._auth_fail:
            return False
        h = headers.get("Authorization") or ""
        if h.startswith("Bearer "):
            return h[7:] == self.api_key
        if h.startswith("Basic "):
            try:
                user = base64.b64decode(h[6:]).decode().split(":", 1)[0]
            except ValueError:
                return False
            return user == self.api_key or h[6:] == self.api_key
        return False

    def _dispatch(self, method: str, path: str, body, headers):
        path = path.split("?", 1)[0]
        with self.lock:
            self.requests.append((method, path, body))
        if not self._authorized(headers):
            raise ApiError(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                           "Check your API key or create a new one, then try again.")
        if not path.startswith("/api/v1/"):
            raise _not_found("path")
        route = path[len("/api/v1"):]
        with self.lock:
            self._tick()
            if (method, route) == ("GET", "/instances"):
                return [self._view(i) for i in self.instances.values() if i["status"] != "terminated"]
            m = re.fullmatch(r"/instances/([0-9a-f]+)", route)
            if m and method == "GET":
                inst = self.instances.get(m.group(1))
                if inst is None:
                    raise _not_found("instance")
                return self._view(inst)
            if (method, route) == ("POST", "/instance-operations/launch"):
                return self._launch(body or {})
            if (method, route) == ("POST", "/instance-operations/terminate"):
                return self._terminate(body or {})
            if (method, route) == ("GET", "/instance-types"):
                return {name: {"instance_type": self._type_view(name),
                               "regions_with_capacity_available": [{"name": r, "description": r}
                                                                   for r in sorted(self.capacity[name])]}
                        for name in self.types}
            if (method, route) == ("GET", "/ssh-keys"):
                return [dict(k) for k in self.ssh_keys]
            if (method, route) == ("POST", "/ssh-keys"):
                return self._add_key(body or {})
            m = re.fullmatch(r"/ssh-keys/([0-9a-f]+)", route)
            if m and method == "DELETE":
                before = len(self.ssh_keys)
                self.ssh_keys = [k for k in self.ssh_keys if k["id"] != m.group(1)]
                if len(self.ssh_keys) == before:
                    raise _not_found("SSH key")
                return {}
            if (method, route) == ("GET", "/firewall-rules"):
                return [dict(r) for r in self.firewall_rules]
            if (method, route) == ("PUT", "/firewall-rules"):
                return self._set_rules(body or {})
        raise _not_found("path")

    # ------------------------------------------------------------------ handlers
    def _type_view(self, name: str) -> dict:
        t = self.types[name]
        desc = f"{t['gpus']}x {t['gpu']}" if t["gpu"] else f"{t['vcpus']} vCPUs"
        return {"name": name, "description": desc, "gpu_description": t["gpu"] or "", "price_cents_per_hour": t["cents"],
                "specs": {"vcpus": t["vcpus"], "memory_gib": t["mem"], "storage_gib": 512, "gpus": t["gpus"]}}

    def _launch(self, body: dict) -> dict:
        if time.monotonic() - self._last_launch < self.launch_interval:
            raise _RateLimited()
        unknown = set(body) - LAUNCH_FIELDS
        if unknown:
            raise _invalid(f"Unknown field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
        for f in ("region_name", "instance_type_name", "ssh_key_names"):
            if f not in body:
                raise _invalid(f"Missing required field {f}.", f)
        itype, region = body["instance_type_name"], body["region_name"]
        if itype not in self.types:
            raise _invalid(f"Invalid instance type {itype}.", "instance_type_name")
        if region not in self.types[itype]["regions"]:
            raise _invalid(f"Invalid region {region}.", "region_name")
        keys = body["ssh_key_names"]
        if not isinstance(keys, list) or len(keys) != 1:
            raise _invalid("Exactly one SSH key must be specified.", "ssh_key_names")
        key = next((k for k in self.ssh_keys if k["name"] == keys[0]), None)
        if key is None:
            raise _not_found("SSH key")
        qty = body.get("quantity", 1)
        if qty != 1:
            raise _invalid("quantity must be 1.", "quantity")
        name = body.get("name")
        if name is not None and not (1 <= len(name) <= 64):
            raise _invalid("Name must be 1-64 characters.", "name")
        if region not in self.capacity[itype]:
            raise ApiError(400, "instance-operations/launch/insufficient-capacity",
                           "Not enough capacity to fulfill launch request.", "Choose an instance type with more "
                           "availability, or try again later.")
        live = [i for i in self.instances.values() if i["status"] in ("booting", "active", "unhealthy")]
        if self.quota is not None and len(live) + qty > self.quota:
            raise ApiError(400, "global/quota-exceeded", "Quota exceeded.", "Contact Support to increase your quota.")
        self._last_launch = time.monotonic()
        iid = uuid.uuid4().hex
        n = next(self._ips)
        self.instances[iid] = {"id": iid, "name": name, "status": "booting", "ip": None, "private_ip": None,
                               "ssh_key_names": list(keys), "file_system_names": body.get("file_system_names") or [],
                               "region": {"name": region, "description": region}, "type": itype,
                               "_pubkey": key["public_key"], "_boot_at": time.time() + self.boot_delay,
                               "_fake_ip": f"192.0.2.{n % 250}", "_node": None, "_image": body.get("image")}
        return {"instance_ids": [iid]}

    def _terminate(self, body: dict) -> dict:
        ids = body.get("instance_ids")
        if not isinstance(ids, list) or not ids:
            raise _invalid("instance_ids must be a non-empty list.", "instance_ids")
        missing = [i for i in ids if i not in self.instances or self.instances[i]["status"] == "terminated"]
        if missing:
            raise _not_found("instance")
        out = []
        for iid in ids:
            inst = self.instances[iid]
            if inst["status"] != "terminating":
                inst["status"] = "terminating"
                inst["_gone_at"] = time.time() + self.term_delay
                self._kill(inst)
            out.append(self._view(inst))
        return {"terminated_instances": out}

    def _add_key(self, body: dict) -> dict:
        name, pub = body.get("name"), body.get("public_key")
        if not name or len(name) > 64:
            raise _invalid("name is required (at most 64 characters).", "name")
        if any(k["name"] == name for k in self.ssh_keys):
            raise _invalid(f"An SSH key named {name} already exists.", "name")
        if not pub:
            raise _invalid("this fake does not generate key pairs", "public_key")
        key = {"id": uuid.uuid4().hex, "name": name, "public_key": pub}
        self.ssh_keys.append(key)
        return dict(key)

    def _set_rules(self, body: dict) -> list[dict]:
        rules = body.get("data")
        if not isinstance(rules, list):
            raise _invalid("data must be a list of firewall rules.", "data")
        for r in rules:
            proto = r.get("protocol")
            if proto not in ("tcp", "udp", "icmp", "all"):
                raise _invalid(f"Invalid protocol {proto!r}.", "protocol")
            if proto in ("tcp", "udp", "all"):
                pr = r.get("port_range")
                if not (isinstance(pr, list) and len(pr) == 2 and 1 <= pr[0] <= pr[1] <= 65535):
                    raise _invalid("port_range must be [low, high] within 1-65535.", "port_range")
            try:
                ipaddress.ip_network(r.get("source_network", ""))
            except ValueError:
                raise _invalid("source_network must be a CIDR block.", "source_network") from None
        self.firewall_rules = [dict(r) for r in rules]
        return [dict(r) for r in self.firewall_rules]

    # ------------------------------------------------------------------ lifecycle
    def _tick(self) -> None:
        now = time.time()
        for iid, inst in list(self.instances.items()):
            if inst["status"] == "booting" and now >= inst["_boot_at"]:
                self._boot(inst)
            elif inst["status"] == "terminating" and now >= inst.get("_gone_at", 0):
                inst["status"] = "terminated"
                del self.instances[iid]

    def _boot(self, inst: dict) -> None:
        if self.node_pool is not None:
            node = self.node_pool.add_node(inst["_pubkey"])
            inst["_node"], inst["ip"], inst["private_ip"] = node, node.ip, node.ip
        else:
            inst["ip"] = inst["private_ip"] = inst["_fake_ip"]
        inst["status"] = "active"

    def _kill(self, inst: dict) -> None:
        node, inst["_node"] = inst.get("_node"), None
        if node is not None and self.node_pool is not None:
            self.node_pool.kill(node)

    def _view(self, inst: dict) -> dict:
        out = {k: v for k, v in inst.items() if not k.startswith("_") and k != "type"}
        out["instance_type"] = self._type_view(inst["type"])
        out["hostname"] = f"{(inst['ip'] or '0-0-0-0').replace('.', '-')}.cloud.lambdalabs.com" if inst["ip"] else None
        out["jupyter_token"] = out["jupyter_url"] = None
        return out


class _RateLimited(Exception):
    pass
