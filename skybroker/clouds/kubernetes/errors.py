"""Kubernetes API errors → typed errors with a scope. The decision reads structured fields only: the
HTTP status and the `Status` object's `reason` (Unauthorized, Forbidden, TooManyRequests, Invalid,
NotFound, AlreadyExists, ...), pod conditions and container state reasons (pods.py), and for a 403 on a
create, a SelfSubjectAccessReview plus the namespace's ResourceQuota objects (driver.py) — never message
text.

  401                                          CredentialsError (the cloud)
  403, RBAC denies the verb                    CredentialsError (the cloud)
  403, RBAC allows it, a ResourceQuota is full QuotaError (the region = the context)
  403, RBAC allows it, no quota is full        InvalidRequestError (an admission policy refused the pod)
  429                                          ThrottledError
  5xx, connection refused, TLS/DNS failure     UnreachableError (the region: this context's cluster)
  kubeconfig missing / bad context            CredentialsError
  400, 404, 422                                InvalidRequestError (a missing namespace: exit 2, with a hint)
  a pod left Unschedulable                     CapacityError (the context; pods.py)
"""
from __future__ import annotations

import json

from ...errors import CredentialsError, InvalidRequestError, Place, ProvisionError, Scope, ThrottledError

HINT_CREDS = ("check the kubeconfig context (`kubectl --context CTX auth can-i create pods`) and the Role in "
              "skybroker/clouds/kubernetes/rbac.yaml")


class UnreachableError(ProvisionError):
    """The context's API server does not answer: other contexts (clusters) may."""

    scope = Scope.REGION


def status_of(exc) -> tuple[int, str | None, str]:
    """(HTTP status, Status.reason, Status.message) of an ApiException."""
    status = int(getattr(exc, "status", 0) or 0)
    reason, message = None, getattr(exc, "reason", None) or ""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict):
                reason = data.get("reason") or None
                message = data.get("message") or message
        except (ValueError, TypeError):
            pass
    return status, reason, str(message)


def classify(exc: BaseException, place: Place) -> ProvisionError | None:
    if isinstance(exc, ProvisionError):
        return exc
    try:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:  # pragma: no cover - the SDK is checked before any call
        return None
    if isinstance(exc, ConfigException):
        return CredentialsError(f"kubeconfig: {exc}", place, code="KubeconfigError", hint=HINT_CREDS)
    import urllib3.exceptions as u3

    if isinstance(exc, (u3.HTTPError, ConnectionError, TimeoutError, OSError)):
        return UnreachableError(f"cannot reach the Kubernetes API server of {place.region or 'the current context'}: "
                                f"{exc}", place, code=type(exc).__name__)
    if not isinstance(exc, ApiException):
        return None
    status, reason, message = status_of(exc)
    code = reason or (str(status) if status else "ConnectionFailed")
    if status == 0:
        return UnreachableError(f"cannot reach the Kubernetes API server: {message}", place, code=code)
    if status == 401:
        return CredentialsError(message, place, code=code, hint=HINT_CREDS)
    if status == 403:
        return CredentialsError(message, place, code=code, hint=HINT_CREDS)
    if status == 429:
        return ThrottledError(message, place, code=code)
    if status >= 500:
        return UnreachableError(message, place, code=code)
    if status == 404 and _details_kind(exc) == "namespaces":  # the namespace itself: configuration, not the cloud
        from . import config as cfg

        ns = cfg.namespace(place.region if not place.zone else f"{place.region}/{place.zone}")
        err = InvalidRequestError(message, place, code=NAMESPACE_NOT_FOUND,
                                  hint=f"create it (`kubectl create namespace {ns}`), or name an existing one "
                                       "(BROKER_K8S_NAMESPACE, the context's namespace, or contexts.<context>.namespace "
                                       "in kubernetes.yaml)")
        err.exit_code = 2
        return err
    return InvalidRequestError(message, place, code=code)


NAMESPACE_NOT_FOUND = "NamespaceNotFound"


def _details_kind(exc) -> str | None:
    try:
        data = json.loads(getattr(exc, "body", None) or "")
    except (ValueError, TypeError):
        return None
    details = data.get("details") if isinstance(data, dict) else None
    return details.get("kind") if isinstance(details, dict) else None
