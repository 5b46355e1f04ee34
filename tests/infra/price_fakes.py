"""Small local fakes of the clouds' price and catalog APIs, for `broker catalog refresh` with the real SDK
clients (boto3, google-cloud-compute + google-auth, azure-mgmt-compute) and plain `requests` pointed at them.
The payloads they serve are data handed in (tests/infra/price_payloads.py shapes them from the rows of
shared/catalogs-upstream, or synthesises a full-size cloud for the benchmark).

AwsPricingFake — the AWS Price List Query API (JSON 1.1 protocol, as botocore's `pricing` client sends it):
  POST /  X-Amz-Target: AWSPriceListService.GetProducts  {"ServiceCode", "Filters": [{"Type": "TERM_MATCH",
  "Field", "Value"}], "FormatVersion", "NextToken", "MaxResults" (1..100, default 100)} → {"FormatVersion":
  "aws_v1", "PriceList": [product JSON *as a string*], "NextToken"}; filters match product attributes
  (case-insensitive values, as AWS does); an unknown ServiceCode is 400 NotFoundException; a request without a
  SigV4 Authorization header is 403 MissingAuthenticationTokenException. Errors are `{"__type": ..., "message"}`
  with the `x-amzn-ErrorType` header (throttling: 400 ThrottlingException "Rate exceeded").

GcpPricesFake — GCE `machineTypes` / `acceleratorTypes` aggregatedList (REST v1, as compute_v1's REST transport
  calls them: GET /compute/v1/projects/P/aggregated/machineTypes?maxResults=&pageToken=) → {"kind", "items":
  {"zones/Z": {"machineTypes": [...]}}, "nextPageToken"} paged over zones (`maxResults` entries per page, the
  SDK's pager follows nextPageToken); and the Cloud Billing Catalog API (GET /v1/services/6F81-5844-456A/skus
  ?pageSize=&pageToken=&currencyCode=USD) → {"skus": [...], "nextPageToken": ""} (pageSize at most 5000, or
  `sku_page_cap`; an empty nextPageToken on the last page, as the real API). Errors are Google's
  `{"error": {"code", "message", "status", "errors": [{"reason", "domain"}]}}`: 429 RESOURCE_EXHAUSTED
  (rateLimitExceeded), 500 INTERNAL (backendError), 401 UNAUTHENTICATED.

AzurePricesFake — over HTTPS (the Azure SDK sends bearer tokens only over TLS): the Retail Prices API
  (GET /api/retail/prices?api-version=&$filter=...; no auth, as the real one) → {"BillingCurrency": "USD",
  "CustomerEntityId": "Default", "CustomerEntityType": "Retail", "Items": [...], "NextPageLink": absolute URL
  with `$skip` or null, "Count"}, 1000 items a page; `$filter` supports `field eq 'value'` joined by `and` on
  serviceName/priceType/armRegionName/armSkuName (case-insensitive, like the service); throttling is 429 with a
  `Retry-After` header; and ARM resource SKUs (GET /subscriptions/S/providers/Microsoft.Compute/skus
  ?api-version=2021-07-01[&$filter=location eq 'x']; bearer required, else 401 AuthenticationFailed) →
  {"value": [...], "nextLink"} paged (`page_size` SKUs a page). ARM errors are {"error": {"code", "message"}}
  (429 TooManyRequests with Retry-After).

Faults (all three): `fault(op, status, times=1, skip=0)` — the next `times` calls of `op` (after `skip` of
them pass) fail with that cloud's real error body for `status` (429/throttling, 500, 401/403). `calls(op)`
counts what was served.
"""
from __future__ import annotations

import base64
import json
import re
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.infra.tls_server import TLSThreadingHTTPServer


class _Fail(Exception):
    def __init__(self, status: int, body: dict, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


class _Fake:
    """A threaded HTTP(S) server: subclasses implement route(method, path, query, headers, body)."""

    tls = False

    def __init__(self):
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.served: list[str] = []
        self.ca_path = None
        if self.tls:
            from tests.infra.arm_fake import make_cert

            self._dir = Path(tempfile.mkdtemp(prefix="price-fake-"))
            self.ca_path, key = make_cert(self._dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.ca_path, key)
            self._server = TLSThreadingHTTPServer(("127.0.0.1", 0), self._handler(), ctx)
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self._server.daemon_threads = True
        scheme = "https" if self.tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fault(self, op: str, status: int, times: int = 1, skip: int = 0) -> None:
        with self.lock:
            self.faults.append({"op": op, "status": status, "times": times, "skip": skip})

    def calls(self, op: str | None = None) -> int:
        with self.lock:
            return sum(1 for o in self.served if op is None or o == op)

    def _maybe_fail(self, op: str) -> None:
        with self.lock:
            self.served.append(op)
            for f in self.faults:
                if f["op"] != op or f["times"] <= 0:
                    continue
                if f["skip"] > 0:
                    f["skip"] -= 1
                    continue
                f["times"] -= 1
                raise self.error(f["status"])

    def error(self, status: int) -> _Fail:  # pragma: no cover - every fake defines its own
        raise NotImplementedError

    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def _do(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    status, doc, headers = 200, fake.route(self.command, url.path, query, self.headers, raw), {}
                except _Fail as f:
                    status, doc, headers = f.status, f.body, f.headers
                data = json.dumps(doc).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", fake.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _do

        return H

    content_type = "application/json"


def _token(n: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{n}".encode()).decode()


def _offset(tok: str | None) -> int:
    if not tok:
        return 0
    return int(base64.urlsafe_b64decode(tok.encode()).decode().split(":")[1])


# ------------------------------------------------------------------------------------------------ AWS
class AwsPricingFake(_Fake):
    content_type = "application/x-amz-json-1.1"

    def __init__(self, products: list[dict]):
        self.products = products
        super().__init__()

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_PRICING": self.endpoint}

    def error(self, status: int) -> _Fail:
        kind, msg = {429: ("ThrottlingException", "Rate exceeded"), 400: ("ThrottlingException", "Rate exceeded"),
                     500: ("InternalErrorException", "An internal error occurred"),
                     403: ("AccessDeniedException", "User is not authorized to perform pricing:GetProducts")
                     }.get(status, ("InternalErrorException", "error"))
        return _Fail(400 if status == 429 else status, {"__type": kind, "message": msg}, {"x-amzn-ErrorType": kind})

    def route(self, method, path, query, headers, raw):
        target = headers.get("X-Amz-Target", "")
        if method != "POST" or not target.startswith("AWSPriceListService."):
            raise _Fail(404, {"__type": "UnknownOperationException", "message": "unknown operation"})
        if not headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256"):
            raise _Fail(403, {"__type": "MissingAuthenticationTokenException", "message": "Missing Authentication Token"})
        op = target.split(".", 1)[1]
        self._maybe_fail(op)
        if op != "GetProducts":
            raise _Fail(400, {"__type": "UnknownOperationException", "message": op})
        req = json.loads(raw or b"{}")
        if req.get("ServiceCode") != "AmazonEC2":
            raise _Fail(400, {"__type": "NotFoundException", "message": "Service code not found"})
        size = int(req.get("MaxResults") or 100)
        if not 1 <= size <= 100:
            raise _Fail(400, {"__type": "InvalidParameterException", "message": "MaxResults must be 1..100"})
        flt = [(f["Field"], str(f["Value"]).lower()) for f in req.get("Filters", [])]
        match = [p for p in self._by_region(flt) if all(
            str(p["product"]["attributes"].get(k, p["product"].get(k, ""))).lower() == v for k, v in flt)]
        start = _offset(req.get("NextToken"))
        out = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(p) for p in match[start:start + size]]}
        if start + size < len(match):
            out["NextToken"] = _token(start + size)
        return out

    def _by_region(self, flt):
        if not hasattr(self, "_index"):
            self._index: dict[str, list] = {}
            for p in self.products:
                self._index.setdefault(p["product"]["attributes"]["regionCode"].lower(), []).append(p)
        region = dict(flt).get("regionCode")
        return self._index.get(region, []) if region else self.products


# ------------------------------------------------------------------------------------------------ GCP
class GcpPricesFake(_Fake):
    def __init__(self, project: str, machine_types: dict[str, list], accelerator_types: dict[str, list],
                 skus: list[dict], sku_page_cap: int = 5000):
        self.project, self.sku_page_cap = project, sku_page_cap
        self.machine_types, self.accelerator_types, self.skus = machine_types, accelerator_types, skus
        super().__init__()

    def env(self) -> dict[str, str]:
        return {"BROKER_GCP_ENDPOINT": self.endpoint, "BROKER_GCP_ANONYMOUS": "1",
                "GOOGLE_CLOUD_PROJECT": self.project}

    def error(self, status: int) -> _Fail:
        status_name, reason, msg = {
            429: ("RESOURCE_EXHAUSTED", "rateLimitExceeded", "Quota exceeded for quota metric 'Read requests' and "
                  "limit 'Read requests per minute' of service"),
            500: ("INTERNAL", "backendError", "Internal error encountered."),
            401: ("UNAUTHENTICATED", "authError", "Request is missing required authentication credential."),
            403: ("PERMISSION_DENIED", "forbidden", "The caller does not have permission"),
        }.get(status, ("UNKNOWN", "unknown", "error"))
        return _Fail(status, {"error": {"code": status, "message": msg, "status": status_name,
                                        "errors": [{"message": msg, "domain": "global", "reason": reason}]}})

    def route(self, method, path, query, headers, raw):
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/aggregated/(machineTypes|acceleratorTypes)", path)
        if m and method == "GET":
            self._maybe_fail(m.group(2))
            if m.group(1) != self.project:
                raise _Fail(404, {"error": {"code": 404, "message": f"The resource 'projects/{m.group(1)}' was not found",
                                            "errors": [{"reason": "notFound", "domain": "global"}]}})
            data = self.machine_types if m.group(2) == "machineTypes" else self.accelerator_types
            return self._aggregated(m.group(2), data, query)
        if path == "/v1/services/6F81-5844-456A/skus" and method == "GET":
            self._maybe_fail("skus")
            size = min(int(query.get("pageSize") or 5000), self.sku_page_cap)
            start = _offset(query.get("pageToken"))
            end = start + size
            return {"skus": self.skus[start:end], "nextPageToken": _token(end) if end < len(self.skus) else ""}
        raise _Fail(404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}})

    def _aggregated(self, kind, data, query):
        """Pages hold up to maxResults entries (default 500), whole zones at a time, as GCE pages by scope."""
        size = int(query.get("maxResults") or 500)
        zones = sorted(data)
        start = _offset(query.get("pageToken"))
        items, n, i = {}, 0, start
        while i < len(zones) and (n == 0 or n + len(data[zones[i]]) <= size):
            items[f"zones/{zones[i]}"] = {kind: data[zones[i]]}
            n += len(data[zones[i]])
            i += 1
        out = {"kind": f"compute#{kind[:-1]}AggregatedList", "id": f"projects/{self.project}/aggregated/{kind}",
               "items": items, "selfLink": f"https://www.googleapis.com/compute/v1/projects/{self.project}/aggregated/{kind}"}
        if i < len(zones):
            out["nextPageToken"] = _token(i)
        return out


# ------------------------------------------------------------------------------------------------ Azure
class AzurePricesFake(_Fake):
    tls = True
    PAGE = 1000

    def __init__(self, subscription: str, items: list[dict], resource_skus: list[dict], page_size: int = 200):
        self.subscription, self.items, self.resource_skus, self.page_size = subscription, items, resource_skus, page_size
        super().__init__()

    def env(self) -> dict[str, str]:
        return {"BROKER_AZURE_ENDPOINT": self.endpoint, "BROKER_AZURE_PRICES_ENDPOINT": self.endpoint,
                "BROKER_AZURE_FAKE_TOKEN": "1", "BROKER_AZURE_CA_BUNDLE": str(self.ca_path),
                "BROKER_AZURE_POLL": "0", "BROKER_AZURE_RETRIES": "0", "AZURE_SUBSCRIPTION_ID": self.subscription}

    def error(self, status: int) -> _Fail:
        if status == 429:
            return _Fail(429, {"error": {"code": "TooManyRequests", "message": "Too many requests. Please retry."}},
                         {"Retry-After": "0"})
        if status == 401:
            return _Fail(401, {"error": {"code": "AuthenticationFailed", "message": "Authentication failed."}})
        return _Fail(status, {"error": {"code": "InternalServerError", "message": "Encountered internal server error."}})

    def route(self, method, path, query, headers, raw):
        if path == "/api/retail/prices" and method == "GET":
            self._maybe_fail("retail")
            items = self._filtered(query.get("$filter", ""))
            skip = int(query.get("$skip") or 0)
            page = items[skip:skip + self.PAGE]
            nxt = None
            if skip + self.PAGE < len(items):
                q = {k: v for k, v in query.items() if k != "$skip"}
                nxt = f"{self.endpoint}/api/retail/prices?{urlencode({**q, '$skip': skip + self.PAGE})}"
            return {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                    "Items": page, "NextPageLink": nxt, "Count": len(page)}
        m = re.fullmatch(r"/subscriptions/([^/]+)/providers/Microsoft\.Compute/skus", path)
        if m and method == "GET":
            if not headers.get("Authorization", "").startswith("Bearer "):
                raise self.error(401)
            if "api-version" not in query:
                raise _Fail(400, {"error": {"code": "MissingApiVersionParameter",
                                            "message": "The api-version query parameter (?api-version=) is required"}})
            self._maybe_fail("skus")
            skus = self.resource_skus
            loc = re.fullmatch(r"location eq '([^']+)'", query.get("$filter", ""))
            if loc:
                skus = [s for s in skus if loc.group(1).lower() in [x.lower() for x in s["locations"]]]
            start = _offset(query.get("$skiptoken"))
            end = start + self.page_size
            out = {"value": skus[start:end]}
            if end < len(skus):
                q = {k: v for k, v in query.items() if k != "$skiptoken"}
                out["nextLink"] = f"{self.endpoint}{path}?{urlencode({**q, '$skiptoken': _token(end)})}"
            return out
        raise _Fail(404, {"error": {"code": "NotFound", "message": f"no route {path}"}})

    def _filtered(self, flt: str) -> list[dict]:
        terms = re.findall(r"(\w+)\s+eq\s+'([^']*)'", flt)
        if not terms:
            return self.items
        key = tuple(sorted(({"priceType": "type"}.get(k, k), v.lower()) for k, v in terms))  # priceType filters `type`
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = [it for it in self.items if all(str(it.get(k, "")).lower() == v for k, v in key)]
        return cache[key]


def main(argv=None) -> None:
    """`python -m tests.infra.price_fakes azure [--scale N]`: serve payloads shaped from the upstream rows (N
    copies of every size under new names when scaled) until killed; prints one JSON line: the fake's env()."""
    import argparse
    import sys
    import time

    from tests.infra import price_payloads as pp

    ap = argparse.ArgumentParser()
    ap.add_argument("cloud", choices=("azure", "gcp"))
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args(argv)
    rows = pp.rows(args.cloud)
    if args.scale > 1:
        rows = rows + [dict(r, InstanceType=f"{r['InstanceType']}x{k}") for k in range(1, args.scale)
                       for r in rows if r["InstanceType"]]
    if args.cloud == "azure":
        data = pp.azure(rows)
        fake = AzurePricesFake("00000000-0000-0000-0000-00000000feed", data["items"], data["resource_skus"],
                               page_size=5000)
    else:
        data = pp.gcp(rows)
        fake = GcpPricesFake("bench-project", data["machine_types"], data["accelerator_types"], data["skus"])
    print(json.dumps({"env": fake.env(), "rows": len(rows)}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
