"""config.<cloud>.remote_identity: which files are credentials, the missing-files refusal, Azure identities."""
from __future__ import annotations

import pytest

from skybroker import spec
from skybroker.clouds import credfiles, registry
from skybroker.errors import SpecError
from skybroker.runtime import identity


def _task(value, cloud="azure"):
    return spec.task_from_dict({"run": "true", "config": {cloud: {"remote_identity": value}}}, source="<t>")


def test_azure_files_skip_logs_and_caches(tmp_path, monkeypatch):
    az = tmp_path / "home" / ".azure"
    (az / "logs").mkdir(parents=True)
    (az / "logs" / "big.log").write_text("x" * 1000)
    (az / "commandIndex.json").write_text("{}")
    (az / "azureProfile.json").write_text('{"s": 1}')
    (az / "msal_token_cache.json").write_text("TOKEN-SECRET")
    got = dict(credfiles.azure())
    assert got == {"~/.azure/azureProfile.json": b'{"s": 1}', "~/.azure/msal_token_cache.json": b"TOKEN-SECRET"}


def test_aws_env_credentials_become_a_file(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    (path, data), = credfiles.aws()
    assert path == "~/.aws/credentials" and b"aws_secret_access_key = s3cr3t" in data


def test_local_credentials_warns_and_missing_files_exit_2():
    t = _task("LOCAL_CREDENTIALS")
    assert any("copies your azure credentials" in w for w in t.warnings)
    assert identity.wanted(t, "azure") and not identity.wanted(t, "gcp")
    with pytest.raises(SpecError) as ei:
        identity.preflight(t, "azure")
    assert ei.value.field == "config.azure.remote_identity" and "az login" in (ei.value.hint or "")
    assert ei.value.exit_code == 2
    identity.preflight(t, "gcp")  # another cloud's key does not apply


def test_local_credentials_found_are_returned(tmp_path):
    az = tmp_path / "home" / ".azure"
    az.mkdir(parents=True)
    (az / "azureProfile.json").write_text("{}")
    assert identity.files(_task("LOCAL_CREDENTIALS"), registry.get("azure", sdk=False)) == [
        ("~/.azure/azureProfile.json", b"{}")]


def test_azure_vm_identity_from_option():
    cm = pytest.importorskip("azure.mgmt.compute.models")
    from skybroker.clouds.azure.driver import _identity

    class Req:
        def __init__(self, v):
            self.options = (("azure.remote_identity", v),) if v else ()

    assert _identity(cm, Req(None)) == {} and _identity(cm, Req("LOCAL_CREDENTIALS")) == {}
    assert _identity(cm, Req("SERVICE_ACCOUNT"))["identity"].type == "SystemAssigned"
    uai = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/me"
    t = _task(uai)
    assert dict(t.groups[0][0].options)["azure.remote_identity"] == uai
    ident = _identity(cm, Req(uai))["identity"]
    assert ident.type == "UserAssigned" and list(ident.user_assigned_identities) == [uai]


def test_credential_dirs_are_the_files_directories_from_their_root_down():
    from skybroker.runtime.identity import credential_dirs

    assert credential_dirs(["~/.aws/credentials", "~/.aws/config"]) == ["~/.aws"]
    assert credential_dirs(["~/.azure/a.json", "~/.azure/sub/deep/c"]) == ["~/.azure", "~/.azure/sub",
                                                                        "~/.azure/sub/deep"]
    assert credential_dirs(["~/.config/gcloud/application_default_credentials.json"]) == ["~/.config/gcloud"]
    assert credential_dirs(["~/top-level-file"]) == []  # never the home directory itself
    assert credential_dirs([]) == []
