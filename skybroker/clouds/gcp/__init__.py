"""GCE driver (google-cloud-compute). Imported only when a cluster lives on GCP."""
from .driver import GCPCloud

__all__ = ["GCPCloud"]
