"""Task YAML → Task/Resources, and every kind of bad input gets a precise SpecError."""
from __future__ import annotations

import pytest

from skybroker.errors import SpecError
from skybroker.spec import load_task, task_from_dict

SKYPILOT_TASK = """
name: train
workdir: .
num_nodes: 2
resources:
  infra: aws/us-east-1
  accelerators: {A100:8, H100:8}
  cpus: 32+
  memory: 256+
  use_spot: true
  disk_size: 512
  disk_tier: best
  ports: [8080, "9000-9010"]
  image_id: {us-east-1: ami-123}
  labels: {team: ml}
  autostop: {idle_minutes: 30, down: true}
  job_recovery:
    strategy: FAILOVER
    max_restarts_on_errors: 3
    recover_on_exit_codes: [33, 34]
envs:
  MODEL: llama
  EPOCHS: 3
secrets:
  HF_TOKEN: hf_xxx
file_mounts:
  /data: s3://my-bucket/data
  ~/conf: .
setup: pip install -r requirements.txt
run: torchrun --nnodes $SKYPILOT_NUM_NODES train.py
"""


def write(tmp_path, text: str, name="task.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_full_skypilot_task_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = load_task(write(tmp_path, SKYPILOT_TASK))
    assert (t.name, t.num_nodes) == ("train", 2)
    assert t.workdir == str(tmp_path.resolve())
    (group,) = t.groups  # a set of accelerators = one group, cheapest wins
    assert {(r.accelerator, r.accelerator_count) for r in group} == {("A100", 8), ("H100", 8)}
    r = group[0]
    assert (r.cloud, r.region, r.zone) == ("aws", "us-east-1", None)
    assert (r.cpus.value, r.cpus.at_least, r.memory.value) == (32, True, 256)
    assert r.use_spot and r.disk_size == 512 and r.ports == ("8080", "9000-9010")
    assert r.autostop.idle_minutes == 30 and r.autostop.down
    assert r.job_recovery.strategy == "FAILOVER" and r.job_recovery.recover_on_exit_codes == (33, 34)
    assert t.env_dict == {"MODEL": "llama", "EPOCHS": "3"}
    assert t.secret_dict == {"HF_TOKEN": "hf_xxx"}
    assert "hf_xxx" not in repr(t)  # secrets never show in a repr
    mounts = {m.remote: m for m in t.file_mounts}
    assert mounts["/data"].is_bucket and not mounts["~/conf"].is_bucket


def test_accelerator_list_is_ordered_groups():
    t = task_from_dict({"resources": {"accelerators": ["A100:8", "V100:8"]}, "run": "x"})
    assert [g[0].accelerator for g in t.groups] == ["A100", "V100"]


def test_any_of_entries_override_base():
    t = task_from_dict({"resources": {"use_spot": True, "any_of": [{"cloud": "aws"}, {"cloud": "gcp", "use_spot": False}]},
                        "run": "x"})
    (g,) = t.groups
    assert [(r.cloud, r.use_spot) for r in g] == [("aws", True), ("gcp", False)]


def test_cli_overrides_replace_yaml_values():
    t = task_from_dict({"resources": {"accelerators": "V100", "infra": "aws", "any_of": [{"cloud": "aws"}]},
                        "envs": {"A": None}, "num_nodes": 1, "run": "x"},
                       overrides={"gpus": "A100:8", "infra": "gcp/us-central1", "num_nodes": 3,
                                  "use_spot": True, "envs": {"A": "1"}})
    r = t.candidates[0]
    assert (r.accelerator, r.cloud, r.region, r.use_spot, t.num_nodes) == ("A100", "gcp", "us-central1", True, 3)
    assert t.env_dict == {"A": "1"}


def test_an_env_override_of_a_secret_is_refused_naming_the_flag_to_use():
    """`--env HF_TOKEN=...` for a key the task lists under `secrets:` was ignored on the node (the secret's value
    wins) and kept in clear with the task's envs: refused (exit 2), the value in no message."""
    data = {"secrets": {"HF_TOKEN": "hf_old"}, "run": "x"}
    with pytest.raises(SpecError) as ei:
        task_from_dict(data, overrides={"envs": {"HF_TOKEN": "hf_new_value"}})
    e = ei.value
    assert e.exit_code == 2 and "--secret HF_TOKEN=VALUE" in e.hint and "secrets.HF_TOKEN" in e.message
    assert "hf_new_value" not in e.message + e.hint and "hf_old" not in e.message + e.hint
    t = task_from_dict(data, overrides={"secrets": {"HF_TOKEN": "hf_new_value"}})  # the way to do it
    assert t.secret_dict == {"HF_TOKEN": "hf_new_value"} and t.env_dict == {}


def test_amount_and_port_forms():
    t = task_from_dict({"resources": {"cpus": 4, "memory": "4x", "ports": 22}, "run": "x"})
    r = t.candidates[0]
    assert not r.cpus.at_least and r.memory.per_cpu and r.ports == ("22",)


# --- bad input: the message names the file, the field, and what to do ------------------------------

@pytest.mark.parametrize("text, field, hint_part", [
    ("resources:\n  acelerators: V100\nrun: x\n", "acelerators", "did you mean 'accelerators'"),
    ("nmae: x\nrun: x\n", "nmae", "did you mean 'name'"),
    ("resources:\n  accelerators: A100:x\nrun: x\n", "resources.accelerators", "NAME[:COUNT]"),
    ("resources:\n  cpus: four\nrun: x\n", "resources.cpus", "4+"),
    ("resources:\n  memory: lots\nrun: x\n", "resources.memory", "4x"),
    ("num_nodes: 0\nrun: x\n", "num_nodes", None),
    ("num_nodes: two\nrun: x\n", "num_nodes", None),
    ("resources:\n  cloud: awz\nrun: x\n", "resources.cloud", "did you mean 'aws'"),
    ("resources:\n  ports: [http]\nrun: x\n", "resources.ports", "8080"),
    ("resources:\n  job_recovery: EAGER\nrun: x\n", "job_recovery.strategy", "EAGER_NEXT_REGION"),
    ("envs:\n  1BAD: x\nrun: x\n", "envs", "letters"),
    ("envs:\n  TOKEN:\nrun: x\n", "envs.TOKEN", "--env TOKEN=VALUE"),
    ("workdir: /definitely/not/here\nrun: x\n", "workdir", "local folder"),
    ("file_mounts:\n  /x: /nope/nothing\nrun: x\n", "file_mounts./x", None),
    ("resources:\n  infra: aws/us-east-1/a/b\nrun: x\n", "resources.infra", "cloud[/region[/zone]]"),
    ("resources:\n  any_of: []\nrun: x\n", "resources.any_of", None),
])
def test_bad_fields(tmp_path, text, field, hint_part):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as ei:
        load_task(p)
    e = ei.value
    assert e.exit_code == 2
    assert str(p) in e.message
    assert field in e.message
    if hint_part:
        assert hint_part in (e.hint or "")


def test_error_carries_line_number(tmp_path):
    p = write(tmp_path, "name: x\nrun: x\nresources:\n  cpus: 4\n  acelerators: V100\n")
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert f"{p}:5" in ei.value.message


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"# only a comment\n\n", "is empty"),
    (b"run: [unclosed\n", "malformed YAML"),
    (b"\x00\x01\x02garbage\xff", "binary"),
    (b"\xff\xfe\xfa not utf8", "UTF-8"),
    (b"- a\n- b\n", "mapping"),
    (b"just a string\n", "mapping"),
])
def test_bad_files(tmp_path, content, words):
    p = tmp_path / "t.yaml"
    p.write_bytes(content)
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert words in ei.value.message and ei.value.hint
    assert ei.value.exit_code == 2


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_task(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_task(tmp_path)


def test_malformed_yaml_reports_line(tmp_path):
    p = write(tmp_path, "name: x\nrun: |\n  echo\n resources: {\n")
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert f"{p}:" in ei.value.message and "malformed YAML" in ei.value.message


@pytest.mark.parametrize("path", ['"C:\\Users\\me\\proj"', '"D:\\data"'])
def test_a_windows_path_in_double_quotes_says_how_to_quote_it(tmp_path, path):
    """libyaml's "did not find expected hexdecimal number" (\\U) or "found unknown escape character" (\\d)
    alone does not tell a Windows user that the backslashes are the problem."""
    p = write(tmp_path, f"name: w\nworkdir: {path}\nrun: x\n")
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert f"{p}:2: malformed YAML" in ei.value.message
    assert "use single quotes" in ei.value.hint and "forward slashes" in ei.value.hint


def test_an_env_value_past_linux_s_128_kib_is_refused_before_anything_runs(tmp_path):
    """execve refuses a NAME=VALUE string over MAX_ARG_STRLEN (E2BIG): the job FAILED on every node with an
    empty log, the reason only in the node's runner.err. Refused up front (exit 2), a secret without its value."""
    big = "x" * 200_000
    p = write(tmp_path, f"name: big\nenvs:\n  BIG: {big}\nrun: x\n")
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert ei.value.exit_code == 2 and "envs.BIG: is 200005 bytes" in ei.value.message
    assert "at most 128 KiB" in ei.value.message and "file" in ei.value.hint
    p = write(tmp_path, f"name: big\nsecrets:\n  TOKEN: {big}\nrun: x\n")
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert "secrets.TOKEN: is 200007 bytes" in ei.value.message and big not in ei.value.message + ei.value.hint
    ok = "y" * (128 * 1024 - len("OK=") - 1)  # the largest that starts
    assert dict(load_task(write(tmp_path, f"name: ok\nenvs:\n  OK: {ok}\nrun: x\n")).envs)["OK"] == ok


def test_envs_past_linux_s_arg_max_together_are_refused(tmp_path):
    """30 variables of 100 kB each: every one fits, the environment does not (E2BIG on every node)."""
    lines = "".join(f"  V{i}: {'z' * 100_000}\n" for i in range(30))
    with pytest.raises(SpecError) as ei:
        load_task(write(tmp_path, f"name: tot\nenvs:\n{lines}run: x\n"))
    assert ei.value.exit_code == 2 and "envs: envs and secrets are" in ei.value.message
    assert "about 2 MiB" in ei.value.message
    lines = "".join(f"  V{i}: {'z' * 100_000}\n" for i in range(15))  # 1.5 MB: starts
    assert len(load_task(write(tmp_path, f"name: ok\nenvs:\n{lines}run: x\n")).envs) == 15
