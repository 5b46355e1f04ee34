"""A moto EC2/SSM server in a subprocess, with a small fault-injecting WSGI middleware in front of it.

Product code reaches it through the standard endpoint override (`AWS_ENDPOINT_URL`), so real `broker`
subprocesses talk to it unchanged:

    with MotoServer() as srv:
        env = {**os.environ, **srv.env()}
        srv.fault("RunInstances", code="InsufficientInstanceCapacity", times=1)   # next RunInstances fails
        srv.fault("RunInstances", delay=2.0)                                     # ... or is slow
        srv.preempt("i-123", "us-east-1")                                        # spot reclaim
        srv.calls()                                                              # actions seen so far
        srv.reset()                                                              # empty moto + no faults

Control endpoints (JSON over HTTP, served by the middleware, never forwarded to moto):
  POST /_skybroker/fault    {"action", "code", "message", "status", "delay", "times", "skip"}
  POST /_skybroker/clear    drop every fault and the call log
  GET  /_skybroker/calls    [{"action", "region", "t"}] in arrival order (recorded before any delay)
  POST /_skybroker/preempt  {"instance_id", "region", "reason"}: terminate in moto's backend with a
                            state reason (default Server.SpotInstanceTermination)
  POST /_skybroker/seed_catalog  {"instance_types": [DescribeInstanceTypes entries], "offerings": {region:
                            [[type, az_id], ...]}, "spot": {region: [[type, az_id, price], ...]}}: make moto's
                            EC2 catalog calls serve these rows (see below)
moto's own `POST /moto-api/reset` empties every backend.

What moto 5.2 itself returns for the catalog calls (checked): DescribeInstanceTypes serves ~1,260 real types
from its bundled data (no p3.* among them) and ignores MaxResults (one page); DescribeInstanceTypeOfferings
serves its bundled per-AZ offerings, one page; DescribeSpotPriceHistory answers every offering of the region
with the constant SpotPrice "0.00001" and a 2006 timestamp, one page. `seed_catalog` keeps moto's protocol,
filters and serialisation but (1) adds instance types moto lacks, (2) replaces a region's AZ offerings with
the given ones (AZ IDs mapped to moto's zone names of that region; IDs moto does not know, e.g. Local Zones,
are dropped), and (3) answers DescribeSpotPriceHistory with the given price per type and zone (offerings
without one are left out, as AWS has no history for them), paged by MaxResults (default 1000) with a NextToken,
as AWS pages it.

Public IPs are drawn from the loopback range (127.51.x.y; nothing listens there, so a connection is refused
at once) instead of moto's 54.214.x.x, so a product that tries to SSH into a "moto instance" never sends a
packet off this machine.

Run directly: `python -m tests.infra.moto_server --port 0` prints `PORT <n>` once it serves.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"  # moto's default account
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def unroutable_public_ip() -> str:
    return f"127.51.{random.randint(0, 255)}.{random.randint(2, 254)}"


def patch_public_ips():
    """moto hands out 54.214.x.x (real AWS space); use loopback addresses instead. Works in-process too; returns
    a function that undoes it."""
    from moto.ec2.models import elastic_network_interfaces

    original = elastic_network_interfaces.random_public_ip
    elastic_network_interfaces.random_public_ip = unroutable_public_ip

    def undo():
        elastic_network_interfaces.random_public_ip = original

    return undo


# -- server side ---------------------------------------------------------------------------------
def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>skybroker-fault</RequestID></Response>"
            ).encode()


def _region_of(environ) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    # AWS4-HMAC-SHA256 Credential=KEY/20240101/us-east-1/ec2/aws4_request, ...
    try:
        return auth.split("Credential=", 1)[1].split("/")[2]
    except IndexError:
        return "?"


class FaultMiddleware:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.calls: list[dict] = []

    # control plane
    def _control(self, environ, start_response):
        path = environ["PATH_INFO"]
        body = {}
        if environ["REQUEST_METHOD"] == "POST":
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            body = json.loads(raw or b"{}")
        out: object = {"ok": True}
        with self.lock:
            if path == "/_skybroker/fault":
                self.faults.append({"action": body["action"], "code": body.get("code"),
                                    "message": body.get("message") or f"injected {body.get('code')}",
                                    "status": int(body.get("status", 400)), "delay": float(body.get("delay", 0)),
                                    "times": body.get("times"), "skip": int(body.get("skip", 0)),
                                    "region": body.get("region")})
            elif path == "/_skybroker/clear":
                self.faults.clear()
                self.calls.clear()
            elif path == "/_skybroker/calls":
                out = list(self.calls)
            elif path == "/_skybroker/seed_catalog":
                out = _seed_catalog(body)
            elif path == "/_skybroker/preempt":
                out = _preempt(body["instance_id"], body.get("region", "us-east-1"),
                               body.get("reason", "Server.SpotInstanceTermination"))
            else:
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [b'{"error": "unknown control path"}']
        data = json.dumps(out).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/_skybroker/"):
            return self._control(environ, start_response)
        action = None
        if environ.get("REQUEST_METHOD") == "POST" and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = _Replay(raw)
            action = (parse_qs(raw.decode("utf-8", "replace")).get("Action") or [None])[0]
        if action is None:  # json protocols (SSM): X-Amz-Target: AmazonSSM.GetParameter
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            action = target.rsplit(".", 1)[-1] if target else None
        region = _region_of(environ)
        fault = None
        with self.lock:
            if action:
                self.calls.append({"action": action, "region": region, "t": time.time()})
            for f in self.faults:
                if f["action"] != action or (f["region"] and f["region"] != region):
                    continue
                if f["skip"] > 0:
                    f["skip"] -= 1
                    continue
                if f["times"] is not None:
                    if f["times"] <= 0:
                        continue
                    f["times"] -= 1
                fault = dict(f)
                break
        if fault:
            if fault["delay"]:
                time.sleep(fault["delay"])
            if fault["code"]:
                body = _error_xml(fault["code"], fault["message"])
                reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error",
                          503: "Service Unavailable"}.get(fault["status"], "Error")
                start_response(f"{fault['status']} {reason}", [("Content-Type", "text/xml"),
                                                                ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


class _Replay:
    def __init__(self, raw: bytes):
        import io

        self._buf = io.BytesIO(raw)

    def read(self, *a):
        return self._buf.read(*a)

    def readline(self, *a):
        return self._buf.readline(*a)

    def __iter__(self):
        return iter(self._buf)


def _preempt(instance_id: str, region: str, reason: str) -> dict:
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    backend = ec2_backends[ACCOUNT][region]
    inst = backend.get_instance(instance_id)
    backend.terminate_instances([instance_id])
    inst.state_reason = StateReason(message=f"{reason}: instance reclaimed by the fake", code=reason)
    return {"instance_id": instance_id, "state": inst.state}


_SPOT: dict[tuple[str, str, str], str] = {}  # (region, zone name, type) -> price, once seeded


def _seed_catalog(body: dict) -> dict:
    from moto.ec2.models import ec2_backends
    from moto.ec2.models import instance_types as it
    from moto.ec2.responses import spot_instances

    added = 0
    for entry in body.get("instance_types", ()):
        name = entry["InstanceType"]
        if name not in it.INSTANCE_TYPES:
            it.INSTANCE_TYPES[name] = entry
            it.InstanceTypeBackend.instance_types.append(it.InstanceType(name))
            added += 1
    n_off = 0
    for region, pairs in body.get("offerings", {}).items():
        zones = {z.zone_id: z.name for z in ec2_backends[ACCOUNT][region].describe_availability_zones()}
        rows = [{"InstanceType": t, "Location": zones[z], "LocationType": "availability-zone"}
                for t, z in pairs if z in zones]
        it.INSTANCE_TYPE_OFFERINGS["availability-zone"][region] = rows
        n_off += len(rows)
    for region, triples in body.get("spot", {}).items():
        zones = {z.zone_id: z.name for z in ec2_backends[ACCOUNT][region].describe_availability_zones()}
        for t, z, price in triples:
            if z in zones:
                _SPOT[(region, zones[z], t)] = str(price)
    if _SPOT and not getattr(spot_instances.SpotInstances, "_skybroker_seeded", False):
        spot_instances.SpotInstances.describe_spot_price_history = _seeded_spot_history
        spot_instances.SpotInstances._skybroker_seeded = True
    return {"instance_types_added": added, "offerings": n_off, "spot_prices": len(_SPOT)}


def _seeded_spot_history(self):
    from moto.core.responses import ActionResult

    prices = self.ec2_backend.describe_spot_price_history(self._get_param("InstanceTypes", []),
                                                          self._filters_from_querystring())
    region = self.ec2_backend.region_name
    history = [{"InstanceType": p["InstanceType"], "ProductDescription": "Linux/UNIX",
                "SpotPrice": _SPOT[(region, p["Location"], p["InstanceType"])], "AvailabilityZone": p["Location"],
                "Timestamp": "2026-12-01T00:00:00.000Z"}
               for p in prices if (region, p["Location"], p["InstanceType"]) in _SPOT]
    size = int(self._get_param("MaxResults") or 1000)
    start = int(self._get_param("NextToken") or 0)
    out = {"SpotPriceHistory": history[start:start + size]}
    if start + size < len(history):
        out["NextToken"] = str(start + size)
    return ActionResult(out)


def serve(host: str = "127.0.0.1", port: int = 0) -> None:
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    patch_public_ips()
    app = FaultMiddleware(DomainDispatcherApplication(create_backend_app))
    srv = make_server(host, port, app, threaded=True)
    srv.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(f"PORT {srv.server_port}", flush=True)
    srv.serve_forever()


# -- client side ---------------------------------------------------------------------------------
class MotoServer:
    """Start with `with MotoServer() as srv:` (or .start()/.stop()). `warm=True` makes the first EC2
    call in the server (moto loads ~3 s of JSON on it) so tests do not pay it."""

    def __init__(self, warm: bool = True):
        self.warm = warm
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.infra.moto_server", "--port", "0"],
                                     cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"moto server did not start: {line!r}")
        self.port = int(line.split()[1])
        # keep draining stdout so a chatty server never blocks on a full pipe
        threading.Thread(target=lambda out=self.proc.stdout: [None for _ in out], daemon=True).start()
        if self.warm:
            self.ec2("us-east-1").describe_availability_zones()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def env(self) -> dict[str, str]:
        """What a `broker` subprocess needs to use this server (fake keys + endpoint)."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.url, "BROKER_AWS_POLL": "0.05"}

    def ec2(self, region: str = "us-east-1"):
        import boto3

        return boto3.client("ec2", region_name=region, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def _post(self, path: str, body: dict | None = None):
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def fault(self, action: str, *, code: str | None = None, message: str | None = None, status: int = 400,
              delay: float = 0.0, times: int | None = None, skip: int = 0, region: str | None = None) -> None:
        """Make the next `times` (None = every) calls of `action` (after skipping `skip` of them) wait
        `delay` seconds and then, if `code` is given, fail with that EC2 error code."""
        self._post("/_skybroker/fault", {"action": action, "code": code, "message": message, "status": status,
                                         "delay": delay, "times": times, "skip": skip, "region": region})

    def clear(self) -> None:
        self._post("/_skybroker/clear")

    def calls(self, action: str | None = None) -> list[dict]:
        with urllib.request.urlopen(self.url + "/_skybroker/calls", timeout=30) as r:
            calls = json.loads(r.read())
        return [c for c in calls if action is None or c["action"] == action]

    def preempt(self, instance_id: str, region: str = "us-east-1",
                reason: str = "Server.SpotInstanceTermination") -> dict:
        return self._post("/_skybroker/preempt", {"instance_id": instance_id, "region": region, "reason": reason})

    def seed_catalog(self, instance_types=(), offerings=None, spot=None) -> dict:
        """See `/_skybroker/seed_catalog` above (lasts for the server's life; moto's reset does not undo it)."""
        return self._post("/_skybroker/seed_catalog", {"instance_types": list(instance_types),
                                                       "offerings": offerings or {}, "spot": spot or {}})

    def reset(self) -> None:
        """Empty every moto backend and drop faults + the call log."""
        self._post("/moto-api/reset")
        self.clear()

    def instances(self, region: str = "us-east-1", states=("pending", "running", "stopping", "stopped"),
                  cluster: str | None = None) -> list[dict]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}]
        if cluster:
            filters.append({"Name": "tag:skybroker-cluster", "Values": [cluster]})
        out = []
        for res in self.ec2(region).describe_instances(Filters=filters)["Reservations"]:
            out.extend(res["Instances"])
        return out


_SHARED: MotoServer | None = None
_SHARED_LOCK = threading.Lock()
_PRESTART: threading.Thread | None = None


def shared() -> MotoServer:
    """One server per test process (started on first use, stopped at exit): reset it in your fixture."""
    global _SHARED
    if _PRESTART is not None and _PRESTART is not threading.current_thread():
        _PRESTART.join()
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED.proc is None or _SHARED.proc.poll() is not None:
            import atexit

            srv = MotoServer()
            atexit.register(srv.stop)  # before start(): a run that ends while it starts (prestart) stops it too
            _SHARED = srv.start()
        return _SHARED


def prestart() -> None:
    """Start (and warm) the shared server in the background; `shared()` waits for it."""
    global _PRESTART
    if _PRESTART is None:
        def run():
            try:
                shared()
            except Exception:  # noqa: BLE001, S110 - shared() retries in the foreground and reports
                pass

        _PRESTART = threading.Thread(target=run, daemon=True, name="moto-prestart")
        _PRESTART.start()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
