"""AWS prices and offers from AWS's own APIs, as rows of the upstream `vms.csv` AWS schema (catalog/refresh.py
builds the catalog from them with the bundled build's normaliser).

Per region (all regions from DescribeRegions, or the ones asked for):
  EC2 DescribeInstanceTypes                 vCPUs, memory, GPUs (GpuInfo), Neuron devices, architectures
  EC2 DescribeAvailabilityZones             zone name → AZ ID (the catalog's zones are AZ IDs, as upstream's)
  EC2 DescribeInstanceTypeOfferings         which zones offer a type (LocationType availability-zone)
  EC2 DescribeSpotPriceHistory              the current spot price per type and zone (StartTime = now,
                                            Linux/UNIX; the newest entry per type/zone wins)
  Price List Query API (pricing GetProducts, us-east-1 endpoint)
                                            on-demand $/h per type: AmazonEC2, Compute Instance, Linux,
                                            Shared tenancy, capacitystatus Used, preInstalledSw NA
Every call pages with NextToken and goes through the refresh's Retry (throttling → backoff); endpoints come
from the environment as boto3 reads them (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL_PRICING).
"""
from __future__ import annotations

import datetime as dt
import json

from ...errors import Place
from . import client

PRICING_REGION = "us-east-1"
APIS = ["ec2:DescribeRegions", "ec2:DescribeInstanceTypes", "ec2:DescribeAvailabilityZones",
        "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeSpotPriceHistory", "pricing:GetProducts"]
# GPU names as the catalog writes them (SkyPilot canonical): the API names one model, the memory tells variants.
_GPU_BY_MEMORY = {("A100", 81920): "A100-80GB", ("V100", 32768): "V100-32GB"}


def credentials_bypassed() -> bool:
    """Whether the refresh may run without credentials `broker check` finds (never, for AWS)."""
    return False


def classify(exc):
    from .errors import classify as _classify

    return _classify(exc, Place("aws"))


def _pages(retry, what: str, fn, key: str, **kw):
    token = None
    while True:
        args = dict(kw, NextToken=token) if token else kw
        page = retry(what, lambda a=args: fn(**a))
        yield from page.get(key, ())
        token = page.get("NextToken")
        if not token:
            return


def accelerator(t: dict) -> tuple[str, float]:
    """(name, count) of an instance type's GPUs or Neuron devices; ("", 0) for CPU-only."""
    gpus = (t.get("GpuInfo") or {}).get("Gpus") or []
    if gpus:
        g = gpus[0]
        name = g.get("Name", "")
        mem = (g.get("MemoryInfo") or {}).get("SizeInMiB", 0)
        return _GPU_BY_MEMORY.get((name, mem), name), float(sum(x.get("Count", 0) for x in gpus))
    neuron = (t.get("NeuronInfo") or {}).get("NeuronDevices") or []
    if neuron:
        return neuron[0].get("Name", "Neuron"), float(sum(x.get("Count", 0) for x in neuron))
    inf = (t.get("InferenceAcceleratorInfo") or {}).get("Accelerators") or []
    if inf:
        return inf[0].get("Name", "Inferentia"), float(sum(x.get("Count", 0) for x in inf))
    return "", 0.0


def arch(t: dict) -> str:
    archs = (t.get("ProcessorInfo") or {}).get("SupportedArchitectures") or []
    for a in ("x86_64", "arm64", "x86_64_mac", "arm64_mac", "i386"):
        if a in archs:
            return a
    return archs[0] if archs else "x86_64"


def on_demand(products, region: str) -> dict[str, float]:
    """instance type → on-demand $/h from GetProducts PriceList entries (JSON strings)."""
    out: dict[str, float] = {}
    for raw in products:
        p = json.loads(raw) if isinstance(raw, str) else raw
        attrs = p.get("product", {}).get("attributes", {})
        itype = attrs.get("instanceType")
        if not itype or attrs.get("regionCode", region) != region:
            continue
        for term in (p.get("terms", {}).get("OnDemand") or {}).values():
            for dim in (term.get("priceDimensions") or {}).values():
                if dim.get("unit") not in ("Hrs", "Hours"):
                    continue
                usd = float((dim.get("pricePerUnit") or {}).get("USD", 0) or 0)
                if usd > 0:
                    out[itype] = min(usd, out.get(itype, usd))
    return out


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(round(v, 6))


def fetch(regions, retry, say) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    if not regions:
        say("fetch", "listing AWS regions")
        regions = sorted(r["RegionName"] for r in retry("DescribeRegions", lambda: client.ec2(
            PRICING_REGION).describe_regions()["Regions"]))
    pricing = client.client("pricing", PRICING_REGION)
    rows: list[dict] = []
    types: dict[str, dict] = {}
    for i, region in enumerate(regions):
        say("fetch", f"AWS {region} ({i + 1}/{len(regions)}): instance types, zones, offerings, spot and "
                     "on-demand prices")
        ec2 = client.ec2(region)
        zones = {z["ZoneName"]: z["ZoneId"] for z in retry(f"{region} DescribeAvailabilityZones", lambda e=ec2: (
            e.describe_availability_zones(AllAvailabilityZones=True)["AvailabilityZones"]))}
        offered = [(o["InstanceType"], o["Location"]) for o in _pages(
            retry, f"{region} DescribeInstanceTypeOfferings", ec2.describe_instance_type_offerings,
            "InstanceTypeOfferings", LocationType="availability-zone", MaxResults=1000)]
        # specs are the same in every region: describe (100 names a call) only the types not seen yet
        missing = sorted({t for t, _ in offered} - types.keys())
        for j in range(0, len(missing), 100):
            types.update((t["InstanceType"], t) for t in _pages(
                retry, f"{region} DescribeInstanceTypes", ec2.describe_instance_types, "InstanceTypes",
                InstanceTypes=missing[j:j + 100]))
        spot: dict[tuple[str, str], tuple] = {}
        for h in _pages(retry, f"{region} DescribeSpotPriceHistory", ec2.describe_spot_price_history,
                        "SpotPriceHistory", StartTime=now, ProductDescriptions=["Linux/UNIX"], MaxResults=1000):
            if h.get("ProductDescription", "Linux/UNIX").startswith("Linux/UNIX"):
                k = (h["InstanceType"], h["AvailabilityZone"])
                ts = h.get("Timestamp")
                if k not in spot or (ts and spot[k][1] and ts > spot[k][1]):
                    spot[k] = (float(h["SpotPrice"]), ts)
        filters = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
            ("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
            ("capacitystatus", "Used"), ("preInstalledSw", "NA"), ("productFamily", "Compute Instance"))]
        od = on_demand(_pages(retry, f"{region} pricing GetProducts", pricing.get_products, "PriceList",
                              ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1", MaxResults=100),
                       region)
        for itype, zone in sorted(set(offered)):
            t = types.get(itype)
            zid = zones.get(zone)
            if t is None or zid is None:
                continue
            price, sp = od.get(itype), spot.get((itype, zone), (None,))[0]
            if price is None and sp is None:
                continue
            gpu, count = accelerator(t)
            rows.append({"InstanceType": itype, "AcceleratorName": gpu, "AcceleratorCount": _fmt(count) if gpu else "",
                         "vCPUs": str(t["VCpuInfo"]["DefaultVCpus"]),
                         "MemoryGiB": repr(t["MemoryInfo"]["SizeInMiB"] / 1024), "Price": _fmt(price),
                         "SpotPrice": _fmt(sp), "Region": region, "AvailabilityZone": zid, "Arch": arch(t)})
    return {"rows": rows, "regions": list(regions), "apis": APIS}
