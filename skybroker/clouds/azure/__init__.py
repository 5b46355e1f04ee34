"""Azure driver (azure-mgmt-compute/-network/-resource). Imported only when a cluster lives on Azure;
the SDKs themselves are imported on first use (they take seconds to import)."""
import importlib.util as _util

for _mod in ("azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource", "azure.identity"):
    try:
        _found = _util.find_spec(_mod) is not None
    except ModuleNotFoundError:
        _found = False
    if not _found:  # the registry turns this into "pip install 'skybroker[azure]'"
        raise ModuleNotFoundError(f"No module named {_mod!r}", name=_mod)

from .driver import AzureCloud  # noqa: E402

__all__ = ["AzureCloud"]
