"""Value types shared by the catalog loader, its build script and the optimizer."""
from __future__ import annotations

from dataclasses import dataclass

CLOUDS = ("aws", "gcp", "azure", "lambda")


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One purchasable machine shape on one cloud.

    On GCP a GPU machine is a host VM plus attached accelerators; the build script emits one spec per
    legal (host, accelerator, count) combination, priced as host row + accelerator row in the same zone.
    `min_price`/`min_spot_price` are the minimum over every offer of this spec (Local Zones included),
    so they are valid lower bounds for best-first search; None when no offer has that price.
    `burstable`: a shared-core / CPU-credit machine (used only when named). `generation`: 10 × the machine
    series' generation (equal-price ties prefer the higher). A GCP TPU VM is instance type `TPU-VM` with the
    slice as accelerator (`tpu-v4-8`, count 1) and vCPUs/memory 0 (unknown): see `is_tpu`.
    """

    cloud: str
    instance_type: str
    vcpus: float
    memory_gib: float
    accelerator_name: str | None
    accelerator_count: float  # 0 when there is no accelerator; may be fractional on Azure
    arch: str  # "x86_64" or "arm64"
    min_price: float | None
    min_spot_price: float | None
    burstable: bool = False
    generation: int = 0
    confidential: bool = False  # confidential-computing size (needs confidential images): only when named

    @property
    def is_tpu(self) -> bool:
        return bool(self.accelerator_name) and self.accelerator_name.lower().startswith("tpu-")

    @property
    def shape_known(self) -> bool:
        """False for TPU VMs, whose host vCPUs/memory the catalog does not give."""
        return self.vcpus > 0

    @property
    def key(self) -> tuple[str, str | None, float]:
        return (self.instance_type, self.accelerator_name, self.accelerator_count)


@dataclass(frozen=True, slots=True)
class Offer:
    """A spec offered at one place. On-demand is priced per region (same value on every zone row of a
    region); spot per zone (Azure: per region, zone is None)."""

    spec: InstanceSpec
    region: str
    zone: str | None
    price: float | None  # on-demand $/h; None = no on-demand offer here
    spot_price: float | None  # spot $/h; None = no spot offer here
    local_zone: bool = False  # AWS Local Zone (needs opt-in): excluded unless asked for
    suspicious: bool = False  # price far below this spec's median elsewhere (kept, flagged)

    @property
    def cloud(self) -> str:
        return self.spec.cloud

    @property
    def instance_type(self) -> str:
        return self.spec.instance_type

    def hourly(self, use_spot: bool) -> float | None:
        return self.spot_price if use_spot else self.price
