"""`image_id: skypilot:TAG` and per-region image dicts: planned only where the image exists, and the image
the tag names reaches the provision request (catalog/images.py, spec_groups._build, provision.request_for)."""
from __future__ import annotations

import pytest

from skybroker.catalog import images
from skybroker.errors import SpecError
from skybroker.optimizer import optimize
from skybroker.provision import request_for
from skybroker.spec import task_from_dict

ALL = ("aws", "gcp", "azure")


def plan(resources: dict):
    task = task_from_dict({"resources": resources, "run": "true"})
    p = optimize(task, ALL)
    return p, request_for("c", p.chosen, None)


def test_table_is_skypilots_catalog():
    # GCP and Azure tags name one image everywhere; AWS tags one AMI per region
    assert images.places("skypilot:cpu-debian-10") == {"gcp": ()}
    assert images.resolve("gcp", "us-west1", "skypilot:cpu-debian-10").startswith(
        "projects/deeplearning-platform-release/global/images/")
    aws = images.places("skypilot:custom-cpu-ubuntu")["aws"]
    assert "us-east-1" in aws and len(aws) > 10
    assert images.resolve("aws", "us-east-1", "skypilot:custom-cpu-ubuntu").startswith("ami-")
    assert images.resolve("aws", "nowhere-1", "skypilot:custom-cpu-ubuntu") is None
    assert images.places("skypilot:gpu-ubuntu-1804") == {}


def test_a_global_tag_plans_on_its_cloud_and_the_request_gets_the_image():
    p, req = plan({"image_id": "skypilot:gpu-ubuntu-2204", "cpus": 2})  # an Azure-only tag
    assert p.chosen.cloud == "azure"
    assert req.image_id == "microsoft-dsvm:ubuntu-hpc:2204:22.04.2023080201"


def test_a_per_region_tag_plans_only_in_its_regions():
    p, req = plan({"infra": "aws", "image_id": "skypilot:custom-cpu-ubuntu", "cpus": 2})
    regions = images.places("skypilot:custom-cpu-ubuntu")["aws"]
    assert p.chosen.region in regions
    assert all(c.region in regions for c in p.candidates)
    assert req.image_id == images.resolve("aws", p.chosen.region, "skypilot:custom-cpu-ubuntu")


def test_a_per_region_dict_confines_the_plan_to_its_regions():
    # SkyPilot's tests/test_yamls/gcp_per_region_images.yaml: a tag in one region, a plain image in another
    res = {"infra": "gcp", "image_id": {"us-central1": "skypilot:cpu-debian-10",
                                        "us-west3": "projects/ubuntu-os-cloud/global/images/ubuntu-1804-bionic-v20230112"}}
    p, req = plan(res)
    assert {c.region for c in p.candidates} <= {"us-central1", "us-west3"}
    want = {"us-central1": images.resolve("gcp", "us-central1", "skypilot:cpu-debian-10"),
            "us-west3": "projects/ubuntu-os-cloud/global/images/ubuntu-1804-bionic-v20230112"}
    assert req.image_id == want[p.chosen.region]
    for c in p.candidates:  # every candidate carries the image of its own region
        assert request_for("c", c, None).image_id == want[c.region]


@pytest.mark.parametrize("resources,words", [
    ({"image_id": "skypilot:gpu-ubuntu-1804"}, ["unknown SkyPilot image tag", "did you mean"]),
    ({"infra": "azure", "image_id": "skypilot:custom-cpu-ubuntu"}, ["does not exist on azure", "aws ("]),
    ({"infra": "gcp/us-east1", "image_id": {"us-central1": "projects/p/global/images/i"}},
     ["no image for region us-east1"]),
])
def test_refusals_name_image_id(resources, words):
    with pytest.raises(SpecError) as e:
        task_from_dict({"resources": resources, "run": "true"})
    text = f"{e.value.message} {e.value.hint}"
    assert "resources.image_id: " in text
    for w in words:
        assert w in text
