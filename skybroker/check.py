"""Which clouds can we use? Credential and SDK detection without network access and without importing SDKs.

A cloud is ready when its credentials are found and its SDK extra is installed (`pip install
'skybroker[aws]'`, ...). Each credential check mirrors the SDK's own chain closely enough to say "present /
missing" and what to do; it never validates a credential against the cloud (that needs the network). SDKs
are looked up with `importlib.util.find_spec`, which finds a module without running it.
"""
from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class CloudCheck:
    cloud: str
    ok: bool  # ready: credentials found and the SDK installed
    detail: str  # what was found, or what is missing
    hint: str | None = None
    credentials: bool | None = None  # None: not looked at yet (set by check_all)
    sdk: bool | None = None
    extra: str | None = None  # the pip extra that installs this cloud's SDK


# cloud -> (extra, SDK name for people, modules the driver imports). Found with find_spec: nothing is run.
SDKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "aws": ("aws", "boto3", ("boto3", "botocore")),
    "gcp": ("gcp", "google-cloud-compute", ("google.cloud.compute_v1", "google.api_core", "google.auth")),
    "azure": ("azure", "the Azure SDK (azure-identity, azure-mgmt-*)",
              ("azure.identity", "azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource")),
}


def sdk_missing(cloud: str) -> list[str]:
    """The SDK modules of `cloud` that cannot be found (empty: installed). Never imports the SDK itself
    (find_spec of a dotted name imports only its parent packages, namespace packages for these SDKs)."""
    missing = []
    for mod in SDKS[cloud][2]:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            missing.append(mod)
    return missing


def install_hint(cloud: str) -> str:
    return f"pip install 'skybroker[{SDKS[cloud][0]}]'"


def _with_sdk(c: CloudCheck) -> CloudCheck:
    extra, sdk_name, _ = SDKS[c.cloud]
    missing = sdk_missing(c.cloud)
    if not missing:
        return replace(c, credentials=c.ok, sdk=True, extra=extra)
    if c.ok:
        return CloudCheck(c.cloud, False, f"{c.detail}, but {sdk_name} is not installed (missing {', '.join(missing)})",
                          install_hint(c.cloud), credentials=True, sdk=False, extra=extra)
    return replace(c, credentials=False, sdk=False, extra=extra,
                   detail=f"{c.detail}; {sdk_name} is not installed either",
                   hint=f"{c.hint}; and {install_hint(c.cloud)}" if c.hint else install_hint(c.cloud))


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


# The fields google-auth needs in each kind of credentials file (it fails on the first call otherwise).
_GCP_FIELDS = {"service_account": ("client_email", "token_uri", "private_key"),
               "authorized_user": ("client_id", "client_secret", "refresh_token")}


def gcp_key_problem(path: Path) -> str | None:
    """What makes a GCP credentials file unusable (not JSON, fields missing, a private key that is no PEM
    key), or None. Cheap and local: the file's contents are never quoted (they are secrets)."""
    import base64
    import binascii

    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return f"is not JSON (line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')})"
    if not isinstance(data, dict):
        return "is not a JSON object"
    missing = [f for f in _GCP_FIELDS.get(data.get("type"), ()) if not data.get(f)]
    if missing:
        return f"is a {data['type']} file without {', '.join(missing)}"
    if data.get("type") == "service_account":
        m = re.search(r"-----BEGIN (?:RSA )?PRIVATE KEY-----(.*?)-----END (?:RSA )?PRIVATE KEY-----",
                      str(data["private_key"]), re.S)  # PKCS#8 (Google's keys) or PKCS#1: both load
        body = m.group(1) if m else ""
        try:
            der = base64.b64decode("".join(body.split()), validate=True) if body.strip() else b""
        except (binascii.Error, ValueError):
            der = b""
        if not der.startswith(b"\x30") or len(der) < 64:  # a PKCS#8 / PKCS#1 key is one DER SEQUENCE
            return "has a private_key that is not a PEM private key"
    return None


def check_gcp() -> CloudCheck:
    creds = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    source = None
    if creds:
        if not Path(creds).is_file():
            return CloudCheck("gcp", False, f"GOOGLE_APPLICATION_CREDENTIALS points to a missing file: {creds}",
                              "fix the path or unset it and run `gcloud auth application-default login`")
        source = f"service account file {creds}"
        problem = gcp_key_problem(Path(creds))
        if problem:
            return CloudCheck("gcp", False, f"the credentials file {creds} (GOOGLE_APPLICATION_CREDENTIALS) {problem}",
                              "download a new JSON key for the service account (IAM > Service accounts > Keys) or "
                              "unset GOOGLE_APPLICATION_CREDENTIALS and run `gcloud auth application-default login`")
    else:
        adc = _gcloud_dir() / "application_default_credentials.json"
        if adc.is_file():
            source = f"application default credentials ({adc})"
            problem = gcp_key_problem(adc)
            if problem:
                return CloudCheck("gcp", False, f"the application default credentials {adc} {problem}",
                                  "run `gcloud auth application-default login` again")
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
    """AWS, GCP and Azure (with their SDK check), then every other provider that keeps credentials of its
    own (its `check()`: Lambda, Kubernetes)."""
    from .clouds import registry

    out = [_with_sdk(fn()) for fn in CHECKS.values()]
    for p in registry.all_providers():
        if p.name not in CHECKS and p.sdk_extra:
            c = p.check()
            missing = registry.missing_sdk(p)
            if c.ok and missing:
                c = CloudCheck(p.name, False, f"{c.detail}, but its SDK is not installed (missing {missing})",
                               f"pip install 'skybroker[{p.sdk_extra}]'", credentials=True, sdk=False,
                               extra=p.sdk_extra)
            out.append(c)
    return out


def enabled_clouds() -> tuple[tuple[str, ...], str | None]:
    """Clouds to plan across (the ready ones), and a note for the plan header when none is ready and we
    fell back to all of them (a plan only, then: launching needs a ready cloud)."""
    from .clouds import registry

    # providers used only when a task names them (local, ssh pools, Kubernetes) are never a default
    checks = [c for c in check_all() if not registry.get(c.cloud, sdk=False).capabilities.named_only]
    ok = tuple(c.cloud for c in checks if c.ok)
    if ok:
        return ok, None
    no_sdk = [c.cloud for c in checks if c.credentials and not c.sdk]
    if no_sdk:
        return tuple(CHECKS), (f"no cloud is ready ({', '.join(no_sdk)}: credentials found but SDK not installed, "
                               f"e.g. `{install_hint(no_sdk[0])}`): planning across all catalog clouds "
                               "(run `broker check`)")
    return tuple(CHECKS), "no cloud credentials found: planning across all catalog clouds (run `broker check`)"
