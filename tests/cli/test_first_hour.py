"""What a new user meets first, as a real subprocess: `broker examples` (a pip install has no examples/
folder, yet the README's first command is `broker launch -y examples/hello.yaml`), `python -m skybroker`,
and a terminal that is not UTF-8 (no UnicodeEncodeError traceback)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO, broker_cmd


def run(*args, cwd, env=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(broker_cmd() + list(args), cwd=cwd, capture_output=True, text=True, errors="replace",
                          timeout=timeout, stdin=subprocess.DEVNULL, env=e)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def test_examples_are_copied_where_the_readme_runs_them(tmp_path):
    r = run("launch", "--dryrun", "examples/hello.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "`broker examples` copies them into ./examples" in r.stderr, r.stderr

    r = run("examples", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path / "examples") == _files(REPO / "examples")
    for rel in _files(REPO / "examples"):  # the very files of the checkout (skybroker/examples links to them)
        assert (tmp_path / "examples" / rel).read_bytes() == (REPO / "examples" / rel).read_bytes(), rel
    assert "next: broker launch -y examples/hello.yaml" in r.stdout, r.stdout

    r = run("launch", "--dryrun", "examples/hello.yaml", cwd=tmp_path)  # its workdir resolves from here
    assert r.returncode == 0 and "local" in r.stdout, r.stdout + r.stderr


def test_examples_never_overwrite_and_dir_puts_them_elsewhere(tmp_path):
    mine = tmp_path / "examples" / "hello.yaml"
    mine.parent.mkdir()
    mine.write_text("name: mine\nrun: echo mine\n")
    r = run("examples", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert mine.read_text() == "name: mine\nrun: echo mine\n"
    assert "kept 1 file(s) already in examples (not overwritten): hello.yaml" in r.stdout, r.stdout
    assert (tmp_path / "examples" / "v100.yaml").is_file()

    r = run("examples", "--dir", str(tmp_path / "other"), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "other" / "examples" / "hello_workdir" / "count.py").is_file()
    assert f"next: cd {tmp_path / 'other'} && broker launch -y examples/hello.yaml" in r.stdout, r.stdout

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "examples").write_text("a file")
    r = run("examples", "--dir", str(tmp_path / "f"), cwd=tmp_path)
    assert r.returncode == 2 and "exists and is not a directory" in r.stderr and "Traceback" not in r.stderr


def test_python_dash_m_skybroker_is_the_cli(tmp_path):
    import sys

    r = subprocess.run([sys.executable, "-m", "skybroker", "examples", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Usage: broker examples" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_that_is_not_utf8_gets_question_marks_not_a_traceback(encoding):
    env = {"PYTHONIOENCODING": encoding}
    r = run("check", cwd=REPO, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "? local      always available" in r.stdout, r.stdout
    r = run("launch", "--dryrun", "examples/v100.yaml", cwd=REPO, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "minimizing cost" in r.stdout and "task v100" in r.stdout and "Chosen: n1-highmem-8" in r.stdout, r.stdout
    r = run("launch", "--dryrun", "t\u00e2che-\u2714.yaml", cwd=REPO, env=env)  # the error names the file
    assert r.returncode == 2 and "file not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, flag", [(["version"], "--version"), (["help"], "--help"),
                                        (["help", "launch"], "launch --help")])
def test_help_and_version_as_commands_name_the_flag(tmp_path, args, flag):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2 and f"did you mean `broker {flag}`?" in r.stderr, r.stderr


def test_a_dryrun_reads_its_task_file_once(monkeypatch):
    """`launch --dryrun` parsed and validated the file twice (as a pipeline, then as a task): a 6.7 MB task
    file (200,000 envs) took 20 s instead of 10."""
    from skybroker import api, spec
    from skybroker.commands import cluster as C
    from tests.conftest import cli_runner

    calls = []
    real = spec.read_yaml_docs
    monkeypatch.setattr(spec, "read_yaml_docs", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(C, "use_api", lambda: api)
    monkeypatch.chdir(REPO)
    r = cli_runner().invoke(C.launch, ["--dryrun", "--json", "examples/v100.yaml"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert '"task": "v100"' in r.stdout and len(calls) == 1, calls
