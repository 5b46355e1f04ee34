"""Google Cloud Storage through google-cloud-storage (the `gcp` extra), loaded lazily.

`STORAGE_EMULATOR_HOST` (honoured by the SDK) points it at an emulator, which takes anonymous requests.
Node credentials for a MOUNT: a downscoped access token (a Credential Access Boundary allowing only
this bucket, roles/storage.objectAdmin), valid about an hour: longer jobs should COPY, or opt in to
forwarding. The project for new buckets: GOOGLE_CLOUD_PROJECT, else the credentials' project.
"""
from __future__ import annotations

import json
import os

from .base import BucketRef, StorageError


class GcsStore:
    kind = "gs"

    def __init__(self):
        self._client = None

    def _emulator(self) -> str | None:
        return os.environ.get("STORAGE_EMULATOR_HOST")

    def client(self):
        if self._client is None:
            try:
                from google.cloud import storage
            except ImportError:
                raise StorageError("gs:// buckets need google-cloud-storage, which is not installed",
                                   "pip install 'skybroker[gcp]'") from None
            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
            if self._emulator():
                from google.auth.credentials import AnonymousCredentials

                self._client = storage.Client(project=project or "skybroker-local", credentials=AnonymousCredentials())
            else:
                self._client = storage.Client(project=project, credentials=self._credentials()[0])
        return self._client

    def _credentials(self):
        try:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError
        except ImportError:
            raise StorageError("gs:// buckets need google-cloud-storage, which is not installed",
                               "pip install 'skybroker[gcp]'") from None
        try:
            return google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except DefaultCredentialsError:
            raise StorageError("no Google Cloud credentials found for gs:// buckets",
                               "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
                               ) from None

    def _error(self, exc, ref: BucketRef, doing: str) -> StorageError:
        code = getattr(exc, "code", None) or type(exc).__name__
        if code in (401, 403):
            return StorageError(f"{ref.uri}: access denied while {doing} ({code})",
                                "check that your credentials may use this bucket")
        return StorageError(f"{ref.uri}: {doing} failed ({code}: {str(exc)[:200]})", None, exit_code=1)

    def keeps_tags(self) -> bool:
        """Real GCS keeps bucket labels; the emulator drops them (then the record alone says ours)."""
        return not self._emulator()

    def check_credentials(self) -> None:
        if not self._emulator():
            self._credentials()

    def tags(self, ref: BucketRef) -> dict[str, str] | None:
        from google.api_core import exceptions as gexc

        try:
            b = self.client().lookup_bucket(ref.bucket)
        except gexc.GoogleAPIError as exc:
            raise self._error(exc, ref, "looking the bucket up") from None
        return None if b is None else dict(b.labels or {})

    def create(self, ref: BucketRef, region: str | None, tags: dict[str, str]) -> None:
        from google.api_core import exceptions as gexc

        b = self.client().bucket(ref.bucket)
        b.labels = dict(tags)
        try:
            self.client().create_bucket(b, location=region)
        except gexc.Conflict:
            raise StorageError(f"bucket name {ref.bucket!r} is taken", "GCS bucket names are global: pick another "
                               "`name`") from None
        except gexc.GoogleAPIError as exc:
            raise self._error(exc, ref, "creating the bucket") from None

    def list_objects(self, ref: BucketRef, prefix: str):
        from google.api_core import exceptions as gexc

        try:
            for blob in self.client().list_blobs(ref.bucket, prefix=prefix or None):
                t = blob.updated.timestamp() if blob.updated else 0.0
                yield blob.name, int(blob.size or 0), t
        except gexc.NotFound:
            raise StorageError(f"bucket {ref.uri} does not exist", "check the name (and the project)") from None
        except gexc.GoogleAPIError as exc:
            raise self._error(exc, ref, "listing objects") from None

    def get_object(self, ref: BucketRef, key: str, f) -> None:
        self.client().bucket(ref.bucket).blob(key).download_to_file(f)

    def put_object(self, ref: BucketRef, key: str, path: str) -> None:
        self.client().bucket(ref.bucket).blob(key).upload_from_filename(path)

    def delete_bucket(self, ref: BucketRef) -> None:
        from google.api_core import exceptions as gexc

        b = self.client().bucket(ref.bucket)
        try:
            for key, _, _ in list(self.list_objects(ref, "")):
                b.blob(key).delete()
            b.delete()
        except gexc.NotFound:
            return
        except gexc.GoogleAPIError as exc:
            raise self._error(exc, ref, "deleting the bucket") from None

    def node_env(self, ref: BucketRef, *, forward: bool) -> dict[str, str]:
        if self._emulator():
            raise StorageError("gs:// MOUNT against a storage emulator is not supported (rclone cannot be pointed "
                               "at STORAGE_EMULATOR_HOST)", "use `mode: COPY`")
        import google.auth.transport.requests

        creds, _ = self._credentials()
        if not forward:
            from google.auth import downscoped

            rule = downscoped.AccessBoundaryRule(
                available_resource=f"//storage.googleapis.com/projects/_/buckets/{ref.bucket}",
                available_permissions=["inRole:roles/storage.objectAdmin"])
            creds = downscoped.Credentials(source_credentials=creds,
                                           credential_access_boundary=downscoped.CredentialAccessBoundary(rules=[rule]))
        creds.refresh(google.auth.transport.requests.Request())
        expiry = creds.expiry.strftime("%Y-%m-%dT%H:%M:%SZ") if creds.expiry else ""
        return {"RCLONE_GCS_TOKEN": json.dumps({"access_token": creds.token, "token_type": "Bearer",
                                                "expiry": expiry}),
                "RCLONE_GCS_BUCKET_POLICY_ONLY": "true", "RCLONE_GCS_ENV_AUTH": "false"}

    def rclone_path(self, ref: BucketRef) -> str:
        return f":gcs:{ref.bucket}" + (f"/{ref.prefix}" if ref.prefix else "")
