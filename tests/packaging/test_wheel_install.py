"""`pip install skybroker` from a built wheel, as a new user would: no source tree, no ../shared.

The sdist and the wheel are built from the committed files (copied to a temporary folder, so the checkout
is left untouched) with `python -m build` (the wheel is built from the unpacked sdist, so both are
tested), then the wheel with only the `aws` extra goes into a fresh virtualenv (no system site-packages:
the wheel's declared dependencies are all it gets). Every command runs from an unrelated directory with a
clean environment (no PYTHONPATH).

Offline: when this machine's pip is configured with local package indexes (file:// URLs), the install uses
only those; otherwise pip's own configuration (a registry) is used.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.infra.gcp_keys import write_service_account

pytestmark = pytest.mark.slow

TINY = "name: tiny\nresources:\n  infra: local\nrun: |\n  echo hello-from-the-wheel $SKYPILOT_NODE_RANK\n"
V100 = "name: v100\nresources:\n  accelerators: V100:1\nrun: nvidia-smi\n"
AWS_TINY = ("name: awsw\nresources:\n  infra: aws/us-east-1\n  instance_type: m5.large\n  image_id: ami-12345678\n"
            "run: echo never\n")


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore")
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    urls = [u for m in re.findall(r"index-url='([^']*)'", out) for u in m.split()]
    local = [u for u in urls if u.startswith("file:")]
    if local and not os.environ.get("BROKER_TEST_PIP_ONLINE"):
        env["PIP_INDEX_URL"] = local[0]
        env["PIP_EXTRA_INDEX_URL"] = " ".join(local[1:])
    return env


def _sources(dest: Path) -> Path:
    """The files git tracks (plus new, not ignored ones), copied to `dest`."""
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, text=True)
    if r.returncode != 0:  # not a git checkout: copy the tree without build leftovers
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info",
                                                                  "__pycache__", ".venv", ".bench"))
        return dest
    for rel in filter(None, r.stdout.split("\0")):
        src = REPO / rel
        if src.is_symlink():  # skybroker/examples -> ../examples: a link in git, real files in sdist and wheel
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = _sources(base / "src")
    dist = base / "dist"
    env = _pip_env()
    try:
        import build  # noqa: F401

        # --no-isolation: the test extra installs the build backend (setuptools>=77), so no two throwaway
        # build environments; `build` still checks build-system.requires against what is installed.
        cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)]
    except ImportError:  # `build` comes with the test extra; without it, pip builds the wheel directly
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheel = next(dist.glob("skybroker-*.whl"))
    v = base / "venv"
    # no pip inside the venv (seeding it costs seconds): this interpreter's pip installs into it (--python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True, timeout=300)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin" / "python"), "install", "-q",
                        f"{wheel}[aws]"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return v


def broker(venv: Path, *args, cwd: Path, env: dict | None = None, timeout: float = 120):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    e.update(env or {})
    return subprocess.run([str(venv / "bin" / "broker"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=e)


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    d = tmp_path / "unrelated"
    d.mkdir()
    return d


def test_installed_package_is_self_contained(venv, elsewhere):
    code = ("import json, skybroker, skybroker.catalog as c, skybroker.runtime.agent as a, importlib.util as u;"
            "print(json.dumps([skybroker.__file__, str(c.catalog_dir()), a.__file__,"
            " [m for m in ('numpy', 'google.cloud', 'azure.mgmt') if u.find_spec(m.split('.')[0]) is not None]]))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=elsewhere, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    pkg, cat_dir, agent, extras = json.loads(r.stdout)
    site = str(venv)
    assert pkg.startswith(site) and cat_dir.startswith(site) and agent.startswith(site), (pkg, cat_dir, agent)
    assert not str(REPO) in pkg + cat_dir + agent
    assert (Path(cat_dir) / "aws.index.tsv").is_file() and (Path(cat_dir) / "README.md").is_file()
    assert extras == [], f"only the aws extra was asked for, yet found {extras}"


def test_help_dryrun_show_gpus_from_anywhere(venv, elsewhere):
    r = broker(venv, "--help", cwd=elsewhere)
    assert r.returncode == 0 and "launch" in r.stdout and "show-gpus" in r.stdout, r.stderr
    (elsewhere / "v100.yaml").write_text(V100)
    r = broker(venv, "launch", "--dryrun", "v100.yaml", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "n1-highmem-8 + V100:1" in r.stdout and "cannot read" not in r.stderr
    r = broker(venv, "launch", "--dryrun", "--json", "v100.yaml", cwd=elsewhere)
    assert json.loads(r.stdout)["chosen"]["hourly_price_per_node"] == pytest.approx(2.95321)
    r = broker(venv, "show-gpus", "V100", cwd=elsewhere)
    assert r.returncode == 0 and "V100" in r.stdout and "p3.2xlarge" in r.stdout, r.stderr
    r = broker(venv, "catalog", "info", "--json", cwd=elsewhere)
    assert r.returncode == 0 and json.loads(r.stdout)["dir"].startswith(str(venv)), r.stdout + r.stderr


def test_local_launch_from_the_wheel(venv, elsewhere):
    if shutil.which("rsync") is None:
        pytest.skip("rsync is needed by the local cloud's sync")
    (elsewhere / "tiny.yaml").write_text(TINY)
    r = broker(venv, "launch", "-y", "-c", "wheel-tiny", "--infra", "local", "tiny.yaml", cwd=elsewhere)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "(node-0) hello-from-the-wheel 0" in r.stdout, r.stdout
        assert "Traceback" not in r.stderr
    finally:
        d = broker(venv, "down", "-y", "wheel-tiny", cwd=elsewhere)
        assert d.returncode == 0, d.stderr


def test_simulate_without_numpy_names_the_extra(venv, elsewhere):
    r = broker(venv, "simulate", "--trace", "x.json", cwd=elsewhere)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pip install 'skybroker[simulate]'" in r.stderr and "Traceback" not in r.stderr


def test_aws_extra_alone_plans_and_launches_on_aws(venv, elsewhere):
    """Only boto3 is installed: check says aws is ready and gcp/azure miss their SDK; the plan uses aws;
    a launch provisions through boto3 against a moto server (its instances have no sshd, so the launch
    stops at the SSH wait and terminates what it created)."""
    pytest.importorskip("moto")
    from tests.infra.moto_server import MotoServer

    with MotoServer() as srv:
        env = {**srv.env(), "BROKER_WAIT_READY": "3", "AWS_EC2_METADATA_DISABLED": "true",
               "GOOGLE_APPLICATION_CREDENTIALS": str(elsewhere / "sa.json"), "GOOGLE_CLOUD_PROJECT": "p"}
        write_service_account(elsewhere / "sa.json")
        r = broker(venv, "check", "--json", cwd=elsewhere, env=env)
        checks = {c["cloud"]: c for c in json.loads(r.stdout)}
        assert checks["aws"]["ok"] and checks["aws"]["sdk"], checks
        assert checks["gcp"]["credentials"] and not checks["gcp"]["sdk"] and not checks["gcp"]["ok"], checks
        assert checks["gcp"]["hint"] == "pip install 'skybroker[gcp]'"
        (elsewhere / "v100.yaml").write_text(V100)
        plan = json.loads(broker(venv, "launch", "--dryrun", "--json", "v100.yaml", cwd=elsewhere, env=env).stdout)
        assert plan["clouds_considered"] == ["aws"] and plan["chosen"]["cloud"] == "aws"

        (elsewhere / "aws.yaml").write_text(AWS_TINY)
        r = broker(venv, "launch", "-y", "-c", "wheel-aws", "aws.yaml", cwd=elsewhere, env=env, timeout=180)
        assert r.returncode != 0, r.stdout + r.stderr  # no sshd behind a moto instance
        assert "provisioning 1× m5.large on aws/us-east-1" in r.stderr, r.stderr
        assert "accept commands" in r.stderr and "Traceback" not in r.stderr, r.stderr
        actions = [c["action"] for c in srv.calls()]
        assert "RunInstances" in actions and "TerminateInstances" in actions, actions
        live = [i for res in srv.ec2().describe_instances()["Reservations"] for i in res["Instances"]
                if i["State"]["Name"] not in ("terminated", "shutting-down")]
        assert live == [], live


def test_sdist_and_wheel_hold_the_license_the_examples_and_no_tests(venv):
    """Apache-2.0 asks that the license text goes with every copy; the examples ship for `broker examples`;
    the version is skybroker.__version__'s (one place); tests and benchmarks stay in the checkout."""
    import tarfile
    import zipfile

    from skybroker import __version__

    dist = venv.parent / "dist"
    wheel = next(dist.glob("skybroker-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"skybroker-{__version__}.dist-info/METADATA").decode()
    assert wheel.name == f"skybroker-{__version__}-py3-none-any.whl"
    assert f"skybroker-{__version__}.dist-info/licenses/LICENSE" in names, names[-12:]
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta, meta[:1500]
    assert f"\nVersion: {__version__}\n" in meta
    examples = sorted(n.split("skybroker/examples/", 1)[1] for n in names if n.startswith("skybroker/examples/"))
    assert examples == sorted(str(p.relative_to(REPO / "examples")) for p in (REPO / "examples").rglob("*")
                              if p.is_file() and "__pycache__" not in p.parts), examples
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]

    sdist = next(dist.glob("skybroker-*.tar.gz"))
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1]: m for m in t.getmembers() if "/" in m.name}
    assert "LICENSE" in members and members["skybroker/examples/hello.yaml"].isfile()
    assert not [n for n in members if n.startswith(("tests/", "bench/"))]


def test_the_readme_install_steps_from_an_unrelated_directory(venv, elsewhere):
    """README, Install: `pip install skybroker`, then `broker examples` and `broker launch -y
    examples/hello.yaml` (a pip install has no examples/ folder of its own)."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync is needed by the local cloud's sync")
    r = broker(venv, "launch", "-y", "examples/hello.yaml", cwd=elsewhere)
    assert r.returncode == 2 and "`broker examples` copies them into ./examples" in r.stderr, r.stderr
    r = broker(venv, "examples", cwd=elsewhere)
    assert r.returncode == 0 and (elsewhere / "examples" / "hello_workdir" / "count.py").is_file(), r.stderr
    r = broker(venv, "launch", "-y", "-c", "wheel-hello", "examples/hello.yaml", cwd=elsewhere)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "(node-1) node 1: done" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    finally:
        d = broker(venv, "down", "-y", "wheel-hello", cwd=elsewhere)
        assert d.returncode == 0, d.stderr
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "skybroker", "--version"], cwd=elsewhere,
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0 and r.stdout.startswith("broker, version "), r.stdout + r.stderr
