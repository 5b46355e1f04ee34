"""SkyPilot task fields beyond the basics: substitution, aliases, pipelines, fields refused or warned
about by name, and secrets that never appear in a message."""
from __future__ import annotations

import pytest

from skybroker.errors import SpecError
from skybroker.spec import load_pipeline, load_task, task_from_dict


def write(tmp_path, text: str, name="task.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def parse(d: dict, **kw):
    return task_from_dict({"run": "x", **d}, source="t.yaml", **kw)


def refused(d: dict, field: str, hint_part: str | None = None, **kw) -> SpecError:
    with pytest.raises(SpecError) as ei:
        parse(d, **kw)
    e = ei.value
    assert e.exit_code == 2 and field in e.message, e.message
    if hint_part:
        assert hint_part in (e.hint or ""), e.hint
    return e


# --- environment variable substitution ------------------------------------------------------------------
def test_env_vars_fill_file_mounts_storage_and_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data-13b").mkdir()
    (tmp_path / "code").mkdir()
    t = parse({"envs": {"SIZE": "13b", "BUCKET": "my-bucket", "STORE": "gcs", "WD": "code"},
               "workdir": "${WD}",
               "file_mounts": {"/ckpt/llama-${SIZE}": "./data-$SIZE",
                               "/w": "s3://weights/llama-${SIZE}",
                               "/m": {"name": "${BUCKET}-2", "store": "$STORE", "mode": "MOUNT"},
                               "/u": {"name": "$BUCKET", "source": ["./data-${SIZE}"]}}})
    mounts = {m.remote: m for m in t.file_mounts}
    assert t.workdir == str(tmp_path / "code")
    assert mounts["/ckpt/llama-13b"].source == str(tmp_path / "data-13b")
    assert mounts["/w"].source == "s3://weights/llama-13b" and mounts["/w"].is_bucket
    assert mounts["/m"].source == "gs://my-bucket-2" and mounts["/m"].mode == "MOUNT"
    u = mounts["/u"]  # no `store`: the cluster's cloud picks it at launch (skybroker/storage/mounts.py)
    assert (u.name, u.store, u.uploads, u.is_bucket) == ("my-bucket", None, (str(tmp_path / "data-13b"),), True)


def test_env_override_wins_in_substitution_and_unknown_vars_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = parse({"envs": {"B": "yaml"}, "file_mounts": {"/x/$B/$NOPE": "s3://$B"}}, overrides={"envs": {"B": "cli"}})
    (m,) = t.file_mounts
    assert (m.remote, m.source) == ("/x/cli/$NOPE", "s3://cli")
    assert t.env_dict == {"B": "cli"}


def test_env_values_as_skypilot_reads_them():
    t = parse({"envs": {"A": True, "B": 3, "C": 0.5, "D": ""}})
    assert t.env_dict == {"A": "True", "B": "3", "C": "0.5", "D": ""}


def test_null_env_is_required():
    e = refused({"envs": {"HF_TOKEN": None}}, "envs.HF_TOKEN", "--env HF_TOKEN")
    assert "required" in e.message
    assert parse({"envs": {"HF_TOKEN": None}}, overrides={"envs": {"HF_TOKEN": "x"}}).env_dict == {"HF_TOKEN": "x"}
    refused({"secrets": {"TOK": None}}, "secrets.TOK", "--secret TOK")


# --- aliases and small syntaxes -------------------------------------------------------------------------
def test_gpus_alias_and_spot_recovery_alias():
    r = parse({"resources": {"gpus": "A100:8", "spot_recovery": "FAILOVER"}}).candidates[0]
    assert (r.accelerator, r.accelerator_count, r.job_recovery.strategy) == ("A100", 8, "FAILOVER")
    r = parse({"resources": {"any_of": [{"gpus": "H100:8"}, {"accelerators": "A100:8"}]}}).candidates
    assert [x.accelerator for x in r] == ["H100", "A100"]
    refused({"resources": {"gpus": "A100", "accelerators": "V100"}}, "resources.gpus", "another name")
    assert parse({"resources": {"gpus": "A100"}}, overrides={"gpus": "H100:8"}).candidates[0].accelerator == "H100"


@pytest.mark.parametrize("value, recovery", [("none", None), ("NONE", None), ({"strategy": "none"}, None),
                                             ({"max_restarts_on_errors": 2}, ("EAGER_NEXT_REGION", 2))])
def test_job_recovery_none(value, recovery):
    jr = parse({"resources": {"job_recovery": value}}).candidates[0].job_recovery
    assert (None if jr is None else (jr.strategy, jr.max_restarts_on_errors)) == recovery


@pytest.mark.parametrize("memory, gib", [("64GB", 64), ("1024MB", 1), ("1TB", 1024), ("32+", 32), ("16GiB", 16)])
def test_memory_units(memory, gib):
    assert parse({"resources": {"memory": memory}}).candidates[0].memory.value == gib


def test_disk_size_units_and_ephemeral_storage():
    assert parse({"resources": {"disk_size": "1TB"}}).candidates[0].disk_size == 1024
    assert parse({"resources": {"disk_size": "512GB"}}).candidates[0].disk_size == 512
    assert parse({"resources": {"ephemeral_storage": 100}}).candidates[0].disk_size == 100


def test_empty_accelerators_mean_none_and_infinite_counts_are_refused():
    assert parse({"resources": {"accelerators": {}}}).candidates[0].accelerator is None
    refused({"resources": {"accelerators": "A100:1e309"}}, "resources.accelerators", "A100:8")
    refused({"resources": {"cpus": ".inf"}}, "resources.cpus")
    refused({"resources": {"accelerators": {"A100": float("inf")}}}, "resources.accelerators")


# --- clouds skybroker does not run on -----------------------------------------------------------------------
def test_unsupported_cloud_options_are_skipped_with_a_note():
    t = parse({"resources": {"accelerators": "H100:8", "any_of": [
        {"infra": "runpod"}, {"infra": "oci/us-ashburn-1"}, {"infra": "aws"}, {"cloud": "gcp"}]}})
    assert [r.cloud for r in t.candidates] == ["aws", "gcp"]
    assert sum("is not supported by skybroker; this option is skipped" in w for w in t.warnings) == 2
    assert any(w.startswith("resources.any_of[0]: runpod") for w in t.warnings)
    t = parse({"resources": {"ordered": [{"cloud": "runpod"}, {"cloud": "azure"}]}})
    assert len(t.groups) == 1 and t.candidates[0].cloud == "azure"


def test_kubernetes_context_with_slashes_is_one_context():
    from skybroker.clouds.kubernetes import config as kcfg

    t = parse({"resources": {"infra": "k8s/arn:aws:eks:us-west-2:123:cluster/ml"}})
    r = t.candidates[0]
    assert r.cloud == "kubernetes"
    assert kcfg.context_name(r.region, r.zone) == "arn:aws:eks:us-west-2:123:cluster/ml"


def test_every_option_unsupported_is_an_error():
    refused({"resources": {"any_of": [{"infra": "runpod"}, {"infra": "oci"}]}}, "resources.any_of[0]",
            "aws, gcp, azure")
    e = refused({"resources": {"infra": "nebius"}}, "resources.infra", "skybroker runs on")
    assert "nebius is not supported" in e.message
    refused({"resources": {"cloud": "awz"}}, "resources.cloud", "did you mean 'aws'")  # a typo is not skipped


# --- fields refused by name, or accepted with a warning ------------------------------------------------
@pytest.mark.parametrize("d, field, hint", [
    ({"pool": {"workers": 2, "min_workers": 1}}, "pool.min_workers", "workers: N"),
    ({"volumes": {"mnt/data": "vol"}}, "volumes.mnt/data", "/mnt/data"),
    ({"volume_mounts": [{"path": "/d"}]}, "volume_mounts", "volumes:"),
    ({"event_callback": "echo done"}, "event_callback", None),
    ({"managed_secrets": ["HF"]}, "managed_secrets", "--secret"),
    ({"secrets": ["secrets:HF_TOKEN"]}, "secrets", "--secret"),
    ({"config": {"docker": {"run_options": [1]}}}, "config.docker.run_options", None),
    ({"config": {"gcp": {"enable_gvnic": True}}}, "config.gcp.enable_gvnic", "remove"),
    ({"config": {"gcp": {"managed_instance_group": {"run_duration": 10}}}},
     "config.gcp.managed_instance_group.run_duration", None),
    ({"config": {"gcp": {"managed_instance_group": {"reuse_instances": True}}}},
     "config.gcp.managed_instance_group.reuse_instances", "run_duration"),
    ({"config": {"azure": {"remote_identity": "my-identity"}}}, "config.azure.remote_identity", "userAssignedIdentities"),
    ({"config": {"gcp": {"remote_identity": "SERVICE_ACCOUNT"}}}, "config.gcp.remote_identity", "NO_UPLOAD"),
    ({"config": {"aws": {"remote_identity": "my-role"}}}, "config.aws.remote_identity", "NO_UPLOAD"),
    ({"resources": {"image_id": "skypilot:gpu-ubuntu-1804"}}, "resources.image_id", "image id"),
    ({"resources": {"any_of": [{"disk_tier": "ultra"}]}}, "resources.any_of[0].disk_tier", "medium"),
    ({"resources": {"disk_tier": "fast"}}, "resources.disk_tier", "low, medium"),
    ({"resources": {"local_disk": "nvme+"}}, "resources.local_disk", None),
    ({"resources": {"autostop": {"idle_minutes": 5, "hook": "git push"}}}, "resources.autostop.hook", None),
    ({"resources": {"accelerators": "tpu-v2-8", "accelerator_args": {"tpu_vm": False}}},
     "resources.accelerator_args.tpu_vm", None),
    ({"file_mounts": {"/v": {"name": "vol", "store": "volume"}}}, "file_mounts./v.store", None),
])
def test_refused_by_name(d, field, hint):
    refused(d, field, hint)


@pytest.mark.parametrize("d, words", [
    ({"service": {"readiness_probe": "/health", "replicas": 2}}, "service: ignored by launch"),
    ({"inputs": {"s3://data": 100}, "outputs": {"s3://out": 1}}, "inputs: data size hints"),
    ({"config": {"kubernetes": {"provision_timeout": 600}}}, "config.kubernetes: ignored"),
    ({"config": {"gcp": {"managed_instance_group": {"run_duration": 3600}}}}, "not through a managed instance"),
    ({"resources": {"network_tier": "best"}}, "network_tier: best gets standard"),
    ({"resources": {"disk_tier": "low"}}, "disk_tier: low"),
    ({"resources": {"priority": 500}}, "priority: ignored"),
    ({"api_server_access": True}, "api_server_access"),
    ({"resources": {"accelerators": "A100", "accelerator_args": {"runtime_version": "x"}}}, "TPUs only"),
])
def test_accepted_with_a_warning(d, words):
    t = parse(d)
    assert any(words in w for w in t.warnings), t.warnings


def test_accepted_silently_when_honoured():
    t = parse({"resources": {"disk_tier": "best", "network_tier": "standard", "accelerators": "tpu-v4-8",
                             "accelerator_args": {"runtime_version": "tpu-vm-base"}}})
    assert t.warnings == ()
    assert dict(t.candidates[0].extra) == {"tpu_runtime_version": "tpu-vm-base"}


# --- pipelines -------------------------------------------------------------------------------------------
PIPELINE = """name: pipe
---
name: train
resources: {accelerators: V100}
run: python train.py
---
name: eval
run: python eval.py
---
"""


def test_load_pipeline_and_load_task_of_a_pipeline(tmp_path):
    p = write(tmp_path, PIPELINE)
    pipe = load_pipeline(p)
    assert pipe.name == "pipe" and [t.name for t in pipe] == ["train", "eval"]
    assert pipe[0].candidates[0].accelerator == "V100"
    with pytest.raises(SpecError) as ei:
        load_task(p)
    assert "is a pipeline of 2 tasks" in ei.value.message and "broker jobs launch" in ei.value.hint
    assert "malformed" not in ei.value.message


def test_pipeline_header_with_one_task_is_a_task(tmp_path):
    p = write(tmp_path, "name: pipe\n---\nrun: echo hi\n")
    assert load_task(p).name == "pipe"
    single = load_pipeline(write(tmp_path, "name: one\nrun: x\n", "one.yaml"))
    assert len(single) == 1 and single.name == "one"


def test_pipeline_errors_name_the_task(tmp_path):
    p = write(tmp_path, "run: a\n---\nrun: b\nresources: {cpus: lots}\n")
    with pytest.raises(SpecError) as ei:
        load_pipeline(p)
    assert "(task 2)" in ei.value.message and "resources.cpus" in ei.value.message


# --- secrets never appear in a message ------------------------------------------------------------------
SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize("d, ov", [
    ({"secrets": {"TOK": [SECRET]}}, None),
    ({"secrets": {"TOK": {"nested": SECRET}}}, None),
    ({"secrets": {"1BAD": SECRET}}, None),
    ({"secrets": {"TOK": SECRET}, "resources": {"cpus": SECRET}}, None),
    ({"secrets": {"TOK": SECRET}, "file_mounts": {"/x": f"/nope/{SECRET}"}}, None),
    ({}, {"secrets": {"1X": SECRET}}),
    ({"secrets": {"TOK": SECRET}, "workdir": f"/no/such/{SECRET}"}, None),
])
def test_secret_values_never_in_messages(d, ov):
    with pytest.raises(SpecError) as ei:
        parse(d, overrides=ov)
    text = f"{ei.value.message} {ei.value.hint} {ei.value!r}"
    assert SECRET not in text, text


def test_secrets_not_substituted_into_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = parse({"secrets": {"TOK": SECRET}, "file_mounts": {"/x/$TOK": "s3://bkt"}})
    assert SECRET not in repr(t) and t.file_mounts[0].remote == "/x/$TOK"


# --- git workdir ---------------------------------------------------------------------------------------
def test_git_workdir_url_and_ref(tmp_path):
    t = parse({"workdir": {"url": "https://github.com/org/repo.git", "ref": "v1.2"}})
    assert (t.workdir, t.git_url, t.git_ref) == (None, "https://github.com/org/repo.git", "v1.2")
    t = parse({"workdir": {"url": "git@github.com:org/repo.git"}})
    assert (t.git_url, t.git_ref) == ("git@github.com:org/repo.git", None)
    t = parse({"envs": {"TAG": "v9"}, "workdir": {"url": "ssh://git@h/r.git", "ref": "${TAG}"}})
    assert t.git_ref == "v9"  # $VAR substitution applies to the workdir, as SkyPilot does


def test_git_overrides(tmp_path):
    t = parse({"workdir": {"url": "https://h/a.git", "ref": "main"}}, overrides={"git_ref": "abc1234"})
    assert (t.git_url, t.git_ref) == ("https://h/a.git", "abc1234")
    t = parse({"workdir": str(tmp_path)}, overrides={"git_url": "https://h/b.git"})  # replaces a local workdir
    assert (t.workdir, t.git_url, t.git_ref) == (None, "https://h/b.git", None)
    refused({}, "--git-ref", "--git-url", overrides={"git_ref": "main"})


@pytest.mark.parametrize("wd, field", [
    ({"url": ""}, "workdir.url"),
    ({"url": "${UNSET_EMPTY}", "ref": "main"}, "workdir.url"),
    ({"url": "not a url"}, "workdir.url"),
    ({"url": "-oProxyCommand=evil"}, "workdir.url"),
    ({"url": "/local/path/repo"}, "workdir.url"),
    ({"url": "https://h/r.git", "ref": "a..b"}, "workdir.ref"),
    ({"url": "https://h/r.git", "ref": "--upload-pack=x"}, "workdir.ref"),
    ({"url": "https://h/r.git", "ref": "has space"}, "workdir.ref"),
])
def test_bad_git_workdir_names_the_field(wd, field):
    refused({"workdir": wd}, field)


def test_git_url_with_a_token_is_never_echoed():
    e = refused({"workdir": {"url": "https://user:tok3nvalue@h/r.git x"}}, "workdir.url")
    assert "tok3nvalue" not in e.message and "***@h" in e.message


def test_git_workdir_survives_the_stored_form():
    from skybroker.spec import task_from_stored, task_to_dict

    t = parse({"workdir": {"url": "https://h/r.git", "ref": "v1"}})
    back = task_from_stored(task_to_dict(t))
    assert (back.git_url, back.git_ref) == ("https://h/r.git", "v1")


def test_config_gcp_mig_reaches_every_resources_and_survives_storage():
    from skybroker.spec import task_from_stored, task_to_dict

    t = parse({"resources": {"any_of": [{"infra": "gcp"}, {"infra": "aws"}]},
               "config": {"gcp": {"managed_instance_group": {"run_duration": 3600, "provision_timeout": 900}},
                          "azure": {"remote_identity": "NO_UPLOAD"}}})
    want = (("gcp.run_duration", "3600"), ("gcp.provision_timeout", "900"))
    assert [r.options for r in t.candidates] == [want, want]
    assert task_from_stored(task_to_dict(t)).candidates[0].options == want


# --- deadline and budget bounds -------------------------------------------------------------------------
@pytest.mark.parametrize("d, least", [
    ({"deadline": {"by": "1h", "compute": "1h", "overhead": "12m"}}, "1.2"),  # the first start pays d
    ({"deadline": {"by": "1h", "compute": "55m", "overhead": "12m"}}, "1.11667"),
    ({"deadline": {"by": "48h", "compute": "48h"}}, "48.2"),  # the default overhead, 0.2 h
    ({"deadline": "1h", "expected_hours": 1}, "1.2"),
    # a deadline of whole ticks only: the controller's policy rounds the deadline down and C + d up to ticks
    ({"deadline": {"by": "80m", "compute": "55m", "overhead": "10m", "tick": "30m"}}, "1.5"),
])
def test_a_deadline_shorter_than_compute_plus_overhead_is_refused(d, least):
    e = refused(d, "deadline")
    assert "no schedule can meet it" in e.message and least in e.hint, (e.message, e.hint)
    assert ("deadline.tick" in e.message) == ("tick" in d["deadline"]), e.message


def test_a_deadline_that_meets_compute_plus_overhead_in_whole_ticks_is_kept():
    t = parse({"deadline": {"by": "90m", "compute": "50m", "overhead": "10m", "tick": "30m"}, "run": "true"})
    assert (t.deadline_hours, t.expected_hours, t.decision_tick_hours) == (1.5, 50 / 60, 0.5)


def test_a_deadline_of_exactly_compute_plus_overhead_is_accepted():  # (an overhead of 0 is refused)
    t = parse({"deadline": {"by": "72m", "compute": "1h", "overhead": "12m"}})
    assert t.deadline_hours == pytest.approx(1.2) and t.restart_overhead_hours == pytest.approx(0.2)
    assert parse({"deadline": {"by": "1h", "compute": "59m", "overhead": "1m"}}).deadline_hours == 1


def test_budget_max_cost_zero_says_greater_than_zero(tmp_path):
    p = write(tmp_path, "budget: {max_cost: 0}\nrun: x\n")
    with pytest.raises(SpecError) as ei:
        load_task(str(p))
    assert "budget.max_cost" in ei.value.message and "must be greater than 0" in ei.value.message, ei.value.message
    assert "minimum 0" not in ei.value.message


# --- SkyPilot's launch flags --workdir, --ports, --image-id, -i/--down as overrides ---------------------------
def test_workdir_ports_image_and_autostop_flags_override_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    t = parse({"workdir": "a", "resources": {"any_of": [{"infra": "aws"}, {"infra": "gcp"}], "ports": 22}},
              overrides={"workdir": "b", "ports": ("8080", "9000-9001"), "image_id": "docker:ubuntu:22.04",
                         "autostop": {"idle_minutes": 0, "down": True}})
    assert t.workdir == str((tmp_path / "b").resolve())
    for r in t.candidates:
        assert r.ports == ("8080", "9000-9001") and r.image_id == (("", "docker:ubuntu:22.04"),)
        assert (r.autostop.idle_minutes, r.autostop.down) == (0, True)
    e = refused({"workdir": "a"}, "--workdir", overrides={"workdir": "missing"})
    assert "'missing' is not a directory" in e.message


def test_no_setup_drops_the_tasks_setup():
    assert parse({"setup": "pip install x"}).setup == "pip install x"
    assert parse({"setup": "pip install x"}, overrides={"no_setup": True}).setup is None


def test_local_paths_unread_takes_file_mounts_and_workdir_as_written(tmp_path):
    """The dashboard's "Plan a task" (spec_fields.local_paths_unread): a missing and an existing local path
    parse alike, as written, so a plan cannot tell which of the server's files exist."""
    from skybroker.spec_fields import local_paths_unread

    data = {"file_mounts": {"/a": "/no/such/file", "/b": str(tmp_path), "/c": {"name": "bkt", "source": "/nope"}},
            "workdir": "/no/such/dir", "run": "true"}
    with pytest.raises(SpecError, match="does not exist|not a directory"):
        task_from_dict(data)
    with local_paths_unread():
        t = task_from_dict(data)
    assert t.workdir == "/no/such/dir"
    by = {m.remote: m for m in t.file_mounts}
    assert (by["/a"].source, by["/b"].source, by["/c"].uploads) == ("/no/such/file", str(tmp_path), ("/nope",))
    with pytest.raises(SpecError):  # only inside the block
        task_from_dict(data)


@pytest.mark.parametrize("image, guess", [("ami-12345678", "infra: aws"), ({"us-east-1": "ami-1"}, "infra: aws"),
                                          ("projects/p/global/images/x", "infra: gcp"), ("my-image", "infra: <cloud>")])
def test_a_cloud_image_without_its_cloud_is_refused_at_parse_time(image, guess):
    """It was planned on Azure or GCP and failed at launch with InvalidImage (exit 4)."""
    e = refused({"resources": {"image_id": image}}, "resources.image_id")
    assert guess in e.hint
    assert parse({"resources": {"image_id": "docker:ubuntu:22.04"}}).candidates[0].image_id  # runs anywhere
    assert parse({"resources": {"infra": "aws", "image_id": image}}).candidates[0].image_id
