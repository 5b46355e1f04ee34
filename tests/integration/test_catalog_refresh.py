"""`broker catalog refresh` against honest local stand-ins of the clouds' APIs: moto (EC2 DescribeInstanceTypes,
offerings, spot price history; seeded with the upstream AWS rows, see tests/infra/moto_server.py), and the fakes
of tests/infra/price_fakes.py (AWS Price List, GCE machine/accelerator types + Cloud Billing Catalog, Azure
Retail Prices + resource SKUs) serving payloads shaped from the rows of shared/catalogs-upstream
(tests/infra/price_payloads.py). A catalog rebuilt from those payloads must give the same offers as the bundled
catalog built from the same rows, satisfy the upstream README's sanity facts, and drive the optimizer."""
from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import pytest

from skybroker import catalog
from skybroker.catalog import refresh as refresh_mod
from skybroker.errors import BrokerError, CredentialsError
from tests.conftest import REPO, broker_cmd
from tests.infra import price_payloads as pp
from tests.infra.moto_server import MotoServer
from tests.infra.price_fakes import AwsPricingFake, AzurePricesFake, GcpPricesFake

SUB = "00000000-0000-0000-0000-00000000feed"


@functools.cache
def upstream(cloud: str) -> tuple:
    return tuple(pp.rows(cloud))


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("BROKER_CATALOG_DIR", raising=False)
    monkeypatch.setenv("BROKER_THROTTLE_BACKOFF", "0.01")
    from skybroker.clouds.aws import client as aws_client
    from skybroker.clouds.azure import client as az_client
    from skybroker.clouds.gcp import client as gcp_client

    for c in (aws_client, az_client, gcp_client):
        c.reset()
    catalog.clear_cache()
    yield
    catalog.clear_cache()


def bundled(cloud: str) -> dict:
    """Every offer of the bundled catalog: (spec key, region, zone) -> (price, spot, suspicious)."""
    old = os.environ.get("BROKER_CATALOG_DIR")
    os.environ["BROKER_CATALOG_DIR"] = str(catalog.PACKAGE_DATA)
    try:
        catalog.clear_cache()
        return _offers(cloud)
    finally:
        if old is None:
            del os.environ["BROKER_CATALOG_DIR"]
        else:
            os.environ["BROKER_CATALOG_DIR"] = old
        catalog.clear_cache()


def _offers(cloud: str) -> dict:
    return {(s.key, o.region, o.zone): (o.price, o.spot_price, o.suspicious)
            for s in catalog.specs(cloud) for o in catalog.offers(s)}


def spec(cloud, itype, acc=None, count=0.0):
    found = [s for s in catalog.specs(cloud) if s.key == (itype, acc, float(count))]
    assert len(found) == 1, (cloud, itype, acc, count)
    return found[0]


def cheapest(offers, spot=False, exclude_local=False):
    vals = [o for o in offers if o.hourly(spot) is not None and not (exclude_local and o.local_zone)]
    best = min(o.hourly(spot) for o in vals)
    return best, [o for o in vals if o.hourly(spot) == best]


def at(offers, region, zone=None):
    found = [o for o in offers if o.region == region and o.zone == zone]
    assert len(found) == 1, (region, zone)
    return found[0]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ AWS
@pytest.fixture(scope="module")
def moto():
    data = pp.aws(list(upstream("aws")))
    with MotoServer() as srv:
        seeded = srv.seed_catalog(data["instance_types"], data["offerings"], data["spot"])
        assert seeded["instance_types_added"] == 3  # moto 5.2 has no p3.*: added from the upstream rows
        yield srv, data


@pytest.fixture
def aws(moto, monkeypatch):
    srv, data = moto
    srv.clear()
    with AwsPricingFake(data["products"]) as pricing:
        for k, v in {**srv.env(), **pricing.env(), "BROKER_AWS_MAX_ATTEMPTS": "0"}.items():
            monkeypatch.setenv(k, v)
        yield srv, pricing


def test_aws_refresh_from_moto_and_price_list(aws):
    srv, pricing = aws
    regions = ["us-east-1", "us-east-2", "us-west-2"]
    events = []
    out = refresh_mod.refresh("aws", regions, progress=lambda kind, msg: events.append((kind, msg)))
    assert out["regions"] == regions and out["rows"] > 1000 and out["carried_offers"] > 0
    assert [k for k, _ in events].count("fetch") == 3 and events[-1][0] == "build"
    assert catalog.cloud_dir("aws") == Path(os.environ["BROKER_HOME"]) / "catalogs" / "aws"
    # the API calls really happened, paged (GetProducts answers 100 products a page)
    assert len(srv.calls("DescribeSpotPriceHistory")) == 3 and len(srv.calls("DescribeInstanceTypeOfferings")) == 3
    assert pricing.calls("GetProducts") > 3
    # sanity facts of shared/catalogs-upstream/README.md (facts 1, 2, 5; Local Zones aside: moto has none)
    p3 = spec("aws", "p3.2xlarge", "V100", 1)
    assert (p3.vcpus, p3.memory_gib) == (8, 61)
    best, rows = cheapest(catalog.offers(p3))
    assert best == 3.06 and {o.region for o in rows} == set(regions)
    assert at(catalog.offers(p3), "us-east-1", "use1-az1").spot_price == 0.3644
    best, rows = cheapest(catalog.offers(p3), spot=True)
    assert best == 0.3548 and [o.zone for o in rows] == ["usw2-az3"]
    best, rows = cheapest(catalog.offers(spec("aws", "p4d.24xlarge", "A100", 8)))
    assert best == 21.95764 and {o.region for o in rows} == {"us-east-2", "us-west-2"}
    p5 = spec("aws", "p5.48xlarge", "H100", 8)
    assert cheapest(catalog.offers(p5))[0] == 55.04
    assert [o.zone for o in cheapest(catalog.offers(p5), spot=True)[1]] == ["usw2-az4"]
    assert cheapest(catalog.offers(spec("aws", "p4de.24xlarge", "A100-80GB", 8)))[0] == 27.44705  # memory → variant
    assert cheapest(catalog.offers(spec("aws", "g4dn.xlarge", "T4", 1)), exclude_local=True)[0] == 0.526
    # offer by offer: the fetched regions equal the bundled catalog built from the same rows (bar Local Zones)
    new, old = _offers("aws"), bundled("aws")
    fetched = {k: v for k, v in old.items() if k[1] in regions and k[2].count("-") == 1}
    assert {k: new[k] for k in fetched} == fetched
    assert not [k for k in new if k[1] in regions and k not in fetched]
    meta = catalog.info()["clouds"]["aws"]
    assert meta["source"] == "api" and meta["price_age"]["origin"] == "refreshed"
    assert meta["carried_from"].startswith("bundled") and meta["regions"] == regions


def test_aws_throttling_backs_off_and_succeeds(aws):
    srv, pricing = aws
    srv.fault("DescribeSpotPriceHistory", code="RequestLimitExceeded", message="Request limit exceeded.", times=2)
    pricing.fault("GetProducts", 429, times=1)  # 400 ThrottlingException "Rate exceeded", as the service says it
    notes = []
    out = refresh_mod.refresh("aws", ["us-west-2"], progress=lambda k, m: notes.append((k, m)))
    assert out["throttled"] == 3
    assert next(m for k, m in notes if k == "retry").startswith("us-west-2 DescribeSpotPriceHistory: throttled "
                                                               "(RequestLimitExceeded)")
    assert len(srv.calls("DescribeSpotPriceHistory")) == 3
    assert cheapest(catalog.offers(spec("aws", "p3.2xlarge", "V100", 1)), spot=True)[0] == 0.3548


def test_aws_failure_keeps_previous_catalog(aws, monkeypatch):
    srv, _ = aws
    refresh_mod.refresh("aws", ["us-west-2"])
    link = Path(os.environ["BROKER_HOME"]) / "catalogs" / "aws"
    before, target = tree(link), os.readlink(link)
    srv.fault("DescribeInstanceTypeOfferings", code="InternalError", message="An internal error has occurred",
              status=500, times=1, skip=1)
    with pytest.raises(refresh_mod.RefreshError, match="the catalog in use is unchanged"):
        refresh_mod.refresh("aws", ["us-east-1", "us-west-2"])
    assert os.readlink(link) == target and tree(link) == before
    assert [p.name for p in link.parent.iterdir()] and len(list(link.parent.glob(".aws-*"))) == 1
    monkeypatch.setenv("BROKER_THROTTLE_RETRIES", "1")
    srv.fault("DescribeSpotPriceHistory", code="RequestLimitExceeded", times=5)
    with pytest.raises(refresh_mod.RefreshError, match="RequestLimitExceeded|Request limit|throttl|injected"):
        refresh_mod.refresh("aws", ["us-west-2"])
    assert tree(link) == before


# ------------------------------------------------------------------------------------------------ GCP
GCP_REGIONS = {"us-central1", "us-east1", "us-west1", "asia-east1", "europe-west4", "us-west4", "asia-south1"}
GCP_SERIES = ("n1-", "e2-", "n2d-", "t2d-", "t2a-", "a2-", "g2-", "f1-", "g1-")  # keeps the test's payload small


@pytest.fixture
def gcp(monkeypatch):
    data = pp.gcp([r for r in upstream("gcp") if r["Region"] in GCP_REGIONS
                   and (not r["InstanceType"] or r["InstanceType"].startswith(GCP_SERIES))])
    with GcpPricesFake("test-project", data["machine_types"], data["accelerator_types"], data["skus"],
                       sku_page_cap=100) as fake:
        for k, v in fake.env().items():
            monkeypatch.setenv(k, v)
        yield fake


def test_gcp_refresh_prices_as_gcp_bills(gcp):
    gcp.fault("machineTypes", 429, times=1)
    gcp.fault("skus", 429, times=1, skip=1)  # throttled in the middle of the SKU pages
    out = refresh_mod.refresh("gcp")
    assert out["throttled"] == 2 and set(out["regions"]) == GCP_REGIONS
    assert gcp.calls("skus") > 3 and gcp.calls("machineTypes") > 2  # paged (nextPageToken), plus the retries
    # host (per-vCPU + per-GiB SKUs of the series) + GPU SKU × count, in the same zone (facts 1-4)
    offs = catalog.offers(spec("gcp", "n1-highmem-8", "V100", 1))
    assert at(offs, "us-central1", "us-central1-a").price == pytest.approx(2.95321, abs=2e-5)
    assert at(offs, "asia-east1", "asia-east1-c").price == pytest.approx(3.02793, abs=2e-5)
    best, rows = cheapest(offs)
    assert {o.region for o in rows} == {"us-central1", "us-east1", "us-west1"}
    offs = catalog.offers(spec("gcp", "a2-highgpu-8g", "A100", 8))
    best, rows = cheapest(offs)
    assert best == pytest.approx(19.4217, abs=5e-5) and {o.zone for o in rows} == {"europe-west4-a", "europe-west4-b"}
    best, rows = cheapest(catalog.offers(spec("gcp", "e2-standard-4")), spot=True)
    assert best == pytest.approx(0.01574, abs=2e-5) and {o.region for o in rows} == {"us-west4"}
    assert cheapest(catalog.offers(spec("gcp", "n2d-standard-4")))[1][0].region == "asia-south1"
    assert spec("gcp", "t2a-standard-4").arch == "arm64"
    assert spec("gcp", "g2-standard-24", "L4", 2)
    # TPU slices are not priced by this API: carried over from the catalog in use
    assert [(o.zone, o.price) for o in catalog.offers(spec("gcp", "TPU-VM", "tpu-v4-8", 1))] == [("us-central2-b", 12.88)]
    # offer by offer against the bundled catalog of the same rows: GCP's per-unit SKUs reproduce them to
    # rounding, except the shared-core e2 types, which upstream prices its own way
    new, old = _offers("gcp"), bundled("gcp")
    mine = {k: v for k, v in old.items() if k[1] in GCP_REGIONS and k[0][0].startswith(GCP_SERIES)}
    assert set(new) >= set(mine)
    off = [k for k in mine for j in (0, 1) if (new[k][j] is None) != (mine[k][j] is None) or (
        mine[k][j] is not None and abs(new[k][j] - mine[k][j]) > 1e-3 * mine[k][j] + 2e-5)]
    assert {k[0][0] for k in off} <= {"e2-micro", "e2-small", "e2-medium"}


def test_gcp_500_mid_pagination_keeps_previous_catalog(gcp):
    refresh_mod.refresh("gcp")
    link = Path(os.environ["BROKER_HOME"]) / "catalogs" / "gcp"
    before = tree(link)
    gcp.fault("skus", 500, times=1, skip=2)
    with pytest.raises(refresh_mod.RefreshError, match="gcp catalog refresh failed: .*Internal error encountered"):
        refresh_mod.refresh("gcp")
    assert tree(link) == before and len(list(link.parent.glob(".gcp-*"))) == 1
    assert catalog.price_age("gcp")["origin"] == "refreshed"


# ------------------------------------------------------------------------------------------------ Azure
AZURE_SIZES = {"Standard_NC6s_v3", "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_F4ams_v6",
               "Standard_D4ps_v6", "Standard_NV6ads_A10_v5", "Standard_NV36ads_A10_v5", "Standard_B2pls_v2",
               "Standard_D4s_v5", "Standard_NC24ads_A100_v4", "Standard_A1_v2", "Standard_NP10s"}


def azure_fake(rows, **kw):
    data = pp.azure(rows)
    return AzurePricesFake(SUB, data["items"], data["resource_skus"], **kw)


@pytest.fixture
def azure(monkeypatch):
    with azure_fake([r for r in upstream("azure") if r["InstanceType"] in AZURE_SIZES], page_size=100) as fake:
        for k, v in fake.env().items():
            monkeypatch.setenv(k, v)
        yield fake


def test_azure_refresh_retail_prices_and_resource_skus(azure):
    azure.fault("retail", 429, times=1, skip=1)
    azure.fault("skus", 429, times=1)
    out = refresh_mod.refresh("azure")
    assert out["throttled"] == 2 and azure.calls("retail") > 2 and azure.calls("skus") > 2  # NextPageLink / nextLink
    s = spec("azure", "Standard_NC6s_v3", "V100", 1)
    best, rows = cheapest(catalog.offers(s))
    assert best == 3.06 and {o.region for o in rows} == {"eastus", "eastus2", "westus2", "westus3"}
    assert {o.spot_price for o in rows} == {0.565488}
    assert cheapest(catalog.offers(spec("azure", "Standard_ND96asr_v4", "A100", 8)))[0] == 27.197
    o = at(catalog.offers(spec("azure", "Standard_F4ams_v6")), "newzealandnorth")
    assert o.suspicious and (o.price, o.spot_price) == (0.0449, 0.008298)  # flagged by the same normaliser
    assert spec("azure", "Standard_NV6ads_A10_v5", "A10", 0.167) and spec("azure", "Standard_D4ps_v6").arch == "arm64"
    new, old = _offers("azure"), bundled("azure")
    mine = {k: v for k, v in old.items() if k[0][0] in AZURE_SIZES - {"Standard_NP10s"}}  # FPGA sizes left out
    assert {k: new[k] for k in mine} == mine
    assert not [k for k in new if k[0][0] == "Standard_NP10s"]


def test_azure_500_on_next_page_link_keeps_previous_catalog(azure):
    refresh_mod.refresh("azure")
    link = Path(os.environ["BROKER_HOME"]) / "catalogs" / "azure"
    before = tree(link)
    azure.fault("retail", 500, times=1, skip=1)
    with pytest.raises(refresh_mod.RefreshError, match="unchanged"):
        refresh_mod.refresh("azure")
    assert tree(link) == before


# ------------------------------------------------------------------------------------------------ CLI
def run(args, env, **kw):
    return subprocess.run(broker_cmd() + args, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, **kw)


def test_missing_credentials_is_a_clear_error_and_writes_nothing(tmp_path):
    home = tmp_path / "bh"
    r = run(["catalog", "refresh", "--cloud", "aws"], {"BROKER_HOME": str(home)})
    assert r.returncode == CredentialsError.exit_code == 4, r.stderr
    assert "cannot refresh the AWS catalog: no credentials found" in r.stderr and "aws configure" in r.stderr
    assert "Traceback" not in r.stderr and not (home / "catalogs").exists()
    r = run(["catalog", "refresh"], {"BROKER_HOME": str(home)})
    assert r.returncode == 2 and "no cloud to refresh" in r.stderr
    r = run(["catalog", "refresh", "--region", "us-east-1"], {"BROKER_HOME": str(home)})
    assert r.returncode == 2 and "--region needs exactly one --cloud" in r.stderr


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setattr("skybroker.check.sdk_missing", lambda cloud: ["google.cloud.compute_v1"])
    with pytest.raises(BrokerError) as e:
        refresh_mod.refresh("gcp")
    assert e.value.exit_code == 2 and e.value.hint == "pip install 'skybroker[gcp]'"
    assert "gcp SDK is not installed" in e.value.message
    assert not (Path(os.environ["BROKER_HOME"]) / "catalogs").exists()


def test_dry_run_plans_with_the_refreshed_catalog_and_says_so(tmp_path):
    rows = [dict(r) for r in upstream("azure") if r["InstanceType"] in AZURE_SIZES]
    for r in rows:
        if r["InstanceType"] == "Standard_NC6s_v3" and r["Region"] == "eastus":
            r["Price"] = "1.5"  # today's price from the API: cheaper than every bundled V100
    home = tmp_path / "bh"
    with azure_fake(rows) as fake:
        env = {**fake.env(), "BROKER_HOME": str(home)}
        r = run(["catalog", "refresh", "--cloud", "azure"], env)
        assert r.returncode == 0, r.stderr
        assert "Refreshed catalogs" in r.stdout and "prices refreshed" in r.stdout and "› Azure retail prices" in r.stderr
    env = {"BROKER_HOME": str(home)}
    r = run(["launch", "--dryrun", "examples/v100.yaml", "--json"], env)
    plan = json.loads(r.stdout)
    assert (plan["chosen"]["cloud"], plan["chosen"]["instance_type"], plan["chosen"]["hourly_price_per_node"]) == \
        ("azure", "Standard_NC6s_v3", 1.5)
    ages = {p["cloud"]: p for p in plan["prices"]}
    assert ages["azure"]["origin"] == "refreshed" and ages["azure"]["age_days"] < 0.1 and not ages["azure"]["stale"]
    assert ages["gcp"]["origin"] == "bundled" and ages["gcp"]["as_of"] == "2026-05-20"
    r = run(["launch", "--dryrun", "examples/v100.yaml"], {**env, "BROKER_CATALOG_MAX_AGE_DAYS": "1e-9"})
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()
    prices = next(line for line in header if line.startswith("Prices: "))
    assert "azure refreshed 20" in prices and "from the azure APIs" in prices and "gcp bundled snapshot of 2026-05-20" in prices
    assert any(line.startswith("Warning: ") and "azure" in line and "BROKER_CATALOG_MAX_AGE_DAYS" in line for line in header)
    assert "Standard_NC6s_v3" in next(line for line in header if line.startswith("Chosen: "))
    info = json.loads(run(["catalog", "info", "--json"], env).stdout)
    assert info["clouds"]["azure"]["price_age"]["origin"] == "refreshed"
    assert info["clouds"]["azure"]["dir"] == str(home / "catalogs" / "azure")
    assert info["clouds"]["aws"]["price_age"]["origin"] == "bundled"


# ------------------------------------------------------------------------------------------------ full size
@pytest.mark.slow
def test_full_gcp_refresh_satisfies_the_sanity_facts(monkeypatch):
    data = pp.gcp(list(upstream("gcp")))
    with GcpPricesFake("test-project", data["machine_types"], data["accelerator_types"], data["skus"]) as fake:
        for k, v in fake.env().items():
            monkeypatch.setenv(k, v)
        out = refresh_mod.refresh("gcp")
    assert out["offers"] == 34440 and out["specs"] == 768  # as many as the bundled catalog
    best, rows = cheapest(catalog.offers(spec("gcp", "n1-highmem-8", "V100", 1)))
    assert best == pytest.approx(2.95321, abs=2e-5) and {o.region for o in rows} == {"us-central1", "us-east1", "us-west1"}
    best, rows = cheapest(catalog.offers(spec("gcp", "a2-highgpu-8g", "A100", 8)))
    assert best == pytest.approx(19.4217, abs=5e-5) and {o.zone for o in rows} == {"europe-west4-a", "europe-west4-b"}
    best, rows = cheapest(catalog.offers(spec("gcp", "a2-ultragpu-8g", "A100-80GB", 8)))
    assert best == pytest.approx(23.56656, abs=5e-5) and "us-central1-a" in {o.zone for o in rows}
    vm = [o for s in catalog.specs("gcp") if not s.accelerator_name and s.vcpus >= 4 and s.memory_gib >= 16
          for o in catalog.offers(s)]
    best, rows = cheapest(vm, spot=True)
    assert best == pytest.approx(0.01574, abs=2e-5) and {(o.instance_type, o.region) for o in rows} == {("e2-standard-4", "us-west4")}
    best, rows = cheapest(vm)
    assert best == pytest.approx(0.11153, abs=2e-5) and {o.region for o in rows} == {"asia-south1"}


@pytest.mark.slow
def test_full_aws_refresh_satisfies_the_sanity_facts(aws):
    out = refresh_mod.refresh("aws")  # every region moto knows
    assert out["carried_offers"] == 0 and out["specs"] == 128
    cpu = [o for s in catalog.specs("aws") if not s.accelerator_name and s.vcpus >= 4 and s.memory_gib >= 16
           and not s.burstable for o in catalog.offers(s)]
    best, rows = cheapest(cpu)
    assert best == 0.192 and {o.instance_type for o in rows} == {"m5.xlarge", "m6i.xlarge"}
    best, rows = cheapest(cpu, spot=True)
    assert best == 0.0224 and {(o.instance_type, o.region) for o in rows} == {("m8i-flex.xlarge", "eu-south-2")}
    for itype, gpu, price in (("g5.xlarge", "A10G", 1.006), ("g6.xlarge", "L4", 0.8048), ("g6e.xlarge", "L40S", 1.861),
                              ("p5.4xlarge", "H100", 6.88)):
        best, rows = cheapest(catalog.offers(spec("aws", itype, gpu, 1)))
        assert best == price and {o.region for o in rows} == {"us-east-1", "us-east-2", "us-west-2"}
    assert cheapest(catalog.offers(spec("aws", "g6e.xlarge", "L40S", 1)), spot=True)[1][0].zone == "mec1-az2"
