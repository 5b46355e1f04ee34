"""Lambda Cloud API errors → typed errors with a scope. Classification reads the structured fields only:
the HTTP status and the response's `error.code` (Lambda documents that `message`/`suggestion` may change and
that clients should branch on `code`), never the message text.

  instance-operations/launch/insufficient-capacity   CapacityError (Lambda has no zones: the region)
  global/quota-exceeded                              AccountQuotaError: a QuotaError scoped to the whole
                                                     cloud (Lambda's quotas are per account, not per region,
                                                     so no other region can help)
  global/invalid-api-key, global/account-inactive,
  HTTP 401 / 403                                     CredentialsError (the cloud)
  HTTP 429                                           ThrottledError (after the client's own retries)
  provider/* (upstream outages), HTTP 5xx            CapacityError (the region; try elsewhere)
  global/invalid-parameters, global/object-does-not-exist, file-system errors, other 4xx
                                                     InvalidRequestError (the request is wrong: no failover)
  the endpoint does not answer                       UnreachableError (the cloud)
"""
from __future__ import annotations

from ...errors import (CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError, QuotaError,
                       Scope, ThrottledError)
from .client import LambdaApiError, LambdaUnreachable

CAPACITY_CODES = {"instance-operations/launch/insufficient-capacity"}
QUOTA_CODES = {"global/quota-exceeded"}
CREDENTIAL_CODES = {"global/invalid-api-key", "global/account-inactive"}
HINT_CREDS = ("check the API key (LAMBDA_API_KEY or ~/.lambda_cloud/lambda_keys); create one in the Lambda "
              "Cloud dashboard under API keys")
HINT_QUOTA = "ask Lambda support to raise your account's instance quota"


class AccountQuotaError(QuotaError):
    """Lambda's quota is per account: every region is refused alike."""

    scope = Scope.CLOUD


class UnreachableError(ProvisionError):
    scope = Scope.CLOUD


def classify(exc: BaseException, place: Place) -> ProvisionError | None:
    if isinstance(exc, ProvisionError):
        return exc
    if isinstance(exc, LambdaUnreachable):
        return UnreachableError(str(exc), place, code="Unreachable")
    if not isinstance(exc, LambdaApiError):
        return None
    code, status = exc.code, exc.status
    msg = exc.message + (f" ({exc.suggestion})" if exc.suggestion else "")
    shown = code or str(status)
    if code in CAPACITY_CODES:
        return CapacityError(msg, place, code=shown)
    if code in QUOTA_CODES:
        return AccountQuotaError(msg, place, code=shown, hint=HINT_QUOTA)
    if code in CREDENTIAL_CODES or status in (401, 403):  # said as the cloud's: `down`'s error shows only this
        from .client import api_key_source

        return CredentialsError(f"Lambda Cloud refused our API key ({api_key_source()[1]}): {msg}", place,
                                code=shown, hint=HINT_CREDS)
    if status == 429:
        return ThrottledError(msg, place, code=shown, hint="Lambda is rate-limiting this account; retry shortly")
    if (code or "").startswith("provider/") or status >= 500:
        return CapacityError(msg, place, code=shown)
    return InvalidRequestError(msg, place, code=shown)
