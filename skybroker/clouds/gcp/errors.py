"""GCE error codes → typed errors with a scope. Failover reads only the type (its scope); the code and
GCE's message are kept for the failover report. Classification reads the structured fields — the failed
operation's `error.errors[].code` / `errorDetails[].quotaInfo`, or an HTTP error's status and
`error.errors[].reason` — never the message text.

GCE reports most refusals of `instances.insert` asynchronously: the insert call succeeds and the
operation finishes DONE with an `error` (plus `httpErrorStatusCode`/`httpErrorMessage`). Capacity
(ZONE_RESOURCE_POOL_EXHAUSTED) and quota (QUOTA_EXCEEDED) arrive that way; some quota and rate limits
arrive synchronously as HTTP 403/429 with reason `quotaExceeded`/`rateLimitExceeded`. Both are handled.
"""
from __future__ import annotations

from ...errors import (CapacityError, CredentialsError, InvalidRequestError, Place, ProvisionError, QuotaError, Scope,
                       ThrottledError)


class GlobalQuotaError(QuotaError):
    """A project-wide quota (GPUS_ALL_REGIONS, CPUS_ALL_REGIONS): no other region of GCP can help, so the
    whole cloud is blocked for this attempt. Still a QuotaError for anyone who checks the class."""

    scope = Scope.CLOUD


class RegionCapacityError(CapacityError):
    """A stockout reported for the whole region (REGION_RESOURCE_POOL_EXHAUSTED)."""

    scope = Scope.REGION


class UnreachableError(ProvisionError):
    """The Compute API endpoint cannot be reached at all (one global endpoint: the cloud is out)."""

    scope = Scope.CLOUD


class OperationError(Exception):
    """A GCE operation that finished DONE with an error. Carries the compute_v1 Operation."""

    def __init__(self, op):
        self.op = op
        errs = list(op.error.errors) if op.error else []
        self.codes = [e.code for e in errs]
        msg = "; ".join(f"{e.code}: {e.message}" for e in errs) or op.http_error_message or "operation failed"
        super().__init__(msg)


# Capacity in one zone: try the next zone. UNSUPPORTED_OPERATION is what GCE returns when a spot VM is
# preempted while being created or the zone cannot host the shape right now; RESOURCE_NOT_READY when an
# instance is still stopping.
ZONE_CODES = {
    "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED",
    "GPU_STOCKOUT", "STOCKOUT", "UNSUPPORTED_OPERATION", "insufficientCapacity", "RESOURCE_NOT_READY",
    "VM_MIN_COUNT_NOT_REACHED", "ZONE_NOT_AVAILABLE", "resourceNotReady",
}
REGION_CAPACITY_CODES = {"REGION_RESOURCE_POOL_EXHAUSTED"}
# Quota or rate limits: skip the region (unless the quota is project-wide, see _is_global_quota).
QUOTA_CODES = {"QUOTA_EXCEEDED", "quotaExceeded", "QUOTA_LIMIT_EXCEEDED"}
RATE_CODES = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED", "RESOURCE_OPERATION_RATE_EXCEEDED",
              "dailyLimitExceeded"}
# Credentials, permissions, billing, the API being disabled: the whole cloud is unusable for us.
CLOUD_CODES = {
    "forbidden", "insufficientPermissions", "accessNotConfigured", "authError", "required", "unauthorized",
    "SERVICE_DISABLED", "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "IAM_PERMISSION_DENIED", "PERMISSIONS_ERROR",
    "BILLING_DISABLED", "accountDisabled", "projectNotFound",
}
GLOBAL_QUOTA_METRICS = ("_all_regions", "-all-regions")
HINT_CREDS = "run `gcloud auth application-default login` and check the IAM roles listed in the README (GCP setup)"
HINT_QUOTA = "request a quota increase in the console (IAM & Admin → Quotas)"


def _is_global_quota(metric: str | None, limit: str | None, dimensions: dict | None) -> bool:
    """Project-wide rather than regional: the metric says ALL_REGIONS, or the limit is per project with no
    region/zone dimension (regional limits are named like CPUS-per-project-region)."""
    text = f"{metric or ''} {limit or ''}".lower()
    if any(m in text for m in GLOBAL_QUOTA_METRICS):
        return True
    dims = dimensions or {}
    return bool(limit) and limit.lower().endswith("per-project") and not any(k in dims for k in ("region", "zone"))


def _quota(cls_msg: str, place: Place, code: str, metric, limit, dimensions) -> QuotaError:
    metric_name = (metric or "").rsplit("/", 1)[-1].upper() or None
    code_full = f"{code}:{metric_name}" if metric_name else code
    if _is_global_quota(metric, limit, dimensions):
        return GlobalQuotaError(cls_msg, place, code=code_full, hint=HINT_QUOTA + " (a project-wide limit)")
    return QuotaError(cls_msg, place, code=code_full, hint=HINT_QUOTA)


def classify_operation(op, place: Place) -> ProvisionError:
    """A typed error for a failed operation (compute_v1.Operation with `error`)."""
    errs = list(op.error.errors) if op.error else []
    message = "; ".join(e.message for e in errs if e.message) or op.http_error_message or "operation failed"
    for e in errs:
        if e.code in REGION_CAPACITY_CODES:
            return RegionCapacityError(message, place, code=e.code)
    for e in errs:
        if e.code in ZONE_CODES:
            return CapacityError(message, place, code=e.code)
    for e in errs:
        if e.code in QUOTA_CODES:
            metric = limit = None
            dims = None
            for d in e.error_details:
                if d.quota_info and d.quota_info.metric_name:
                    metric, limit, dims = d.quota_info.metric_name, d.quota_info.limit_name, dict(d.quota_info.dimensions)
            return _quota(message, place, e.code, metric, limit, dims)
        if e.code in RATE_CODES:
            return ThrottledError(message, place, code=e.code)
    code = errs[0].code if errs else None
    status = op.http_error_status_code or 0
    if status in (401, 403) or (code in CLOUD_CODES):
        return CredentialsError(message, place, code=code or str(status), hint=HINT_CREDS)
    if status == 429:
        return ThrottledError(message, place, code=code or "429")
    if status >= 500:
        return CapacityError(message, place, code=code or str(status))
    return InvalidRequestError(message, place, code=code or (str(status) if status else None))


def _http_details(exc) -> tuple[list[str], str | None, str | None, dict | None]:
    """(reasons, quota metric, quota limit, quota dimensions) of a GoogleAPICallError."""
    reasons = [e.get("reason") for e in (exc.errors or []) if isinstance(e, dict) and e.get("reason")]
    metric = limit = None
    dims = None
    for d in exc.details or []:
        if not isinstance(d, dict):
            continue
        meta = d.get("metadata") or {}
        if d.get("reason"):
            reasons.append(d["reason"])
        if meta.get("quota_metric") or meta.get("quota_limit"):
            metric, limit, dims = meta.get("quota_metric"), meta.get("quota_limit"), {}
        for v in d.get("violations") or []:  # google.rpc.QuotaFailure
            if isinstance(v, dict) and v.get("quotaMetric"):
                metric, limit, dims = v.get("quotaMetric"), v.get("quotaId"), v.get("quotaDimensions") or {}
    return reasons, metric, limit, dims


def classify(exc: BaseException, place: Place) -> ProvisionError | None:
    """A typed error for an SDK exception, or None if it is not a cloud refusal (a bug: re-raise)."""
    if isinstance(exc, ProvisionError):
        return exc
    if isinstance(exc, OperationError):
        return classify_operation(exc.op, place)
    from .tpu import TPUOperationError, classify_operation as classify_tpu

    if isinstance(exc, TPUOperationError):
        return classify_tpu(exc, place)
    import google.auth.exceptions as gae
    from google.api_core import exceptions as gex

    if isinstance(exc, (gae.DefaultCredentialsError, gae.RefreshError)):
        return CredentialsError(f"no usable GCP credentials ({exc})", place, code=type(exc).__name__, hint=HINT_CREDS)
    if isinstance(exc, gae.TransportError):
        return UnreachableError(f"cannot reach Google's auth endpoint ({exc})", place, code="TransportError")
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return UnreachableError(f"cannot reach the Compute Engine API ({exc})", place, code=type(exc).__name__)
    except ImportError:  # pragma: no cover - requests comes with google-auth[requests]
        pass
    if isinstance(exc, gex.RetryError):
        return UnreachableError(f"the Compute Engine API kept failing ({exc})", place, code="RetryError")
    if not isinstance(exc, gex.GoogleAPICallError):
        return None
    status = int(exc.code or 0)
    reasons, metric, limit, dims = _http_details(exc)
    message = exc.message or str(exc)
    code = reasons[0] if reasons else (str(status) if status else None)
    if any(r in QUOTA_CODES for r in reasons):
        return _quota(message, place, "quotaExceeded", metric, limit, dims)
    if status == 429 or any(r in RATE_CODES for r in reasons):
        return ThrottledError(message, place, code=code, hint="GCE is rate-limiting this project; retry shortly")
    if any(r in ZONE_CODES for r in reasons):
        return CapacityError(message, place, code=code)
    if status in (401, 403) or any(r in CLOUD_CODES for r in reasons):
        return CredentialsError(message, place, code=code, hint=HINT_CREDS)
    if status >= 500:
        return CapacityError(message, place, code=code)
    return InvalidRequestError(message, place, code=code)
