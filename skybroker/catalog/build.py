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

from skybroker.catalog import META_FILE, index_name, names_name, offers_name, parse_offer_line, regions_name
from skybroker.catalog.index import FORMAT_VERSION, G_FIELDS, INDEX_MAGIC, S_FIELDS
from skybroker.catalog.model import CLOUDS
from skybroker.catalog.rules import (GCP_ARM_FAMILIES, GCP_GPU_FAMILIES, N1_CEILINGS, README_RULES, TPU_VM,  # noqa: F401
                                    _N1_HOST, azure_arch, gcp_arch, gcp_fixed_gpu, generation, is_burstable,
                                    is_confidential,
                                    is_local_zone, is_tpu)
from skybroker.errors import BrokerError

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_UPSTREAM = REPO.parent / "shared" / "catalogs-upstream"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "data"  # the package data the loader reads

INPUTS = {"aws": "aws/vms_subset.csv", "gcp": "gcp/vms.csv", "azure": "azure/vms.csv"}
# Provenance, copied from the upstream README (update together with the upstream files). snapshot_date: the
# date of the upstream commit that last changed the file (when its prices were fetched; None = not stated).
SOURCES = {
    "aws": {"repo": "skypilot-org/skypilot-catalog", "path": "catalogs/v9/aws/vms.csv",
            "commit": "2c3d7ea7d76bf84cf80d382e946c1609571485fd",
            "note": "partial: 128 complete instance-type blocks, 21 families", "snapshot_date": None},
    "gcp": {"repo": "anycloud-sh/catalog", "path": "gcp/vms.csv",
            "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29", "note": "complete, byte-identical",
            "snapshot_date": "2026-05-20"},
    "azure": {"repo": "anycloud-sh/catalog", "path": "azure/vms.csv",
              "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29",
              "note": "complete; the shared copy re-quotes Generation `V1,V2`", "snapshot_date": "2026-05-20"},
}
SUSPICIOUS_RATIO = 0.3

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


    def carry(self, itype, vcpus, mem, acc, count, arch, region, zone, price, spot):
        """An offer kept from the catalog in use (refresh of some regions only); never replaces a fetched one."""
        s = self.specs.get((itype, acc or "", float(count or 0)))
        if s is not None and ((region, zone) in s["offers"]
                              or (s["vcpus"], s["mem"], s["arch"]) != (float(vcpus), float(mem), arch)):
            return  # fetched already, or the cloud now describes the type differently: the API wins
        self.stats["carried_offers"] += 1
        self.add(itype, vcpus, mem, acc, count, arch, region, zone, price, spot)


def _rows(source):
    """Rows in the upstream `vms.csv` schema (dicts of strings): from a CSV file, or as given (an iterable of
    dicts, e.g. the rows `catalog refresh` makes from a cloud's own APIs)."""
    if not isinstance(source, (str, os.PathLike)):
        yield from source
        return
    with open(source, newline="", encoding="utf-8") as f:
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
    tpus: dict[tuple[str, str], tuple] = {}
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        name = r["AcceleratorName"]
        if r["InstanceType"]:
            if r["InstanceType"].endswith("-tpu"):  # TPU-node host VMs (n1-340-48-tpu …): not planned
                acc.stats["skipped_tpu_host_rows"] += 1
            else:
                vms[r["InstanceType"]].append(r)
        elif is_tpu(name):
            k = (name, r["AvailabilityZone"])
            row = (r["AcceleratorCount"], r["Region"], r["Price"], r["SpotPrice"])
            if k in tpus:
                if tpus[k] != row:
                    raise BrokerError(f"gcp: two different rows for {name} in {k[1]}")
                acc.stats["duplicate_tpu_rows"] += 1
                continue
            tpus[k] = row
            acc.stats["tpu_rows"] += 1
            acc.add(TPU_VM, 0, 0, name, r["AcceleratorCount"], "x86_64", r["Region"], r["AvailabilityZone"],
                    _price(r["Price"]), _price(r["SpotPrice"]))
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


def _bound_key(v: float | None, gen: int, itype: str) -> tuple:
    return (v if v is not None else float("inf"), -gen, itype)


def write_cloud(acc: _Acc, out: pathlib.Path) -> dict:
    """Write <cloud>.index.tsv and <cloud>.offers.tsv (format in README_FORMAT), then re-read every block to
    verify the offsets."""
    cloud = acc.cloud
    specs = {k: v for k, v in acc.specs.items() if v["offers"]}
    acc.stats["specs_dropped_no_price"] = len(acc.specs) - len(specs)
    regions: set[str] = set()
    zones: dict[str, str] = {}
    body = bytearray()
    s_fields: dict[tuple, list[str]] = {}
    n_offers = 0
    for key in sorted(specs):  # offers blocks in (instance type, accelerator, count) order
        itype, gpu, count = key
        s = specs[key]
        offers = sorted(s["offers"].items(), key=_offer_sort)
        block = [f"{itype}\t{gpu}\t{fmt(count)}\n"]
        for (region, zone), (price, spot, local, susp) in offers:
            regions.add(region)
            if zone is not None:
                zones[zone] = region
            flags = ("L" if local else "") + ("S" if susp else "")
            block.append(f"\t{region}\t{zone or ''}\t{fmt(price)}\t{fmt(spot)}\t{flags}\n")
        data = "".join(block).encode()
        prices = [o[0] for _, o in offers if o[0] is not None]
        spots = [o[1] for _, o in offers if o[1] is not None]
        s["min"] = min(prices) if prices else None
        s["min_spot"] = min(spots) if spots else None
        clean = [o for _, o in offers if not o[2] and not o[3]]  # neither Local Zone nor suspicious
        s["cmin"] = min((o[0] for o in clean if o[0] is not None), default=None)
        s["cmin_spot"] = min((o[1] for o in clean if o[1] is not None), default=None)
        s["gen"] = generation(cloud, itype, gpu or None)
        s["flags"] = ("B" if is_burstable(cloud, itype) else "") + ("C" if is_confidential(cloud, itype) else "")
        s_fields[key] = ["S", itype, fmt(s["vcpus"]), fmt(s["mem"]), gpu, fmt(count), s["arch"], s["flags"],
                         str(s["gen"]), fmt(s["min"]), fmt(s["min_spot"]), str(len(body)), str(len(data)),
                         str(len(offers)), fmt(s["cmin"]), fmt(s["cmin_spot"])]
        assert len(s_fields[key]) == S_FIELDS
        body += data
        n_offers += len(offers)
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key, s in specs.items():
        groups[(key[1], key[2], s["vcpus"], s["mem"], s["arch"], s["flags"])].append(key)
    g_lines, s_lines, pos = [], [], 0
    by_region: dict[str, list[tuple[int, list[tuple]]]] = defaultdict(list)  # region -> [(group, entries)]
    where: dict[tuple, tuple[int, int]] = {}  # spec key -> (group, position)
    for gi, gk in enumerate(sorted(groups)):
        gpu, count, vcpus, mem, arch, flags = gk
        members = sorted(groups[gk], key=lambda k: _bound_key(specs[k]["cmin"], specs[k]["gen"], k[0]))
        where.update((k, (gi, i)) for i, k in enumerate(members))
        regional: dict[str, list[tuple]] = defaultdict(list)
        for i, k in enumerate(members):
            per: dict[str, list] = {}
            for (region, _zone), o in specs[k]["offers"].items():
                r = per.setdefault(region, [None, None])
                for j in (0, 1):
                    if o[j] is not None and (r[j] is None or o[j] < r[j]):
                        r[j] = o[j]
            for region, (od, sp) in per.items():
                regional[region].append((i, od, sp, specs[k]["gen"], k[0]))
        for region, entries in regional.items():
            by_region[region].append((gi, entries))
        spot_order = sorted(range(len(members)), key=lambda i: _bound_key(
            specs[members[i]]["cmin_spot"], specs[members[i]]["gen"], members[i][0]))
        text = "".join("\t".join(s_fields[k]) + "\n" for k in members)
        mins = [specs[k]["cmin"] for k in members if specs[k]["cmin"] is not None]
        spot_mins = [specs[k]["cmin_spot"] for k in members if specs[k]["cmin_spot"] is not None]
        g = ["G", fmt(vcpus), fmt(mem), gpu, fmt(count), arch, flags, fmt(min(mins) if mins else None),
             fmt(min(spot_mins) if spot_mins else None), str(len(members)), str(pos), str(len(text)),
             ",".join(map(str, spot_order)),
             ",".join(str(i) for i, k in enumerate(members) if any(o[3] for o in specs[k]["offers"].values()))]
        assert len(g) == G_FIELDS
        g_lines.append("\t".join(g) + "\n")
        s_lines.append(text)
        pos += len(text)
    regions_text, r_lines = _region_blocks(by_region)
    names_text = "".join(sorted(f"{k[0]}\t{gi}\t{pos}\n" for k, (gi, pos) in where.items())).encode()
    header = [f"{INDEX_MAGIC}\t{FORMAT_VERSION}\t{cloud}\t{offers_name(cloud)}\t{len(body)}\t{len(specs)}"
              f"\t{len(g_lines)}\t{regions_name(cloud)}\t{len(regions_text)}\t{names_name(cloud)}"
              f"\t{len(names_text)}\n",
              "# G\tvcpus\tmemory_gib\taccelerator\tcount\tarch\tflags\tmin_price\tmin_spot\tn_specs\tstart"
              "\tlength\tspot_order\tsuspects\n",
              "# S\tinstance_type\tvcpus\tmemory_gib\taccelerator\tcount\tarch\tflags\tgeneration\tmin_price"
              "\tmin_spot\toffset\tlength\tn_offers\n"]
    header += r_lines
    acc_dir: dict[str, list[int]] = {}
    for gi, gk in enumerate(sorted(groups)):  # G lines are sorted by accelerator: one range per name
        acc_dir.setdefault(gk[0], [gi, 0])[1] += 1
    header += [f"A\t{a}\t{first}\t{n}\n" for a, (first, n) in sorted(acc_dir.items(), key=lambda x: x[1][0])]
    header += [f"Z\t{z}\t{zones[z]}\n" for z in sorted(zones)]
    head = "".join(header[1:] + g_lines)
    first = header[0].rstrip("\n")
    s_at = next(n for n in (len(first) + len(head) + 2 + d for d in range(1, 13))
                if len(str(n)) == n - len(first) - len(head) - 2)  # line 1 holds its own length
    line1 = f"{first}\t{s_at}\n"
    assert len(line1) + len(head) == s_at
    index_text = line1 + head + "".join(s_lines)
    _write(out / offers_name(cloud), bytes(body))
    _write(out / regions_name(cloud), regions_text)
    _write(out / names_name(cloud), names_text)
    _write(out / index_name(cloud), index_text.encode())
    _verify(out, cloud, list(s_fields.values()))
    acc.stats["specs"] = len(specs)
    acc.stats["groups"] = len(g_lines)
    acc.stats["burstable_specs"] = sum(1 for s in specs.values() if "B" in s["flags"])
    acc.stats["confidential_specs"] = sum(1 for s in specs.values() if "C" in s["flags"])
    acc.stats["offers"] = n_offers
    acc.stats["regions"] = len(regions)
    acc.stats["zones"] = len(zones)
    return dict(sorted(acc.stats.items()))


def _region_blocks(by_region: dict) -> tuple[bytes, list[str]]:
    """<cloud>.regions.tsv: per region, the specs offered there, group by group, sorted by their lowest price
    in that region (the exact lower bound a region-bound search needs); and the index's R lines."""
    body = bytearray()
    r_lines = []
    for region in sorted(by_region):
        heads, rows, n = [], [], 0
        for gi, entries in by_region[region]:
            od = sorted(entries, key=lambda e: _bound_key(e[1], e[3], e[4]))
            spot_pos = sorted(range(len(od)), key=lambda j: _bound_key(od[j][2], od[j][3], od[j][4]))
            heads.append(f"{gi}\t{n}\t{len(od)}\t{','.join(map(str, spot_pos))}\n")
            rows.extend(f"{e[0]}\t{fmt(e[1])}\t{fmt(e[2])}\n" for e in od)
            n += len(od)
        block = f"{region}\t{len(heads)}\n{''.join(heads)}{''.join(rows)}".encode()
        r_lines.append(f"R\t{region}\t{len(body)}\t{len(block)}\n")
        body += block
    return bytes(body), r_lines


def _write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _verify(out: pathlib.Path, cloud: str, lines: list[list[str]]) -> None:
    with open(out / offers_name(cloud), "rb") as f:
        for p in lines:
            off, length, n = int(p[11]), int(p[12]), int(p[13])
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
        stats = build_cloud(cloud, path, out)
        meta["clouds"][cloud] = {**SOURCES[cloud], "input": INPUTS[cloud], "sha256": sha, "counts": stats}
    _write(out / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    _write(out / "README.md", render_readme(meta).encode())
    return meta


def build_cloud(cloud: str, rows, out: pathlib.Path, carry=()) -> dict:
    """The one normaliser: rows in the upstream `vms.csv` schema of `cloud` (a CSV path or an iterable of
    dicts) → the compact catalog files of that cloud in `out`; returns the counts. The bundled build (from the
    public CSVs) and `broker catalog refresh` (rows made from the clouds' own APIs) both come through here.
    `carry`: offers already normalised (`_Acc.add` arguments) kept from the catalog in use, for the regions a
    refresh did not fetch; a fetched row for the same place wins."""
    acc = _Acc(cloud)
    READERS[cloud](rows, acc)
    for args in carry:
        acc.carry(*args)
    flag_suspicious(acc)
    return write_cloud(acc, pathlib.Path(out))


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
    extras = args.upstream.parent / "skypilot-baseline" / "catalog-extras"  # SkyPilot's image tags (images.py)
    if extras.is_dir():
        from skybroker.catalog import images

        images.build(extras, out / pathlib.Path(images.DATA).name)
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


README_FORMAT = """\
## Format (version {version})

Per cloud two UTF-8 text files; `meta.json` holds the build metadata (`skybroker.catalog.info()`).

`<cloud>.index.tsv` — read by the loader (`skybroker/catalog/index.py`), lazily. Line 1: `{magic}<TAB>version
<TAB>cloud<TAB>offers file<TAB>offers file size<TAB>number of specs<TAB>number of groups<TAB>regions file
<TAB>regions file size<TAB>names file<TAB>names file size<TAB>offset of the first S line`. Then `#` comments, `R<TAB>region<TAB>offset<TAB>length` lines (sorted), `A<TAB>accelerator<TAB>first
group<TAB>number of groups` lines (the G lines of each accelerator name, "" = CPU-only), `Z<TAB>zone<TAB>region` lines (sorted; none on Azure), then one `G` line per
shape group (specs with the same accelerator, count, vCPUs, memory, arch and flags; sorted by those):
`G vcpus memory_gib accelerator count arch flags min_price min_spot n_specs start length spot_order
suspects` (`suspects`: the specs, 0-based, with a suspicious offer), and
last the `S` lines, group after group:
`S instance_type vcpus memory_gib accelerator count arch flags generation min_price min_spot offset length
n_offers clean_min clean_min_spot` (empty field = None; flags: `B` = burstable, `C` = confidential computing; `clean_*` = minima over the
offers that are neither in a Local Zone nor suspicious, the bounds of a search that may not choose those). In
a group the S lines are sorted by `clean_min` (None last), then generation (newest first), then instance
type; `spot_order` lists the group's specs (0-based) in the same order by `clean_min_spot`; the G line's
minima are the clean ones. `start`/`length` locate the group's S lines (characters after the
first S line's start); `offset`/`length` locate a spec's block in the offers file.

`<cloud>.regions.tsv` — read by seek, one block per region (the index's `R<TAB>region<TAB>offset<TAB>length`
lines locate them): a line `region<TAB>n_groups`, one line per shape group offered there
`group<TAB>start<TAB>n<TAB>spot_order` (group = 0-based G line), then the entries, group by group:
`position in group<TAB>lowest on-demand price there<TAB>lowest spot price there`, sorted by that on-demand
price (None last; newest generation, then name, on ties); `spot_order` sorts them by the spot price. A
search bound to a region walks these instead of the catalog-wide bounds.

`<cloud>.names.tsv` — `instance_type<TAB>group<TAB>position` per spec, sorted: a named instance type is found
by binary search (seeks), without reading the S lines.

`<cloud>.offers.tsv` — read by seek, one block per spec, in (instance type, accelerator, count) order. A
block starts with a header line `instance_type<TAB>accelerator<TAB>count` (starts with a letter, so
`git diff` hunk headers name the spec) followed by one line per offer:
`<TAB>region<TAB>zone<TAB>price<TAB>spot_price<TAB>flags` (`L` = AWS Local Zone, `S` = suspicious), sorted
by (price, with None last; region; zone). The build re-reads every block to check the offsets.
"""


# --- Lambda Cloud (`lambda/vms.csv`, SkyPilot's Lambda schema) -----------------------------------------
INPUTS["lambda"] = "lambda/vms.csv"
SOURCES["lambda"] = {"repo": "anycloud-sh/catalog", "path": "lambda/vms.csv",
                     "commit": "4c0610266db3c729e55a84d8e0ffe1c96cd903ec", "note": "complete, byte-identical",
                     "snapshot_date": "2026-05-07"}
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
