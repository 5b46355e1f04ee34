"""The provider registry: one line per provider (name → package), in tie-break order.

A provider package exposes `PROVIDER`, a subclass of clouds.base.Provider. Importing the package must not
import its cloud SDK (drivers import it inside their methods), so planning and `broker check` can ask a
provider about offers and credentials without the SDK installed; anything that talks to the cloud asks
for the provider with `get(name)` (default `sdk=True`), which says which extra to install when the SDK
is missing.
"""
from __future__ import annotations

import importlib
import importlib.util
import threading

# name, package, other names users write. The order is the documented tie-break order of equal-price offers.
PROVIDERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("aws", "skybroker.clouds.aws", ("amazon", "ec2")),
    ("gcp", "skybroker.clouds.gcp", ("google", "gce")),
    ("azure", "skybroker.clouds.azure", ("az", "microsoft")),
    ("lambda", "skybroker.clouds.lambda_cloud", ("lambda-cloud", "lambdalabs", "lambda-labs")),
    ("kubernetes", "skybroker.clouds.kubernetes", ("k8s", "kube")),
    ("local", "skybroker.clouds.local", ()),
    ("ssh", "skybroker.clouds.ssh", ()),
)
_PACKAGES = {n: p for n, p, _ in PROVIDERS}
ALIASES = {a: n for n, _, aliases in PROVIDERS for a in aliases}
_instances: dict = {}
_lock = threading.Lock()


def names() -> tuple[str, ...]:
    return tuple(n for n, _, _ in PROVIDERS)


def order(name: str) -> int:
    """Tie-break rank of a provider (unknown names last)."""
    for i, (n, _, _) in enumerate(PROVIDERS):
        if n == name:
            return i
    return len(PROVIDERS)


def known(name: str) -> bool:
    return name in _PACKAGES


def get(name: str, sdk: bool = True):
    """The provider object for `name`. With sdk=True (anything that will call the cloud), a missing SDK
    is a clear error naming the extra to install."""
    from ..errors import UsageError

    prov = _instances.get(name)
    if prov is None:
        package = _PACKAGES.get(name)
        if package is None:
            raise UsageError(f"unknown cloud {name!r}", f"known clouds: {', '.join(names())}")
        with _lock:
            prov = _instances.get(name)
            if prov is None:
                prov = importlib.import_module(package).PROVIDER()
                _instances[name] = prov
    if sdk:
        missing = missing_sdk(prov)
        if missing:
            from ..errors import BrokerError

            raise BrokerError(f"the {name} SDK is not installed ({missing})",
                              f"pip install 'skybroker[{prov.sdk_extra or name}]'")
    return prov


def missing_sdk(prov) -> str | None:
    """The first SDK module of a provider that is not importable (without importing it), or None."""
    for mod in prov.sdk_modules:
        try:
            if importlib.util.find_spec(mod) is None:
                return mod
        except (ImportError, ValueError):
            return mod
    return None


def all_providers(sdk: bool = False) -> list:
    return [get(n, sdk=sdk) for n in names()]


def priced() -> tuple[str, ...]:
    """Providers whose offers come from a price catalog (planned across when no cloud is named)."""
    return tuple(p.name for p in all_providers() if p.capabilities.priced and not p.capabilities.named_only)


def reset() -> None:
    """Forget provider objects (tests)."""
    _instances.clear()
