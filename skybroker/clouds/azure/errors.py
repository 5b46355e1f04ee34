"""ARM error codes → typed errors with a scope. Failover reads only the type; classification reads only
the error *code* (`HttpResponseError.error.code`), never the message text. The SDK maps a 409 to
ResourceExistsError and a 401 to ClientAuthenticationError whatever the code, so the HTTP exception
class is not a classification either.

Our Azure catalog has no zones: an offer is a region, so the optimizer's place is (region, zone=None).
A CapacityError (scope "zone") therefore blocks Block(azure, region, None) — zone == region here.
"""
from __future__ import annotations

from ...errors import (CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError, QuotaError,
                       ThrottledError)

# No capacity for the size right now: try the next place (for us: the next region).
CAPACITY_CODES = {
    "SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest", "AllocationFailedVMSizeNotAvailable", "SpotCapacityNotAvailable",
}
# Quota or subscription limits in a region: skip the region.
QUOTA_CODES = {
    "OperationNotAllowed",  # "... results in exceeding approved <family> Cores quota"
    "QuotaExceeded", "ResourceQuotaExceeded", "PublicIPCountLimitReached", "SpotQuotaExceeded",
    "LocationNotAvailableForResourceType", "NoRegisteredProviderFound", "LocationNotAvailableForResourceGroup",
    "ResourceGroupQuotaExceeded",
}
# ARM throttling: back off and retry the same place.
THROTTLE_CODES = {"SubscriptionRequestsThrottled", "TooManyRequests", "ResourceRequestsThrottled",
                  "TenantRequestsThrottled"}
# Credentials, permissions or the subscription itself: the whole cloud is unusable for us.
CLOUD_CODES = {
    "AuthenticationFailed", "AuthorizationFailed", "InvalidAuthenticationToken",
    "InvalidAuthenticationTokenTenant", "ExpiredAuthenticationToken", "SubscriptionNotFound",
    "InvalidSubscriptionId", "SubscriptionNotRegistered", "ReadOnlyDisabledSubscription", "DisallowedOperation",
    "MissingSubscriptionRegistration", "LinkedAuthorizationFailed", "RequestDisallowedByPolicy",
}
_HINT = "run `az login` (or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET) and check the role " \
        "assignment on the subscription (Contributor)"


def error_code(exc: BaseException) -> str | None:
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None)
    if code:
        return str(code)
    return None


def classify(exc: BaseException, place: Place) -> ProvisionError | None:
    """A typed error for an SDK exception, or None if it is not a cloud refusal (a bug: re-raise)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(exc, ClientAuthenticationError):  # includes azure.identity's CredentialUnavailableError
        code = error_code(exc) or type(exc).__name__
        return CredentialsError(f"Azure refused our credentials: {_message(exc)}", place, code=code, hint=_HINT)
    if isinstance(exc, ServiceRequestError):  # could not reach ARM (one global endpoint): the whole cloud
        return CredentialsError(f"cannot reach Azure Resource Manager ({exc})", place, code="ServiceRequestError",
                                hint="check the network/proxy, or BROKER_AZURE_ENDPOINT if set")
    if not isinstance(exc, HttpResponseError):
        return None
    code = error_code(exc) or f"HTTP{exc.status_code}"
    msg = _message(exc)
    if code in THROTTLE_CODES or exc.status_code == 429:
        wait = _retry_after(exc)
        return ThrottledError(msg + (f" (Azure asks to retry after {wait:.0f}s)" if wait else ""), place, code=code,
                              hint="Azure is rate-limiting this subscription's requests: retry later, or launch "
                              "fewer clusters at once")
    if code in CAPACITY_CODES:
        return CapacityError(msg, place, code=code)
    if code in QUOTA_CODES:
        return QuotaError(msg, place, code=code,
                          hint="request more quota in the Azure portal (Subscriptions → Usage + quotas)")
    if code in CLOUD_CODES or exc.status_code in (401, 403):
        return CredentialsError(msg, place, code=code, hint=_HINT)
    if (exc.status_code or 0) >= 500:  # ARM/RP trouble that outlived the SDK's retries: try elsewhere
        return CapacityError(msg, place, code=code)
    return InvalidRequestError(msg, place, code=code)


def _message(exc: BaseException) -> str:
    err = getattr(exc, "error", None)
    msg = getattr(err, "message", None)
    return str(msg) if msg else str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _retry_after(exc) -> float | None:
    """The Retry-After (seconds) of a throttled answer, if it had one."""
    response = getattr(exc, "response", None)
    try:
        value = response.headers.get("Retry-After") if response is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None
