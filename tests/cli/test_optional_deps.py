"""Optional dependencies: a cloud whose SDK extra is missing is not ready (and not planned on), found
without importing the SDK; `broker simulate` without numpy names the extra. (The wheel test in
tests/packaging checks both on a real install with only the aws extra.)"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

from skybroker import check
from tests.conftest import REPO


def _without(monkeypatch, *missing: str):
    real = importlib.util.find_spec

    def find_spec(name, *a, **kw):
        if name.split(".")[0] in missing or name in missing:
            return None
        return real(name, *a, **kw)

    monkeypatch.setattr(check.importlib.util, "find_spec", find_spec)


def test_credentials_without_sdk_is_not_ready(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    _without(monkeypatch, "boto3")
    aws = {c.cloud: c for c in check.check_all()}["aws"]
    assert not aws.ok and aws.credentials and not aws.sdk
    assert aws.hint == "pip install 'skybroker[aws]'" and "boto3 is not installed" in aws.detail
    clouds, note = check.enabled_clouds()
    assert "SDK not installed" in note and "skybroker[aws]" in note  # nothing ready: plan only, says why


def test_planning_uses_only_ready_clouds(monkeypatch, tmp_path):
    from tests.infra.gcp_keys import write_service_account

    sa = write_service_account(tmp_path / "sa.json")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa))
    _without(monkeypatch, "google.cloud.compute_v1")
    assert check.enabled_clouds() == (("aws",), None)
    gcp = {c.cloud: c for c in check.check_all()}["gcp"]
    assert gcp.credentials and not gcp.sdk and gcp.hint == "pip install 'skybroker[gcp]'"


def test_check_imports_no_sdk():
    code = ("import sys; from skybroker.check import check_all; check_all();"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore') "
            "or m.startswith(('google.cloud.compute', 'google.api_core', 'google.auth', 'azure.identity', "
            "'azure.mgmt.compute'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_simulate_without_numpy_names_the_extra():
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'numpy':\n"
            "            raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from skybroker.cli import main\n"
            "main(['simulate', '--trace', 'x.json'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1, r.stderr
    assert "`broker simulate` needs numpy" in r.stderr and "pip install 'skybroker[simulate]'" in r.stderr
    assert "Traceback" not in r.stderr
