"""Buckets for `file_mounts` (SkyPilot's storage): S3, GCS, Azure Blob and R2 behind one protocol
(base.Store), one module per store, each loading its SDK only when a bucket of its kind is used.
mounts.py puts them on a cluster (COPY / MOUNT / MOUNT_CACHED); records.py is `broker storage`'s table."""
from __future__ import annotations

from .base import (
    CLOUD_STORE,
    KINDS,
    STORE_NAMES,
    BucketRef,
    StorageError,
    check_name,
    parse_uri,
)

_STORES: dict = {}


def get_store(kind: str):
    """The Store for a kind (`s3`, `gs`, `az`, `r2`), one per process."""
    if kind not in _STORES:
        if kind in ("s3", "r2"):
            from .s3 import S3Store

            _STORES[kind] = S3Store(kind)
        elif kind == "gs":
            from .gcs import GcsStore

            _STORES[kind] = GcsStore()
        elif kind == "az":
            from .azure_blob import AzureBlobStore

            _STORES[kind] = AzureBlobStore()
        else:
            raise StorageError(f"unknown store {kind!r}", f"one of {', '.join(KINDS)}")
    return _STORES[kind]


def reset_clients() -> None:
    """Forget SDK clients (tests change endpoints and credentials between cases)."""
    _STORES.clear()


__all__ = [
    "CLOUD_STORE",
    "KINDS",
    "STORE_NAMES",
    "BucketRef",
    "StorageError",
    "check_name",
    "get_store",
    "parse_uri",
    "reset_clients",
]
