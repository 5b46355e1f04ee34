"""The one place GCE clients are built.

Environment:
  BROKER_GCP_ENDPOINT   endpoint override (e.g. http://127.0.0.1:PORT, a local fake of the REST API);
                        every client, including the operation pollers, is pointed at it.
  BROKER_GCP_ANONYMOUS  with an endpoint override, `1` sends no credentials (AnonymousCredentials).
Otherwise credentials come from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or
`gcloud auth application-default login`), and the project from skybroker.check.gcp_project() (or, failing
that, the project ADC reports).

Always the REST transport: it works over plain http against a fake and needs no gRPC channel. Note that
the SDK's `operation.result()` polls through a hidden ZoneOperationsClient that ignores the endpoint
override, so the driver polls with `zone_operations()` / `global_operations()` from here instead.
"""
from __future__ import annotations

import os
import threading

ENV_ENDPOINT = "BROKER_GCP_ENDPOINT"
ENV_ANONYMOUS = "BROKER_GCP_ANONYMOUS"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

_lock = threading.Lock()
_cache: dict[tuple, object] = {}


def endpoint() -> str | None:
    return os.environ.get(ENV_ENDPOINT) or None


def anonymous() -> bool:
    return bool(endpoint()) and os.environ.get(ENV_ANONYMOUS, "") not in ("", "0", "false", "no")


def _key(kind: str) -> tuple:
    return (kind, endpoint(), anonymous(), os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))


def _adc():
    """(credentials, project) from Application Default Credentials; cached per environment."""
    key = _key("adc")
    with _lock:
        if key not in _cache:
            if anonymous():
                from google.auth.credentials import AnonymousCredentials

                _cache[key] = (AnonymousCredentials(), None)
            else:
                import google.auth

                _cache[key] = google.auth.default(scopes=list(SCOPES))
        return _cache[key]


def credentials():
    return _adc()[0]


def project() -> str:
    """The GCP project to use. Raises CredentialsError when none is configured."""
    from ...check import gcp_project
    from ...errors import CredentialsError, Place

    proj = gcp_project()
    if proj:
        return proj
    if not anonymous():
        proj = _adc()[1]
        if proj:
            return proj
    raise CredentialsError("no GCP project configured", Place("gcp"), code="NoProject",
                           hint="set GOOGLE_CLOUD_PROJECT or run `gcloud config set project PROJECT`")


def _build(kind: str, module: str = "compute_v1"):
    """A client of google.cloud.<module> (REST, the endpoint override and the ADC credentials), cached."""
    key = _key(kind)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    import importlib

    from google.api_core.client_options import ClientOptions

    kwargs = {"credentials": credentials(), "transport": "rest"}
    if endpoint():
        kwargs["client_options"] = ClientOptions(api_endpoint=endpoint())
    client = getattr(importlib.import_module(f"google.cloud.{module}"), kind)(**kwargs)
    with _lock:
        return _cache.setdefault(key, client)


def instances():
    return _build("InstancesClient")


def firewalls():
    return _build("FirewallsClient")


def disks():
    return _build("DisksClient")


def machine_types():
    return _build("MachineTypesClient")


def accelerator_types():
    return _build("AcceleratorTypesClient")


def tpu():
    """The Cloud TPU API v2 client (google-cloud-tpu), REST like the Compute clients, same endpoint override."""
    return _build("TpuClient", "tpu_v2")


def billing_endpoint() -> str:
    """The Cloud Billing Catalog API (BROKER_GCP_BILLING_ENDPOINT, else BROKER_GCP_ENDPOINT, else Google's)."""
    return (os.environ.get("BROKER_GCP_BILLING_ENDPOINT") or endpoint() or "https://cloudbilling.googleapis.com").rstrip("/")


def authorized_session():
    """A requests session that sends the ADC credentials (none with BROKER_GCP_ANONYMOUS)."""
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(credentials())


def zone_operations():
    return _build("ZoneOperationsClient")


def global_operations():
    return _build("GlobalOperationsClient")


def reset() -> None:
    """Forget cached clients and credentials (tests switch endpoints between cases)."""
    with _lock:
        _cache.clear()
