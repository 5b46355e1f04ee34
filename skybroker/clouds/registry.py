"""Driver registry: name → module, imported only when used."""
from __future__ import annotations

import os

from ..resources import Resources


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def virtual_candidates(cloud: str, res: Resources):
    """Zero-price places of the clouds that have no catalog (local, ssh). Only offered when the task
    names the cloud; the local cloud ignores cpus/memory (it is this machine) and has no GPUs."""
    from ..optimizer import Candidate

    if res.accelerator:
        return []
    if cloud == "local":
        # `use_spot` is honoured (free either way) so spot logic can be exercised without a cloud
        return [Candidate(res, 0, "local", None, None, "local", float(os.cpu_count() or 1), _mem_gib(),
                          None, 0.0, res.use_spot, 0.0, 1)]
    if cloud == "ssh":
        from . import ssh_pools

        out = []
        for pool in ssh_pools.load_pools():
            if res.region and res.region != pool.name:
                continue
            out.append(Candidate(res, 0, "ssh", pool.name, None, "ssh-node", 0.0, 0.0, None, 0.0, False, 0.0, 1))
        return out
    return []


_DRIVERS = {
    "local": ("skybroker.clouds.local", "LocalCloud"),
    "ssh": ("skybroker.clouds.ssh", "SSHCloud"),
    "aws": ("skybroker.clouds.aws", "AWSCloud"),
    "gcp": ("skybroker.clouds.gcp", "GCPCloud"),
    "azure": ("skybroker.clouds.azure", "AzureCloud"),
}
_instances: dict = {}


def get_cloud(name: str):
    """The driver for a cloud, imported on first use (so planning never imports an SDK)."""
    from ..errors import BrokerError

    if name in _instances:
        return _instances[name]
    entry = _DRIVERS.get(name)
    if entry is None:
        raise BrokerError(f"unknown cloud {name!r}")
    import importlib

    try:
        mod = importlib.import_module(entry[0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("skybroker"):
            raise BrokerError(f"provisioning on {name} is not available in this build yet",
                              "use --infra local or ssh/<pool>, or --dryrun to see the plan") from None
        extra = {"aws": "aws", "gcp": "gcp", "azure": "azure"}.get(name, "all")
        raise BrokerError(f"the {name} SDK is not installed ({exc.name})",
                          f"pip install 'skybroker[{extra}]'") from None
    drv = getattr(mod, entry[1])()
    _instances[name] = drv
    return drv
