"""Which local files are each cloud's credentials (Provider.credential_files), for
`config.<cloud>.remote_identity: LOCAL_CREDENTIALS` (runtime/identity.py). Read here, written onto the
nodes at the same place under the login user's home; contents are never printed or logged.

  aws    ~/.aws/credentials and ~/.aws/config (AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE honoured);
         with neither file, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) written as a
         credentials file
  gcp    the gcloud config directory (~/.config/gcloud, CLOUDSDK_CONFIG honoured) minus its logs; a
         GOOGLE_APPLICATION_CREDENTIALS file becomes the node's application default credentials
  azure  ~/.azure (AZURE_CONFIG_DIR honoured) minus the CLI's logs, telemetry, command index and
         extensions, which can be large and are no credential
"""
from __future__ import annotations

import os
from pathlib import Path

_MAX_BYTES = 16 * 1024 * 1024  # a credentials directory larger than this is not what we think it is
_AZURE_SKIP = {"logs", "telemetry", "commands", "cliextensions", "commandIndex.json", "versionCheck.json",
               "extensionCommandTree.json", "extensionIndex.json", "telemetry.txt"}
_GCP_SKIP = {"logs", "virtenv", ".last_update_check.json", ".last_survey_prompt.yaml", ".last_opt_in_prompt.yaml",
             ".metricsUUID", "surveys"}


def _tree(local: Path, node_dir: str, skip: set[str]) -> list[tuple[str, bytes]]:
    out, total = [], 0
    if not local.is_dir():
        return out
    for root, dirs, names in os.walk(local):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for n in sorted(names):
            p = Path(root) / n
            if n in skip or n.endswith((".lock", ".broker-tmp")) or not p.is_file():
                continue
            data = p.read_bytes()
            total += len(data)
            if total > _MAX_BYTES:
                raise OSError(f"{local} holds more than {_MAX_BYTES >> 20} MiB besides the skipped caches")
            out.append((f"{node_dir}/{p.relative_to(local).as_posix()}", data))
    return out


def _file(path: Path, node_path: str) -> list[tuple[str, bytes]]:
    return [(node_path, path.read_bytes())] if path.is_file() else []


def aws() -> list[tuple[str, bytes]]:
    creds = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    cfg = Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()
    out = _file(creds, "~/.aws/credentials") + _file(cfg, "~/.aws/config")
    if not any(p == "~/.aws/credentials" for p, _ in out):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            lines = ["[default]", f"aws_access_key_id = {key}", f"aws_secret_access_key = {secret}"]
            if os.environ.get("AWS_SESSION_TOKEN"):
                lines.append(f"aws_session_token = {os.environ['AWS_SESSION_TOKEN']}")
            out.insert(0, ("~/.aws/credentials", ("\n".join(lines) + "\n").encode()))
    return out


def gcp() -> list[tuple[str, bytes]]:
    conf = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud").expanduser()
    out = _tree(conf, "~/.config/gcloud", _GCP_SKIP)
    adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc and Path(adc).expanduser().is_file():
        node = "~/.config/gcloud/application_default_credentials.json"
        out = [(p, d) for p, d in out if p != node] + _file(Path(adc).expanduser(), node)
    return out


def azure() -> list[tuple[str, bytes]]:
    conf = Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure").expanduser()
    return _tree(conf, "~/.azure", _AZURE_SKIP)


HINTS = {
    "aws": "run `aws configure` (it writes ~/.aws/credentials) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "gcp": "run `gcloud auth application-default login` (it fills ~/.config/gcloud)",
    "azure": "run `az login` (it fills ~/.azure)",
}
