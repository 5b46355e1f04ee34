"""Azure driver (azure-mgmt-compute/-network/-resource). Imported only when a cluster lives on Azure."""
from .driver import AzureCloud

__all__ = ["AzureCloud"]
