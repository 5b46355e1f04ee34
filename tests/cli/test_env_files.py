"""--env-file / --secret-file, and secret values never echoed by option errors."""
from __future__ import annotations


from tests.cli.test_cli import run


def test_env_and_secret_files_and_flags_override(tmp_path):
    (tmp_path / "e.env").write_text("# comment\nexport A=1\nB='two words'\n\nC=\"3\"\n")
    (tmp_path / "s.env").write_text("TOKEN=s3cr3t-value\n")
    (tmp_path / "t.yaml").write_text("name: t\nresources: {infra: local}\nrun: echo $A $B $C\n")
    r = run("launch", "--dryrun", "--json", str(tmp_path / "t.yaml"), "--env-file", str(tmp_path / "e.env"),
            "--env", "C=flag", "--secret-file", str(tmp_path / "s.env"))
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-value" not in r.stdout + r.stderr
    from skybroker.commands.options import build_overrides

    ov = build_overrides({"env_files": [str(tmp_path / "e.env")], "envs": ["C=flag"],
                          "secret_files": [str(tmp_path / "s.env")]})
    assert ov["envs"] == {"A": "1", "B": "two words", "C": "flag"} and ov["secrets"] == {"TOKEN": "s3cr3t-value"}


def test_bad_lines_name_the_file_and_line_but_never_a_secret(tmp_path):
    (tmp_path / "s.env").write_text("OK=1\n1BAD=hunter2-secret\n")
    (tmp_path / "t.yaml").write_text("name: t\nresources: {infra: local}\nrun: 'true'\n")
    r = run("launch", "--dryrun", str(tmp_path / "t.yaml"), "--secret-file", str(tmp_path / "s.env"))
    assert r.returncode == 2 and "s.env:2" in r.stderr and "hunter2" not in r.stderr, r.stderr
    r = run("launch", "--dryrun", str(tmp_path / "t.yaml"), "--secret", "1X=hunter2-secret")
    assert r.returncode == 2 and "hunter2" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run("launch", "--dryrun", str(tmp_path / "t.yaml"), "--env-file", str(tmp_path / "missing.env"))
    assert r.returncode == 2 and "missing.env" in r.stderr


def test_a_launch_that_cannot_happen_is_refused_before_the_question():
    r = run("launch", "-y", "examples/v100.yaml")  # no credentials anywhere: the plan is shown, then refused
    assert r.returncode == 4, r.stderr
    assert "no usable credentials" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    assert "Chosen:" in r.stdout
