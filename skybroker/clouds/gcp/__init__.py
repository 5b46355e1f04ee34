"""GCE provider (google-cloud-compute, imported only inside the driver's calls: it is slow to import)."""
from .driver import GCPCloud

PROVIDER = GCPCloud

__all__ = ["GCPCloud", "PROVIDER"]
