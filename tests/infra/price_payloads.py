"""API payloads shaped from the rows of shared/catalogs-upstream (or synthesised at full size), for the fakes in
tests/infra/price_fakes.py and the moto seed (tests/infra/moto_server.py `seed_catalog`).

The payloads follow the real APIs' shapes; how each is derived from the upstream rows:
- AWS: DescribeInstanceTypes entries (vCPUs, MiB, GpuInfo parsed from the row's GpuInfo, architecture) for
  every upstream type (moto keeps its own entry where it has one); offerings = the rows' (type, AZ ID); spot =
  the rows' SpotPrice per AZ; Price List products = one `Compute Instance` product per (type, region) with the
  row's Price as the OnDemand `Hrs` dimension, plus the decoys a real GetProducts answer holds for the same
  type (Windows, Dedicated tenancy, an UnusedCapacityReservation line) so the filters matter.
- GCP: machineTypes per zone from the VM rows (a2/a3/a4/g2 carry `accelerators`, as GCE lists them);
  acceleratorTypes per zone from the accelerator rows (maximumCardsPerInstance = the largest count); billing
  SKUs per (machine series, region): one Core and one Ram SKU, OnDemand and Preemptible (spot), whose unit
  prices are the least-squares fit of the series' VM rows in that region (GCP bills a VM as vCPUs × core price
  + GiB × RAM price; upstream computed its rows the same way, so the fit reproduces them to rounding); GPU SKUs
  per (GPU, region) = the 1-GPU accelerator row's price (else the row's price / count).
- Azure: Retail Prices items per row (Linux `Consumption` item with the row's Price; a `... Spot` item with
  its SpotPrice; a Windows decoy; a `Low Priority` decoy every 7th row) and resource SKUs per (size, location)
  with the vCPUs / MemoryGB / GPUs capabilities (GPUs rounded up: fractional GPU sizes report whole cards;
  the NP sizes' cards, which upstream lists without a model, as FPGAs).
"""
from __future__ import annotations

import ast
import csv
import math
from collections import defaultdict
from pathlib import Path

UPSTREAM = Path(__file__).resolve().parents[3] / "shared" / "catalogs-upstream"


def rows(cloud: str, upstream: Path = UPSTREAM) -> list[dict]:
    name = {"aws": "aws/vms_subset.csv", "gcp": "gcp/vms.csv", "azure": "azure/vms.csv"}[cloud]
    with open(upstream / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ AWS
def aws(rs: list[dict]) -> dict:
    types, offerings, spot, products = {}, defaultdict(list), defaultdict(list), {}
    for r in rs:
        t = r["InstanceType"]
        if t not in types:
            e = {"InstanceType": t, "VCpuInfo": {"DefaultVCpus": int(float(r["vCPUs"]))},
                 "MemoryInfo": {"SizeInMiB": int(round(float(r["MemoryGiB"]) * 1024))},
                 "ProcessorInfo": {"SupportedArchitectures": [r["Arch"]]}, "CurrentGeneration": True}
            if r["GpuInfo"]:
                e["GpuInfo"] = ast.literal_eval(r["GpuInfo"])
            types[t] = e
        offerings[r["Region"]].append([t, r["AvailabilityZone"]])
        if r["SpotPrice"]:
            spot[r["Region"]].append([t, r["AvailabilityZone"], r["SpotPrice"]])
        if r["Price"] and (t, r["Region"]) not in products:
            products[(t, r["Region"])] = r
    plist = []
    for i, ((t, region), r) in enumerate(sorted(products.items())):
        base = {"instanceType": t, "regionCode": region, "vcpu": str(int(float(r["vCPUs"]))),
                "memory": f"{float(r['MemoryGiB']):g} GiB", "operatingSystem": "Linux", "tenancy": "Shared",
                "capacitystatus": "Used", "preInstalledSw": "NA", "licenseModel": "No License required"}
        plist.append(_aws_product(f"P{i:06d}", base, r["Price"]))
        plist.append(_aws_product(f"W{i:06d}", {**base, "operatingSystem": "Windows"}, float(r["Price"]) * 1.6))
        plist.append(_aws_product(f"D{i:06d}", {**base, "tenancy": "Dedicated"}, float(r["Price"]) * 1.1))
        plist.append(_aws_product(f"U{i:06d}", {**base, "capacitystatus": "UnusedCapacityReservation"}, r["Price"]))
    return {"instance_types": list(types.values()), "offerings": dict(offerings), "spot": dict(spot),
            "products": plist}


def _aws_product(sku: str, attrs: dict, price) -> dict:
    term = f"{sku}.JRTCKXETXF"
    return {"product": {"productFamily": "Compute Instance", "attributes": {**attrs, "servicecode": "AmazonEC2"},
                        "sku": sku},
            "serviceCode": "AmazonEC2", "version": "20261201000000", "publicationDate": "2026-12-01T00:00:00Z",
            "terms": {"OnDemand": {term: {"offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate":
                                          "2026-12-01T00:00:00Z", "termAttributes": {}, "priceDimensions": {
                f"{term}.6YS6EN2CT7": {"unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                                       "rateCode": f"{term}.6YS6EN2CT7",
                                       "description": f"${float(price):.4f} per On Demand {attrs['operatingSystem']} "
                                                      f"{attrs['instanceType']} Instance Hour",
                                       "pricePerUnit": {"USD": f"{float(price):.10f}"}}}}}}}


# ------------------------------------------------------------------------------------------------ GCP
GCE_GPU = {"V100": "nvidia-tesla-v100", "T4": "nvidia-tesla-t4", "P100": "nvidia-tesla-p100", "P4": "nvidia-tesla-p4",
           "K80": "nvidia-tesla-k80", "A100": "nvidia-tesla-a100", "A100-80GB": "nvidia-a100-80gb",
           "L4": "nvidia-l4", "H100": "nvidia-h100-80gb", "H100-MEGA": "nvidia-h100-mega-80gb",
           "H200": "nvidia-h200-141gb", "B200": "nvidia-b200"}
BILLING_GPU = {"V100": "Nvidia Tesla V100", "T4": "Nvidia Tesla T4", "P100": "Nvidia Tesla P100",
               "P4": "Nvidia Tesla P4", "K80": "Nvidia Tesla K80", "A100": "Nvidia Tesla A100",
               "A100-80GB": "Nvidia Tesla A100 80GB", "L4": "Nvidia L4", "H100": "Nvidia H100 80GB",
               "H100-MEGA": "Nvidia H100 Mega 80GB", "H200": "Nvidia H200 141GB", "B200": "Nvidia B200"}
# How the billing catalog names each machine series' SKUs (`<label> Core running in …`).
BILLING_SERIES = {"n1": "N1 Predefined Instance", "e2": "E2 Instance", "n2": "N2 Instance", "n2d": "N2D AMD Instance",
                  "c2": "Compute optimized", "c2d": "C2D AMD Instance", "t2d": "T2D AMD Instance",
                  "t2a": "T2A Arm Instance", "m1": "Memory-optimized Instance", "m3": "M3 Memory-optimized Instance",
                  "c3": "C3 Instance", "c3d": "C3D Instance", "c4": "C4 Instance", "c4d": "C4D Instance",
                  "n4": "N4 Instance", "a2": "A2 Instance", "a3": "A3 Instance", "a4": "A4 Instance",
                  "g2": "G2 Instance", "f1": "Micro Instance with burstable CPU", "g1": "Small Instance with 1 VCPU"}
WHOLE_INSTANCE = {"f1-micro": "Micro Instance with burstable CPU", "g1-small": "Small Instance with 1 VCPU"}
SHARED_CORE = {"e2-micro": 0.25, "e2-small": 0.5, "e2-medium": 1.0, "f1-micro": 0.2, "g1-small": 0.5}
_FIXED = [("a2-highgpu-", "nvidia-tesla-a100"), ("a2-megagpu-", "nvidia-tesla-a100"), ("a2-ultragpu-", "nvidia-a100-80gb"),
          ("a3-highgpu-", "nvidia-h100-80gb"), ("a3-edgegpu-", "nvidia-h100-80gb"), ("a3-megagpu-", "nvidia-h100-mega-80gb"),
          ("a3-ultragpu-", "nvidia-h200-141gb"), ("a4-highgpu-", "nvidia-b200")]
_G2 = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}


def _gce_accelerators(mt: str) -> list[dict]:
    if mt.startswith("g2-standard-"):
        n = _G2.get(int(mt.split("-")[2]))
        return [{"guestAcceleratorType": "nvidia-l4", "guestAcceleratorCount": n}] if n else []
    for prefix, gpu in _FIXED:
        if mt.startswith(prefix):
            return [{"guestAcceleratorType": gpu, "guestAcceleratorCount": int(mt.split("-")[2].split("g")[0])}]
    return []


def _money(v: float) -> dict:
    units = math.floor(v)
    return {"currencyCode": "USD", "units": str(units), "nanos": int(round((v - units) * 1e9))}


def _sku(i: int, desc: str, group: str, usage: str, region: str, unit: str, price: float) -> dict:
    sid = f"{i // 65536 % 65536:04X}-{i % 65536:04X}-{(i * 7919) % 65536:04X}"
    return {"name": f"services/6F81-5844-456A/skus/{sid}", "skuId": sid, "description": desc,
            "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                         "resourceGroup": group, "usageType": usage},
            "serviceRegions": [region],
            "pricingInfo": [{"summary": "", "pricingExpression": {
                "usageUnit": unit, "displayQuantity": 1, "usageUnitDescription": "hour" if unit == "h" else "gibibyte hour",
                "baseUnit": "s" if unit == "h" else "By.s",
                "tieredRates": [{"startUsageAmount": 0, "unitPrice": _money(price)}]},
                "currencyConversionRate": 1, "effectiveTime": "2026-12-01T00:00:00Z"}],
            "serviceProviderName": "Google", "geoTaxonomy": {"type": "REGIONAL", "regions": [region]}}


def _fit(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Least-squares (core, ram) with price ≈ core × vcpus + ram × GiB; one shape only: split by the mean ratio."""
    sxx = sum(x * x for x, _, _ in points)
    syy = sum(y * y for _, y, _ in points)
    sxy = sum(x * y for x, y, _ in points)
    sxp = sum(x * p for x, _, p in points)
    syp = sum(y * p for _, y, p in points)
    det = sxx * syy - sxy * sxy
    if abs(det) < 1e-9 * max(sxx * syy, 1):
        x, y, p = points[0]
        return p * 0.85 / x, p * 0.15 / y  # a single shape: any split reproduces it
    return (sxp * syy - syp * sxy) / det, (syp * sxx - sxp * sxy) / det


def gcp(rs: list[dict]) -> dict:
    mts, accs, skus = defaultdict(list), defaultdict(dict), []
    fit: dict[tuple, list] = defaultdict(list)
    gpu: dict[tuple, dict] = {}
    whole: dict[tuple, float] = {}
    seen = set()
    for r in rs:
        zone, region = r["AvailabilityZone"], r["Region"]
        if r["InstanceType"]:
            mt = r["InstanceType"]
            if mt.endswith("-tpu") or (mt, zone) in seen:
                continue
            seen.add((mt, zone))
            vc, mem = float(r["vCPUs"]), float(r["MemoryGiB"])
            entry = {"kind": "compute#machineType", "name": mt, "guestCpus": int(vc), "memoryMb": int(round(mem * 1024)),
                     "zone": zone, "isSharedCpu": mt in SHARED_CORE, "description": f"{int(vc)} vCPUs, {mem:g} GB RAM",
                     "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168"}
            acc = _gce_accelerators(mt)
            if acc:
                entry["accelerators"] = acc
            mts[zone].append(entry)
            series = mt.split("-")[0]
            if mt in SHARED_CORE:  # billed at a fraction of a vCPU (e2) or per instance (f1/g1): not fitted
                if mt in WHOLE_INSTANCE:
                    for usage, col in (("OnDemand", "Price"), ("Preemptible", "SpotPrice")):
                        if r[col] and float(r[col]) > 0:
                            whole[(mt, region, usage)] = float(r[col])
                continue
            cores = vc
            for usage, col in (("OnDemand", "Price"), ("Preemptible", "SpotPrice")):
                if r[col] and float(r[col]) > 0:
                    fit[(series, region, usage)].append((cores, mem, float(r[col])))
        elif not r["AcceleratorName"].startswith("tpu-"):
            name, count = r["AcceleratorName"], float(r["AcceleratorCount"])
            a = accs[zone].setdefault(name, {"kind": "compute#acceleratorType", "name": GCE_GPU[name], "zone": zone,
                                             "description": f"NVIDIA {name}", "maximumCardsPerInstance": 0})
            a["maximumCardsPerInstance"] = max(a["maximumCardsPerInstance"], int(count))
            for usage, col in (("OnDemand", "Price"), ("Preemptible", "SpotPrice")):
                if r[col] and float(r[col]) > 0:
                    k = (name, region, usage)
                    if k not in gpu or gpu[k][0] > count:
                        gpu[k] = (count, float(r[col]) / count)
    i = 0
    for (series, region, usage), pts in sorted(fit.items()):
        core, ram = _fit(pts)
        label = BILLING_SERIES.get(series, f"{series.upper()} Instance")
        spot = "Spot Preemptible " if usage == "Preemptible" else ""
        group = {"n1": "N1Standard", "f1": "F1Micro", "g1": "G1Small"}.get(series, series.upper())
        skus.append(_sku(i, f"{spot}{label} Core running in {region}", group, usage, region, "h", core))
        skus.append(_sku(i + 1, f"{spot}{label} Ram running in {region}", group if series == "n1" else "RAM",
                         usage, region, "GiBy.h", ram))
        i += 2
    for (name, region, usage), (_, price) in sorted(gpu.items()):
        spot = " attached to Spot Preemptible VMs" if usage == "Preemptible" else ""
        skus.append(_sku(i, f"{BILLING_GPU[name]} GPU{spot} running in {region}", "GPU", usage, region, "h", price))
        i += 1
    for (mt, region, usage), price in sorted(whole.items()):
        spot = "Spot Preemptible " if usage == "Preemptible" else ""
        skus.append(_sku(i, f"{spot}{WHOLE_INSTANCE[mt]} running in {region}", mt.split("-")[0].upper(), usage,
                         region, "h", price))
        i += 1
    # decoys a real catalog has: commitments and custom shapes of the same series
    skus.append(_sku(i, "Commitment v1: N1 Cpu in Americas for 1 Year", "CPU", "Commit1Yr", "us-central1", "h", 0.02))
    skus.append(_sku(i + 1, "N1 Custom Instance Core running in us-central1", "CPU", "OnDemand", "us-central1", "h", 9.0))
    return {"machine_types": dict(mts), "accelerator_types": {z: list(v.values()) for z, v in accs.items()},
            "skus": skus}


# ------------------------------------------------------------------------------------------------ Azure
def azure(rs: list[dict]) -> dict:
    items, skus = [], []
    for i, r in enumerate(rs):
        size, region = r["InstanceType"], r["Region"]
        short = size.removeprefix("Standard_").replace("_", " ")
        series = f"Virtual Machines {short.split(' ')[0].rstrip('0123456789')} Series"
        base = {"currencyCode": "USD", "tierMinimumUnits": 0.0, "armRegionName": region, "location": region,
                "effectiveStartDate": "2026-06-01T00:00:00Z", "meterId": f"m-{i}", "productId": f"DZH318Z0{i:05d}",
                "skuId": f"DZH318Z0{i:05d}/0001", "productName": series, "skuName": short, "meterName": short,
                "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute",
                "unitOfMeasure": "1 Hour", "type": "Consumption", "isPrimaryMeterRegion": True, "armSkuName": size}
        p = float(r["Price"])
        items.append({**base, "retailPrice": p, "unitPrice": p})
        items.append({**base, "productName": series + " Windows", "retailPrice": p * 1.5, "unitPrice": p * 1.5,
                      "meterId": f"w-{i}"})
        if r["SpotPrice"]:
            s = float(r["SpotPrice"])
            items.append({**base, "skuName": short + " Spot", "meterName": short + " Spot", "retailPrice": s,
                          "unitPrice": s, "meterId": f"s-{i}"})
        if i % 7 == 0:
            items.append({**base, "skuName": short + " Low Priority", "meterName": short + " Low Priority",
                          "retailPrice": p * 0.2, "unitPrice": p * 0.2, "meterId": f"l-{i}"})
        caps = [{"name": "vCPUs", "value": str(int(float(r["vCPUs"])))},
                {"name": "MemoryGB", "value": f"{float(r['MemoryGiB']):g}"}]
        if r["AcceleratorCount"]:  # upstream writes the NP (Xilinx FPGA) sizes' cards with no model name
            caps.append({"name": "GPUs" if r["AcceleratorName"] else "FPGAs",
                         "value": str(math.ceil(float(r["AcceleratorCount"])))})
        skus.append({"resourceType": "virtualMachines", "name": size, "tier": "Standard",
                     "size": size.removeprefix("Standard_"), "family": f"standard{series.split(' ')[2]}Family",
                     "locations": [region], "locationInfo": [{"location": region, "zones": [], "zoneDetails": []}],
                     "capabilities": caps, "restrictions": []})
    return {"items": items, "resource_skus": skus}
