"""Cloud-specific rules the catalog build applies (the optimizer names no cloud: what it needs from these
rules is data in the catalog: accelerator, arch, burstable and generation columns).

`README_RULES` is the prose form of every rule here and becomes part of the generated `catalogs/README.md`.
"""
from __future__ import annotations

import re

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


# Azure GPU sizes: resource SKUs give a GPU count but not the model; the model follows from the size family
# (as Azure documents its N-series). Partial-GPU A10 sizes (NV<n>ads_A10_v5) have n/36 of a card.
_AZURE_GPUS = (
    (re.compile(r"^Standard_NC\d+r?s_v3$"), "V100"), (re.compile(r"^Standard_ND\d+rs_v2$"), "V100-32GB"),
    (re.compile(r"^Standard_NC\d+as_T4_v3$"), "T4"), (re.compile(r"^Standard_ND\d+asr_v4$"), "A100"),
    (re.compile(r"^Standard_ND\d+amsr_A100_v4$"), "A100-80GB"), (re.compile(r"^Standard_NC\d+ads_A100_v4$"), "A100-80GB"),
    (re.compile(r"^Standard_NC\d+ads_A10_v4$"), "A10"), (re.compile(r"^Standard_NV\d+adm?s_A10_v5$"), "A10"),
    (re.compile(r"^Standard_NCC?\d+adi?s_H100_v5$"), "H100"), (re.compile(r"^Standard_ND\d+isr_H100_v5$"), "H100"),
    (re.compile(r"^Standard_ND\d+isr_H200_v5$"), "H200"), (re.compile(r"^Standard_ND\d+isr_MI300X_v5$"), "MI300X"),
    (re.compile(r"^Standard_NV\d+s_v3$"), "M60"), (re.compile(r"^Standard_NV\d+as_v4$"), "MI25"),
)
_AZURE_PARTIAL_A10 = re.compile(r"^Standard_NV(\d+)ads_A10_v5$")


def azure_gpu(size: str, gpus: float) -> tuple[str, float] | None:
    """(GPU model, count) of an Azure size whose resource SKU reports `gpus` cards; None if unknown."""
    for pattern, name in _AZURE_GPUS:
        if pattern.match(size):
            m = _AZURE_PARTIAL_A10.match(size)
            if m and int(m.group(1)) < 36:
                return name, round(int(m.group(1)) / 36, 3)
            return name, float(gpus)
    return None


def azure_arch(size: str) -> str:
    m = _AZURE_SIZE.match(size)
    return "arm64" if m and "p" in m.group(1) else "x86_64"


def gcp_arch(machine_type: str) -> str:
    return "arm64" if machine_type.split("-", 1)[0] in GCP_ARM_FAMILIES else "x86_64"


def is_local_zone(zone: str | None) -> bool:
    return zone is not None and zone.count("-") > 1


# --- machine classes ---------------------------------------------------------------------------------
_AWS_BURSTABLE = re.compile(r"^t\d+[a-z]*\.")
_AZURE_BURSTABLE = re.compile(r"^Standard_B\d")
_AZURE_CONFIDENTIAL = re.compile(r"^Standard_(DC|EC|NCC)\d")
_GCP_SHARED_CORE = frozenset({"e2-micro", "e2-small", "e2-medium", "f1-micro", "g1-small"})
_SERIES_NUMBER = re.compile(r"^[a-z]+(\d+)")
_AZURE_VERSION = re.compile(r"_v(\d+)$")


def is_burstable(cloud: str, instance_type: str) -> bool:
    """Shared-core / CPU-credit machines (AWS t*, Azure B-series, GCP shared-core e2/f1/g1)."""
    if cloud == "aws":
        return bool(_AWS_BURSTABLE.match(instance_type))
    if cloud == "azure":
        return bool(_AZURE_BURSTABLE.match(instance_type))
    if cloud == "gcp":
        return instance_type in _GCP_SHARED_CORE
    return False


def is_confidential(cloud: str, instance_type: str) -> bool:
    """Confidential-computing sizes (Azure DC*/EC*/NCC*): they boot only confidential VM images."""
    return cloud == "azure" and bool(_AZURE_CONFIDENTIAL.match(instance_type))


def generation(cloud: str, instance_type: str, accelerator: str | None = None) -> int:
    """10 × the machine series' generation number (0 when the name carries none); ties prefer higher."""
    if cloud == "azure":
        m = _AZURE_VERSION.search(instance_type)
        return 10 * (int(m.group(1)) if m else 1)
    if cloud == "gcp" and instance_type == TPU_VM:
        m = re.match(r"tpu-v(\d+)", accelerator or "")
        return 10 * int(m.group(1)) if m else 0
    m = _SERIES_NUMBER.match(instance_type)
    gen = 10 * int(m.group(1)) if m else 0
    if cloud == "gcp" and instance_type.startswith("a3-edgegpu-"):
        gen -= 1
    return gen


TPU_VM = "TPU-VM"  # the instance type of a GCP TPU VM spec (the slice is the accelerator, e.g. tpu-v4-8)


def is_tpu(accelerator: str | None) -> bool:
    return bool(accelerator) and accelerator.lower().startswith("tpu-")


README_RULES = """\
## Rules applied by the build

General
- Input files are read with Python's `csv` module (fields such as GpuInfo contain commas). `broker catalog
  refresh` feeds the same rules with rows of the same schemas made from the clouds' own APIs
  (skybroker/clouds/<cloud>/prices.py), and writes the same format under `$BROKER_HOME/catalogs/<cloud>/`.
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
- Burstable (shared-core, CPU-credit) machines are flagged (`B` in the index flags): AWS `t2`/`t3`/`t3a`/`t4g`,
  Azure B-series (`Standard_B<n>…`), GCP `e2-micro`/`e2-small`/`e2-medium` and `f1-micro`/`g1-small`. The
  optimizer uses them only when the task names the instance type (SkyPilot never picks them otherwise).
- Confidential-computing sizes are flagged (`C`): Azure `Standard_DC*`, `Standard_EC*`, `Standard_NCC*`
  (they boot only confidential VM images); used only when named, like burstable ones.
- Generation (index column `generation`, 10 × the series number): AWS the number after the family letters
  (`r5` → 50, `r6i` → 60, `m8i-flex` → 80), GCP the machine series (`n1` → 10, `n2d` → 20, `a3` → 30; TPU
  `tpu-v4-8` → 40) minus 1 for `a3-edgegpu-*` (the earlier H100 machine that SkyPilot does not map H100
  to), Azure the `_v<N>` suffix (`Standard_D4s_v5` → 50; none → 10). Equal-price ties prefer the newer
  generation.
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
- TPU rows (AcceleratorName `tpu-*`, one row per slice such as `tpu-v4-8`, count 1) become specs with
  `instance_type` `TPU-VM` and that accelerator, priced as the TPU row alone (SkyPilot's TPU VM: the host
  costs nothing extra); vCPUs and memory are 0 = unknown (the optimizer does not check cpus/memory against
  them). Upstream repeats some TPU rows verbatim (154 in us-central2-b): identical rows are read once; two
  rows for the same place with different prices are an error. The TPU-node host VM types (`*-tpu`, e.g.
  `n1-340-48-tpu`) are skipped.
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

Lambda Cloud (`lambda/vms.csv`)
- On-demand only: `SpotPrice` is empty on every row, and no spot offer is ever made. No zone column:
  zone None, prices per region.
- Arch: GH200 machines (`gpu_1x_gh200`) are arm64 (Grace CPU), so they are used only when named by
  `instance_type`; every other type is x86_64.
"""

