"""Object-store emulators for the bucket tests, each a real server in a subprocess on 127.0.0.1:

- S3 (and R2, which speaks S3): moto's server (tests/infra/moto_server.py), with STS for federation
  tokens. Reproduces S3's REST API and error codes (NoSuchBucket, BucketAlreadyOwnedByYou, tagging,
  list_objects_v2 pagination); it does not check signatures or enforce IAM/session policies.
- GCS: `gcp-storage-emulator` (PyPI), in memory, reached through the SDK's own STORAGE_EMULATOR_HOST.
  Reproduces the JSON API's bucket/object calls, labels, pagination and 404/409 errors; anonymous (no
  auth, so no downscoped tokens).
- Azure Blob: Azurite (npm `azurite`, its `azurite-blob` binary), in memory, reached with a connection
  string carrying Azurite's published development account key (documented by Microsoft for emulators;
  not a secret). Reproduces the Blob REST API, container metadata, SAS validation (signature, expiry,
  permissions) and error codes.

`free_port()` + `wait_port()`; each class has start()/stop()/env() and is used as a session fixture.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g}s")


class _Proc:
    what = "emulator"

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # in memory: nothing to flush (gcp-storage-emulator may ignore SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class GcsEmulator(_Proc):
    what = "gcp-storage-emulator"

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("gcp-storage-emulator") else "gcp-storage-emulator is not installed (pip)"

    def start(self) -> GcsEmulator:
        self.port = free_port()
        self.proc = subprocess.Popen(["gcp-storage-emulator", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--in-memory"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, self.what)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": "test-project"}



class Azurite(_Proc):
    what = "azurite-blob"

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("azurite-blob") else "azurite-blob is not installed (npm install -g azurite)"

    def start(self) -> Azurite:
        self.port = free_port()
        self.proc = subprocess.Popen(["azurite-blob", "--inMemoryPersistence", "--blobHost", "127.0.0.1",
                                      "--blobPort", str(self.port), "--skipApiVersionCheck", "--silent"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     cwd=os.environ.get("TMPDIR", "/tmp"))
        wait_port(self.port, self.proc, self.what)
        return self

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}
