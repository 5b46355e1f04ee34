"""Which clouds can we use? Credential detection without network access and without importing SDKs.

Each check mirrors the SDK's own credential chain closely enough to say "present / missing" and what to
do; it never validates a credential against the cloud (that needs the network).
"""
from __future__ import annotations

import configparser
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CloudCheck:
    cloud: str
    ok: bool
    detail: str  # what was found, or what is missing
    hint: str | None = None


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def check_aws() -> CloudCheck:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return CloudCheck("aws", True, "access key from environment (AWS_ACCESS_KEY_ID)")
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return CloudCheck("aws", True, "web identity role (AWS_ROLE_ARN)")
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return CloudCheck("aws", True, "container credentials")
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    cred_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or _home() / ".aws" / "credentials")
    conf_file = Path(env.get("AWS_CONFIG_FILE") or _home() / ".aws" / "config")
    for path, section in ((cred_file, profile), (conf_file, "default" if profile == "default" else f"profile {profile}")):
        cp = configparser.ConfigParser()
        try:
            cp.read(path)
        except configparser.Error:
            continue
        if cp.has_section(section):
            keys = set(cp[section])
            if {"aws_access_key_id", "aws_secret_access_key"} <= keys:
                return CloudCheck("aws", True, f"profile {profile!r} in {path}")
            if keys & {"sso_session", "sso_start_url", "role_arn", "credential_process"}:
                return CloudCheck("aws", True, f"profile {profile!r} ({', '.join(sorted(keys & {'sso_session', 'sso_start_url', 'role_arn', 'credential_process'}))}) in {path}")
    return CloudCheck("aws", False, "no credentials found (environment, ~/.aws/credentials, ~/.aws/config)",
                      "run `aws configure` or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def _gcloud_dir() -> Path:
    return Path(os.environ.get("CLOUDSDK_CONFIG") or _home() / ".config" / "gcloud")


def gcp_project() -> str | None:
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        if os.environ.get(var):
            return os.environ[var]
    cfg = _gcloud_dir() / "configurations" / "config_default"
    cp = configparser.ConfigParser()
    try:
        cp.read(cfg)
        if cp.has_option("core", "project"):
            return cp.get("core", "project")
    except configparser.Error:
        pass
    creds = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if creds:
        try:
            return json.loads(Path(creds).read_text()).get("project_id")
        except (OSError, ValueError):
            return None
    return None


def check_gcp() -> CloudCheck:
    creds = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    source = None
    if creds:
        if not Path(creds).is_file():
            return CloudCheck("gcp", False, f"GOOGLE_APPLICATION_CREDENTIALS points to a missing file: {creds}",
                              "fix the path or unset it and run `gcloud auth application-default login`")
        source = f"service account file {creds}"
    else:
        adc = _gcloud_dir() / "application_default_credentials.json"
        if adc.is_file():
            source = f"application default credentials ({adc})"
    if not source:
        return CloudCheck("gcp", False, "no application default credentials",
                          "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS")
    project = gcp_project()
    if not project:
        return CloudCheck("gcp", False, f"{source}, but no project",
                          "set GOOGLE_CLOUD_PROJECT or run `gcloud config set project PROJECT_ID`")
    return CloudCheck("gcp", True, f"{source}, project {project}")


def azure_subscription() -> str | None:
    if os.environ.get("AZURE_SUBSCRIPTION_ID"):
        return os.environ["AZURE_SUBSCRIPTION_ID"]
    profile = Path(os.environ.get("AZURE_CONFIG_DIR") or _home() / ".azure") / "azureProfile.json"
    try:
        data = json.loads(profile.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    for sub in data.get("subscriptions", []):
        if sub.get("isDefault"):
            return sub.get("id")
    return None


def check_azure() -> CloudCheck:
    env = os.environ
    source = None
    if env.get("AZURE_CLIENT_ID") and env.get("AZURE_TENANT_ID") and (
            env.get("AZURE_CLIENT_SECRET") or env.get("AZURE_CLIENT_CERTIFICATE_PATH")
            or env.get("AZURE_FEDERATED_TOKEN_FILE")):
        source = "service principal from environment (AZURE_CLIENT_ID)"
    else:
        d = Path(env.get("AZURE_CONFIG_DIR") or _home() / ".azure")
        if (d / "msal_token_cache.json").is_file() or (d / "msal_token_cache.bin").is_file():
            source = f"Azure CLI login ({d})"
    if not source:
        return CloudCheck("azure", False, "no Azure credentials",
                          "run `az login` or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET")
    sub = azure_subscription()
    if not sub:
        return CloudCheck("azure", False, f"{source}, but no subscription",
                          "set AZURE_SUBSCRIPTION_ID or run `az account set --subscription ID`")
    return CloudCheck("azure", True, f"{source}, subscription {sub}")


CHECKS = {"aws": check_aws, "gcp": check_gcp, "azure": check_azure}


def check_all() -> list[CloudCheck]:
    return [fn() for fn in CHECKS.values()]


def enabled_clouds() -> tuple[tuple[str, ...], str | None]:
    """Clouds to plan across, and a note for the plan header when we fell back to all of them."""
    ok = tuple(c.cloud for c in check_all() if c.ok)
    if ok:
        return ok, None
    return tuple(CHECKS), "no cloud credentials found: planning across all catalog clouds (run `broker check`)"
