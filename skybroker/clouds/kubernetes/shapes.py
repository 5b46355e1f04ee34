"""Pod shapes on Kubernetes: instance-type names (`4CPU--16GB--A100:1`), GPU resources and the node labels
that name a GPU type, and whether a node's allocatable resources hold a shape."""
from __future__ import annotations

import re

from . import config as cfg

GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
# Node labels naming the GPU type, most specific first (NVIDIA GPU feature discovery, GKE, EKS/Karpenter,
# AKS, AMD's device plugin labeller, and SkyPilot's own labeller).
GPU_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator", "karpenter.k8s.aws/instance-gpu-name",
              "accelerator", "amd.com/gpu.product-name", "skypilot.co/accelerator")
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                   {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# Canonical accelerator names (the catalogs' spelling); a label's tokens are matched against them.
CANONICAL = ("A100", "H100", "H200", "B200", "GH200", "L40S", "L40", "L4", "A10G", "A10", "T4", "V100", "P100", "P4",
             "K80", "A6000", "A5000", "A4000", "RTX6000", "RTX4090", "MI300X", "MI250X", "MI210", "MI100")
INSTANCE_RE = re.compile(r"^(?P<cpus>\d+(?:\.\d+)?)CPU--(?P<mem>\d+(?:\.\d+)?)GB(?:--(?P<gpu>[A-Za-z0-9-]+):(?P<n>\d+))?$")


def canonical_gpu(value: str | None) -> str | None:
    """`NVIDIA-A100-SXM4-80GB` → A100-80GB, `nvidia-tesla-v100` → V100, `nvidia-l4` → L4, `a10g` → A10G."""
    if not value:
        return None
    tokens = re.split(r"[-_ ]+", str(value).upper())
    name = next((t for t in tokens if t in CANONICAL), None)
    if name is None:
        name = next((c for t in tokens for c in CANONICAL if t.endswith(c) and t[: -len(c)] in ("RTX", "TESLA")), None)
    if name is None:
        return None
    if name == "A100" and "80GB" in tokens:
        return "A100-80GB"
    if name == "V100" and "32GB" in tokens:
        return "V100-32GB"
    return name


def instance_type(cpus: float, mem: float, gpu: str | None, n: float) -> str:
    base = f"{cpus:g}CPU--{mem:g}GB"
    return f"{base}--{gpu}:{n:g}" if gpu else base


def parse_instance_type(text: str) -> tuple[float, float, str | None, float] | None:
    m = INSTANCE_RE.match(text or "")
    if not m:
        return None
    return float(m.group("cpus")), float(m.group("mem")), m.group("gpu"), float(m.group("n") or 0)


def default_shape(res) -> tuple[float, float]:
    """(cpus, memory GiB) of a pod for a task's resources: the minimum the task asks for (`4+` → 4,
    `4x` memory → 4 GiB per CPU). With neither given: 2 CPUs and 4 GiB, or 4 CPUs and 16 GiB with GPUs
    (a pod, not a VM: the VM default of 8+ CPUs would leave most clusters' nodes unusable)."""
    gpu = bool(res.accelerator)
    cpus = res.cpus.value if res.cpus is not None else (4.0 if gpu else 2.0)
    if res.memory is None:
        mem = cpus * (4.0 if gpu else 2.0)
    elif res.memory.per_cpu:
        mem = res.memory.value * cpus
    else:
        mem = res.memory.value
    return cpus, mem


# -- nodes -----------------------------------------------------------------------------------------------
def node_gpus(node: dict) -> tuple[str | None, float, str | None, tuple[str, str] | None]:
    """(canonical GPU name, count, resource name, (label key, value)) of a node."""
    alloc = (node.get("status") or {}).get("allocatable") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for res in GPU_RESOURCES:
        n = cfg.quantity(alloc.get(res, 0))
        if n > 0:
            for key in GPU_LABELS:
                name = canonical_gpu(labels.get(key))
                if name:
                    return name, n, res, (key, labels[key])
            return None, n, res, None
    return None, 0.0, None, None


def node_fits(node: dict, cpus: float, mem_gib: float, gpu: str | None, n: float) -> bool:
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    conds = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    if conds.get("Ready") not in (None, "True"):
        return False
    alloc = (node.get("status") or {}).get("allocatable") or {}
    if cfg.quantity(alloc.get("cpu", 0)) < cpus - 1e-9 or cfg.quantity(alloc.get("memory", 0)) < mem_gib * 2**30 - 1:
        return False
    if gpu:
        name, count, _, _ = node_gpus(node)
        return name is not None and name.lower() == gpu.lower() and count >= n
    return True
