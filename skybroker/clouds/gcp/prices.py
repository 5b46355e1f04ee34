"""GCP prices and offers from Google's own APIs, as rows of the upstream `vms.csv` GCP schema (VM rows and
accelerator rows; catalog/refresh.py builds the catalog from them with the bundled build's normaliser, which
attaches GPUs to hosts by the same rules).

  Compute machineTypes.aggregatedList        machine types per zone: vCPUs, memory, shared core, bundled GPUs
  Compute acceleratorTypes.aggregatedList    GPU types per zone and their maximum cards per VM
  Cloud Billing Catalog API                  GET /v1/services/6F81-5844-456A/skus (Compute Engine), all pages
Priced as GCP bills a VM: vCPUs × the series' `Core` SKU + GiB × its `Ram` SKU in the zone's region
(OnDemand; `Spot Preemptible` SKUs for spot), shared-core types at their billed fraction of a vCPU; a GPU
row of N cards is N × the GPU's SKU. Commitments, custom shapes, sole tenancy and the like are ignored.
TPU slices are not priced here (Cloud TPU has its own API): a refresh carries the TPU offers of the catalog
in use over unchanged. Endpoints: client.py (BROKER_GCP_ENDPOINT, BROKER_GCP_BILLING_ENDPOINT).
"""
from __future__ import annotations

import re

from ...errors import Place
from . import client

SERVICE = "services/6F81-5844-456A"  # Compute Engine
APIS = ["compute:machineTypes.aggregatedList", "compute:acceleratorTypes.aggregatedList",
        f"cloudbilling:{SERVICE}/skus"]
SHARED_CORE = {"e2-micro": 0.25, "e2-small": 0.5, "e2-medium": 1.0, "f1-micro": 0.2, "g1-small": 0.5}
# SKU description labels whose first word is not the series name.
_SERIES_WORD = {"compute": "c2", "memory-optimized": "m1", "micro": "f1", "small": "g1"}
_IGNORED = ("Custom", "Sole Tenancy", "Commitment", "Reserved", "Extended", "Premium", "Licensing", "DWS",
            "Calendar", "Workstation", "Upgrade")
# Shared-core types billed per instance, not per vCPU and GiB.
_WHOLE = {"Micro Instance with burstable CPU": "f1-micro", "Small Instance with 1 VCPU": "g1-small"}
_VM_SKU = re.compile(r"^(?P<spot>Spot Preemptible )?(?P<label>.+?) (?P<kind>Core|Ram) running in ")
_GPU_SKU = re.compile(r"^Nvidia (?:Tesla )?(?P<label>.+?) GPU(?P<spot> attached to Spot Preemptible VMs)? running in ")
GPU_BY_SKU = {"V100": "V100", "T4": "T4", "P100": "P100", "P4": "P4", "K80": "K80", "A100": "A100",
              "A100 80GB": "A100-80GB", "L4": "L4", "H100 80GB": "H100", "H100 Mega 80GB": "H100-MEGA",
              "H200 141GB": "H200", "B200": "B200"}
GPU_BY_GCE = {"nvidia-tesla-v100": "V100", "nvidia-tesla-t4": "T4", "nvidia-tesla-p100": "P100",
              "nvidia-tesla-p4": "P4", "nvidia-tesla-k80": "K80", "nvidia-tesla-a100": "A100",
              "nvidia-a100-80gb": "A100-80GB", "nvidia-l4": "L4", "nvidia-h100-80gb": "H100",
              "nvidia-h100-mega-80gb": "H100-MEGA", "nvidia-h200-141gb": "H200", "nvidia-b200": "B200"}


def credentials_bypassed() -> bool:
    """Anonymous clients (the test fakes) need no credentials."""
    return client.anonymous()


def classify(exc):
    from .errors import classify as _classify

    return _classify(exc, Place("gcp"))


def _aggregated(retry, what, api, kind, project):
    token = ""
    while True:
        req = {"project": project, "max_results": 500, "page_token": token}
        page = retry(what, lambda r=req: next(iter(api.aggregated_list(request=r).pages)))
        for scope, scoped in page.items.items():
            for item in getattr(scoped, kind):
                yield scope.split("/", 1)[-1], item
        token = page.next_page_token
        if not token:
            return


def _skus(retry, say):
    from google.api_core import exceptions as gex

    session = client.authorized_session()
    url = f"{client.billing_endpoint()}/v1/{SERVICE}/skus"
    token, n = "", 0
    while True:
        def get(tok=token):
            r = session.get(url, params={"currencyCode": "USD", "pageSize": 5000, "pageToken": tok}, timeout=60)
            if r.status_code != 200:
                raise gex.from_http_response(r)
            return r.json()
        page = retry("billing SKUs", get)
        n += 1
        if n % 10 == 0:
            say("note", f"billing catalog: page {n}")
        yield from page.get("skus", ())
        token = page.get("nextPageToken") or ""
        if not token:
            return


def _unit_price(sku: dict) -> float | None:
    for info in sku.get("pricingInfo", ())[:1]:
        rates = info.get("pricingExpression", {}).get("tieredRates", [])
        if rates:
            p = rates[-1].get("unitPrice", {})
            return int(p.get("units") or 0) + int(p.get("nanos") or 0) / 1e9
    return None


def price_tables(skus) -> tuple[dict, dict]:
    """(series, region, kind, spot) → $/unit for Core/Ram SKUs; (gpu, region, spot) → $/h per card."""
    vm, gpu = {}, {}
    for s in skus:
        desc = s.get("description", "")
        usage = s.get("category", {}).get("usageType")
        if usage not in ("OnDemand", "Preemptible") or any(w in desc for w in _IGNORED):
            continue
        price = _unit_price(s)
        if price is None:
            continue
        whole = next((t for label, t in _WHOLE.items() if desc.startswith((label, "Spot Preemptible " + label))), None)
        if whole:
            spot = desc.startswith("Spot Preemptible ") or usage == "Preemptible"
            for region in s.get("serviceRegions", ()):
                vm[(whole, region, "Instance", spot)] = price
            continue
        m = _GPU_SKU.match(desc)
        if m:
            name = GPU_BY_SKU.get(m.group("label"))
            if name:
                for region in s.get("serviceRegions", ()):
                    gpu[(name, region, bool(m.group("spot")) or usage == "Preemptible")] = price
            continue
        m = _VM_SKU.match(desc)
        if m:
            word = m.group("label").split(" ")[0].lower()
            series = _SERIES_WORD.get(word, word)
            spot = bool(m.group("spot")) or usage == "Preemptible"
            for region in s.get("serviceRegions", ()):
                vm[(series, region, m.group("kind"), spot)] = price
    return vm, gpu


def _r(v: float | None) -> str:
    return "" if v is None else repr(round(v, 5))


def fetch(regions, retry, say) -> dict:
    from ...catalog.rules import N1_CEILINGS, TPU_VM

    project = client.project()
    want = set(regions or ())
    say("fetch", f"GCP project {project}: machine types")
    mts = [(z, m) for z, m in _aggregated(retry, "machineTypes.aggregatedList", client.machine_types(),
                                          "machine_types", project) if not want or z.rsplit("-", 1)[0] in want]
    say("fetch", "GCP accelerator types")
    accs = [(z, a) for z, a in _aggregated(retry, "acceleratorTypes.aggregatedList", client.accelerator_types(),
                                           "accelerator_types", project) if not want or z.rsplit("-", 1)[0] in want]
    say("fetch", "GCP billing catalog (Compute Engine SKUs)")
    vm, gpu = price_tables(_skus(retry, say))
    rows, counts_needed = [], {}
    for zone, m in mts:
        region = zone.rsplit("-", 1)[0]
        series = m.name.split("-")[0]
        mem = m.memory_mb / 1024
        cores = SHARED_CORE.get(m.name, float(m.guest_cpus)) if m.is_shared_cpu else float(m.guest_cpus)
        prices = []
        for spot in (False, True):
            core, ram = vm.get((series, region, "Core", spot)), vm.get((series, region, "Ram", spot))
            whole = vm.get((m.name, region, "Instance", spot))
            prices.append(whole if whole is not None else None if core is None or ram is None
                          else cores * core + mem * ram)
        for a in m.accelerators:
            name = GPU_BY_GCE.get(a.guest_accelerator_type)
            if name:
                counts_needed.setdefault((zone, name), set()).add(int(a.guest_accelerator_count))
        if prices[0] is None and prices[1] is None:
            continue
        rows.append({"InstanceType": m.name, "vCPUs": repr(float(m.guest_cpus)), "MemoryGiB": repr(mem),
                     "AcceleratorName": "", "AcceleratorCount": "", "Region": region, "AvailabilityZone": zone,
                     "Price": _r(prices[0]), "SpotPrice": _r(prices[1])})
    for zone, a in accs:
        name = GPU_BY_GCE.get(a.name)
        if not name:
            continue
        region = zone.rsplit("-", 1)[0]
        counts = set(counts_needed.get((zone, name), ()))
        if name in N1_CEILINGS:
            counts |= {c for c in (1, 2, 4, 8) if c <= a.maximum_cards_per_instance}
        for count in sorted(counts):
            od, sp = gpu.get((name, region, False)), gpu.get((name, region, True))
            if od is None and sp is None:
                continue
            rows.append({"InstanceType": "", "vCPUs": "", "MemoryGiB": "", "AcceleratorName": name,
                         "AcceleratorCount": str(count), "Region": region, "AvailabilityZone": zone,
                         "Price": _r(None if od is None else od * count),
                         "SpotPrice": _r(None if sp is None else sp * count)})
    done = sorted({r["Region"] for r in rows} | want)
    return {"rows": rows, "regions": done, "apis": APIS, "carry_types": (TPU_VM,)}
