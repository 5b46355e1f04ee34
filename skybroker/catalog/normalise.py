"""Normalising upstream price rows: the `vms.csv` rows of each cloud read into specs and their offers.

A reader per cloud (`READERS`) turns rows in that cloud's upstream schema (a CSV file, or the rows `catalog
refresh` makes from a cloud's own APIs) into an `Acc`: per (instance type, accelerator, count) its shape
and its offers per (region, zone), with the rules of rules.py applied (prices, arch, GCP host + accelerator
pricing, TPUs, Local Zones); `flag_suspicious` then marks the outlier prices. Writing the result in the
compact format is writer.py; build.py drives both. Stdlib only.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
from collections import defaultdict

from skybroker.catalog.rules import (GCP_GPU_FAMILIES, N1_CEILINGS, TPU_VM, _N1_HOST, azure_arch, gcp_arch,
                                    gcp_fixed_gpu, is_local_zone, is_tpu)
from skybroker.errors import BrokerError

SUSPICIOUS_RATIO = 0.3
LAMBDA_ARM_GPUS = ("GH200",)  # Grace Hopper superchips: an Arm (Neoverse) host


def _price(text: str) -> float | None:
    """Empty or non-positive → None (unknown, never free)."""
    if not text.strip():
        return None
    v = float(text)
    return v if v > 0 else None


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a + b, 6)


class Acc:
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


# The columns each reader uses (the upstream files have more); the numeric ones must parse when not empty.
COLUMNS = {
    "aws": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "SpotPrice",
            "Region", "AvailabilityZone", "Arch"),
    "gcp": ("InstanceType", "vCPUs", "MemoryGiB", "AcceleratorName", "AcceleratorCount", "Region",
            "AvailabilityZone", "Price", "SpotPrice"),
    "azure": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "SpotPrice",
              "Region"),
    "lambda": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "Region"),
}
NUMERIC = ("AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "SpotPrice")


def input_error(path, message: str, line: int | None = None) -> BrokerError:
    """A bad upstream file (exit 2): names the file, and the line when known."""
    return BrokerError(f"catalog build: {path}: {f'line {line}: ' if line else ''}{message}",
                       hint="fix or replace that file (SkyPilot's vms.csv schema, see shared/catalogs-upstream/"
                            "README.md); the catalogs in use are unchanged", exit_code=2)


class CsvRows:
    """The rows of an upstream CSV file, checked as they are read: UTF-8 text, a header with the `columns`
    the reader uses, as many fields on every line as in the header, numbers where numbers go, at least one
    row. `line` is the line of the row last given (for the errors a reader raises on it)."""

    def __init__(self, path, columns):
        self.path, self.columns, self.line = path, columns, 0

    def __iter__(self):
        n = 0
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames
                if not header:
                    raise input_error(self.path, "the file is empty (no header line)")
                missing = [c for c in self.columns if c not in header]
                if missing:
                    raise input_error(self.path, f"the header lacks column(s) {', '.join(missing)} "
                                                 f"(it has: {', '.join(map(str, header))[:200]})", 1)
                for r in reader:
                    self.line = reader.line_num
                    if None in r or None in r.values():
                        got = len(header) + len(r[None]) if None in r else sum(v is not None for v in r.values())
                        raise input_error(self.path, f"{got} field(s) where the header has {len(header)}",
                                          self.line)
                    for c in NUMERIC:
                        v = (r.get(c) or "").strip()
                        if v and not _number(v):
                            raise input_error(self.path, f"column {c}: {v[:40]!r} is not a number", self.line)
                    n += 1
                    yield r
        except UnicodeDecodeError:
            raise input_error(self.path, "not UTF-8 text (a binary or compressed file?)") from None
        except csv.Error as e:
            raise input_error(self.path, f"not a CSV file ({e})", self.line or None) from None
        except OSError as e:
            raise input_error(self.path, f"cannot read it: {e.strerror or e}") from None
        if not n:
            raise input_error(self.path, "the file has a header but no rows")


def _number(text: str) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    return math.isfinite(v) and v >= 0


def _rows(source):
    """Rows in the upstream `vms.csv` schema (dicts of strings): from a CSV file (a `CsvRows`), or as given
    (an iterable of dicts, e.g. the rows `catalog refresh` makes from a cloud's own APIs)."""
    if isinstance(source, (str, os.PathLike)):
        source = CsvRows(source, ())
    yield from source


def read_aws(path, acc: Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        arch = {"x86_64": "x86_64", "i386": "x86_64", "arm64": "arm64"}.get(r["Arch"])
        if arch is None:  # x86_64_mac / arm64_mac (dedicated Mac hosts): out of scope
            acc.stats["skipped_mac_rows"] += 1
            continue
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], r["AcceleratorName"] or None,
                r["AcceleratorCount"] or 0, arch, r["Region"], r["AvailabilityZone"],
                _price(r["Price"]), _price(r["SpotPrice"]))


def read_azure(path, acc: Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], r["AcceleratorName"] or None,
                r["AcceleratorCount"] or 0, azure_arch(r["InstanceType"]), r["Region"], None,
                _price(r["Price"]), _price(r["SpotPrice"]))


def read_gcp(path, acc: Acc) -> None:
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




def read_lambda(path, acc: Acc) -> None:
    for r in _rows(path):
        acc.stats["input_rows"] += 1
        gpu = r["AcceleratorName"] or None
        acc.add(r["InstanceType"], r["vCPUs"], r["MemoryGiB"], gpu, r["AcceleratorCount"] or 0,
                "arm64" if gpu in LAMBDA_ARM_GPUS else "x86_64", r["Region"], None, _price(r["Price"]), None)


READERS = {"aws": read_aws, "gcp": read_gcp, "azure": read_azure, "lambda": read_lambda}


def flag_suspicious(acc: Acc) -> None:
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
