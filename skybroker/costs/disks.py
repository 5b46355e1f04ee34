"""Disk prices, $/GB-month, per cloud: what a node's boot disk costs while the cluster exists (up or
stopped). A stopped cluster accrues only this.

The figures are the list prices of the disk type skybroker asks each cloud for (the default disk tier),
in the cloud's cheapest US region, as published on its pricing page (read 2025; an approximation: the
price differs a little by region, and a cloud may change it). Catalog instance prices do not include the
boot disk on AWS, GCP and Azure, so it is added on top; on Lambda the instance price includes its local
storage; a Kubernetes pod's volume, an ssh pool's and the local machine's disks are not billed per use.

A month is 730 hours (the convention AWS and GCP bill by).
"""
from __future__ import annotations

HOURS_PER_MONTH = 730.0

# cloud → ($/GB-month, what it is, where the figure comes from)
DISK_PRICES: dict[str, tuple[float, str, str]] = {
    "aws": (0.08, "EBS gp3", "https://aws.amazon.com/ebs/pricing/ (us-east-1)"),
    "gcp": (0.10, "pd-balanced", "https://cloud.google.com/compute/disks-image-pricing (us-central1)"),
    "azure": (0.075, "Standard SSD LRS, the OS disk skybroker asks for (E15, 256 GiB: $19.20/month)",
              "https://azure.microsoft.com/pricing/details/managed-disks/ (East US)"),
    "lambda": (0.0, "included in the instance price", "https://lambda.ai/service/gpu-cloud#pricing"),
    "kubernetes": (0.0, "the cluster's own volumes, not billed per pod", "-"),
    "ssh": (0.0, "your machines", "-"),
    "local": (0.0, "this machine (BROKER_LOCAL_PRICES may pretend otherwise)", "-"),
}


def price_per_gb_month(cloud: str | None) -> float:
    """$/GB-month of the default boot disk on `cloud` (0 for a cloud not in the table)."""
    if cloud == "local":
        from .ledger import local_prices

        return local_prices()["disk"]
    return DISK_PRICES.get(cloud or "", (0.0, "", ""))[0]


def hourly(disk_gb: float, per_gb_month: float) -> float:
    """$/h of one node's disk."""
    return disk_gb * per_gb_month / HOURS_PER_MONTH
