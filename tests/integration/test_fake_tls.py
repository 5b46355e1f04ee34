"""The HTTPS fakes (ARM, the TLS price APIs) keep serving while a client sits in the middle of its TLS
handshake: a node killed half-way through a hello, or a bare port probe, used to block accept() (and so
every later request) for ever (found as a 60 s autostop test timeout: the worker node's self-stop hung)."""
from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from urllib.parse import urlsplit

from tests.infra.arm_fake import SUBSCRIPTION, ArmFake


def _stalled(endpoint: str) -> socket.socket:
    u = urlsplit(endpoint)
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    s.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and then nothing
    return s


def test_a_stalled_hello_does_not_freeze_the_arm_fake():
    fake = ArmFake()
    stalled = [_stalled(fake.endpoint) for _ in range(3)]
    try:
        ctx = ssl.create_default_context(cafile=str(fake.ca_path))
        req = urllib.request.Request(f"{fake.endpoint}/subscriptions/{SUBSCRIPTION}/resourcegroups?api-version=2021-04-01",
                                     headers={"Authorization": "Bearer x"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:  # timed out (URLError) before the fix
            assert r.status == 200 and json.loads(r.read()) == {"value": []}
    finally:
        for s in stalled:
            s.close()
        fake.close()


def test_a_stalled_hello_does_not_freeze_the_azure_price_fake():
    from tests.infra.price_fakes import AzurePricesFake

    with AzurePricesFake(SUBSCRIPTION, [], []) as fake:
        stalled = [_stalled(fake.endpoint) for _ in range(3)]
        try:
            ctx = ssl.create_default_context(cafile=str(fake.ca_path))
            with urllib.request.urlopen(f"{fake.endpoint}/api/retail/prices", context=ctx, timeout=5) as r:
                assert r.status == 200 and json.loads(r.read())["Items"] == []
        finally:
            for s in stalled:
                s.close()
