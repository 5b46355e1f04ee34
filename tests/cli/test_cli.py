"""The CLI as a real subprocess: plans, JSON, errors without tracebacks, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, broker_cmd
from tests.infra.gcp_keys import write_service_account


def run(*args, cwd=REPO, stdin=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(broker_cmd() + list(args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=stdin if stdin is not None else subprocess.DEVNULL, env=e)


def test_help_lists_commands_and_imports_no_sdk():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("launch", "status", "down", "show-gpus", "check", "simulate"):
        assert cmd in r.stdout
    code = ("import sys; from skybroker.cli import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('boto3','botocore','google','azure','paramiko','numpy','rich')]\n"
            "print('MODS=' + ','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "MODS=\n" in out.stdout, out.stdout


def test_dryrun_plan_table():
    r = run("launch", "--dryrun", "examples/v100.yaml")
    assert r.returncode == 0, r.stderr
    assert "minimizing cost" in r.stdout
    assert "n1-highmem-8 + V100:1" in r.stdout and "gcp/us-central1/us-central1-a" in r.stdout
    assert "Considered resources" in r.stdout
    for cloud in ("aws (", "azure (", "gcp ("):
        assert cloud in r.stdout


def test_dryrun_json_stable_keys():
    r = run("launch", "--dryrun", "--json", "examples/a100x8.yaml", "--num-nodes", "2")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["num_nodes"] == 2 and plan["target"] == "cost"
    ch = plan["chosen"]
    assert set(ch) >= {"cloud", "region", "zone", "instance_type", "use_spot", "accelerators",
                       "hourly_price_per_node", "hourly_price_total"}
    assert ch["accelerators"] == {"A100": 8}
    assert ch["hourly_price_total"] == pytest.approx(2 * ch["hourly_price_per_node"])
    assert ch["hourly_price_per_node"] == pytest.approx(19.4217)
    assert plan["alternatives"][0]["chosen"] is True
    assert {a["cloud"] for a in plan["alternatives"]} == {"aws", "gcp", "azure"}
    assert "no cloud credentials" in plan["note"]


def test_overrides_from_flags():
    r = run("launch", "--dryrun", "--json", "examples/v100.yaml", "--cloud", "aws", "--use-spot",
            "--region", "us-east-1")
    ch = json.loads(r.stdout)["chosen"]
    assert (ch["cloud"], ch["region"], ch["use_spot"]) == ("aws", "us-east-1", True)
    r = run("launch", "--dryrun", "--json", "examples/cpu_spot.yaml", "--infra", "gcp", "--cpus", "8+")
    ch = json.loads(r.stdout)["chosen"]
    assert ch["cloud"] == "gcp" and ch["vcpus"] >= 8


def test_credentials_decide_clouds(tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    r = run("launch", "--dryrun", "--json", "examples/v100.yaml", env=env)
    plan = json.loads(r.stdout)
    assert plan["clouds_considered"] == ["aws"] and plan["note"] is None
    assert plan["chosen"]["cloud"] == "aws"


@pytest.mark.parametrize("content, needle", [
    ("resources:\n  acelerators: V100\nrun: x\n", "did you mean 'accelerators'"),
    ("resources:\n  accelerators: A100:x\nrun: x\n", "NAME[:COUNT]"),
    ("run: [unclosed\n", "malformed YAML"),
    ("", "is empty"),
])
def test_bad_task_exit_2_no_traceback(tmp_path, content, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    r = run("launch", "--dryrun", str(p))
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and str(p) in r.stderr


def test_missing_dir_and_binary_files(tmp_path):
    for target, needle in ((tmp_path / "nope.yaml", "file not found"), (tmp_path, "is a directory")):
        r = run("launch", "--dryrun", str(target))
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    garbage = tmp_path / "g.yaml"
    garbage.write_bytes(os.urandom(256) + b"\x00")
    r = run("launch", "--dryrun", str(garbage))
    assert r.returncode == 2 and "binary" in r.stderr


def test_debug_shows_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("nmae: x\n")
    r = run("--debug", "launch", "--dryrun", str(p))
    assert r.returncode == 2 and "Traceback" in r.stderr and "did you mean 'name'" in r.stderr


def test_infeasible_exit_3_with_suggestion():
    r = run("launch", "--dryrun", "examples/v100.yaml", "--gpus", "A100:32")
    assert r.returncode == 3
    assert "largest A100 offer is 16 per node" in r.stderr and "Traceback" not in r.stderr


def test_bad_flag_values():
    r = run("launch", "--dryrun", "examples/v100.yaml", "--env", "1X=2")
    assert r.returncode == 2 and "not a valid variable name" in r.stderr
    r = run("launch", "--dryrun", "examples/v100.yaml", "--cloud", "runpod")
    assert r.returncode == 2 and "not supported" in r.stderr
    r = run("lanch")
    assert r.returncode == 2 and "did you mean 'launch'" in r.stderr


def test_show_gpus_and_check():
    r = run("show-gpus", "V100", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    v1 = {row["cloud"]: row for row in rows if row["count"] == 1}
    assert v1["aws"]["price"] == pytest.approx(3.06) and v1["gcp"]["price"] == pytest.approx(2.95321)
    assert v1["aws"]["spot_price"] == pytest.approx(0.3548)
    r = run("show-gpus", "A1OO")
    assert r.returncode == 3 and "did you mean" in r.stderr  # as `launch --gpus A1OO`
    r = run("check")
    assert r.returncode == 0 and "aws" in r.stdout and "hint" in r.stdout
    r = run("check", "--json", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    checks = {c["cloud"]: c for c in json.loads(r.stdout)}
    assert checks["aws"]["ok"] and not checks["gcp"]["ok"] and checks["gcp"]["hint"]


def test_gcp_and_azure_credentials_detected(tmp_path):
    sa = write_service_account(tmp_path / "sa.json", "proj-1")
    r = run("check", "--json", env={"GOOGLE_APPLICATION_CREDENTIALS": str(sa),
                                    "AZURE_CLIENT_ID": "a", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s",
                                    "AZURE_SUBSCRIPTION_ID": "sub"})
    checks = {c["cloud"]: c for c in json.loads(r.stdout)}
    assert checks["gcp"]["ok"] and "proj-1" in checks["gcp"]["detail"]
    assert checks["azure"]["ok"] and "sub" in checks["azure"]["detail"]


@pytest.mark.parametrize("content,problem", [
    ("{not json", "is not JSON (line 1, column 2)"),
    (json.dumps({"type": "service_account", "project_id": "p", "private_key": "k"}),
     "is a service_account file without client_email, token_uri"),
    (json.dumps({"type": "service_account", "project_id": "p", "client_email": "a@p", "token_uri": "https://t",
                 "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----\n"}),
     "has a private_key that is not a PEM private key"),
    (json.dumps({"type": "authorized_user", "client_id": "1"}), "is a authorized_user file without client_secret"),
])
def test_a_broken_gcp_key_file_is_named_before_anything_is_tried(tmp_path, content, problem):
    """A key file that google-auth cannot load used to pass `check` and fail on the first GCE call with a
    nested ValueError (or, not JSON, as 'no project'): now `check` and `launch` name the file and the fault,
    without quoting its contents, and the launch stops before provisioning (exit 4)."""
    sa = tmp_path / "sa.json"
    sa.write_text(content)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(sa), "GOOGLE_CLOUD_PROJECT": "p"}
    checks = {c["cloud"]: c for c in json.loads(run("check", "--json", env=env).stdout)}
    assert not checks["gcp"]["ok"] and f"{sa} (GOOGLE_APPLICATION_CREDENTIALS) {problem}" in checks["gcp"]["detail"]
    assert "gcloud auth application-default login" in checks["gcp"]["hint"]
    task = tmp_path / "t.yaml"
    task.write_text("resources: {infra: gcp, cpus: 2}\nrun: echo hi\n")
    r = run("launch", "-y", str(task), env=env)
    assert r.returncode == 4 and problem in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and "c2VjcmV0" not in r.stdout + r.stderr and "provisioning" not in r.stderr
    good = {c["cloud"]: c for c in json.loads(run("check", "--json", env={
        **env, "GOOGLE_APPLICATION_CREDENTIALS": str(write_service_account(tmp_path / "good.json"))}).stdout)}
    assert good["gcp"]["ok"], good["gcp"]


def test_suspicious_price_skipped_with_a_note_unless_allowed(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("resources: {cpus: 4+, memory: 16+, use_spot: true, cloud: azure}\nrun: x\n")
    r = run("launch", "--dryrun", "--json", str(task))
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["chosen"]["hourly_price_per_node"] > 0.008298
    assert any("--allow-suspicious-prices" in n for n in plan["notes"])
    table = run("launch", "--dryrun", str(task))
    assert "Note: a cheaper price flagged as a likely catalog anomaly was skipped" in table.stdout
    allowed = json.loads(run("launch", "--dryrun", "--json", "--allow-suspicious-prices", str(task)).stdout)
    assert allowed["chosen"]["hourly_price_per_node"] == pytest.approx(0.008298) and not allowed["notes"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("allow_suspicious_prices: true\n")
    by_config = json.loads(run("--config", str(cfg), "launch", "--dryrun", "--json", str(task)).stdout)
    assert by_config["chosen"]["hourly_price_per_node"] == pytest.approx(0.008298)


def test_task_warnings_go_to_stderr(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("resources: {any_of: [{infra: runpod}, {infra: gcp}]}\nrun: x\n")
    r = run("launch", "--dryrun", "--json", str(task))
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout stays pure JSON
    assert "Warning: resources.any_of[0]: runpod is not supported by skybroker" in r.stderr


def test_tpu_is_planned_as_a_tpu_vm_and_tpu_nodes_are_refused_by_name(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("resources: {accelerators: tpu-v5litepod-8}\nrun: x\n")
    plan = run("launch", "--dryrun", "--json", str(task))
    assert plan.returncode == 0, plan.stderr
    chosen = json.loads(plan.stdout)["chosen"]
    assert chosen["cloud"] == "gcp" and chosen["instance_type"] == "TPU-VM", chosen
    task.write_text("resources: {accelerators: tpu-v2-8, accelerator_args: {tpu_vm: false}}\nrun: x\n")
    r = run("launch", "--dryrun", str(task))
    assert r.returncode == 2 and "resources.accelerator_args.tpu_vm" in r.stderr and "Traceback" not in r.stderr


def test_managed_spot_plan_shows_expected_cost(tmp_path):
    env = {"BROKER_HOME": str(tmp_path / "home")}
    r = run("jobs", "launch", "--dryrun", "--json", "examples/v100.yaml", "--use-spot", env=env)
    assert r.returncode == 0, r.stderr
    ch = json.loads(r.stdout)["chosen"]
    assert ch["expected_hourly_cost_per_node"] > ch["hourly_price_per_node"]  # the prior's preemption cost
    od = json.loads(run("jobs", "launch", "--dryrun", "--json", "examples/v100.yaml", env=env).stdout)["chosen"]
    assert od["expected_hourly_cost_per_node"] is None  # on-demand: ranked by price
    assert "E[$/h]" in run("jobs", "launch", "--dryrun", "examples/v100.yaml", "--use-spot", env=env).stdout
    bad = run("jobs", "launch", "--json", "examples/v100.yaml", env=env)
    assert bad.returncode == 2 and "--json needs --dryrun" in bad.stderr


def test_a_bad_broker_debug_names_the_variable_not_a_flag(tmp_path):
    """BROKER_DEBUG=maybe was a click usage error about `--debug`, a flag the user never gave."""
    env = dict(os.environ, BROKER_HOME=str(tmp_path / "h"), BROKER_DEBUG="maybe")
    r = run("status", env=env)
    assert r.returncode == 0 and "--debug" not in r.stderr, r.stderr
    task = tmp_path / "t.yaml"
    task.write_text("resources: {infra: local}\nrun: echo hi\n")
    r = run("launch", "-y", str(task), env=env)
    assert r.returncode == 2 and "BROKER_DEBUG='maybe' is not a boolean" in r.stderr, r.stderr


def test_an_aws_profile_or_sso_setup_error_is_a_credentials_error_not_a_traceback(tmp_path):
    """AWS_PROFILE naming no profile (or an expired SSO login) raised botocore errors that are not API errors,
    which every AWS command (status --refresh, down, stop, gc) printed as a traceback."""
    pytest.importorskip("boto3")
    home = tmp_path / "h"
    code = ("from skybroker import state; from skybroker.state import ClusterRecord, NodeRecord; import time;"
            "state.save_cluster(ClusterRecord('awsc', 'aws', 'us-east-1', 'use1-az1', 't3.micro', None, False, 1,"
            " 0.01, 'UP', time.time(), nodes=[NodeRecord('i-1', 0, '10.0.0.1')]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(BROKER_HOME=str(home), AWS_PROFILE="nosuch", AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
               AWS_SECRET_ACCESS_KEY="not-a-secret", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
    for argv, rc in ((["status", "--refresh"], 0), (["down", "-y", "awsc"], 4)):  # status: a warning (README)
        r = subprocess.run(broker_cmd() + argv, cwd=REPO, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, env=env)
        assert r.returncode == rc and "Traceback" not in r.stderr, (argv, r.stderr)
        assert "ProfileNotFound" in r.stderr and "AWS_PROFILE" in r.stderr, r.stderr
