"""GCE driver (google-cloud-compute). Imported only when a cluster lives on GCP.

The SDK itself (slow to import) is imported on first use; its presence is checked here so the registry
can tell the user to `pip install 'skybroker[gcp]'`.
"""
import importlib.util

if importlib.util.find_spec("google.cloud.compute_v1") is None:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError("No module named 'google.cloud.compute_v1'", name="google.cloud.compute_v1")

from .driver import GCPCloud

__all__ = ["GCPCloud"]
