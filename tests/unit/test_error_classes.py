"""Throttling is its own error class on every cloud (retry the same place), never a region's quota: the
classifiers read the SDK's structured error (code / HTTP status), as the real SDKs raise it."""
from __future__ import annotations

import pytest

from skybroker.errors import CapacityError, Place, QuotaError, Scope, ThrottledError

P = Place("x", "r1", "z1", "t")


@pytest.mark.parametrize("code", ["RequestLimitExceeded", "Throttling", "ThrottlingException"])
def test_aws_throttling(code):
    pytest.importorskip("botocore")
    from botocore.exceptions import ClientError

    from skybroker.clouds.aws.errors import classify

    e = classify(ClientError({"Error": {"Code": code, "Message": "Request limit exceeded."}}, "RunInstances"), P)
    assert isinstance(e, ThrottledError) and e.scope == Scope.RETRY and e.code == code
    q = classify(ClientError({"Error": {"Code": "VcpuLimitExceeded", "Message": "limit"}}, "RunInstances"), P)
    assert type(q) is QuotaError


def test_gcp_throttling():
    pytest.importorskip("google.api_core")
    from google.api_core import exceptions as gex

    from skybroker.clouds.gcp.errors import classify

    e = classify(gex.TooManyRequests("Rate Limit Exceeded", errors=[{"reason": "rateLimitExceeded"}]), P)
    assert isinstance(e, ThrottledError) and e.scope == Scope.RETRY
    e = classify(gex.Forbidden("Rate Limit Exceeded", errors=[{"reason": "userRateLimitExceeded"}]), P)
    assert isinstance(e, ThrottledError)
    q = classify(gex.Forbidden("Quota exceeded", errors=[{"reason": "quotaExceeded"}]), P)
    assert isinstance(q, QuotaError) and not isinstance(q, ThrottledError)


@pytest.mark.parametrize("status, code, cls", [
    (429, "TooManyRequests", ThrottledError), (429, "SubscriptionRequestsThrottled", ThrottledError),
    (409, "SkuNotAvailable", CapacityError), (409, "OperationNotAllowed", QuotaError)])
def test_azure_throttling(status, code, cls):
    pytest.importorskip("azure.core")
    from azure.core.exceptions import HttpResponseError, ODataV4Format

    from skybroker.clouds.azure.errors import classify

    exc = HttpResponseError(message=f"({code}) something")
    exc.status_code = status
    exc.error = ODataV4Format({"code": code, "message": "something"})
    e = classify(exc, P)
    assert type(e) is cls and e.code == code
