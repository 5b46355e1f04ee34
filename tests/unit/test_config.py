"""The config file: layered (home, project, --config), validated with errors naming the file and key, and
applied: allowed clouds/regions in plans, default autostop, settings, managed-job defaults."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from skybroker import config, settings
from skybroker.errors import SpecError


@pytest.fixture
def project(tmp_path, monkeypatch):
    d = tmp_path / "proj"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.delenv("BROKER_CONFIG", raising=False)
    monkeypatch.delenv("BROKER_WAIT_READY", raising=False)
    return d


def _home() -> Path:
    p = Path(os.environ["BROKER_HOME"])
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_layers_merge_and_the_environment_wins(project, monkeypatch, tmp_path):
    (_home() / "config.yaml").write_text("settings: {wait_ready: 100, jobs_poll: 5}\nautostop: 60\n")
    (project / ".broker.yaml").write_text("settings: {wait_ready: 200}\n")
    assert settings.get("wait_ready") == 200.0 and settings.get("jobs_poll") == 5.0
    assert config.get("autostop") == {"idle_minutes": 60, "down": False}
    extra = tmp_path / "ci.yaml"
    extra.write_text("settings: {wait_ready: 300}\n")
    monkeypatch.setenv("BROKER_CONFIG", str(extra))
    assert settings.get("wait_ready") == 300.0
    monkeypatch.setenv("BROKER_WAIT_READY", "7")
    assert settings.get("wait_ready") == 7.0


@pytest.mark.parametrize("text, field", [
    ("alowed_clouds: [aws]\n", "alowed_clouds"),
    ("allowed_clouds: [awz]\n", "allowed_clouds[0]"),
    ("autostop: {idle_minutes: -1}\n", "autostop"),
    ("settings: {no_such: 1}\n", "settings.no_such"),
    ("settings: {wait_ready: soon}\n", "settings.wait_ready"),
    ("jobs: {job_recovery: SOMETIMES}\n", "jobs.job_recovery"),
    ("image_id: [a, b]\n", "image_id"),
    ("allowed_clouds: [aws\n", None),
    ("settings: {home: /tmp/x}\n", "settings.home"),  # read from the environment only: it was ignored
    ("settings: {controller_workers: 0}\n", "settings.controller_workers"),  # the controller died on it
    ("allowed_regions: {aws: [us-east-1, us-esat-1]}\n", "allowed_regions.aws[1]"),  # AWS silently left out
])
def test_bad_config_names_the_file_and_key(project, text, field):
    (project / ".broker.yaml").write_text(text)
    with pytest.raises(SpecError) as ei:
        config.load()
    assert ".broker.yaml" in ei.value.message
    if field:
        assert f"{field}:" in ei.value.message, ei.value.message


def test_allowed_clouds_and_regions_shape_the_plan(project):
    from skybroker import api, spec

    (project / ".broker.yaml").write_text("allowed_clouds: [aws, azure]\nallowed_regions: {aws: [us-west-2]}\n")
    task = spec.task_from_dict({"resources": {"accelerators": "V100:1"}, "run": "true"}, source="t.yaml")
    plan = api.plan(task)
    assert {c.cloud for c in plan.candidates} <= {"aws", "azure"}
    assert all(c.region == "us-west-2" for c in plan.candidates if c.cloud == "aws")
    assert "config: only aws, azure" in plan.clouds_note


def test_jobs_defaults_apply_only_when_the_task_sets_none(project):
    from skybroker import spec
    from skybroker.jobs.ops import _with_config_defaults

    (project / ".broker.yaml").write_text("jobs: {job_recovery: FAILOVER, max_restarts_on_errors: 2}\n")
    t = spec.task_from_dict({"resources": {"infra": "local"}, "run": "true"}, source="t.yaml")
    jr = _with_config_defaults(t).candidates[0].job_recovery
    assert (jr.strategy, jr.max_restarts_on_errors) == ("FAILOVER", 2)
    t2 = spec.task_from_dict({"resources": {"infra": "local", "job_recovery": "EAGER_NEXT_REGION"}, "run": "true"},
                             source="t.yaml")
    assert _with_config_defaults(t2).candidates[0].job_recovery.strategy == "EAGER_NEXT_REGION"


@pytest.mark.parametrize("env, value", [("BROKER_JOBS_POLL", "abc"), ("BROKER_CONTROLLER_WORKERS", "0"),
                                        ("BROKER_CONTROLLER_SSH_TIMEOUT", "-1")])
def test_a_bad_controller_setting_is_refused_before_a_managed_job_is_stored(project, monkeypatch, env, value):
    """The controller died on it (a traceback in its log) and `jobs launch` followed a PENDING job for ever."""
    from skybroker import spec
    from skybroker.errors import UsageError
    from skybroker.jobs import ops, store

    monkeypatch.setenv(env, value)
    task = spec.task_from_dict({"resources": {"infra": "local"}, "run": "true"}, source="t.yaml")
    with pytest.raises(UsageError, match=env):
        ops.launch(task)
    assert store.all_jobs() == []
