"""Azure provider (azure-mgmt-compute/-network/-resource, imported only inside the driver's calls: they take
seconds to import)."""
from .driver import AzureCloud

PROVIDER = AzureCloud

__all__ = ["AzureCloud", "PROVIDER"]
