"""The Azure ARM fake as pytest fixtures, shared by the Azure test modules (import both names into a module
to use them): `fake` is one tests/infra/arm_fake.ArmFake per module, `arm` that fake with no faults and this
process (and the CLI it starts) pointed at it."""
from __future__ import annotations

import pytest

from tests.infra.arm_fake import SUBSCRIPTION, ArmFake


@pytest.fixture(scope="module")
def fake():
    f = ArmFake()
    yield f
    f.close()


@pytest.fixture
def arm(fake, monkeypatch):
    from skybroker.clouds.azure import client

    fake.clear_faults()
    for k, v in fake.env().items():
        monkeypatch.setenv(k, v)
    assert fake.env()["AZURE_SUBSCRIPTION_ID"] == SUBSCRIPTION
    client.reset()
    yield fake
    fake.clear_faults()
    client.reset()
