"""Exit codes, table-driven over every command (the real CLI as a subprocess, stdin not a terminal), the
refusal of destructive commands without -y, prompts that default to No, --json on read commands, shell
completion and examples in every --help."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, broker_cmd

HUGE = "99999999999999999999999"
TINY = "name: tiny\nresources:\n  infra: local\nrun: echo tiny-$SKYPILOT_JOB_ID\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A BROKER_HOME with a live 1-node local cluster `live` and a recorded-only cluster `known`."""
    base = tmp_path_factory.mktemp("codes")
    env = _env(base)
    task = base / "tiny.yaml"
    task.write_text(TINY)
    r = subprocess.run(broker_cmd() + ["launch", "-y", "-c", "live", str(task)], env=env, cwd=base,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    code = ("from skybroker import state; from skybroker.state import ClusterRecord, NodeRecord; import time;"
            "state.save_cluster(ClusterRecord('known', 'local', None, None, 'local', None, False, 1, 0.0, 'UP',"
            " time.time(), nodes=[NodeRecord('i-known-0', 0, '127.0.0.1')]))")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
    yield base
    subprocess.run(broker_cmd() + ["down", "-y", "live", "known"], env=env, cwd=base, capture_output=True,
                   timeout=120, stdin=subprocess.DEVNULL)


def _env(base) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "CLOUDSDK_"))}
    e.update(BROKER_HOME=str(base / "broker_home"), HOME=str(base), PYTHONPATH=str(REPO))
    e.pop("BROKER_DEBUG", None)
    return e


def run(home, *args, timeout=60):
    return subprocess.run(broker_cmd() + list(args), env=_env(home), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


CASES = [
    # (argv, exit code, text expected on stderr)
    # unknown cluster: 5 everywhere it is looked up
    (["status", "nope"], 5, "not found"),
    (["status", "--json", "nope"], 5, "not found"),
    (["exec", "nope", "--", "true"], 5, "not found"),
    (["stop", "nope"], 5, "not found"),
    (["stop", "-y", "nope"], 5, "not found"),
    (["start", "nope"], 5, "not found"),
    (["autostop", "nope", "-i", "5"], 5, "not found"),
    (["queue", "nope"], 5, "not found"),
    (["logs", "nope"], 5, "not found"),
    (["logs", "nope", "1"], 5, "not found"),
    (["cancel", "nope", "1"], 5, "not found"),
    (["cancel", "nope", "--all", "-y"], 5, "not found"),
    (["down", "nope"], 0, "does not exist"),  # down is idempotent (documented): gone is success
    # unknown job: 5
    (["logs", "live", "999"], 5, "999"),
    (["cancel", "live", "999"], 5, "no job 999 on cluster live"),
    (["jobs", "logs", "999"], 5, "managed job 999 not found"),
    (["jobs", "cancel", "999"], 5, "managed job 999 not found"),
    # a job id too large for any job: bad input, never a traceback
    (["logs", "live", HUGE], 2, "range"),
    (["cancel", "live", HUGE], 2, "range"),
    (["jobs", "logs", HUGE], 2, "range"),
    (["jobs", "cancel", HUGE], 2, "range"),
    (["logs", "live", "0"], 2, "range"),
    # unknown accelerator: the same code in launch and show-gpus
    (["launch", "--dryrun", "examples/v100.yaml", "--gpus", "A1OO"], 3, "did you mean"),
    (["show-gpus", "A1OO"], 3, "did you mean"),
    (["show-gpus", "A100:32"], 3, "no A100:32 offer"),
    # a count the catalogs lack is 3 even when fractional (Azure sells A10:0.5 etc.), and says the counts
    (["show-gpus", "V100:1.5"], 3, "V100 comes in 1, 2, 4, 8 per machine"),
    (["show-gpus", "A10:0.25"], 3, "A10 comes in 0.167, 0.333, 0.5, 1, 2 per machine"),
    (["show-gpus", "A10:0.5"], 0, ""),
    (["show-gpus", "V100:abc"], 2, "the count must be a number"),
    (["launch", "--dryrun", "examples/v100.yaml", "--gpus", "A100:32"], 3, "largest A100 offer"),
    # bad input: 2
    (["launch", "--dryrun", "no-such-file.yaml"], 2, "file not found"),
    (["show-gpus", "--cloud", "runpod"], 2, "not supported"),
    (["show-gpus", "--region", "mars-east-1"], 2, "no region 'mars-east-1'"),
    (["show-gpus", "--count", "-1"], 2, "--count"),
    (["lanch"], 2, "did you mean 'launch'"),
    (["down"], 2, "--all"),
    (["completion", "tcsh"], 2, "tcsh"),
    # names together with --all: 2, nothing done (never "everything")
    (["down", "known", "-a", "-y"], 2, "give names or --all, not both"),
    (["down", "live", "known", "--all", "-y"], 2, "give names or --all, not both"),
    (["cancel", "live", "1", "--all", "-y"], 2, "give job ids or --all, not both"),
    (["jobs", "cancel", "5", "--all", "-y"], 2, "give job ids or --all, not both"),
    (["storage", "delete", "x", "--all", "-y"], 2, "give names or --all, not both"),
    # placement flags that contradict --infra: 2, as `infra:` beside `cloud:` in the task file
    (["launch", "--dryrun", "--infra", "local", "--cloud", "aws", "examples/v100.yaml"], 2, "--cloud aws"),
    (["launch", "--dryrun", "--infra", "aws/us-east-1", "--region", "us-west-2", "examples/v100.yaml"], 2,
     "give either --infra or --cloud/--region/--zone, not both"),
    (["exec", "live", "--infra", "local", "--zone", "z1", "--", "true"], 2, "--zone z1"),
    (["jobs", "launch", "--dryrun", "--infra", "aws", "--region", "us-east-1", "examples/v100.yaml"], 2,
     "--region us-east-1"),
    # SkyPilot's launch flags: their bad values are 2, naming the flag
    (["launch", "--dryrun", "--workdir", "no-such-dir", "examples/v100.yaml"], 2, "--workdir"),
    (["launch", "--dryrun", "--workdir", "examples", "--git-url", "https://h/r.git", "examples/v100.yaml"], 2,
     "--workdir and --git-url"),
    (["launch", "--dryrun", "--ports", "http", "examples/v100.yaml"], 2, "'http' is not a port"),
    (["launch", "--dryrun", "-i", "-5", "examples/v100.yaml"], 2, "--idle-minutes-to-autostop"),
    (["status", "--endpoint", "8080", "live"], 2, "cluster live opened no ports"),
    (["launch", "--dryrun", "--no-setup", "no-such-file.yaml"], 2, "file not found"),  # the flag exists
    (["status", "--ip", "--endpoints", "live"], 2, "exclude each other"),
    # --num-jobs 0 is not the default (1)
    (["jobs", "launch", "--pool", "mp", "--num-jobs", "0", "-y", "-d", "examples/v100.yaml"], 2,
     "--num-jobs 0: at least 1"),
    # destructive without -y and no terminal: 2, nothing done
    (["down", "known"], 2, "pass -y"),
    (["stop", "known"], 2, "pass -y"),
    (["cancel", "known", "--all"], 2, "pass -y"),
    (["jobs", "cancel", "--all"], 2, "pass -y"),
    # reads that work
    (["status", "live"], 0, ""),
    (["queue", "live"], 0, ""),
    (["logs", "live", "1"], 0, ""),
    (["check"], 0, ""),
    (["catalog", "info"], 0, ""),
]


def test_unknown_accelerator_hint_is_short(home):
    """No close match: the GPU names and one `tpu-vN-*` per TPU generation, not ~300 names."""
    r = run(home, "show-gpus", "Nope")
    assert r.returncode == 3, r.stderr
    hint = r.stderr.split("Hint:", 1)[1]
    assert "V100" in hint and "tpu-v4-*" in hint and "tpu-v4-8," not in hint and len(hint) < 500, hint
    r = run(home, "show-gpus", "h100x")
    assert r.returncode == 3 and "did you mean H100" in r.stderr, r.stderr


@pytest.mark.parametrize("argv, code, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_exit_code(home, argv, code, needle):
    r = run(home, *argv)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_refused_destruction_left_everything_in_place(home):
    r = run(home, "status", "--json")
    assert {c["name"] for c in json.loads(r.stdout)} >= {"live", "known"}
    assert run(home, "logs", "live", "1").stdout.strip().endswith("tiny-1")


@pytest.mark.parametrize("argv, check", [
    (["status", "--json"], lambda d: isinstance(d, list) and d and "name" in d[0]),
    (["queue", "live", "--json"], lambda d: d[0]["job_id"] == 1 and d[0]["status"] == "SUCCEEDED"),
    (["jobs", "queue", "--json"], lambda d: d == []),
    (["show-gpus", "--json"], lambda d: {r["name"] for r in d} >= {"A100", "V100", "H100"}),
    (["check", "--json"], lambda d: {c["cloud"] for c in d} >= {"aws", "gcp", "azure", "lambda", "kubernetes"}
     and all("credentials" in c for c in d)),
    (["catalog", "info", "--json"], lambda d: d["format_version"] == 2 and d["dir"].endswith("data")),
])
def test_json_on_read_commands(home, argv, check):
    r = run(home, *argv)
    assert r.returncode == 0, r.stderr
    assert check(json.loads(r.stdout)), r.stdout


def test_logs_json_lines(home):
    r = run(home, "logs", "live", "1", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert {"node": 0, "line": "tiny-1"} in lines


def test_every_read_command_has_json():
    from click.testing import CliRunner

    from skybroker.cli import cli

    for path in (["status"], ["queue"], ["logs"], ["jobs", "queue"], ["jobs", "logs"], ["show-gpus"], ["check"],
                 ["gc"], ["catalog", "info"]):
        r = CliRunner().invoke(cli, path + ["--help"])
        assert "--json" in r.output, path


def test_every_command_help_has_examples():
    import click
    from click.testing import CliRunner

    from skybroker.cli import COMMANDS, cli

    paths = []
    for name in COMMANDS:
        cmd = cli.get_command(None, name)
        paths.append([name])
        if isinstance(cmd, click.Group):
            paths += [[name, sub] for sub in cmd.list_commands(None)]
    for path in [[]] + paths:
        r = CliRunner().invoke(cli, path + ["--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Examples:" in r.output and "broker " in r.output.split("Examples:")[1], path


def test_completion_scripts_and_cluster_names(home):
    for shell, needle in (("bash", "complete -o nosort -F"), ("zsh", "#compdef broker"), ("fish", "complete")):
        r = run(home, "completion", shell)
        assert r.returncode == 0 and needle in r.stdout and "_BROKER_COMPLETE" in r.stdout, r.stdout
    env = {**_env(home), "_BROKER_COMPLETE": "bash_complete", "COMP_WORDS": "broker down kn", "COMP_CWORD": "2"}
    r = subprocess.run(broker_cmd(), env=env, capture_output=True, text=True, timeout=60)
    assert "plain,known" in r.stdout.split("\n"), r.stdout
    env.update(COMP_WORDS="broker logs live ", COMP_CWORD="3")
    r = subprocess.run(broker_cmd(), env=env, capture_output=True, text=True, timeout=60)
    assert "plain,1" in r.stdout.split("\n"), r.stdout


def _pty_run(home, argv, answer: bytes, timeout=30) -> tuple[int, str]:
    """Run in a pseudo-terminal (so the CLI may prompt), answer the prompt, return (exit code, screen)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(broker_cmd() + argv, stdin=slave, stdout=slave, stderr=slave, env=_env(home), cwd=REPO)
    os.close(slave)
    out, sent, deadline = b"", False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"[y/N]" in out:
                os.write(master, answer)
                sent = True
        elif p.poll() is not None:
            break
    p.wait(10)
    os.close(master)
    return p.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("answer, code, said", [(b"\n", 1, "not confirmed: nothing was done"),
                                                (b"n\n", 1, "not confirmed: nothing was done"),
                                                (b"\x04", 130, "Aborted")])  # Ctrl-D: an interruption
def test_destructive_prompt_defaults_to_no(home, answer, code, said):
    """A declined confirmation is exit 1 with one line (it was 130, the README's code for an interruption)."""
    got, screen = _pty_run(home, ["down", "known"], answer)
    assert "Tear down known? [y/N]" in screen, screen
    assert got == code and said in screen and "Traceback" not in screen, (got, screen)
    assert "known" in {c["name"] for c in json.loads(run(home, "status", "--json").stdout)}


def test_stop_is_idempotent_and_autostop_refuses_a_stopped_cluster(tmp_path):
    (tmp_path / "t.yaml").write_text(TINY)
    r = run(tmp_path, "launch", "-y", "-c", "lc", str(tmp_path / "t.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        r = run(tmp_path, "stop", "-y", "lc", timeout=120)
        assert r.returncode == 0 and "cluster lc stopped" in r.stderr, r.stderr
        r = run(tmp_path, "stop", "-y", "lc")  # like `start` of an UP cluster and `down` of a gone one
        assert r.returncode == 0 and "already stopped" in r.stderr, (r.returncode, r.stderr)
        r = run(tmp_path, "stop", "lc")  # nothing to confirm: no -y needed
        assert r.returncode == 0 and "already stopped" in r.stderr, (r.returncode, r.stderr)
        r = run(tmp_path, "autostop", "lc", "-i", "1", "--down")  # nothing would enforce it: refused
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert "cluster lc is STOPPED: autostop applies to a running cluster" in r.stderr, r.stderr
        assert "`broker start lc` first" in r.stderr and "torn down after" not in r.stderr, r.stderr
        (c,) = json.loads(run(tmp_path, "status", "--json").stdout)
        assert c["status"] == "STOPPED" and c["autostop_minutes"] is None, c
        assert run(tmp_path, "autostop", "lc", "--cancel").returncode == 0  # cancelling is always fine
    finally:
        run(tmp_path, "down", "-y", "lc", timeout=120)


def test_a_managed_job_without_run_is_refused_before_any_plan(home):
    """Found by exploratory testing: `name: p` then `---` and nothing else was planned on every cloud first, then
    refused without naming the file."""
    (home / "empty.yaml").write_text("name: p\n---\n")
    for f in ("empty.yaml", "tiny-norun.yaml"):
        if f == "tiny-norun.yaml":
            (home / f).write_text("name: nr\nresources:\n  infra: local\n")
        r = run(home, "jobs", "launch", "-y", str(home / f))
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{f}: run: a managed job needs `run:`" in r.stderr, r.stderr
        assert "Chosen" not in r.stdout + r.stderr and "Traceback" not in r.stderr
