"""Azure prices and offers from Azure's own APIs, as rows of the upstream `vms.csv` Azure schema
(catalog/refresh.py builds the catalog from them with the bundled build's normaliser).

  Retail Prices API      GET https://prices.azure.com/api/retail/prices?$filter=serviceName eq 'Virtual
                         Machines' and priceType eq 'Consumption' [and armRegionName eq 'R'], following
                         NextPageLink; no credentials needed. Linux items only (productName without
                         "Windows"); `... Spot` items are spot prices; `Low Priority` items are ignored.
  Resource SKUs          GET /subscriptions/S/providers/Microsoft.Compute/skus (resource_skus.list's call,
                         sent through azure-mgmt-compute's pipeline, the user's credentials): which sizes
                         exist where (restricted locations left out), vCPUs, MemoryGB, GPUs. The GPU model
                         comes from the size family (catalog.rules.azure_gpu); a GPU size it cannot name and
                         the FPGA (NP) sizes are left out rather than listed as CPU-only.
Endpoints: BROKER_AZURE_PRICES_ENDPOINT (default https://prices.azure.com) and the ARM endpoint of client.py;
BROKER_AZURE_CA_BUNDLE verifies both.
"""
from __future__ import annotations

import os

from ...errors import CredentialsError, InvalidRequestError, Place, ThrottledError
from . import client

API_VERSION = "2023-01-01-preview"
APIS = ["prices.azure.com:/api/retail/prices", "Microsoft.Compute/skus (resource_skus.list)"]


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status, self.body = status, body


def credentials_bypassed() -> bool:
    """A fake endpoint with its fake token (the tests) needs no credentials."""
    return bool(client.endpoint()) and os.environ.get("BROKER_AZURE_FAKE_TOKEN") == "1"


def classify(exc):
    place = Place("azure")
    if isinstance(exc, _HTTPStatus):
        if exc.status == 429:
            return ThrottledError(f"Retail Prices API: {exc}", place, code="429")
        return InvalidRequestError(f"Retail Prices API: {exc}", place, code=str(exc.status))
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return InvalidRequestError(f"cannot reach the Retail Prices API ({exc})", place, code=type(exc).__name__)
    except ImportError:  # pragma: no cover
        pass
    from .errors import classify as _classify

    return _classify(exc, place)


def prices_endpoint() -> str:
    return (os.environ.get("BROKER_AZURE_PRICES_ENDPOINT") or "https://prices.azure.com").rstrip("/")


def _verify():
    return os.environ.get("BROKER_AZURE_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE") or True


def retail_items(retry, say, region: str | None):
    import requests

    flt = "serviceName eq 'Virtual Machines' and priceType eq 'Consumption'"
    if region:
        flt += f" and armRegionName eq '{region}'"
    url, params, n = f"{prices_endpoint()}/api/retail/prices", {"api-version": API_VERSION, "$filter": flt}, 0
    session = requests.Session()
    while url:
        def get(u=url, p=params):
            r = session.get(u, params=p, timeout=60, verify=_verify())
            if r.status_code != 200:
                raise _HTTPStatus(r.status_code, r.text)
            return r.json()
        page = retry(f"retail prices{' ' + region if region else ''}", get)
        n += 1
        if n % 25 == 0:
            say("note", f"retail prices: {n} pages")
        yield from page.get("Items", ())
        url, params = page.get("NextPageLink"), None  # the link carries the filter and $skip


def price_table(items) -> dict[tuple[str, str], list]:
    """(size, region) → [on-demand, spot] Linux $/h (the lowest item of each kind)."""
    out: dict[tuple[str, str], list] = {}
    for it in items:
        if it.get("type") != "Consumption" or it.get("unitOfMeasure") != "1 Hour":
            continue
        if "Windows" in it.get("productName", "") or "Low Priority" in it.get("skuName", ""):
            continue
        size, region, price = it.get("armSkuName"), it.get("armRegionName"), float(it.get("retailPrice") or 0)
        if not size or not region or price <= 0:
            continue
        j = 1 if it.get("skuName", "").endswith(" Spot") else 0
        slot = out.setdefault((size, region), [None, None])
        slot[j] = price if slot[j] is None else min(slot[j], price)
    return out


SKUS_API_VERSION = "2021-07-01"


def resource_skus(retry, sub: str, region: str | None):
    """Resource SKU documents (dicts, ARM's JSON) through the ComputeManagementClient's own pipeline
    (credentials, retries, endpoint) with `send_request`: the SDK's model deserialisation costs ~0.4 ms a SKU,
    and a subscription lists tens of thousands of (size, location) SKUs."""
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    compute = client.clients(sub).compute
    params = {"api-version": SKUS_API_VERSION}
    if region:
        params["$filter"] = f"location eq '{region}'"
    url = f"/subscriptions/{sub}/providers/Microsoft.Compute/skus"
    while url:
        def page(u=url, p=params):
            resp = compute.send_request(HttpRequest("GET", u, params=p))
            if resp.status_code != 200:
                raise HttpResponseError(response=resp)
            return resp.json()
        doc = retry(f"resource SKUs{' ' + region if region else ''}", page)
        yield from doc.get("value", ())
        url, params = doc.get("nextLink"), None


def fetch(regions, retry, say) -> dict:
    from ...catalog.rules import azure_gpu

    sub = client.subscription()
    if not sub:
        raise CredentialsError("no Azure subscription", Place("azure"), code="NoSubscription",
                               hint="set AZURE_SUBSCRIPTION_ID or run `az account set --subscription ID`")
    targets = list(regions) if regions else [None]
    table: dict = {}
    shapes: dict[str, tuple] = {}
    where: dict[str, set] = {}
    for region in targets:
        say("fetch", f"Azure retail prices{' in ' + region if region else ' (every region)'}")
        table.update(price_table(retail_items(retry, say, region)))
        say("fetch", f"Azure resource SKUs{' in ' + region if region else ''}")
        for s in resource_skus(retry, sub, region):
            if s.get("resourceType") != "virtualMachines":
                continue
            name = s["name"]
            caps = {c["name"]: c["value"] for c in s.get("capabilities") or ()}
            blocked = {loc.lower() for r in s.get("restrictions") or () if r.get("type") == "Location"
                       for loc in r.get("values") or ()}
            where.setdefault(name, set()).update(
                loc.lower() for loc in s.get("locations") or () if loc.lower() not in blocked)
            if "FPGAs" in caps:  # NP-series (Xilinx FPGA): not a CPU-only machine, and no GPU to plan
                shapes[name] = None
            elif name not in shapes and "vCPUs" in caps and "MemoryGB" in caps:
                gpus = float(caps.get("GPUs") or 0)
                gpu = azure_gpu(name, gpus) if gpus else None
                # a GPU size whose model we cannot name is left out, never listed as CPU-only
                shapes[name] = None if gpus and gpu is None else (caps["vCPUs"], caps["MemoryGB"], gpu)
    rows = []
    skipped = sorted(size for size, shape in shapes.items() if shape is None)
    for size, locs in sorted(where.items()):
        shape = shapes.get(size)
        if shape is None:
            continue
        vcpus, mem, gpu = shape
        for region in sorted(locs):
            prices = table.get((size, region))
            if not prices:
                continue
            rows.append({"InstanceType": size, "AcceleratorName": gpu[0] if gpu else "",
                         "AcceleratorCount": repr(gpu[1]) if gpu else "", "vCPUs": vcpus, "MemoryGiB": mem,
                         "Price": "" if prices[0] is None else repr(prices[0]),
                         "SpotPrice": "" if prices[1] is None else repr(prices[1]), "Region": region})
    done = sorted({r["Region"] for r in rows} | set(regions or ()))
    return {"rows": rows, "regions": done, "apis": APIS, "skipped": skipped}
