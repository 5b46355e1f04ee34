"""Kubernetes provider (the official `kubernetes` client, imported only inside the driver's calls)."""
from .driver import KubernetesCloud

PROVIDER = KubernetesCloud

__all__ = ["KubernetesCloud", "PROVIDER"]
