"""What every object store offers skybroker (the `Store` protocol), bucket URIs and bucket names.

A bucket is named by a `BucketRef`: store kind (`s3`, `gs`, `az`, `r2`), bucket (an Azure container),
a key prefix inside it, and for Azure the storage account. URIs are SkyPilot's:
  s3://bucket/prefix    gs://bucket/prefix    r2://bucket/prefix (Cloudflare R2, S3-compatible)
  https://ACCOUNT.blob.core.windows.net/container/prefix (SkyPilot's Azure form)  az://ACCOUNT/container/prefix
Bucket names are checked against each store's rules here (no SDK, no network), so a bad name is a spec
error naming the field before anything is created.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import BrokerError

MANAGED_TAG = "skybroker-managed"  # the tag/label/metadata key on every bucket skybroker created
KINDS = ("s3", "gs", "az", "r2")
STORE_NAMES = {"s3": "s3", "aws": "s3", "gcs": "gs", "gs": "gs", "gcp": "gs", "azure": "az", "az": "az",
               "r2": "r2", "cloudflare": "r2"}  # SkyPilot's `store:` values (any case) → kind
CLOUD_STORE = {"aws": "s3", "gcp": "gs", "azure": "az"}  # a created bucket's default store: the cluster's cloud
_AZ_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.windows\.net$")


class StorageError(BrokerError):
    """A bucket cannot be used: bad name, missing credentials, missing SDK, no such bucket, access denied
    (exit 2: the user's to fix, the message names the field). A failure of the store itself (network,
    5xx) is raised with exit_code=1, so a managed job treats it like any other failure."""

    exit_code = 2


@dataclass(frozen=True)
class BucketRef:
    kind: str
    bucket: str
    prefix: str = ""
    account: str | None = None  # Azure storage account

    @property
    def uri(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        if self.kind == "az":
            return f"az://{self.account or '?'}/{self.bucket}{tail}"
        return f"{self.kind}://{self.bucket}{tail}"


def parse_uri(uri: str) -> BucketRef:
    """A bucket URI → BucketRef; StorageError (with the accepted forms) for anything else."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise StorageError(f"{uri!r} is not a bucket URI", _FORMS)
    scheme = scheme.lower()
    parts = rest.split("/")
    if scheme in ("s3", "gs", "gcs", "r2"):
        kind = "gs" if scheme == "gcs" else scheme
        ref = BucketRef(kind, parts[0], "/".join(p for p in parts[1:] if p))
    elif scheme == "az":
        if len(parts) < 2 or not parts[1]:
            raise StorageError(f"{uri!r}: an az:// URI names the storage account and the container",
                               "az://ACCOUNT/CONTAINER[/PREFIX] or https://ACCOUNT.blob.core.windows.net/CONTAINER")
        ref = BucketRef("az", parts[1], "/".join(p for p in parts[2:] if p), account=parts[0])
    elif scheme == "https" and _AZ_HOST.match(parts[0].lower()):
        if len(parts) < 2 or not parts[1]:
            raise StorageError(f"{uri!r} names no container", "https://ACCOUNT.blob.core.windows.net/CONTAINER")
        account = _AZ_HOST.match(parts[0].lower()).group(1)
        ref = BucketRef("az", parts[1], "/".join(p for p in parts[2:] if p), account=account)
    else:
        raise StorageError(f"{scheme}:// buckets are not supported", _FORMS)
    check_name(ref.kind, ref.bucket)
    return ref


_FORMS = ("use s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], r2://BUCKET[/PREFIX], az://ACCOUNT/CONTAINER[/PREFIX] "
          "or https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]")

_S3 = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_AZ = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def check_name(kind: str, name: str) -> None:
    """The store's bucket-naming rules; StorageError saying which rule is broken."""
    shown = name if len(name) <= 80 else name[:77] + "..."
    what = {"s3": "an S3 bucket", "r2": "an R2 bucket", "gs": "a GCS bucket", "az": "an Azure container"}[kind]
    if kind in ("s3", "r2"):
        ok = bool(_S3.match(name)) and ".." not in name and not _IP.match(name) and not name.startswith("xn--")
        rule = "3-63 characters: lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    elif kind == "gs":
        ok = bool(_GCS.match(name)) and not name.startswith("goog") and "google" not in name and \
            all(len(p) <= 63 for p in name.split(".")) and (len(name) <= 63 or "." in name)
        rule = ("3-63 characters: lowercase letters, digits, hyphens, underscores and dots, starting and ending with "
                "a letter or digit, not starting with 'goog'")
    else:
        ok = bool(_AZ.match(name))
        rule = "3-63 characters: lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
    if not ok:
        raise StorageError(f"{shown!r} is not a valid name for {what}", f"a name has {rule}")


class Store(Protocol):
    """One object store. Implementations load their SDK lazily (on first use, never at import)."""

    kind: str

    def keeps_tags(self) -> bool:
        """Whether bucket tags/labels are kept (they are the truth about who created a bucket)."""

    def check_credentials(self) -> None:
        """StorageError (naming what to set up) when this machine has no usable credentials."""

    def tags(self, ref: BucketRef) -> dict[str, str] | None:
        """The bucket's tags/labels/metadata; None when the bucket does not exist."""

    def create(self, ref: BucketRef, region: str | None, tags: dict[str, str]) -> None: ...

    def list_objects(self, ref: BucketRef, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, mtime) of every object whose key starts with `prefix`, across pages."""

    def get_object(self, ref: BucketRef, key: str, f: BinaryIO) -> None: ...

    def put_object(self, ref: BucketRef, key: str, path: str) -> None: ...

    def delete_bucket(self, ref: BucketRef) -> None:
        """Every object, then the bucket."""

    def node_env(self, ref: BucketRef, *, forward: bool) -> dict[str, str]:
        """rclone's environment for one mount of `ref` on a node: a credential scoped to this bucket
        (or, with `forward`, this machine's own credential) and the store's endpoint."""

    def rclone_path(self, ref: BucketRef) -> str: ...
