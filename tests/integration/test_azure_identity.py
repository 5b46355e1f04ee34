"""`config.azure.remote_identity` end to end against tests/infra/arm_fake.py: LOCAL_CREDENTIALS copies
~/.azure onto real sshd nodes (root only), SERVICE_ACCOUNT / a user-assigned identity reach the VMs
the fake reports, and what is refused is refused before anything exists in the fake."""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("azure.mgmt.network")
pytest.importorskip("azure.mgmt.resource")
pytest.importorskip("cryptography")

from skybroker.errors import InvalidRequestError, Scope, SpecError
from tests.infra.arm_fake import TENANT, ArmFake
from tests.integration.azure_fixtures import arm, fake  # noqa: F401 - fixtures
from tests.integration.identity_helpers import (SECRET, assert_no_leak, expected_report, files_holding,
                                                report_command)
from tests.integration.local_helpers import broker

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests broker@test"
UAI = ("/subscriptions/00000000-0000-0000-0000-00000000feed/resourceGroups/ids/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/trainer")
_names = itertools.count()


def _name() -> str:
    return f"azid{next(_names)}"


def _task(identity, **extra):
    from skybroker import spec

    return spec.task_from_dict({"name": "t", "resources": {"cloud": "azure", "cpus": "2+"}, "run": "true",
                                "config": {"azure": {"remote_identity": identity}}, **extra}, source="<test>")


def _provision(cluster, task):
    """Through the provisioner, as a launch does (the task's options reach the driver's request)."""
    from skybroker import api, provision

    return provision.provision(cluster, lambda blocks: api.plan(task, blocks, clouds=("azure",)), public_key=KEY)


def _vm_identities(cluster, region):
    """Each VM's identity as the SDK reads it back from the fake (GET, deserialized)."""
    from skybroker.clouds.azure import client

    vms = client.clients(client.subscription()).compute.virtual_machines.list(f"skybroker-{cluster}")
    return {vm.name: vm.identity for vm in vms}


def test_service_account_gives_each_vm_a_system_assigned_identity(arm):
    from skybroker.clouds.registry import get

    c = _name()
    cand, infos, _ = _provision(c, _task("SERVICE_ACCOUNT", num_nodes=2))
    assert len(infos) == 2
    put = [b for m, p, _, b in arm.requests("PUT", f"/skybroker-{c}/providers/Microsoft.Compute/virtualMachines/")]
    assert [b["identity"] for b in put] == [{"type": "SystemAssigned"}] * 2  # what the driver sent
    got = _vm_identities(c, cand.region)
    assert sorted(got) == [f"{c}-0", f"{c}-1"]
    for ident in got.values():
        assert ident.type == "SystemAssigned" and ident.tenant_id == TENANT
        assert ident.principal_id and not ident.user_assigned_identities
    assert len({i.principal_id for i in got.values()}) == 2  # one identity per VM
    get("azure").terminate(c, cand.region)
    assert f"skybroker-{c}" not in arm.groups


def test_user_assigned_identity_is_attached_to_each_vm(arm):
    from skybroker.clouds.registry import get

    c = _name()
    cand, infos, _ = _provision(c, _task(UAI, num_nodes=2))
    got = _vm_identities(c, cand.region)
    assert len(got) == 2
    for ident in got.values():
        assert ident.type == "UserAssigned" and ident.principal_id is None
        assert list(ident.user_assigned_identities) == [UAI]
        assert ident.user_assigned_identities[UAI].client_id
    get("azure").terminate(c, cand.region)


def test_no_identity_option_sends_none(arm):
    from skybroker.clouds.registry import get

    c = _name()
    cand, _, _ = _provision(c, _task("NO_UPLOAD"))
    put = [b for m, p, _, b in arm.requests("PUT", f"/skybroker-{c}/providers/Microsoft.Compute/virtualMachines/")]
    assert put and all("identity" not in b for b in put)
    assert list(_vm_identities(c, cand.region).values()) == [None]
    get("azure").terminate(c, cand.region)


def test_malformed_identity_id_is_arms_400_typed_and_rolled_back(arm, monkeypatch):
    """The spec refuses a malformed id (below); the driver given one anyway gets ARM's 400, which is a
    request-scoped InvalidRequestError naming the field, and the provisioner rolls the attempt back."""
    from skybroker.clouds.azure import AzureCloud
    from skybroker.clouds.base import ProvisionRequest
    from skybroker.provision import ProvisionExhausted

    bad = "/subscriptions/x/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer"  # no group
    c = _name()
    req = ProvisionRequest(cluster=c, region="eastus", zone=None, num_nodes=1, public_key=KEY,
                           instance_type="Standard_B2s", options=(("azure.remote_identity", bad),))
    with pytest.raises(InvalidRequestError) as ei:
        AzureCloud().provision(req)
    assert ei.value.scope == Scope.REQUEST and ei.value.code == "LinkedInvalidPropertyId"
    assert "identity.userAssignedIdentities" in ei.value.message and bad in ei.value.message
    assert arm.find("virtualMachines", f"skybroker-{c}") == []  # the PUT was refused synchronously
    AzureCloud().terminate(c, "eastus")

    from skybroker import task_config

    monkeypatch.setattr(task_config, "_AZURE_UAI", re.compile(".*"))  # as if it had got past the spec
    c2 = _name()
    with pytest.raises(ProvisionExhausted) as pe:
        _provision(c2, _task(bad))
    assert [(a.error, a.code, a.scope) for a in pe.value.attempts] == [
        ("InvalidRequestError", "LinkedInvalidPropertyId", "request")]
    assert f"skybroker-{c2}" not in arm.groups  # rolled back


def _cli_task(tmp_path, identity, run="true") -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "resources": {"cloud": "azure", "cpus": "2+"}, "run": run,
                                    "config": {"azure": {"remote_identity": identity}}}))
    return path


def _nothing_created(arm, cluster: str, before: int) -> None:
    assert f"skybroker-{cluster}" not in arm.groups and arm.find("", f"skybroker-{cluster}") == []
    assert [r for r in arm.requests()[before:] if r[0] in ("PUT", "POST", "DELETE")] == []


def test_cli_refuses_a_malformed_identity_id_naming_the_field(arm, tmp_path):
    before, c = len(arm.requests()), _name()
    r = broker("launch", "-y", "-c", c, _cli_task(tmp_path, "/subscriptions/x/resourceGroups/g/trainer"),
               cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "config.azure.remote_identity" in r.stderr and "userAssignedIdentities/NAME" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    _nothing_created(arm, c, before)


def test_missing_local_credentials_exit_2_before_anything_is_created(arm, tmp_path):
    assert not (Path(os.environ["HOME"]) / ".azure").exists()
    before, c = len(arm.requests()), _name()
    r = broker("launch", "-y", "-c", c, _cli_task(tmp_path, "LOCAL_CREDENTIALS"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "config.azure.remote_identity" in r.stderr and "az login" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    _nothing_created(arm, c, before)
    # the same through the API, without the CLI's preflight: refused once the place is chosen, before
    # the provisioner creates anything there
    from skybroker import api, state
    from skybroker.lifecycle import BringUpError

    task = _task("LOCAL_CREDENTIALS")
    c = _name()
    before = len(arm.requests())
    with pytest.raises(BringUpError) as ei:
        api.launch(task, cluster=c, plan=api.plan(task, [], clouds=("azure",)))
    assert ei.value.exit_code == 2 and isinstance(ei.value.cause, SpecError)
    assert ei.value.cause.field == "config.azure.remote_identity" and ei.value.torn_down
    _nothing_created(arm, c, before)
    assert state.get_cluster(c) is None


# ------------------------------------------------------------------ LOCAL_CREDENTIALS on real sshd nodes
AZ_FILES = ["azureProfile.json", "msal_token_cache.json", "service_principal_entries.json", "sub/clouds.config"]
AZ_SKIPPED = ["logs/az.log", "telemetry/t.json", "commandIndex.json", "cliextensions/ext/x.py", "az.lock"]


def _fake_azure_dir(home: Path) -> Path:
    az = home / ".azure"
    for i, rel in enumerate(AZ_FILES + AZ_SKIPPED):
        (az / rel).parent.mkdir(parents=True, exist_ok=True)
        (az / rel).write_text(f'{{"n": {i}, "token": "{SECRET}", "file": "{rel}"}}\n')
    os.chmod(az / AZ_FILES[0], 0o644)  # the copy is 0600 whatever the local mode
    return az


@pytest.mark.slow
def test_local_credentials_copied_onto_real_azure_nodes(arm, monkeypatch, node_pool):
    """2 VMs backed by sshd nodes: each gets ~/.azure's credential files byte for byte, mode 0600, and
    none of the CLI's logs/caches; the secret shows nowhere but in those files."""
    from skybroker import api, paths, spec

    local = _fake_azure_dir(Path(os.environ["HOME"]))
    assert len(files_holding(local, SECRET)) == len(AZ_FILES + AZ_SKIPPED)  # the scan sees the secret
    fake = ArmFake(nodes=node_pool)
    try:
        monkeypatch.setenv("BROKER_AZURE_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("BROKER_AZURE_CA_BUNDLE", str(fake.ca_path))
        present = [f".azure/{p}" for p in AZ_FILES]
        absent = [f".azure/{p}" for p in AZ_SKIPPED] + [".azure/logs", ".azure/telemetry", ".azure/cliextensions"]
        task = spec.task_from_dict({"name": "idz", "num_nodes": 2, "resources": {"cloud": "azure", "cpus": "2+"},
                                    "config": {"azure": {"remote_identity": "LOCAL_CREDENTIALS"}},
                                    "run": report_command(present, absent, [".azure", ".azure/sub"])},
                                   source="<test>")
        lines, events = [], []
        res = api.launch(task, cluster="azidn", plan=api.plan(task, [], clouds=("azure",)),
                         on_line=lambda rank, line: lines.append((rank, line)),
                         on_event=lambda k, m: events.append((k, m)))
        assert res.status.status == "SUCCEEDED", lines
        want = expected_report(local, ".azure", present, absent, [".azure", ".azure/sub"])
        for rank in (0, 1):
            assert [l for r, l in lines if r == rank] == want
        assert ("sync", "copying 4 azure credential file(s) onto every node "
                        "(config.azure.remote_identity: LOCAL_CREDENTIALS)") in events
        assert len(fake.node_of) == 2
        assert_no_leak(lines, events + api.events("azidn", limit=500), paths.broker_home())
        assert not [r for r in fake.requests() if SECRET in str(r[3])]  # nor in any ARM request body
        api.down(["azidn"])
        assert fake.groups == {} and fake.node_of == {}
        assert_no_leak([], api.events("azidn", limit=500), paths.broker_home())
    finally:
        fake.close()
