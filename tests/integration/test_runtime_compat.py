"""Runtime compatibility with SkyPilot: a task's `setup`/`run` see on the nodes what they see under SkyPilot.

Each expectation cites where SkyPilot documents or implements it:
  [log_lib]   sky/skylet/log_lib.py, make_task_bash_script + run_bash_command_with_log: the script starts with
              `source ~/.bashrc`, sources conda.sh with `set -a`, exports PYTHONUNBUFFERED=1, `cd ~/sky_workdir`,
              and runs as `/bin/bash -i <script>` with stdin=subprocess.DEVNULL.
  [codegen]   sky/backends/task_codegen.py, RayCodeGen.add_setup/_add_ray_task: SKYPILOT_NODE_IPS is
              '\\n'.join(IPs in rank order), SKYPILOT_NUM_NODES, SKYPILOT_NODE_RANK (head = 0),
              SKYPILOT_NUM_GPUS_PER_NODE = int(math.ceil(num_gpus)); the job FAILS if any node's return code is
              non-zero (add_epilogue: `if sum(returncodes) != 0`).
  [env-docs]  docs.skypilot.co running-jobs/environment-variables.html: envs/secrets in setup and run,
              --env/--secret take precedence, SKYPILOT_* variables for setup (SKYPILOT_SETUP_NODE_RANK,
              SKYPILOT_SETUP_NODE_IPS, SKYPILOT_SETUP_NUM_GPUS_PER_NODE) and run.
  [smoke]     tests/smoke_tests (test_minimal: `echo "$SKYPILOT_CLUSTER_INFO" | jq .cluster_name | grep NAME`;
              test_launch_with_failing_setup: setup branches on $SKYPILOT_SETUP_NODE_RANK).
  [env_check] examples/env_check.yaml: setup appends `export TEST_VAR=test` to ~/.bashrc, run exits 1 unless
              $TEST_VAR is set.
  [job-queue] docs running-jobs/job-queue: `sky exec` skips setup; jobs on a cluster queue in order.
  [sync]      sky/backends/backend_utils.py RSYNC: `rsync -Pavz` (symlinks stay symlinks), filtered by
              .skyignore else .gitignore; the workdir lands in ~/sky_workdir (SKY_REMOTE_WORKDIR).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import textwrap

import pytest

from tests.integration.local_helpers import (broker, broker_home, kill_leftovers, node_dir, node_lines,
                                             queue_json, ssh_node_pools, write_task)

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is needed for workdir sync")

# What Debian/Ubuntu put in a new user's ~/.bashrc first ([log_lib] sources it in an interactive shell, so
# what follows this guard runs): without `bash -i` everything after it would be skipped.
DEBIAN_GUARD = "case $- in\n    *i*) ;;\n      *) return;;\nesac\n"


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    kill_leftovers(broker_home())


def _ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def _dump_env(name: str) -> str:
    """A run/setup line that writes the phase's environment to ~/NAME.json on the node."""
    return ("python3 -c 'import json, os; json.dump(dict(os.environ), open(os.path.expanduser(\"~/%s.json\"), \"w\"))'\n"
            % name)


def _env(cluster: str, rank: int, name: str) -> dict:
    return json.loads((node_dir(cluster, rank) / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------------- environment
def test_node_environment_in_setup_and_run(tmp_path):
    """[codegen] IPs newline-separated in rank order, head rank 0; [env-docs] setup gets the SKYPILOT_SETUP_*
    names."""
    task = write_task(tmp_path / "t.yaml", name="envs", num_nodes=3, setup=_dump_env("setup"), run=_dump_env("run"))
    _ok(broker("launch", "-y", "-c", "rtenv", task, cwd=tmp_path))
    ips = [json.loads((node_dir("rtenv", r) / "node.json").read_text())["ip"] for r in range(3)]
    for rank in range(3):
        run, setup = _env("rtenv", rank, "run"), _env("rtenv", rank, "setup")
        assert run["SKYPILOT_NODE_RANK"] == str(rank)
        assert run["SKYPILOT_NODE_IPS"] == "\n".join(ips)  # no trailing newline: `head -n1` / `sed -n 2p` work
        assert run["SKYPILOT_NODE_IPS"].split("\n")[rank] == ips[rank]  # rank order = IP order
        assert run["SKYPILOT_NUM_NODES"] == "3"
        assert run["SKYPILOT_NUM_GPUS_PER_NODE"] == "0"  # a CPU node: int(math.ceil(0))
        assert run["PYTHONUNBUFFERED"] == "1"  # [log_lib] export PYTHONUNBUFFERED=1
        # [env-docs] / [smoke] test_launch_with_failing_setup: setup's own rank and IPs
        assert setup["SKYPILOT_SETUP_NODE_RANK"] == str(rank)
        assert setup["SKYPILOT_SETUP_NODE_IPS"] == "\n".join(ips)
        assert setup["SKYPILOT_SETUP_NUM_GPUS_PER_NODE"] == "0"
        assert setup["SKYPILOT_NUM_NODES"] == "3"  # [codegen] add_setup: setup_envs[SKYPILOT_NUM_NODES]
        assert run["SKYPILOT_TASK_ID"] == setup["SKYPILOT_TASK_ID"] == _env("rtenv", 0, "run")["SKYPILOT_TASK_ID"]
        # [common_utils.get_global_job_id] sky-YYYY-MM-DD-HH-MM-SS-ffffff_<cluster>_<job id>, which scripts parse
        assert re.fullmatch(r"sky-\d{4}(-\d\d){5}-\d{6}_rtenv_1", run["SKYPILOT_TASK_ID"]), run["SKYPILOT_TASK_ID"]


def test_setup_node_rank_selects_the_head(tmp_path):
    """[smoke] test_launch_with_failing_setup: `if [ "$SKYPILOT_SETUP_NODE_RANK" -eq 0 ]` in setup picks rank 0."""
    task = write_task(tmp_path / "t.yaml", name="headsetup", num_nodes=2,
                      setup='if [ "$SKYPILOT_SETUP_NODE_RANK" == "0" ]; then touch ~/head-setup; fi\n',
                      run='if [ "$SKYPILOT_NODE_RANK" == "0" ]; then echo head-only; fi\n')
    r = broker("launch", "-y", "-c", "rthead", task, cwd=tmp_path)
    _ok(r)
    assert (node_dir("rthead", 0) / "head-setup").exists()
    assert not (node_dir("rthead", 1) / "head-setup").exists()
    assert node_lines(r.stdout).get(0) == ["head-only"] and 1 not in node_lines(r.stdout), r.stdout


def test_cluster_info_has_skypilots_keys(tmp_path):
    """[smoke] test_minimal: `echo "$SKYPILOT_CLUSTER_INFO" | jq .cluster_name | grep NAME`; tasks read
    json.loads(os.environ["SKYPILOT_CLUSTER_INFO"])["cluster_name"], ["cloud"], ["region"], ["zone"]."""
    task = write_task(tmp_path / "t.yaml", name="info",
                      run="python3 -c 'import json, os; i = json.loads(os.environ[\"SKYPILOT_CLUSTER_INFO\"]); "
                          "print(i[\"cluster_name\"], i[\"cloud\"], i[\"region\"], i[\"zone\"])'\n")
    r = broker("launch", "-y", "-c", "rtinfo", task, cwd=tmp_path)
    _ok(r)
    assert node_lines(r.stdout)[0] == ["rtinfo local None None"], r.stdout


def test_envs_secrets_overrides_and_awkward_values(tmp_path):
    """[env-docs] envs and secrets reach setup and run; --env/--secret take precedence over the YAML; values
    are passed verbatim (spaces, newlines, quotes, `$`), numbers and booleans as str() (sky/task.py:
    `config['envs'] = {str(k): str(v) ...}`)."""
    awkward = "a  b\nline2 'single' \"double\" $HOME `x` \\back"
    task = write_task(tmp_path / "t.yaml", name="envs",
                      envs={"AWK": awkward, "NUM": 3, "FLAG": True, "OVER": "yaml"}, secrets={"TOK": "yaml-secret"},
                      setup=_dump_env("setup"), run=_dump_env("run") + 'echo "over=$OVER"\n')
    r = broker("launch", "-y", "-c", "rtvals", task, "--env", "OVER=cli value", "--secret", "TOK=cli-secret",
               cwd=tmp_path)
    _ok(r)
    for phase in ("setup", "run"):
        e = _env("rtvals", 0, phase)
        assert e["AWK"] == awkward and e["NUM"] == "3" and e["FLAG"] == "True"
        assert e["OVER"] == "cli value" and e["TOK"] == "cli-secret"
    assert "cli-secret" not in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------- the shell
def test_bashrc_written_by_setup_holds_in_run(tmp_path):
    """[env_check] SkyPilot's own examples/env_check.yaml: setup appends an export to ~/.bashrc and run needs
    it. [log_lib] the phase runs `/bin/bash -i`, so a ~/.bashrc behind Debian's "not interactive: return"
    guard is read, with its functions and aliases (what `conda init` writes there)."""
    setup = (f"cat > ~/.bashrc <<'EOF'\n{DEBIAN_GUARD}EOF\n"
             "echo 'export TEST_VAR=test' >> ~/.bashrc\n"
             "echo 'greet() { echo \"hello from a bashrc function\"; }' >> ~/.bashrc\n")
    run = textwrap.dedent("""\
        if [[ -z "${TEST_VAR}" ]]; then echo "TEST_VAR is not set"; exit 1; fi
        echo "TEST_VAR is set to ${TEST_VAR}"
        greet
        """)
    task = write_task(tmp_path / "t.yaml", name="envcheck", num_nodes=2, setup=setup, run=run)
    r = broker("launch", "-y", "-c", "rtrc", task, cwd=tmp_path)
    _ok(r)
    for rank in (0, 1):
        assert node_lines(r.stdout)[rank] == ["TEST_VAR is set to test", "hello from a bashrc function"], r.stdout
    # a later `exec` (no setup) reads it too
    r = broker("exec", "rtrc", "--", 'echo "again=$TEST_VAR"')
    _ok(r)
    assert node_lines(r.stdout)[0] == ["again=test"], r.stdout


def test_image_bashrc_is_read_on_a_real_node(tmp_path):
    """On a real sshd node (the SSH pool cloud): the login user's ~/.bashrc as an image ships it (Debian's
    guard, then what `conda init` appends: a shell function and PATH) is in force in setup and run, as
    under SkyPilot's `bash -i` [log_lib]; /etc/bash.bashrc too (Debian's bash reads it for interactive shells)."""
    with ssh_node_pools("rtc", {"p": 1}) as (_pool, by_name):
        node = by_name["p"][0]
        (node.home / "tool-bin").mkdir()
        (node.home / "tool-bin" / "mytool").write_text("#!/bin/sh\necho mytool-ran\n")
        (node.home / "tool-bin" / "mytool").chmod(0o755)
        (node.home / ".bashrc").write_text(DEBIAN_GUARD + 'export PATH="$HOME/tool-bin:$PATH"\n'
                                           'fake_conda() { echo "activated $1"; }\n')
        task = write_task(tmp_path / "t.yaml", name="img", resources={"infra": "ssh"},
                          setup="mytool\n", run="fake_conda myenv\nmytool\n")
        r = broker("launch", "-y", "-c", "rtimg", task, cwd=tmp_path, timeout=120)
        try:
            _ok(r)
            assert node_lines(r.stdout)[0] == ["mytool-ran", "activated myenv", "mytool-ran"], r.stdout
        finally:
            broker("down", "-y", "rtimg", timeout=120)


def test_shell_semantics(tmp_path):
    """[log_lib] stdin is /dev/null; no `set -e` (a failing line does not stop the script, the last command's
    status is the exit code); `exit N` is the code; output without a final newline is kept; the working
    directory is ~/sky_workdir even with no workdir. The interactive shell prints no job-control warnings
    (SkyPilot filters them: run_with_log skip_lines) and `!` is literal text."""
    run = textwrap.dedent("""\
        echo "cwd=$(pwd)"
        echo "stdin=[$(cat)]"
        false
        echo 'after false; bang!x "q!"'
        sleep 0.2 &
        wait
        printf 'no newline'
        """)
    task = write_task(tmp_path / "t.yaml", name="sh", run=run)
    r = broker("launch", "-y", "-c", "rtsh", task, cwd=tmp_path)
    _ok(r)
    lines = node_lines(r.stdout)[0]
    assert lines == [f"cwd={node_dir('rtsh', 0)}/sky_workdir", "stdin=[]", 'after false; bang!x "q!"', "no newline"], \
        r.stdout
    assert "job control" not in r.stdout + r.stderr and "terminal process group" not in r.stdout + r.stderr
    r = broker("exec", "rtsh", "--", "echo before; exit 3; echo after")
    assert r.returncode == 3, r.stdout + r.stderr
    assert node_lines(r.stdout)[0] == ["before"], r.stdout


def test_background_processes_stay_in_the_job(tmp_path):
    """The interactive shell must not put `cmd &` in a process group of its own (job control is off, as in a
    non-interactive bash): cancel stops the whole job, and the script's next line does not run after it."""
    import time

    task = write_task(tmp_path / "t.yaml", name="bg",
                      run="echo $$ > ~/sh.pid\nsleep 300 &\necho $! > ~/bg.pid\nsleep 300\ntouch ~/ran-on\n")
    _ok(broker("launch", "-y", "-d", "-c", "rtbg", task, cwd=tmp_path))
    pidfile = node_dir("rtbg", 0) / "bg.pid"
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    bg, shell = int(pidfile.read_text()), int((node_dir("rtbg", 0) / "sh.pid").read_text())
    assert os.getpgid(bg) == os.getpgid(shell) == shell  # the job's group (the shell leads it)
    _ok(broker("cancel", "-y", "rtbg", "1"))
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{bg}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{bg}")
    time.sleep(0.5)
    assert not (node_dir("rtbg", 0) / "ran-on").exists()
    assert queue_json("rtbg")[0]["status"] == "CANCELLED"


# ---------------------------------------------------------------------------------------- jobs
def test_multi_node_exit_codes_and_head_only_run(tmp_path):
    """[codegen] add_epilogue: any node non-zero -> the job FAILED; the head-only pattern runs on rank 0."""
    task = write_task(tmp_path / "t.yaml", name="codes", num_nodes=2,
                      run='if [ "$SKYPILOT_NODE_RANK" == "1" ]; then exit 7; fi\necho head\n')
    r = broker("launch", "-y", "-c", "rtcodes", task, cwd=tmp_path)
    assert r.returncode == 7, r.stdout + r.stderr
    job = queue_json("rtcodes")[0]
    assert job["status"] == "FAILED" and job["exit_code"] == 7, job


def test_exec_skips_setup_and_jobs_queue_in_order(tmp_path):
    """[job-queue] setup runs at launch only (`sky exec` skips it; `--no-setup` skips it at launch); jobs
    submitted to a cluster run one after another in submission order."""
    task = write_task(tmp_path / "t.yaml", name="q", setup="echo setup-ran >> ~/setup.log\n",
                      run='echo "$SKYPILOT_JOB_ID start" >> ~/order.log; sleep 0.5; '
                          'echo "$SKYPILOT_JOB_ID end" >> ~/order.log\n')
    _ok(broker("launch", "-y", "-c", "rtq", task, cwd=tmp_path))
    for _ in range(2):
        _ok(broker("exec", "-d", "rtq", task, cwd=tmp_path))
    _ok(broker("exec", "rtq", "--", "true"))  # queued behind both: returns when they are done
    order = (node_dir("rtq", 0) / "order.log").read_text().split("\n")
    assert order[:6] == ["1 start", "1 end", "2 start", "2 end", "3 start", "3 end"], order
    assert (node_dir("rtq", 0) / "setup.log").read_text() == "setup-ran\n"
    _ok(broker("launch", "-y", "-c", "rtq2", task, "--no-setup", cwd=tmp_path))
    assert not (node_dir("rtq2", 0) / "setup.log").exists()


# ---------------------------------------------------------------------------------------- files
def test_workdir_and_file_mounts_land_where_skypilot_puts_them(tmp_path):
    """[sync] workdir -> ~/sky_workdir with symlinks kept as links and .gitignore honoured; file_mounts with
    `~` targets and `~`/relative sources (relative to where the command runs, as SkyPilot's paths are),
    `${VAR}` from envs filled into file_mounts ([env-docs] "Using in file_mounts")."""
    proj = tmp_path / "proj"
    (proj / "code").mkdir(parents=True)
    (proj / "code" / "data.txt").write_text("data\n")
    (proj / "code" / "link.txt").symlink_to("data.txt")
    (proj / "code" / ".gitignore").write_text("ignored.txt\n")
    (proj / "code" / "ignored.txt").write_text("x\n")
    (proj / "mount.txt").write_text("mounted\n")
    home_src = tmp_path / "home" / "hd"  # the test's HOME is tmp_path/home (tests/conftest.py)
    home_src.mkdir()
    (home_src / "h.txt").write_text("from home\n")
    (proj / "sub").mkdir()
    task = write_task(proj / "sub" / "t.yaml", name="files", workdir="code", envs={"DST": "target"},
                      file_mounts={"~/mnt/rel.txt": "mount.txt", "~/mnt/${DST}": "~/hd"},
                      run="cat link.txt; test -L link.txt && echo is-link; test -e ignored.txt || echo no-ignored\n"
                          "cat ~/mnt/rel.txt ~/mnt/target/h.txt\n")
    r = broker("launch", "-y", "-c", "rtfiles", task, cwd=proj)
    _ok(r)
    assert node_lines(r.stdout)[0] == ["data", "is-link", "no-ignored", "mounted", "from home"], r.stdout


def test_next_job_ends_a_detached_gang_job_that_failed_on_one_node(tmp_path):
    """[codegen] get_or_fail: a node's non-zero return code cancels the job on the other nodes, so the next
    job starts on every node together. With `-d` nobody follows the job here; the next submission ends
    what is left of it, so the new job is not run on the failed node alone while the others are busy."""
    import time

    task = write_task(tmp_path / "t.yaml", name="broken", num_nodes=2,
                      run='if [ "$SKYPILOT_NODE_RANK" == "1" ]; then exit 3; fi\nsleep 120\n')
    _ok(broker("launch", "-y", "-d", "-c", "rtgang", task, cwd=tmp_path))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nodes = {n["rank"]: n["status"] for n in queue_json("rtgang")[0]["nodes"]}
        if nodes == {0: "RUNNING", 1: "FAILED"}:
            break
        time.sleep(0.2)
    assert nodes == {0: "RUNNING", 1: "FAILED"}, nodes
    r = broker("exec", "rtgang", "--", 'echo "next on $SKYPILOT_NODE_RANK"', timeout=45)
    _ok(r)
    assert node_lines(r.stdout) == {0: ["next on 0"], 1: ["next on 1"]}, r.stdout
    first = queue_json("rtgang")[0]
    assert first["status"] == "FAILED" and first["exit_code"] == 3, first
    assert {n["rank"]: n["status"] for n in first["nodes"]} == {0: "CANCELLED", 1: "FAILED"}, first
