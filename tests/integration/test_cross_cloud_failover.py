"""Failover across clouds, through the real SDKs against their stand-ins (moto for AWS, the GCE and ARM
fakes): zone capacity errors on the cheapest cloud move the launch to the next cheapest place on
whichever cloud it is; a quota error blocks a region, not a zone; missing credentials skip a cloud with
a visible reason in the failover report."""
from __future__ import annotations

import pytest

from skybroker import api, catalog, provision
from skybroker.errors import Scope
from skybroker.spec import task_from_dict

pytest.importorskip("google.cloud.compute_v1")
pytest.importorskip("azure.mgmt.compute")
moto = pytest.importorskip("moto")


@pytest.fixture
def clouds(monkeypatch):
    from skybroker.clouds import registry
    from skybroker.clouds.aws import client as aws_client
    from skybroker.clouds.azure import client as az_client
    from skybroker.clouds.gcp import client as gcp_client
    from tests.infra.arm_fake import ArmFake
    from tests.infra.gce_fake import GCEFake

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "BROKER_AWS_POLL": "0.02", "BROKER_GCP_POLL": "0.01"}.items():
        monkeypatch.setenv(k, v)
    gce = GCEFake(project="test-project").start()
    arm = ArmFake()
    for k, v in {**gce.env(), **arm.env()}.items():
        monkeypatch.setenv(k, v)
    mock = moto.mock_aws()
    mock.start()
    for c in (aws_client, gcp_client, az_client):
        c.reset()
    registry._instances.clear()
    try:
        yield gce, arm
    finally:
        mock.stop()
        gce.close()
        arm.close()
        for c in (aws_client, gcp_client, az_client):
            c.reset()
        registry._instances.clear()


def v100_task():
    # the AMI is AWS's (an image id without its cloud is refused): any_of puts it on the AWS option only
    return task_from_dict({"resources": {"accelerators": "V100:1", "any_of": [
        {"infra": "aws", "image_id": "ami-12345678"}, {"infra": "gcp"}, {"infra": "azure"}]}, "run": "true"})


def launch(task, cluster="xc"):
    from skybroker import state
    from skybroker.runtime.keys import ensure_user_key

    _, pub = ensure_user_key(state.db_path().parent)
    plan0 = api.plan(task, clouds=("aws", "gcp", "azure"))
    return plan0, provision.provision(
        cluster, lambda blocks: api.plan(task, blocks, clouds=("aws", "gcp", "azure")), public_key=pub)


def gcp_v100_zones(below: float = float("inf")) -> set[str]:
    spec = next(s for s in catalog.specs("gcp") if s.instance_type == "n1-highmem-8"
                and s.accelerator_name == "V100" and s.accelerator_count == 1)
    return {o.zone for o in catalog.offers(spec) if o.price is not None and o.price < below}


def test_capacity_in_every_gcp_zone_lands_on_the_next_cloud(clouds):
    gce, _ = clouds
    zones = gcp_v100_zones()
    for z in zones:
        gce.exhaust(z)
    plan0, (cand, infos, attempts) = launch(v100_task())
    assert plan0.chosen.cloud == "gcp"  # GCP is the cheapest V100 ...
    assert cand.cloud in ("aws", "azure") and len(infos) == 1  # ... but it lands on the next cloud
    gcp_attempts = [a for a in attempts if a.cloud == "gcp"]
    # every GCP zone cheaper than the place it landed was tried once, zone by zone, cheapest first
    assert sorted(a.zone for a in gcp_attempts) == sorted(gcp_v100_zones(below=cand.price))
    assert len(gcp_attempts) >= 8
    assert all(a.error == "CapacityError" and a.scope == Scope.ZONE.value for a in gcp_attempts)
    assert all(a.code == "ZONE_RESOURCE_POOL_EXHAUSTED" for a in gcp_attempts)


def test_quota_blocks_the_region_not_the_zone(clouds):
    gce, _ = clouds
    gce.set_quota("us-central1", "NVIDIA_V100_GPUS")
    _, (cand, infos, attempts) = launch(v100_task())
    assert len(attempts) == 1 and attempts[0].scope == Scope.REGION.value and attempts[0].code.startswith("QUOTA_EXCEEDED")
    assert cand.cloud == "gcp" and cand.region != "us-central1"  # same price elsewhere on GCP, other zones skipped


def test_credentials_missing_skips_the_cloud_with_a_visible_reason(clouds):
    gce, arm = clouds
    gce.fail_auth(403)
    arm.auth("AuthenticationFailed")
    _, (cand, infos, attempts) = launch(v100_task())
    assert cand.cloud == "aws"
    by_cloud = {a.cloud: a for a in attempts}
    assert by_cloud["gcp"].error == "CredentialsError" and by_cloud["gcp"].scope == "cloud"
    assert [a.cloud for a in attempts].count("gcp") == 1  # one refusal blocks the whole cloud
    assert by_cloud["gcp"].message  # the cloud's own message is kept for the report


def _aws_refuses(code: str) -> None:
    """RunInstances on moto answers `code` (AuthFailure, UnauthorizedOperation), as AWS does."""
    from botocore.exceptions import ClientError

    from skybroker.clouds.aws import client as aws_client

    def hook(params, **_):
        raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances")

    aws_client._session().events.register("before-parameter-build.ec2.RunInstances", hook)


def _retry_plan(task, cluster, on_sleep):
    import time
    from types import SimpleNamespace

    from skybroker import state
    from skybroker.runtime.keys import ensure_user_key

    _, pub = ensure_user_key(state.db_path().parent)
    provision.time = SimpleNamespace(time=time.time, sleep=on_sleep)
    try:
        return provision.provision(cluster, lambda blocks: api.plan(task, blocks, clouds=("aws", "gcp", "azure")),
                                   public_key=pub, retry_until_up=True)
    finally:
        provision.time = time


@pytest.mark.parametrize("aws_code", ["AuthFailure", "UnauthorizedOperation"])
def test_retry_until_up_stops_once_every_cloud_refused_the_credentials(clouds, aws_code):
    """--retry-until-up does not wait for credentials to fix themselves: each cloud refused once, then
    the launch stops with exit 4 and the clouds' hints (it used to print "retrying in 5s" forever)."""
    gce, arm = clouds
    gce.fail_auth(403)
    arm.auth("AuthorizationFailed")
    _aws_refuses(aws_code)
    sleeps = []

    def on_sleep(s):
        sleeps.append(s)
        if len(sleeps) > 3:
            raise AssertionError("still retrying after every cloud refused the credentials")

    with pytest.raises(provision.ProvisionExhausted) as ei:
        _retry_plan(v100_task(), "xcred", on_sleep)
    exc = ei.value
    assert sleeps == [] and exc.exit_code == 4
    assert sorted(a.cloud for a in exc.attempts) == ["aws", "azure", "gcp"]  # one refusal each
    assert all(a.error == "CredentialsError" for a in exc.attempts)
    assert "refused our credentials or permissions" in exc.message and aws_code in exc.message
    assert "IAM permissions" in exc.hint and "--retry-until-up" not in exc.hint


def test_retry_until_up_keeps_waiting_for_capacity_beside_refused_credentials(clouds):
    gce, arm = clouds
    arm.auth("AuthenticationFailed")
    _aws_refuses("AuthFailure")
    zones = gcp_v100_zones()
    for z in zones:
        gce.exhaust(z)
    sleeps = []

    def on_sleep(s):  # the first wait: GCP's capacity comes back
        sleeps.append(s)
        for z in zones:
            gce.restore(z)

    cand, infos, attempts = _retry_plan(v100_task(), "xcap", on_sleep)
    try:
        assert len(sleeps) == 1 and cand.cloud == "gcp" and len(infos) == 1
        assert [a.cloud for a in attempts].count("aws") == 1 and [a.cloud for a in attempts].count("azure") == 1
    finally:
        from skybroker.clouds.registry import get

        get("gcp").terminate("xcap", cand.region)
