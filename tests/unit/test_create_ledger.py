"""clouds.base.CreateLedger and each provider's refused_answer: a failed run_instances says it created
nothing only when no instance was found and every create call it sent was refused by the cloud's answer (a
4xx); a timeout, a lost answer or a 5xx after a create was sent keeps the record (provision._rollback)."""
from __future__ import annotations

import pytest

from skybroker.clouds.base import CreateLedger, http_refusal
from skybroker.errors import CredentialsError, ProvisionError


class Answer(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _refused(exc):
    return isinstance(exc, Answer) and http_refusal(exc.status)


def _run(create_error=None, found=(), before=None):
    """A driver's run_instances: finds `found`, then one create call failing with `create_error` (an SDK
    error, typed by the driver like call_typed does), or fails with `before` before any create."""
    with CreateLedger(_refused).guard() as ledger:
        ledger.found(list(found))
        if before is not None:
            raise before
        with ledger.create():
            try:
                raise create_error
            except Exception:  # noqa: BLE001 - typed as call_typed does; __context__ keeps the SDK error
                raise CredentialsError("refused") from None


@pytest.mark.parametrize("status,nothing", [(401, True), (403, True), (400, True), (429, True), (408, False),
                                            (500, False), (502, False), (503, False)])
def test_a_create_refused_by_a_4xx_created_nothing_a_5xx_may_have(status, nothing):
    with pytest.raises(ProvisionError) as ei:
        _run(Answer(status))
    assert ei.value.created_nothing is nothing


def test_found_instances_a_timeout_or_an_untyped_failure_may_have_created_something():
    with pytest.raises(ProvisionError) as ei:
        _run(Answer(401), found=["i-1"])
    assert ei.value.created_nothing is False
    with pytest.raises(ProvisionError) as ei:
        _run(TimeoutError("timed out"))
    assert ei.value.created_nothing is False
    with pytest.raises(ProvisionError) as ei:  # a typed error with no SDK error behind it: not known refused
        with CreateLedger(_refused).guard() as ledger:
            with ledger.create():
                raise CredentialsError("no key")
    assert ei.value.created_nothing is False
    with pytest.raises(ProvisionError) as ei:  # refused before any create call was sent
        _run(before=CredentialsError("refused"))
    assert ei.value.created_nothing is True


def test_a_create_that_succeeded_then_a_refusal_keeps_the_record():
    with pytest.raises(ProvisionError) as ei:
        with CreateLedger(_refused).guard() as ledger:
            with ledger.create():
                pass
            raise CredentialsError("refused")
    assert ei.value.created_nothing is False


def _aws(status):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "X", "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "RunInstances")


def _gcp(status):
    from google.api_core import exceptions as g

    return g.from_http_status(status, "m")


def _azure(status):
    from azure.core.exceptions import HttpResponseError

    exc = HttpResponseError(message="m")
    exc.status_code = status
    return exc


def _k8s(status):
    from kubernetes.client.exceptions import ApiException

    return ApiException(status=status, reason="r")


def _lambda(status):
    from skybroker.clouds.lambda_cloud.client import LambdaApiError

    return LambdaApiError(status, None, "m")


@pytest.mark.parametrize("cloud,make,module", [("aws", _aws, "botocore"), ("gcp", _gcp, "google.api_core"),
                                               ("azure", _azure, "azure.core"), ("kubernetes", _k8s, "kubernetes"),
                                               ("lambda", _lambda, None)])
def test_each_provider_tells_a_refusal_from_a_lost_answer(cloud, make, module):
    if module:
        pytest.importorskip(module)
    from skybroker.clouds.registry import get

    prov = get(cloud)
    assert prov.refused_answer(make(401)) and prov.refused_answer(make(403))
    assert not prov.refused_answer(make(500)) and not prov.refused_answer(make(503))
    assert not prov.refused_answer(TimeoutError("timed out")) and not prov.refused_answer(ConnectionError("reset"))
    if cloud == "kubernetes":
        assert not prov.refused_answer(make(0))  # the client's "no answer"
    if cloud == "azure":
        from azure.core.exceptions import ClientAuthenticationError

        assert prov.refused_answer(ClientAuthenticationError("no token"))  # nothing was sent to ARM
