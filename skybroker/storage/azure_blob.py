"""Azure Blob Storage through azure-storage-blob (the `azure` extra), loaded lazily. A "bucket" is a
container in a storage account.

Credentials: `AZURE_STORAGE_CONNECTION_STRING` (account key or SAS; also how Azurite, the emulator, is
reached), else Entra ID (DefaultAzureCredential: `az login`, a managed identity, AZURE_CLIENT_* env) on
https://ACCOUNT.blob.core.windows.net. The account of a bucket the task creates (`name:` + `store: azure`):
the connection string's, else AZURE_STORAGE_ACCOUNT.
Node credentials for a MOUNT: a SAS for this one container (read/add/create/write/delete/list), expiring
after BROKER_STORAGE_SAS_HOURS; made with the account key, or as a user-delegation SAS with Entra ID.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from .base import BucketRef, StorageError


def _conn_parts(cs: str) -> dict[str, str]:
    out = {}
    for part in cs.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _entra_credential(account: str):
    """DefaultAzureCredential, with a token fetched once up front: the storage client's retry policy retries a
    credential failure like a network error (four lookups over about 90 s) before giving up."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    cred = DefaultAzureCredential()
    try:
        cred.get_token("https://storage.azure.com/.default")
    except ClientAuthenticationError:  # CredentialUnavailableError too
        raise StorageError(f"no Azure credential could be obtained for storage account {account} (Entra ID: no "
                           "`az login`, managed identity or AZURE_CLIENT_* found)",
                           "run `az login`, or set AZURE_STORAGE_CONNECTION_STRING") from None
    return cred


class AzureBlobStore:
    kind = "az"

    def __init__(self):
        self._clients: dict = {}

    def _sdk(self):
        try:
            from azure.storage import blob
        except ImportError:
            raise StorageError("Azure Blob buckets need azure-storage-blob, which is not installed",
                               "pip install 'skybroker[azure]'") from None
        return blob

    def default_account(self) -> str | None:
        cs = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if cs:
            return _conn_parts(cs).get("AccountName")
        return os.environ.get("AZURE_STORAGE_ACCOUNT")

    def service(self, account: str | None):
        account = account or self.default_account()
        if account not in self._clients:
            blob = self._sdk()
            cs = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            if cs and (account is None or _conn_parts(cs).get("AccountName") == account):
                self._clients[account] = blob.BlobServiceClient.from_connection_string(cs)
            elif account:
                self._clients[account] = blob.BlobServiceClient(f"https://{account}.blob.core.windows.net",
                                                                credential=_entra_credential(account))
            else:
                raise StorageError("no Azure storage account known for this bucket",
                                   "set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT, or give "
                                   "https://ACCOUNT.blob.core.windows.net/CONTAINER")
        return self._clients[account]

    def container(self, ref: BucketRef):
        return self.service(ref.account).get_container_client(ref.bucket)

    def _error(self, exc, ref: BucketRef, doing: str) -> StorageError:
        code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None) or type(exc).__name__
        code = getattr(code, "value", code)  # a StorageErrorCode member: its wire name (AuthorizationFailure)
        if type(exc).__name__ == "ClientAuthenticationError" and getattr(exc, "status_code", None) is None:
            return StorageError(f"{ref.uri}: no Azure credential could be obtained while {doing} ({code})",
                                "run `az login` (Entra ID), or set AZURE_STORAGE_CONNECTION_STRING")
        if getattr(exc, "status_code", None) in (401, 403) or type(exc).__name__ == "ClientAuthenticationError":
            return StorageError(f"{ref.uri}: access denied while {doing} ({code})",
                                "check that your credentials may use this container")
        return StorageError(f"{ref.uri}: {doing} failed ({code})", None, exit_code=1)

    def keeps_tags(self) -> bool:
        return True

    def check_credentials(self) -> None:
        if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            return
        if not os.environ.get("AZURE_STORAGE_ACCOUNT") and not any(
                os.environ.get(k) for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID")) and \
                not os.path.isdir(os.path.expanduser("~/.azure")):
            raise StorageError("no Azure credentials found for Azure Blob buckets",
                               "set AZURE_STORAGE_CONNECTION_STRING, or run `az login` (Entra ID)")

    def tags(self, ref: BucketRef) -> dict[str, str] | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return dict(self.container(ref).get_container_properties().metadata or {})
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._error(exc, ref, "looking the container up") from None

    def create(self, ref: BucketRef, region: str | None, tags: dict[str, str]) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.container(ref).create_container(metadata={k.replace("-", "_"): v for k, v in tags.items()})
        except AzureError as exc:
            raise self._error(exc, ref, "creating the container") from None

    def list_objects(self, ref: BucketRef, prefix: str):
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            for b in self.container(ref).list_blobs(name_starts_with=prefix or None):
                yield b.name, int(b.size or 0), b.last_modified.timestamp() if b.last_modified else 0.0
        except ResourceNotFoundError:
            raise StorageError(f"container {ref.uri} does not exist", "check the name and the account") from None
        except AzureError as exc:
            raise self._error(exc, ref, "listing blobs") from None

    def get_object(self, ref: BucketRef, key: str, f) -> None:
        self.container(ref).download_blob(key).readinto(f)

    def put_object(self, ref: BucketRef, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self.container(ref).upload_blob(key, f, overwrite=True)

    def delete_bucket(self, ref: BucketRef) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.container(ref).delete_container()
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise self._error(exc, ref, "deleting the container") from None

    def sas_url(self, ref: BucketRef, hours: float) -> str:
        blob = self._sdk()
        svc = self.service(ref.account)
        account = svc.account_name
        perm = blob.ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True)
        start = datetime.now(timezone.utc) - timedelta(minutes=5)
        expiry = start + timedelta(hours=hours)
        key = getattr(svc.credential, "account_key", None)
        if key:
            sas = blob.generate_container_sas(account, ref.bucket, account_key=key, permission=perm, expiry=expiry,
                                              start=start)
        else:
            udk = svc.get_user_delegation_key(start, expiry)
            sas = blob.generate_container_sas(account, ref.bucket, user_delegation_key=udk, permission=perm,
                                              expiry=expiry, start=start)
        return f"{self.container(ref).url}?{sas}"

    def node_env(self, ref: BucketRef, *, forward: bool) -> dict[str, str]:
        from .. import settings

        return {"RCLONE_AZUREBLOB_SAS_URL": self.sas_url(ref, float(settings.get("storage_sas_hours"))),
                "RCLONE_AZUREBLOB_ENV_AUTH": "false"}

    def rclone_path(self, ref: BucketRef) -> str:
        return f":azureblob:{ref.bucket}" + (f"/{ref.prefix}" if ref.prefix else "")
