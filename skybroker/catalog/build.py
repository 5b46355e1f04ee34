"""Build the compact price catalogs (package data: `skybroker/catalog/data/`) from the upstream CSVs.

    python -m skybroker.catalog.build [--upstream PATH] [--out PATH] [--date YYYY-MM-DD]
    broker catalog build                  (the CLI calls `main`)

Every rule applied here is written out in `README_RULES` below, which also becomes part of the generated
`data/README.md`, so the documentation cannot drift from the code. Output is deterministic: the same
inputs and `--date` give the same bytes. Stdlib only.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import os
import pathlib
import re
import statistics
import sys
from collections import defaultdict

from skybroker.catalog import FORMAT_VERSION, INDEX_MAGIC, META_FILE, index_name, offers_name, parse_offer_line
from skybroker.catalog.model import CLOUDS
from skybroker.errors import BrokerError

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_UPSTREAM = REPO.parent / "shared" / "catalogs-upstream"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "data"  # the package data the loader reads

INPUTS = {"aws": "aws/vms_subset.csv", "gcp": "gcp/vms.csv", "azure": "azure/vms.csv"}
# Provenance, copied from the upstream README (update together with the upstream files).
SOURCES = {
    "aws": {"repo": "skypilot-org/skypilot-catalog", "path": "catalogs/v9/aws/vms.csv",
            "commit": "2c3d7ea7d76bf84cf80d382e946c1609571485fd",
            "note": "partial: 128 complete instance-type blocks, 21 families"},
    "gcp": {"repo": "anycloud-sh/catalog", "path": "gcp/vms.csv",
            "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29", "note": "complete, byte-identical"},
    "azure": {"repo": "anycloud-sh/catalog", "path": "azure/vms.csv",
              "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29",
              "note": "complete; the shared copy re-quotes Generation `V1,V2`"},
}
SUSPICIOUS_RATIO = 0.3

# --- GCP accelerator attachment rules (GUIDE §1) ----------------------------------------------------
GCP_GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-")  # machine types that bring their GPUs: never CPU-only
_G2_L4 = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}
N1_CEILINGS = {  # gpu -> {count: (max vCPUs, max GiB)} for the N1 host
    "V100": {1: (12, 78), 2: (24, 156), 4: (48, 312), 8: (96, 624)},
    "T4": {1: (48, 312), 2: (48, 312), 4: (96, 624)},
    "P100": {1: (16, 104), 2: (32, 208), 4: (96, 624)},
    "P4": {1: (24, 156), 2: (48, 312), 4: (96, 624)},
    "K80": {1: (8, 52), 2: (16, 104), 4: (32, 208), 8: (64, 416)},
}
_N1_HOST = re.compile(r"^n1-(standard|highmem|highcpu)-\d+$")
GCP_ARM_FAMILIES = ("t2a", "c4a", "n4a")
# Azure size name: Standard_<family><vCPUs>[-<constrained>]<feature letters>[_...]; 'p' = Arm (Ampere/Cobalt)
_AZURE_SIZE = re.compile(r"^Standard_[A-Z]+[0-9]+(?:-[0-9]+)?([a-z]*)")


def gcp_fixed_gpu(machine_type: str) -> tuple[str, int] | None:
    """The (accelerator, count) a GPU-family machine type brings, or None if it is not a known one."""
    m = re.fullmatch(r"a2-(highgpu|megagpu|ultragpu)-(\d+)g", machine_type)
    if m:
        n = int(m.group(2))
        if m.group(1) == "highgpu" and n in (1, 2, 4, 8):
            return "A100", n
        if m.group(1) == "megagpu" and n == 16:
            return "A100", 16
        if m.group(1) == "ultragpu" and n in (1, 2, 4, 8):
            return "A100-80GB", n
        return None
    m = re.fullmatch(r"g2-standard-(\d+)", machine_type)
    if m:
        n = _G2_L4.get(int(m.group(1)))
        return ("L4", n) if n else None
    m = re.fullmatch(r"a3-highgpu-(\d+)g", machine_type)
    if m and int(m.group(1)) in (1, 2, 4, 8):
        return "H100", int(m.group(1))
    return {"a3-edgegpu-8g": ("H100", 8), "a3-edgegpu-8g-nolssd": ("H100", 8),
            "a3-megagpu-8g": ("H100-MEGA", 8),
            "a3-ultragpu-8g": ("H200", 8), "a3-ultragpu-8g-nolssd": ("H200", 8),
            "a4-highgpu-8g": ("B200", 8)}.get(machine_type)


def azure_arch(size: str) -> str:
    m = _AZURE_SIZE.match(size)
    return "arm64" if m and "p" in m.group(1) else "x86_64"


def gcp_arch(machine_type: str) -> str:
    return "arm64" if machine_type.split("-", 1)[0] in GCP_ARM_FAMILIES else "x86_64"


def is_local_zone(zone: str | None) -> bool:
    return zone is not None and zone.count("-") > 1


# --- small helpers -----------------------------------------------------------------------------------
def _price(text: str) -> float | None:
    """Empty or non-positive → None (unknown, never free)."""
    if not text.strip():
        return None
    v = float(text)
    return v if v > 0 else None


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a + b, 6)


def fmt(v: float | None) -> str:
    if v is None:
        return ""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


class _Acc:
    """Accumulates specs and their offers for one cloud."""

    def __init__(self, cloud: str):
        self.cloud = cloud
        self.specs: dict[tuple, dict] = {}
        self.stats: dict[str, int] = defaultdict(int)

    def add(self, itype, vcpus, mem, acc, count, arch, region, zone, price, spot):
        key = (itype, acc or "", float(count or 0))
        s = self.specs.get(key)
        if s is None:
            s = self.specs[key] = {"vcpus": float(vcpus), "mem": float(mem), "arch": arch, "offers": {}}
        elif (s["vcpus"], s["mem"], s["arch"]) != (float(vcpus), float(mem), arch):
            raise BrokerError(f"{self.cloud}: {itype} has inconsistent shape across rows")
        if price is None and spot is None:
            self.stats["offers_without_any_price"] += 1
            return
        place = (region, zone)
        if place in s["offers"]:
            raise BrokerError(f"{self.cloud}: duplicate row for {key} in {place}")
        s["offers"][place] = [price, spot, is_local_zone(zone) and self.cloud == "aws", False]


def _rows(path: pathlib.Path):
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def read_aws(path, acc: _Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        arch = {"x86_64": "x86_64", "i386": "x86_64", "arm64": "arm64"}.get(r["Arch"])
        if arch is None:  # x86_64_mac / arm64_mac (dedicated Mac hosts): out of scope
            acc.stats["skipped_mac_rows"] += 1
            continue
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], r["AcceleratorName"] or None,
                r["AcceleratorCount"] or 0, arch, r["Region"], r["AvailabilityZone"],
                _price(r["Price"]), _price(r["SpotPrice"]))


def read_azure(path, acc: _Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], r["AcceleratorName"] or None,
                r["AcceleratorCount"] or 0, azure_arch(r["InstanceType"]), r["Region"], None,
                _price(r["Price"]), _price(r["SpotPrice"]))


def read_gcp(path, acc: _Acc) -> None:
    vms: dict[str, list[dict]] = defaultdict(list)
    gpus: dict[tuple[str, float, str], tuple[float | None, float | None]] = {}
    gpu_counts: dict[str, set[float]] = defaultdict(set)
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        name = r["AcceleratorName"]
        if r["InstanceType"]:
            if r["InstanceType"].endswith("-tpu"):  # TPU host VMs (n1-340-48-tpu …): only with a TPU
                acc.stats["skipped_tpu_rows"] += 1
            else:
                vms[r["InstanceType"]].append(r)
        elif name.startswith("tpu-"):
            acc.stats["skipped_tpu_rows"] += 1
        else:
            count = float(r["AcceleratorCount"])
            k = (name, count, r["AvailabilityZone"])
            if k in gpus:
                raise BrokerError(f"gcp: duplicate accelerator row {k}")
            gpus[k] = (_price(r["Price"]), _price(r["SpotPrice"]))
            gpu_counts[name].add(count)
    used_gpu_rows: set[tuple] = set()

    def attach(itype, rows, gpu, count):
        for r in rows:
            k = (gpu, float(count), r["AvailabilityZone"])
            g = gpus.get(k)
            if g is None:
                continue  # no accelerator row in that zone: no offer there
            used_gpu_rows.add(k)
            acc.add(itype, r["vCPUs"], r["MemoryGiB"], gpu, count, gcp_arch(itype), r["Region"],
                    r["AvailabilityZone"], _add(_price(r["Price"]), g[0]),
                    _add(_price(r["SpotPrice"]), g[1]))

    for itype in sorted(vms):
        rows = vms[itype]
        if itype.startswith(GCP_GPU_FAMILIES):
            fixed = gcp_fixed_gpu(itype)
            if fixed is None:
                acc.stats["skipped_unknown_gpu_machine_rows"] += len(rows)
                continue
            attach(itype, rows, *fixed)
            continue
        for r in rows:
            acc.add(itype, r["vCPUs"], r["MemoryGiB"], None, 0, gcp_arch(itype), r["Region"],
                    r["AvailabilityZone"], _price(r["Price"]), _price(r["SpotPrice"]))
        if _N1_HOST.match(itype):
            vcpus, mem = float(rows[0]["vCPUs"]), float(rows[0]["MemoryGiB"])
            for gpu in sorted(N1_CEILINGS):
                for count in sorted(gpu_counts.get(gpu, ())):
                    ceil = N1_CEILINGS[gpu].get(int(count))
                    if ceil and vcpus <= ceil[0] and mem <= ceil[1]:
                        attach(itype, rows, gpu, int(count))
    unused = {k for k in gpus if k not in used_gpu_rows}
    acc.stats["accelerator_rows_without_host"] = len(unused)


READERS = {"aws": read_aws, "gcp": read_gcp, "azure": read_azure}


def flag_suspicious(acc: _Acc) -> None:
    """Flag offers whose on-demand price is < SUSPICIOUS_RATIO × the median of the spec's per-region
    on-demand prices (one value per region: the region's lowest)."""
    n = 0
    for s in acc.specs.values():
        per_region: dict[str, float] = {}
        for (region, _zone), o in s["offers"].items():
            if o[0] is not None:
                per_region[region] = min(o[0], per_region.get(region, o[0]))
        if len(per_region) < 2:
            continue
        med = statistics.median(per_region.values())
        for o in s["offers"].values():
            if o[0] is not None and o[0] < SUSPICIOUS_RATIO * med:
                o[3] = True
                n += 1
    acc.stats["suspicious_offers"] = n


def _offer_sort(item):
    (region, zone), o = item
    return (o[0] if o[0] is not None else float("inf"), region, zone or "")


def write_cloud(acc: _Acc, out: pathlib.Path) -> dict:
    """Write <cloud>.index.tsv and <cloud>.offers.tsv, then re-read every block to verify offsets."""
    specs = {k: v for k, v in acc.specs.items() if v["offers"]}
    acc.stats["specs_dropped_no_price"] = len(acc.specs) - len(specs)
    regions: set[str] = set()
    zones: dict[str, str] = {}
    body = bytearray()
    lines = []
    n_offers = 0
    for key in sorted(specs):
        itype, gpu, count = key
        s = specs[key]
        offers = sorted(s["offers"].items(), key=_offer_sort)
        head = f"{itype}\t{gpu}\t{fmt(count)}\n"
        block = [head]
        for (region, zone), (price, spot, local, susp) in offers:
            regions.add(region)
            if zone is not None:
                zones[zone] = region
            flags = ("L" if local else "") + ("S" if susp else "")
            block.append(f"\t{region}\t{zone or ''}\t{fmt(price)}\t{fmt(spot)}\t{flags}\n")
        data = "".join(block).encode()
        prices = [o[0] for _, o in offers if o[0] is not None]
        spots = [o[1] for _, o in offers if o[1] is not None]
        lines.append("\t".join([
            "S", itype, fmt(s["vcpus"]), fmt(s["mem"]), gpu, fmt(count), s["arch"],
            fmt(min(prices) if prices else None), fmt(min(spots) if spots else None),
            str(len(body)), str(len(data)), str(len(offers))]) + "\n")
        body += data
        n_offers += len(offers)
    header = [f"{INDEX_MAGIC}\t{FORMAT_VERSION}\t{acc.cloud}\t{offers_name(acc.cloud)}\t{len(body)}"
              f"\t{len(lines)}\n",
              "# S\tinstance_type\tvcpus\tmemory_gib\taccelerator\tcount\tarch\tmin_price\tmin_spot"
              "\toffset\tlength\tn_offers\n"]
    header += [f"R\t{r}\n" for r in sorted(regions)]
    header += [f"Z\t{z}\t{zones[z]}\n" for z in sorted(zones)]
    index_text = "".join(header + lines)
    _write(out / offers_name(acc.cloud), bytes(body))
    _write(out / index_name(acc.cloud), index_text.encode())
    _verify(out, acc.cloud, lines)
    acc.stats["specs"] = len(specs)
    acc.stats["offers"] = n_offers
    acc.stats["regions"] = len(regions)
    acc.stats["zones"] = len(zones)
    return dict(sorted(acc.stats.items()))


def _write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _verify(out: pathlib.Path, cloud: str, lines: list[str]) -> None:
    with open(out / offers_name(cloud), "rb") as f:
        for line in lines:
            p = line.rstrip("\n").split("\t")
            off, length, n = int(p[9]), int(p[10]), int(p[11])
            f.seek(off)
            block = f.read(length).decode().split("\n")
            if block[0] != f"{p[1]}\t{p[4]}\t{p[5]}" or block[-1] != "" or len(block) != n + 2:
                raise BrokerError(f"catalog build: offset check failed for {cloud} {p[1]}")
            for ol in block[1:-1]:
                parse_offer_line(ol)


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(upstream: pathlib.Path, out: pathlib.Path, date: str, warn=None) -> dict:
    """Build all clouds; returns the metadata written to meta.json."""
    upstream, out = pathlib.Path(upstream), pathlib.Path(out)
    missing = [str(upstream / INPUTS[c]) for c in CLOUDS if not (upstream / INPUTS[c]).is_file()]
    if missing:
        raise BrokerError(f"upstream catalog files not found: {', '.join(missing)}",
                          hint="pass --upstream PATH (the folder holding aws/, gcp/, azure/)", exit_code=2)
    out.mkdir(parents=True, exist_ok=True)
    readme = upstream / "README.md"
    expected = {}
    if readme.is_file():
        for rel, sha in re.findall(r"`([a-z]+/[a-z_]+\.csv)` ([0-9a-f]{64})", readme.read_text()):
            expected[rel] = sha
    meta = {"format_version": FORMAT_VERSION, "build_date": date,
            "suspicious_rule": f"on-demand < {SUSPICIOUS_RATIO} x median per-region on-demand of the spec",
            "clouds": {}}
    for cloud in CLOUDS:
        path = upstream / INPUTS[cloud]
        sha = _sha256(path)
        if expected.get(INPUTS[cloud], sha) != sha and warn:
            warn(f"warning: {INPUTS[cloud]} sha256 differs from the upstream README; check SOURCES in build.py")
        acc = _Acc(cloud)
        READERS[cloud](path, acc)
        flag_suspicious(acc)
        stats = write_cloud(acc, out)
        meta["clouds"][cloud] = {**SOURCES[cloud], "input": INPUTS[cloud], "sha256": sha, "counts": stats}
    _write(out / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    _write(out / "README.md", render_readme(meta).encode())
    return meta


def _default_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    utc = _dt.timezone.utc
    now = _dt.datetime.fromtimestamp(int(epoch), utc) if epoch else _dt.datetime.now(utc)
    return now.date().isoformat()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="broker catalog build", description="Build the price catalogs from upstream CSVs.")
    ap.add_argument("--upstream", type=pathlib.Path, default=DEFAULT_UPSTREAM)
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="output folder (default: $BROKER_CATALOG_DIR or the package's skybroker/catalog/data)")
    ap.add_argument("--date", default=None,
                    help="build date to record (default: $SOURCE_DATE_EPOCH or today, UTC)")
    args = ap.parse_args(argv)
    out = args.out or pathlib.Path(os.environ.get("BROKER_CATALOG_DIR") or DEFAULT_OUT)
    date = args.date or _default_date()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise BrokerError(f"bad --date {date!r}", hint="use YYYY-MM-DD", exit_code=2)
    meta = build(args.upstream, out, date, warn=lambda m: print(m, file=sys.stderr))
    for cloud, m in meta["clouds"].items():
        c = m["counts"]
        print(f"{cloud}: {c['specs']} specs, {c['offers']} offers, {c['suspicious_offers']} suspicious")
    print(f"wrote {out}")
    try:  # a running process may hold a stale cache
        from skybroker import catalog
        catalog.clear_cache()
    except Exception:  # pragma: no cover
        pass
    return 0


README_RULES = """\
## Rules applied by the build

General
- Input files are read with Python's `csv` module (fields such as GpuInfo contain commas).
- Prices are USD/hour. An empty price, or a price of 0 or less, means *unknown*: `None`, never free.
  Empty `Price` → no on-demand offer there (`price` None); empty `SpotPrice` → no spot offer (`spot_price`
  None). A row with neither price gives no offer; a spec with no offer anywhere is dropped.
- A spot price above (or equal to) the on-demand price is kept as is (e.g. AWS Atlanta Local Zone rows at
  1.25 × on-demand; rows rounded up in the 6th decimal). The optimizer compares whatever it is asked for.
- Suspicious prices: the row is kept and flagged (`suspicious=True`, flag `S`) when its on-demand price is
  below {ratio} × the median of the spec's on-demand prices across regions (one value per region, the
  region's lowest; `statistics.median`; specs offered in a single region are never flagged). This flags the
  19 Azure rows the upstream README describes (7 in newzealandnorth, e.g. `Standard_F4ams_v6` at 0.0449).
- `min_price` / `min_spot_price` in the index are minima over every offer of the spec (Local Zones and
  suspicious rows included), so they are lower bounds for best-first search.
- Accelerator names are kept as upstream writes them (SkyPilot canonical names: V100, A100, A100-80GB,
  T4, L4, A10G, A10, H100, …). Counts are floats; Azure fractional counts (0.167, 0.333, 0.5) stay
  fractional. CPU-only specs have accelerator None and count 0.

AWS (`aws/vms_subset.csv`)
- Zones are AZ IDs (`use1-az1`), kept as the zone. On-demand is per region (repeated on each AZ row),
  spot per AZ.
- Local Zones (AZ ID with more than one `-`, e.g. `usw2-lax1-az1`, `use1-atl2-az1`): `local_zone=True`
  (flag `L`); the optimizer excludes them unless the user asks for that zone.
- Arch comes from the `Arch` column (`i386` → x86_64; Mac host rows would be skipped; none in the subset).

GCP (`gcp/vms.csv`)
- TPU rows (AcceleratorName `tpu-*`) and the TPU host VM types (`*-tpu`, e.g. `n1-340-48-tpu`) are out of
  scope and skipped.
- GPU machines are priced as GCP bills them: host VM row + accelerator row of the same zone, on-demand
  and spot (spot only when both rows have one). One spec per legal (host, accelerator, count);
  `instance_type` is the host machine type. If either row is missing in a zone, that zone has no offer.
  - Machine types that bring their GPUs (never listed as CPU-only specs): A100 (40 GB) on
    `a2-highgpu-{{1,2,4,8}}g` (count N) and `a2-megagpu-16g` (16); A100-80GB on `a2-ultragpu-{{1,2,4,8}}g`;
    L4 on `g2-standard-4/8/12/16/32` (1), `-24` (2), `-48` (4), `-96` (8); H100 on `a3-highgpu-{{1,2,4,8}}g`
    and `a3-edgegpu-8g` (8); H100-MEGA:8 on `a3-megagpu-8g`; H200:8 on `a3-ultragpu-8g`; B200:8 on
    `a4-highgpu-8g`. The `-nolssd` variants (`a3-edgegpu-8g-nolssd`, `a3-ultragpu-8g-nolssd`) carry the
    same GPUs as their base type. Any other `a2-/a3-/a4-/g2-` type is skipped.
  - The `a4-highgpu-8g` VM rows are priced 0.0 (on-demand and spot): unknown, so the B200 total is
    unknown and, with no price anywhere, the B200 spec is dropped (until upstream prices the VM).
  - V100, T4, P100, P4 (and K80 if present) attach to N1 hosts (`n1-standard/highmem/highcpu-*`) with the
    counts present in the accelerator rows, on every host within the ceiling (vCPUs, GiB) per GPU count:
    V100 1→(12,78) 2→(24,156) 4→(48,312) 8→(96,624); T4 1→(48,312) 2→(48,312) 4→(96,624);
    P100 1→(16,104) 2→(32,208) 4→(96,624); P4 1→(24,156) 2→(48,312) 4→(96,624);
    K80 1→(8,52) 2→(16,104) 4→(32,208) 8→(64,416). The N1 hosts are also CPU-only specs.
  - Sums are rounded to 6 decimals (inputs have at most 5).
- Plain VM rows → CPU-only specs. Arch: families {arm} are arm64, the rest x86_64.

Azure (`azure/vms.csv`)
- No zone column: zone None; on-demand and spot are per region.
- Arch: a size is arm64 when its feature letters (the lower-case letters after the vCPU count, as in
  `Standard_D4ps_v6`, `Standard_E2pds_v5`, `Standard_B2pls_v2`) contain `p`; otherwise x86_64.
- The `Generation` column is not used.
"""

README_FORMAT = """\
## Format (version {version})

Per cloud two UTF-8 text files; `meta.json` holds the build metadata (`skybroker.catalog.info()`).

`<cloud>.index.tsv` — read eagerly by the loader. Line 1: `{magic}<TAB>version<TAB>cloud<TAB>offers
file<TAB>offers file size<TAB>number of specs`. Then `#` comments, `R<TAB>region` lines (sorted),
`Z<TAB>zone<TAB>region` lines (sorted; none on Azure), and last one `S` line per spec, sorted by (instance type, accelerator, count):
`S instance_type vcpus memory_gib accelerator count arch min_price min_spot offset length n_offers`
(empty field = None). `offset`/`length` locate the spec's block in the offers file.

`<cloud>.offers.tsv` — read by seek, one block per spec in index order. A block starts with a header line
`instance_type<TAB>accelerator<TAB>count` (starts with a letter, so `git diff` hunk headers name the spec)
followed by one line per offer: `<TAB>region<TAB>zone<TAB>price<TAB>spot_price<TAB>flags`
(`L` = AWS Local Zone, `S` = suspicious), sorted by (price, with None last; region; zone). The build
re-reads every block to check the offsets.
"""


# --- Lambda Cloud (`lambda/vms.csv`, SkyPilot's Lambda schema) -----------------------------------------
INPUTS["lambda"] = "lambda/vms.csv"
SOURCES["lambda"] = {"repo": "anycloud-sh/catalog", "path": "lambda/vms.csv",
                     "commit": "4c0610266db3c729e55a84d8e0ffe1c96cd903ec", "note": "complete, byte-identical"}
LAMBDA_ARM_GPUS = ("GH200",)  # Grace Hopper superchips: an Arm (Neoverse) host


def read_lambda(path, acc: _Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        gpu = r["AcceleratorName"] or None
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], gpu, r["AcceleratorCount"] or 0,
                "arm64" if gpu in LAMBDA_ARM_GPUS else "x86_64", r["Region"], None, _price(r["Price"]), None)


READERS["lambda"] = read_lambda
README_RULES += """
Lambda Cloud (`lambda/vms.csv`)
- On-demand only: `SpotPrice` is empty on every row, and no spot offer is ever made. No zone column:
  zone None, prices per region.
- Arch: GH200 machines (`gpu_1x_gh200`) are arm64 (Grace CPU), so they are used only when named by
  `instance_type`; every other type is x86_64.
"""

def render_readme(meta: dict) -> str:
    out = ["# catalogs: compact price catalogs (generated)\n",
           "Generated by `python -m skybroker.catalog.build` (or `broker catalog build`) from "
           "`shared/catalogs-upstream/`. Do not edit by hand: change the build script and rebuild.\n",
           f"Build date: **{meta['build_date']}**.\n",
           "## Sources\n",
           "| cloud | input | upstream | commit | sha256 of input | rows | specs | offers | suspicious |",
           "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for cloud, m in meta["clouds"].items():
        c = m["counts"]
        out.append(f"| {cloud} | `{m['input']}` | `{m['repo']}` `{m['path']}` ({m['note']}) | `{m['commit']}` "
                   f"| `{m['sha256']}` | {c['input_rows']} | {c['specs']} | {c['offers']} "
                   f"| {c['suspicious_offers']} |")
    out.append("\nThe upstream repositories carry no LICENSE; the data are price and spec facts from the "
               "clouds' public pricing APIs, fetched by SkyPilot's fetchers (SkyPilot is Apache-2.0) and by "
               "anycloud-sh's bot. Credit: skypilot-org/skypilot-catalog, anycloud-sh/catalog.\n")
    out.append("Other counts per cloud (skipped rows etc.) are in `meta.json`.\n")
    out.append(README_RULES.format(ratio=SUSPICIOUS_RATIO, arm=", ".join(f"`{a}-*`" for a in GCP_ARM_FAMILIES)))
    out.append(README_FORMAT.format(version=FORMAT_VERSION, magic=INDEX_MAGIC))
    return "\n".join(out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokerError as e:
        print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        sys.exit(e.exit_code)
