"""The one place AWS clients are built. Endpoint overrides come from the environment the way boto3
reads them (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL_SSM), so the same code runs against
EC2 and against moto."""
from __future__ import annotations

import functools
import threading

from ... import settings

_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _session():
    import boto3

    return boto3.session.Session()


def client(service: str, region: str):
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": settings.get("aws_max_attempts"), "mode": "standard"},
                 connect_timeout=10, read_timeout=60)
    with _lock:  # boto3 session client creation is not thread-safe
        return _session().client(service, region_name=region, config=cfg)


def ec2(region: str):
    return client("ec2", region)


def reset() -> None:
    """Forget cached sessions (tests switch credentials/endpoints between cases)."""
    _session.cache_clear()
