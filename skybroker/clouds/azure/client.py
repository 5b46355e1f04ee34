"""The one place Azure clients are built.

Normally: DefaultAzureCredential (environment service principal, managed identity, `az login`, ...) and
the public ARM endpoint. For tests and emulators the environment can point everything elsewhere, so the
same product code runs against ARM and against tests/infra/arm_fake.py:
  BROKER_AZURE_ENDPOINT    ARM base URL, e.g. https://127.0.0.1:PORT (bearer auth needs HTTPS)
  BROKER_AZURE_FAKE_TOKEN  "1": use a static bearer token (only honoured with BROKER_AZURE_ENDPOINT)
  BROKER_AZURE_CA_BUNDLE   a CA bundle to verify the endpoint with (REQUESTS_CA_BUNDLE also works)
  BROKER_AZURE_POLL        seconds between long-running-operation polls (default 5; tests use 0)
  BROKER_AZURE_RETRIES     retries of transient failures per call (default 5)
  BROKER_AZURE_MAX_RETRY_AFTER  the longest Retry-After (seconds, default 60) of a throttled (429) create or
                           action the SDK waits out by itself; a longer one (Compute's throttling can ask for
                           20+ minutes) is raised at once, so the provisioner says so and backs off or fails
                           over instead of the launch hanging silently. Reads and deletes (a teardown) always
                           wait as ARM asks.
The subscription comes from skybroker.check.azure_subscription() (AZURE_SUBSCRIPTION_ID or the az CLI
profile).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from ... import settings

_lock = threading.Lock()
_cache: dict = {}


class StaticTokenCredential:
    """A credential that always hands out the same bearer token (fake endpoints only)."""

    def __init__(self, token: str = "skybroker-fake-token"):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, int(time.time()) + 3600)


def endpoint() -> str | None:
    return os.environ.get("BROKER_AZURE_ENDPOINT") or None


def subscription() -> str | None:
    from ...check import azure_subscription

    return azure_subscription()


def poll_interval() -> float:
    return settings.get("azure_poll")


def credential():
    if endpoint() and os.environ.get("BROKER_AZURE_FAKE_TOKEN") == "1":
        return StaticTokenCredential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


@dataclass
class Clients:
    subscription: str
    resource: object  # azure.mgmt.resource.resources.ResourceManagementClient
    network: object  # azure.mgmt.network.NetworkManagementClient
    compute: object  # azure.mgmt.compute.ComputeManagementClient


def _key(kind: str, sub: str) -> tuple:
    return (kind, endpoint(), sub, os.environ.get("BROKER_AZURE_FAKE_TOKEN"), os.environ.get("BROKER_AZURE_CA_BUNDLE"),
            poll_interval(), settings.get("azure_retries"), settings.get("azure_max_retry_after"))


def _retry_policy():
    """The SDK's retry policy, except that a create or action (PUT/POST/PATCH) throttled with a Retry-After
    longer than BROKER_AZURE_MAX_RETRY_AFTER is not retried (the 429 goes up: errors.classify makes it a
    ThrottledError)."""
    from azure.core.pipeline.policies import RetryPolicy

    cap = settings.get("azure_max_retry_after")

    class CappedRetryPolicy(RetryPolicy):
        def is_retry(self, settings_, response):
            wait = self.get_retry_after(response)
            if wait is not None and wait > cap and response.http_request.method in ("PUT", "POST", "PATCH"):
                return False
            return super().is_retry(settings_, response)

    return CappedRetryPolicy(retry_total=settings.get("azure_retries"))


def _kwargs() -> dict:
    """What every management client of ours is built with (endpoint, CA bundle, polling, retries)."""
    kw: dict = {"polling_interval": poll_interval(), "retry_total": settings.get("azure_retries"),
                "retry_policy": _retry_policy()}
    if endpoint():
        kw["base_url"] = endpoint()
    ca = os.environ.get("BROKER_AZURE_CA_BUNDLE")
    if ca:
        kw["connection_verify"] = ca
    return kw


def clients(sub: str) -> Clients:
    """SDK clients for a subscription (cached per endpoint/subscription; they are thread-safe)."""
    key = _key("mgmt", sub)
    with _lock:
        if key in _cache:
            return _cache[key]
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient
        try:
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError:  # older azure-mgmt-resource
            from azure.mgmt.resource import ResourceManagementClient

        cred, kw = credential(), _kwargs()
        made = Clients(sub, ResourceManagementClient(cred, sub, **kw), NetworkManagementClient(cred, sub, **kw),
                       ComputeManagementClient(cred, sub, **kw))
        _cache[key] = made
        return made


def authorization(sub: str):
    """An azure-mgmt-authorization client (role definitions and assignments: autostop on the cluster), built
    like the others; imported only when needed (ImportError when the package is missing)."""
    key = _key("authorization", sub)
    with _lock:
        if key not in _cache:
            from azure.mgmt.authorization import AuthorizationManagementClient

            _cache[key] = AuthorizationManagementClient(credential(), sub, **_kwargs())
        return _cache[key]


def reset() -> None:
    """Forget cached clients (tests switch endpoints and credentials between cases)."""
    with _lock:
        _cache.clear()
