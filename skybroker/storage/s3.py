"""Amazon S3 and S3-compatible stores (Cloudflare R2) through boto3 (the `aws` extra), loaded lazily.

Endpoints: boto3's own overrides (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) for S3; R2 as SkyPilot
finds it: the account id in ~/.cloudflare/accountid (endpoint https://ID.r2.cloudflarestorage.com) and the
keys in profile `r2` of ~/.cloudflare/r2.credentials; `BROKER_R2_ENDPOINT` overrides the endpoint.
Node credentials for a MOUNT: an STS federation token whose inline policy allows only this bucket
(`sts:GetFederationToken` needs long-term IAM user keys; with session credentials it is refused and the
error says what to do). R2 has no STS: its MOUNTs need the explicit forward opt-in.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .base import BucketRef, StorageError

FEDERATION_SECONDS = 12 * 3600


def bucket_policy(bucket: str) -> dict:
    """The inline policy of a node's token: list/read/write/delete objects of this one bucket."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": f"arn:aws:s3:::{bucket}"},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                       "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": f"arn:aws:s3:::{bucket}/*"}]}


class S3Store:
    kind = "s3"

    def __init__(self, kind: str = "s3"):
        self.kind = kind
        self._session = None
        self._clients: dict = {}

    # -- clients
    def _sdk(self):
        try:
            import boto3
            import botocore.exceptions  # noqa: F401
        except ImportError:
            raise StorageError(f"{self.kind}:// buckets need boto3, which is not installed",
                               "pip install 'skybroker[aws]'") from None
        return boto3

    def endpoint(self) -> str | None:
        if self.kind == "r2":
            url = os.environ.get("BROKER_R2_ENDPOINT")
            if url:
                return url
            p = Path.home() / ".cloudflare" / "accountid"
            try:
                account = p.read_text().strip()
            except OSError:
                raise StorageError("r2:// buckets need your Cloudflare account id in ~/.cloudflare/accountid",
                                   "write it there (as for SkyPilot), or set BROKER_R2_ENDPOINT") from None
            return f"https://{account}.r2.cloudflarestorage.com"
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def session(self):
        if self._session is None:
            boto3 = self._sdk()
            if self.kind == "r2":
                creds = Path.home() / ".cloudflare" / "r2.credentials"
                if not creds.exists():
                    raise StorageError("r2:// buckets need keys in ~/.cloudflare/r2.credentials (profile [r2])",
                                       "create an R2 API token and write its keys there, as for SkyPilot")
                import botocore.session

                core = botocore.session.Session()
                core.set_config_variable("credentials_file", str(creds))  # this session only, not os.environ
                core.set_config_variable("profile", "r2")
                self._session = boto3.Session(botocore_session=core)
            else:
                self._session = boto3.Session()
        return self._session

    def client(self, name: str = "s3", region: str | None = None):
        key = (name, region)
        if key not in self._clients:
            from botocore.config import Config

            s = self.session()
            region = region or s.region_name or ("auto" if self.kind == "r2" else "us-east-1")
            kw = {"endpoint_url": self.endpoint()} if (name == "s3" and self.kind == "r2") else {}
            from .. import settings

            self._clients[key] = s.client(name, region_name=region, config=Config(
                retries={"max_attempts": int(settings.get("aws_max_attempts")), "mode": "standard"}), **kw)
        return self._clients[key]

    def _error(self, exc, ref: BucketRef, doing: str) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return StorageError(f"{ref.uri}: access denied while {doing} ({code})",
                                "check that your credentials may use this bucket")
        return StorageError(f"{ref.uri}: {doing} failed ({code})", None, exit_code=1)

    # -- Store
    def keeps_tags(self) -> bool:
        return True

    def check_credentials(self) -> None:
        if self.session().get_credentials() is None:
            raise StorageError(f"no AWS credentials found for {self.kind}:// buckets",
                               "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run `aws configure`")

    def tags(self, ref: BucketRef) -> dict[str, str] | None:
        from botocore.exceptions import ClientError

        c = self.client()
        try:
            c.head_bucket(Bucket=ref.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return None
            raise self._error(exc, ref, "looking the bucket up") from None
        try:
            got = c.get_bucket_tagging(Bucket=ref.bucket).get("TagSet", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchTagSet", "NoSuchTagSetError", "NotImplemented"):
                return {}
            raise self._error(exc, ref, "reading the bucket's tags") from None
        return {t["Key"]: t["Value"] for t in got}

    def create(self, ref: BucketRef, region: str | None, tags: dict[str, str]) -> None:
        from botocore.exceptions import ClientError

        c = self.client(region=region)
        kw = {}
        if self.kind == "s3" and region and region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            c.create_bucket(Bucket=ref.bucket, **kw)
            c.put_bucket_tagging(Bucket=ref.bucket, Tagging={"TagSet": [{"Key": k, "Value": v}
                                                                      for k, v in tags.items()]})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "BucketAlreadyExists":
                raise StorageError(f"bucket name {ref.bucket!r} is taken by another account",
                                   "S3 bucket names are global: pick another `name`") from None
            raise self._error(exc, ref, "creating the bucket") from None

    def list_objects(self, ref: BucketRef, prefix: str):
        from botocore.exceptions import ClientError

        try:
            for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=ref.bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    yield o["Key"], int(o["Size"]), o["LastModified"].timestamp()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StorageError(f"bucket {ref.uri} does not exist", "check the name (and the account)") from None
            raise self._error(exc, ref, "listing objects") from None

    def get_object(self, ref: BucketRef, key: str, f) -> None:
        self.client().download_fileobj(ref.bucket, key, f)

    def put_object(self, ref: BucketRef, key: str, path: str) -> None:
        self.client().upload_file(path, ref.bucket, key)

    def delete_bucket(self, ref: BucketRef) -> None:
        from botocore.exceptions import ClientError

        c = self.client()
        keys = [k for k, _, _ in self.list_objects(ref, "")]
        try:
            for i in range(0, len(keys), 1000):
                c.delete_objects(Bucket=ref.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                            "Quiet": True})
            c.delete_bucket(Bucket=ref.bucket)
        except ClientError as exc:
            raise self._error(exc, ref, "deleting the bucket") from None

    def node_env(self, ref: BucketRef, *, forward: bool) -> dict[str, str]:
        endpoint = self.endpoint()
        provider = "Cloudflare" if self.kind == "r2" else ("Other" if endpoint else "AWS")
        env = {"RCLONE_S3_PROVIDER": provider, "RCLONE_S3_ENV_AUTH": "false"}
        if endpoint:
            env["RCLONE_S3_ENDPOINT"] = endpoint
        region = self.session().region_name or "us-east-1"
        if self.kind == "s3":
            env["RCLONE_S3_REGION"] = region
        if forward:
            c = self.session().get_credentials().get_frozen_credentials()
            key, secret, token = c.access_key, c.secret_key, c.token
        elif self.kind == "r2":
            raise StorageError("R2 has no scoped temporary credentials for a MOUNT",
                               "use `mode: COPY` (no credentials leave this machine), or opt in to forwarding your "
                               "R2 keys to the mount process: BROKER_STORAGE_FORWARD_CREDENTIALS=1")
        else:
            from botocore.exceptions import ClientError

            try:
                got = self.client("sts").get_federation_token(
                    Name=f"skybroker-{ref.bucket}"[:32], Policy=json.dumps(bucket_policy(ref.bucket)),
                    DurationSeconds=FEDERATION_SECONDS)["Credentials"]
            except ClientError as exc:
                raise StorageError(f"{ref.uri}: could not make a bucket-scoped token for the nodes "
                                   f"(sts:GetFederationToken: {exc.response.get('Error', {}).get('Code')})",
                                   "it needs long-term IAM user keys; use `mode: COPY` (no credentials leave this "
                                   "machine), or opt in to forwarding your own credentials to the mount process: "
                                   "BROKER_STORAGE_FORWARD_CREDENTIALS=1") from None
            key, secret, token = got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"]
        env.update({"RCLONE_S3_ACCESS_KEY_ID": key, "RCLONE_S3_SECRET_ACCESS_KEY": secret})
        if token:
            env["RCLONE_S3_SESSION_TOKEN"] = token
        return env

    def rclone_path(self, ref: BucketRef) -> str:
        return f":s3:{ref.bucket}" + (f"/{ref.prefix}" if ref.prefix else "")
