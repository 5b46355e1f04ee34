"""Where a plan may go: the config's allowed_clouds/allowed_regions hold also for a cloud the task or a flag
names (SkyPilot's semantic: only those clouds are enabled), any_of options outside them are skipped, a
managed job is planned by the controller with the config it was launched with; unknown regions and SSH
pools are user mistakes (exit 2); the local cloud's offer is this machine's shape and its node limit is
planned against."""
from __future__ import annotations

import os

import pytest

from skybroker import api, spec
from skybroker.errors import NoFeasibleError, SpecError


@pytest.fixture
def project(tmp_path, monkeypatch):
    d = tmp_path / "proj"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.delenv("BROKER_CONFIG", raising=False)
    return d


def _task(resources, **kw):
    return spec.task_from_dict({"resources": resources, "run": "true", **kw}, source="t.yaml")


@pytest.mark.parametrize("resources", [
    {"infra": "gcp", "cpus": 4},
    {"cloud": "azure", "cpus": 4},
    {"infra": "local"},
    {"infra": "ssh/mypool"},
])
def test_a_named_cloud_outside_allowed_clouds_is_refused(project, resources):
    (project / ".broker.yaml").write_text("allowed_clouds: [aws]\n")
    with pytest.raises(SpecError) as ei:
        api.plan(_task(resources))
    e = ei.value
    assert e.exit_code == 2
    cloud = (resources.get("infra") or resources.get("cloud")).split("/")[0]
    assert "resources.infra (or --infra)" in e.message and cloud in e.message and "allowed_clouds (aws)" in e.message
    assert ".broker.yaml" in e.hint and f"add {cloud} to allowed_clouds" in e.hint


def test_the_infra_flag_is_held_to_allowed_clouds_too(project):
    (project / ".broker.yaml").write_text("allowed_clouds: [aws]\n")
    task = spec.task_from_dict({"resources": {"cpus": 4}, "run": "true"}, source="t.yaml",
                               overrides={"infra": "azure"})
    with pytest.raises(SpecError, match="azure is not among the config's allowed_clouds"):
        api.plan(task)


def test_any_of_options_on_disallowed_clouds_are_skipped_with_a_note(project):
    (project / ".broker.yaml").write_text("allowed_clouds: [aws]\n")
    plan = api.plan(_task({"cpus": 4, "any_of": [{"infra": "gcp"}, {"infra": "aws"}]}))
    assert {c.cloud for c in plan.candidates} == {"aws"}
    assert any("gcp is not among the config's allowed_clouds" in n and "skipped" in n for n in plan.notes)
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"cpus": 4, "ordered": [{"infra": "gcp"}, {"infra": "azure"}]}))
    assert ei.value.exit_code == 2 and "resources: no option may run" in ei.value.message
    assert "gcp" in ei.value.message and "azure" in ei.value.message


def test_allowed_clouds_may_name_local_and_no_config_allows_it(project):
    assert api.plan(_task({"infra": "local"})).chosen.cloud == "local"  # no config: every cloud
    (project / ".broker.yaml").write_text("allowed_clouds: [local]\n")
    assert api.plan(_task({"infra": "local"})).chosen.cloud == "local"  # not "none of them is ready"


def test_a_region_outside_allowed_regions_is_refused_and_exclusion_is_not_called_a_failure(project):
    (project / ".broker.yaml").write_text("allowed_regions: {aws: [af-south-1]}\n")
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"infra": "aws/us-east-1", "cpus": 4}))
    assert ei.value.exit_code == 2 and "allowed_regions for aws (af-south-1)" in ei.value.message
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(_task({"infra": "aws", "accelerators": "A100:8"}))
    assert "excluded by the config's allowed_regions" in ei.value.message
    assert "earlier failures" not in ei.value.message
    assert "without the blocked places" not in (ei.value.hint or "")


def test_a_managed_job_is_planned_with_the_config_it_was_launched_with(project):
    from skybroker.jobs.ops import _with_config_defaults
    from skybroker.spec import task_from_stored, task_to_dict

    (project / ".broker.yaml").write_text("allowed_clouds: [aws]\n")
    stored = task_to_dict(_with_config_defaults(_task({"cpus": 4, "any_of": [{"infra": "gcp"}, {"infra": "aws"}]})))
    pinned = task_to_dict(_with_config_defaults(_task({"infra": "gcp"})))
    (project / ".broker.yaml").unlink()  # the controller runs elsewhere, with another (or no) config
    plan = api.plan(task_from_stored(stored), managed=True, check_budget=False)
    assert {c.cloud for c in plan.candidates} == {"aws"}
    with pytest.raises(SpecError, match="allowed_clouds") as ei:
        api.plan(task_from_stored(pinned), managed=True, check_budget=False)
    assert "`jobs launch`" in ei.value.hint
    # and a job launched without restrictions is not confined by a config the controller happens to see
    free = task_to_dict(_with_config_defaults(_task({"infra": "gcp", "cpus": 4})))
    (project / ".broker.yaml").write_text("allowed_clouds: [aws]\n")
    assert api.plan(task_from_stored(free), managed=True, check_budget=False).chosen.cloud == "gcp"


@pytest.mark.parametrize("infra, needle, hint", [
    ("aws/nowhere-1", "no region 'nowhere-1' on aws", "us-east-1"),
    ("aws/us-eest-1", "no region 'us-eest-1' on aws", "did you mean us-west-1 or us-east-1"),
    ("gcp/us-central", "no region 'us-central' on gcp", "us-central1"),
    ("ssh/nopool", "no SSH node pool 'nopool' on ssh", "ssh_node_pools.yaml"),
])
def test_an_unknown_region_or_pool_is_a_user_mistake(project, infra, needle, hint):
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"infra": infra, "cpus": 4}))
    e = ei.value
    assert e.exit_code == 2 and "resources.infra" in e.message and needle in e.message
    assert hint in e.message + (e.hint or "")
    assert "azure" not in (e.hint or "")


def test_an_unknown_pool_lists_the_pools_there_are(project):
    home = os.environ["BROKER_HOME"]
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "ssh_node_pools.yaml"), "w") as f:
        f.write("mypool:\n  user: u\n  hosts: [10.0.0.5]\n")
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"infra": "ssh/mypoool"}))
    assert "no SSH node pool 'mypoool'" in ei.value.message and "mypool" in ei.value.hint
    assert api.plan(_task({"infra": "ssh/mypool"})).chosen.region == "mypool"


def test_an_unknown_region_in_one_option_leaves_the_others(project):
    plan = api.plan(_task({"cpus": 4, "any_of": [{"infra": "aws/nowhere-1"}, {"infra": "aws/us-west-2"}]}))
    assert {c.region for c in plan.candidates} == {"us-west-2"}


@pytest.mark.parametrize("resources", [{"cpus": 100000}, {"memory": "10000000+"}, {"cpus": 1, "memory": "100000x"}])
def test_the_local_offer_is_this_machines_shape(project, resources):
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(_task({"infra": "local", **resources}))
    assert ei.value.exit_code == 3 and "on local" in ei.value.message


def test_the_local_offer_fits_what_the_machine_has(project):
    c = api.plan(_task({"infra": "local", "cpus": 1, "memory": "0.5+"})).chosen
    assert c.cloud == "local" and c.vcpus == float(os.cpu_count() or 1)
    assert api.plan(_task({"infra": "local", "cpus": "1+", "memory": "1x"})).chosen.cloud == "local"


def test_more_nodes_than_the_provider_runs_is_refused_at_plan_time(project):
    from skybroker.clouds import registry

    limit = registry.get("local", sdk=False).capabilities.max_nodes
    assert limit == 250
    assert api.plan(_task({"infra": "local"}, num_nodes=limit)).num_nodes == limit
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(_task({"infra": "local"}, num_nodes=limit + 50))
    assert "local at most 250" in ei.value.message and "num_nodes: 250" in ei.value.hint
    assert "retry" not in ei.value.hint


def test_an_accelerator_on_the_local_cloud_names_the_cloud(project):
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(_task({"infra": "local", "accelerators": "V100"}))
    assert "the local cloud offers no accelerators" in ei.value.hint
    assert " on ;" not in ei.value.hint


# -- zones ----------------------------------------------------------------------------------------
@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    for k in [k for k in os.environ if k.startswith("AWS_") and k != "AWS_CA_BUNDLE"]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from skybroker.clouds.aws import client

    client.reset()
    yield
    client.reset()


@pytest.mark.parametrize("infra, needles", [
    ("gcp/us-central1/us-central1-q", ["no zone 'us-central1-q' on gcp/us-central1", "us-central1-a"]),
    ("aws/us-west-2/use1-az2", ["no zone 'use1-az2' on aws/us-west-2", "usw2-az2"]),
    ("aws/*/use1-az9", ["no zone 'use1-az9' on aws", "use1-az6"]),
    ("azure/eastus/2", ["azure offers have no zones", "drop the zone"]),
])
def test_an_unknown_zone_is_a_user_mistake(project, infra, needles):
    """Before, every one of these was 'no offer fits' (exit 3) with a hint about the cheapest offer elsewhere."""
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"infra": infra, "accelerators": "V100"}))
    text = ei.value.message + " " + ei.value.hint
    assert ei.value.exit_code == 2 and "resources.infra" in ei.value.message
    for n in needles:
        assert n in text, text


def test_an_aws_zone_name_without_credentials_says_to_name_the_az_id(project, no_aws_credentials):
    """SkyPilot tasks say `zone: us-east-1a`, an AZ name, which differs per account; the catalogs speak AZ IDs."""
    with pytest.raises(SpecError) as ei:
        api.plan(_task({"cloud": "aws", "zone": "us-east-1a", "accelerators": "V100"}))
    e = ei.value
    assert e.exit_code == 2 and "us-east-1a" in e.message and "differ per account" in e.message
    assert "use1-az1" in e.hint and "broker check" in e.hint


def test_an_aws_zone_name_is_planned_as_the_accounts_az_id(project, monkeypatch):
    moto = pytest.importorskip("moto")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    from skybroker.clouds.aws import client

    client.reset()
    with moto.mock_aws():
        import boto3

        azs = boto3.client("ec2", region_name="us-east-1").describe_availability_zones()["AvailabilityZones"]
        want = {z["ZoneName"]: z["ZoneId"] for z in azs}
        name = next(n for n, i in sorted(want.items()) if i in ("use1-az1", "use1-az2", "use1-az4", "use1-az6"))
        p = api.plan(_task({"cloud": "aws", "zone": name, "accelerators": "V100"}), clouds=["aws"])
        assert p.chosen.region == "us-east-1" and p.chosen.zone == want[name]
        assert {c.zone for c in p.candidates} == {want[name]}
        with pytest.raises(SpecError, match="no zone 'us-east-1z' in your account's us-east-1"):  # a name the account lacks
            api.plan(_task({"cloud": "aws", "zone": "us-east-1z", "accelerators": "V100"}), clouds=["aws"])
    client.reset()


def test_no_config_note_when_the_task_names_an_allowed_cloud(project):
    """`allowed_clouds: [aws, local]` and a task on local said "Note: config: only aws"."""
    (project / ".broker.yaml").write_text("allowed_clouds: [aws, local]\n")
    p = api.plan(_task({"infra": "local"}))
    assert "config: only" not in (p.clouds_note or ""), p.clouds_note


def test_a_catalog_dir_that_is_not_a_directory_names_the_variable(monkeypatch, tmp_path):
    from skybroker import catalog
    from skybroker.errors import BrokerError

    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path / "nope"))
    with pytest.raises(BrokerError) as ei:
        catalog.load_index("aws")
    assert ei.value.exit_code == 2 and "BROKER_CATALOG_DIR=" in ei.value.message and "unset it" in ei.value.hint


def test_an_option_with_a_misspelt_region_is_skipped_with_a_note(project):
    """`ordered: [{infra: aws/us-esat-1}, {infra: gcp}]` planned on GCP without a word."""
    p = api.plan(_task({"ordered": [{"infra": "aws/us-esat-1", "cpus": 2}, {"infra": "gcp", "cpus": 2}]}))
    assert p.chosen.cloud == "gcp"
    text = " ".join(p.notes)
    assert "no region 'us-esat-1' on aws" in text and "did you mean" in text and "us-east-1" in text, p.notes
