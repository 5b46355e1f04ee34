"""The committed price catalogs (catalogs/) and their loader (skybroker.catalog).

Facts come from the "Sanity facts" and "quirks" sections of shared/catalogs-upstream/README.md.
"""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest

from skybroker import catalog
from skybroker.catalog import build, rules
from skybroker.catalog.model import InstanceSpec
from skybroker.errors import BrokerError

REPO = pathlib.Path(__file__).resolve().parents[2]
CATALOGS = REPO / "skybroker" / "catalog" / "data"  # package data (shipped in the wheel)
UPSTREAM = pathlib.Path(os.environ.get("BROKER_SHARED", REPO.parent / "shared")) / "catalogs-upstream"


@pytest.fixture(autouse=True)
def _committed_catalogs(monkeypatch):
    monkeypatch.delenv("BROKER_CATALOG_DIR", raising=False)
    catalog.clear_cache()
    yield
    catalog.clear_cache()


def spec(cloud, itype, acc=None, count=0.0) -> InstanceSpec:
    found = [s for s in catalog.specs(cloud) if s.key == (itype, acc, float(count))]
    assert len(found) == 1, (cloud, itype, acc, count, found)
    return found[0]


def at(offers, region, zone=None):
    found = [o for o in offers if o.region == region and o.zone == zone]
    assert len(found) == 1, (region, zone)
    return found[0]


def cheapest(offers, spot=False, exclude_local=False):
    vals = [o for o in offers if o.hourly(spot) is not None and not (exclude_local and o.local_zone)]
    best = min(o.hourly(spot) for o in vals)
    return best, [o for o in vals if o.hourly(spot) == best]


# --- shape of the catalogs ---------------------------------------------------------------------------
def test_spec_counts_and_metadata():
    meta = catalog.info()
    counts = {c: len(catalog.specs(c)) for c in catalog.CLOUDS}
    assert counts["aws"] == 128  # 128 complete instance-type blocks
    assert counts["azure"] == 1432  # every size has a price
    tpus = sum(s.is_tpu for s in catalog.specs("gcp"))
    assert tpus == 175  # one TPU-VM spec per TPU slice name upstream prices
    assert 500 <= counts["gcp"] - tpus <= 700  # CPU types + GPU combos, minus the unpriced B200
    for c in catalog.CLOUDS:
        m = meta["clouds"][c]
        assert m["counts"]["specs"] == counts[c]
        assert len(m["sha256"]) == 64 and len(m["commit"]) == 40
    assert meta["clouds"]["aws"]["counts"]["input_rows"] == 7656
    assert meta["clouds"]["gcp"]["counts"]["input_rows"] == 31285
    assert meta["clouds"]["azure"]["counts"]["input_rows"] == 56671
    assert meta["build_date"]


def test_regions_and_zones():
    assert len(catalog.regions("aws")) == 24
    assert catalog.regions("aws") == sorted(catalog.regions("aws"))
    z = catalog.zones("aws")
    assert len(z) == 79 and z["use1-az1"] == "us-east-1" and z["usw2-lax1-az1"] == "us-west-2"
    assert len(catalog.regions("gcp")) == 44
    assert catalog.zones("gcp")["us-central1-a"] == "us-central1"
    assert len(catalog.regions("azure")) == 58
    assert catalog.zones("azure") == {}


def test_offers_sorted_and_min_prices_consistent():
    for cloud in catalog.CLOUDS:
        for s in catalog.specs(cloud):
            offs = catalog.offers(s)
            assert offs and all(o.spec is s for o in offs)
            keys = [(o.price if o.price is not None else math.inf, o.region, o.zone or "") for o in offs]
            assert keys == sorted(keys)
            prices = [o.price for o in offs if o.price is not None]
            spots = [o.spot_price for o in offs if o.spot_price is not None]
            assert s.min_price == (min(prices) if prices else None)
            assert s.min_spot_price == (min(spots) if spots else None)
            # never free: unknown prices (empty or 0.0 upstream) are None
            assert all(p > 0 for p in prices + spots)
            assert s.arch in ("x86_64", "arm64")


# --- AWS -----------------------------------------------------------------------------------------------
def test_aws_v100_p3_2xlarge():
    s = spec("aws", "p3.2xlarge", "V100", 1)
    assert (s.vcpus, s.memory_gib, s.min_price) == (8, 61, 3.06)
    best, rows = cheapest(catalog.offers(s))
    assert best == 3.06 and {o.region for o in rows} == {"us-east-1", "us-east-2", "us-west-2"}
    assert len(rows) == 9
    assert at(catalog.offers(s), "us-east-1", "use1-az1").spot_price == 0.3644
    best, rows = cheapest(catalog.offers(s), spot=True)
    assert best == 0.3548 and [o.zone for o in rows] == ["usw2-az3"]


def test_aws_a100_h100():
    best, rows = cheapest(catalog.offers(spec("aws", "p4d.24xlarge", "A100", 8)))
    assert best == 21.95764 and {o.region for o in rows} == {"us-east-2", "us-west-2"}
    assert at(catalog.offers(spec("aws", "p4d.24xlarge", "A100", 8)), "us-east-1", "use1-az1").price == 21.957642
    best, rows = cheapest(catalog.offers(spec("aws", "p4de.24xlarge", "A100-80GB", 8)))
    assert best == 27.44705 and {o.region for o in rows} == {"us-east-1", "us-west-2"}
    p5 = spec("aws", "p5.48xlarge", "H100", 8)
    assert (p5.vcpus, p5.memory_gib) == (192, 2048)
    best, rows = cheapest(catalog.offers(p5))
    assert best == 55.04 and len(rows) == 14
    best, rows = cheapest(catalog.offers(p5), spot=True)
    assert best == 9.3722 and [o.zone for o in rows] == ["usw2-az4"]


@pytest.mark.parametrize("itype,gpu,price,n_rows,spot,spot_zone", [
    ("g4dn.xlarge", "T4", 0.526, 13, 0.0669, "usw2-lax1-az1"),
    ("g5.xlarge", "A10G", 1.006, 11, 0.2114, "ape1-az2"),
    ("g6.xlarge", "L4", 0.8048, 12, None, None),
    ("g6e.xlarge", "L40S", 1.861, 11, 0.3623, "mec1-az2"),
    ("p5.4xlarge", "H100", 6.88, 13, 2.1102, "euw2-az3"),
])
def test_aws_one_gpu_table(itype, gpu, price, n_rows, spot, spot_zone):
    s = spec("aws", itype, gpu, 1)
    best, rows = cheapest(catalog.offers(s))
    assert best == price and len(rows) == n_rows
    assert {o.region for o in rows} == {"us-east-1", "us-east-2", "us-west-2"}
    if spot is not None:
        best, rows = cheapest(catalog.offers(s), spot=True)
        assert best == spot and [o.zone for o in rows] == [spot_zone]


def test_aws_cheapest_one_gpu_spot_across_sizes():
    l4 = [o for s in catalog.specs("aws") if s.key[1:] == ("L4", 1.0) for o in catalog.offers(s)]
    best, rows = cheapest(l4, spot=True)
    assert best == 0.1144 and [(o.instance_type, o.zone) for o in rows] == [("g6.2xlarge", "eus2-az2")]
    t4 = [o for s in catalog.specs("aws") if s.key[1:] == ("T4", 1.0) for o in catalog.offers(s)]
    best, rows = cheapest(t4, spot=True, exclude_local=True)
    assert best == 0.0898 and [o.zone for o in rows] == ["eus1-az3"]


def test_aws_g6e_ap_northeast_3_has_spot_but_no_on_demand():
    rows = [o for s in catalog.specs("aws") if s.instance_type.startswith("g6e.")
            for o in catalog.offers(s) if o.region == "ap-northeast-3"]
    assert len(rows) == 16
    assert all(o.price is None and o.spot_price is not None for o in rows)
    # price None sorts last
    offs = catalog.offers(spec("aws", "g6e.xlarge", "L40S", 1))
    assert offs[-1].price is None and offs[0].price is not None


def test_aws_local_zones_flagged():
    n = 0
    for s in catalog.specs("aws"):
        for o in catalog.offers(s):
            assert o.local_zone == (o.zone.count("-") > 1)
            n += o.local_zone
    assert n == 126
    t3 = catalog.offers(spec("aws", "t3.xlarge"))
    lax = at(t3, "us-west-2", "usw2-lax1-az2")
    assert lax.local_zone and lax.spot_price == 0.0211 and lax.price == 0.1664
    best, rows = cheapest(t3)
    assert best == 0.1664 and len(rows) == 14  # Local Zones included


def test_aws_spot_above_on_demand_kept():
    o = at(catalog.offers(spec("aws", "c6i.24xlarge")), "us-east-1", "use1-atl2-az1")
    assert (o.price, o.spot_price, o.local_zone) == (4.08, 5.1, True)
    o = at(catalog.offers(spec("aws", "g5.24xlarge", "A10G", 4)), "ca-central-1", "cac1-az1")
    assert o.spot_price > o.price


def test_aws_arch_and_fields():
    assert spec("aws", "a1.xlarge").arch == "arm64"
    assert spec("aws", "m5.xlarge").arch == "x86_64"
    assert spec("aws", "m5.xlarge").accelerator_name is None
    assert spec("aws", "m5.xlarge").accelerator_count == 0
    assert spec("aws", "m6i.xlarge").min_price == 0.192
    assert not any(o.suspicious for s in catalog.specs("aws") for o in catalog.offers(s))


# --- GCP ------------------------------------------------------------------------------------------------
def test_gcp_v100_on_n1_host():
    s = spec("gcp", "n1-highmem-8", "V100", 1)
    assert (s.vcpus, s.memory_gib) == (8, 52)
    offs = catalog.offers(s)
    assert at(offs, "us-central1", "us-central1-a").price == 2.95321
    assert at(offs, "asia-east1", "asia-east1-c").price == 3.02793
    best, rows = cheapest(offs)
    assert best == 2.95321 and {o.region for o in rows} == {"us-central1", "us-east1", "us-west1"}
    assert spec("gcp", "n1-highmem-4", "T4", 1)


def test_gcp_a100():
    offs = catalog.offers(spec("gcp", "a2-highgpu-8g", "A100", 8))
    assert at(offs, "europe-west4", "europe-west4-a").price == 19.4217
    assert at(offs, "us-central1", "us-central1-a").price == 29.38708
    best, rows = cheapest(offs)
    assert best == 19.4217 and {o.zone for o in rows} == {"europe-west4-a", "europe-west4-b"}
    best, rows = cheapest(catalog.offers(spec("gcp", "a2-ultragpu-8g", "A100-80GB", 8)))
    assert best == 23.56656 and "us-central1-a" in {o.zone for o in rows}
    assert spec("gcp", "a2-megagpu-16g", "A100", 16).vcpus == 96


def test_gcp_gpu_machine_types_bring_their_gpus():
    expected = {"g2-standard-4": ("L4", 1), "g2-standard-32": ("L4", 1), "g2-standard-24": ("L4", 2),
                "g2-standard-48": ("L4", 4), "g2-standard-96": ("L4", 8), "a3-highgpu-1g": ("H100", 1),
                "a3-highgpu-8g": ("H100", 8), "a3-edgegpu-8g": ("H100", 8), "a3-megagpu-8g": ("H100-MEGA", 8),
                "a3-ultragpu-8g": ("H200", 8), "a2-ultragpu-1g": ("A100-80GB", 1)}
    by_type = {}
    for s in catalog.specs("gcp"):
        by_type.setdefault(s.instance_type, []).append(s)
    for itype, (gpu, n) in expected.items():
        assert [s.key[1:] for s in by_type[itype]] == [(gpu, float(n))]
    for s in catalog.specs("gcp"):
        if s.instance_type.startswith(("a2-", "a3-", "a4-", "g2-")):
            assert s.accelerator_name is not None and s.accelerator_count > 0, s
    # spot only when both the VM row and the accelerator row have one
    offs = catalog.offers(spec("gcp", "a3-ultragpu-8g", "H200", 8))
    assert at(offs, "us-east5", "us-east5-a").spot_price is None
    assert at(offs, "us-east5", "us-east5-a").price is not None


def test_gcp_b200_not_free():
    for s in catalog.specs("gcp"):
        if s.accelerator_name == "B200" or s.instance_type.startswith("a4-"):
            assert s.min_price is None or s.min_price > 64  # VM row is 0.0 upstream = unknown
            assert all(o.price is None or o.price > 0 for o in catalog.offers(s))


def test_gcp_n1_host_ceilings():
    seen = 0
    for s in catalog.specs("gcp"):
        if s.instance_type.startswith("n1-") and s.accelerator_name:
            vc, mem = rules.N1_CEILINGS[s.accelerator_name][int(s.accelerator_count)]
            assert s.vcpus <= vc and s.memory_gib <= mem, s
            seen += 1
    assert seen > 100
    assert not [s for s in catalog.specs("gcp")
                if s.key[1:] == ("V100", 1.0) and s.instance_type.startswith("n1-") and s.vcpus > 12]
    gpus_on_n1 = {s.accelerator_name for s in catalog.specs("gcp") if s.instance_type.startswith("n1-")}
    assert gpus_on_n1 == {None, "V100", "T4", "P100", "P4"}
    # GPUs attach only to n1-standard/highmem/highcpu
    assert not [s for s in catalog.specs("gcp") if s.accelerator_name in ("V100", "T4", "P100", "P4")
                and not s.instance_type.startswith(("n1-standard-", "n1-highmem-", "n1-highcpu-"))]


def test_gcp_tpus_and_cpu_facts():
    tpu = spec("gcp", "TPU-VM", "tpu-v4-8", 1)
    assert tpu.is_tpu and not tpu.shape_known and (tpu.vcpus, tpu.memory_gib) == (0, 0)
    rows = catalog.offers(tpu)
    assert [(o.zone, o.price, o.spot_price) for o in rows] == [("us-central2-b", 12.88, 3.686)]  # read once
    assert catalog.info()["clouds"]["gcp"]["counts"]["duplicate_tpu_rows"] == 154
    assert not any(s.instance_type.endswith("-tpu") for s in catalog.specs("gcp"))  # TPU-node hosts
    best, rows = cheapest(catalog.offers(spec("gcp", "e2-standard-4")), spot=True)
    assert best == 0.01574 and {o.zone for o in rows} == {"us-west4-a", "us-west4-b", "us-west4-c"}
    assert rows[0].price == 0.15094
    best, rows = cheapest(catalog.offers(spec("gcp", "n2d-standard-4")))
    assert best == 0.11153 and {o.region for o in rows} == {"asia-south1"}
    assert spec("gcp", "t2a-standard-4").arch == "arm64"
    assert spec("gcp", "n2-standard-4").arch == "x86_64"


# --- Azure ----------------------------------------------------------------------------------------------
def test_azure_suspicious_rows():
    flagged = [o for s in catalog.specs("azure") for o in catalog.offers(s) if o.suspicious]
    assert len(flagged) == 19
    assert sum(o.region == "newzealandnorth" for o in flagged) == 7
    o = at(catalog.offers(spec("azure", "Standard_F4ams_v6")), "newzealandnorth")
    assert o.suspicious and (o.price, o.spot_price) == (0.0449, 0.008298)
    assert o.zone is None


def test_azure_gpu_facts():
    s = spec("azure", "Standard_NC6s_v3", "V100", 1)
    assert (s.vcpus, s.memory_gib) == (6, 112)
    best, rows = cheapest(catalog.offers(s))
    assert best == 3.06 and {o.region for o in rows} == {"eastus", "eastus2", "westus2", "westus3"}
    assert {o.spot_price for o in rows} == {0.565488}
    best, rows = cheapest(catalog.offers(spec("azure", "Standard_ND96asr_v4", "A100", 8)))
    assert best == 27.197 and {o.region for o in rows} == {"eastus", "westus2"}
    best, rows = cheapest(catalog.offers(spec("azure", "Standard_ND96amsr_A100_v4", "A100-80GB", 8)))
    assert best == 32.77 and "eastus" in {o.region for o in rows}
    assert {s.accelerator_count for s in catalog.specs("azure")} >= {0.167, 0.333, 0.5}


def test_azure_arch_and_clean_cheapest_spot():
    assert spec("azure", "Standard_D4ps_v6").arch == "arm64"
    assert spec("azure", "Standard_E2pds_v5").arch == "arm64"
    assert spec("azure", "Standard_B2pls_v2").arch == "arm64"
    assert spec("azure", "Standard_D4s_v5").arch == "x86_64"
    assert spec("azure", "Standard_D4ads_v5").arch == "x86_64"
    rows = [o for s in catalog.specs("azure") if s.vcpus >= 4 and s.memory_gib >= 16 and not s.accelerator_name
            for o in catalog.offers(s) if not o.suspicious]
    best, found = cheapest(rows, spot=True)
    assert best == 0.017076 and [(o.instance_type, o.region) for o in found] == [("Standard_D4ps_v6", "centralindia")]


# --- loader errors and API --------------------------------------------------------------------------------
def _copy_catalogs(dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in CATALOGS.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _assert_hint(exc: pytest.ExceptionInfo):
    assert isinstance(exc.value, BrokerError)
    assert exc.value.hint and "broker catalog build" in exc.value.hint


def test_missing_catalog_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path / "nope"))
    assert catalog.catalog_dir() == tmp_path / "nope"
    with pytest.raises(BrokerError) as e:
        catalog.specs("aws")
    _assert_hint(e)
    with pytest.raises(BrokerError) as e:
        catalog.info()
    _assert_hint(e)


@pytest.mark.parametrize("damage", ["truncate_index", "drop_last_spec", "garbage_index", "offers_size", "offers_missing",
                                    "offers_shifted", "bad_meta"])
def test_corrupt_catalog(tmp_path, monkeypatch, damage):
    d = _copy_catalogs(tmp_path / "cat")
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(d))
    idx, offs = d / "gcp.index.tsv", d / "gcp.offers.tsv"
    if damage == "truncate_index":
        idx.write_bytes(idx.read_bytes()[:5000])
    elif damage == "drop_last_spec":  # cut at a line boundary: the spec count in the header catches it
        lines = idx.read_text().splitlines(keepends=True)
        idx.write_text("".join(lines[:-1]))
    elif damage == "garbage_index":
        idx.write_text("hello\tworld\n")
    elif damage == "offers_size":
        offs.write_bytes(offs.read_bytes() + b"x")
    elif damage == "offers_missing":
        offs.unlink()
    elif damage == "offers_shifted":  # same size, content moved: header check catches it
        data = offs.read_bytes()
        offs.write_bytes(data[7:] + data[:7])
    elif damage == "bad_meta":
        (d / "meta.json").write_text("{not json")
    with pytest.raises(BrokerError) as e:
        if damage == "bad_meta":
            catalog.info()
        else:
            for s in catalog.specs("gcp")[:50]:
                catalog.offers(s)
    _assert_hint(e)


def test_unknown_spec_and_cloud():
    with pytest.raises(BrokerError):
        catalog.specs("ibm")
    ghost = InstanceSpec("aws", "x9.huge", 1, 1, None, 0, "x86_64", 1.0, None)
    with pytest.raises(BrokerError):
        catalog.offers(ghost)
    # a hand-made spec with the right key works and gets the catalog's own spec on its offers
    real = spec("aws", "m5.large")
    twin = InstanceSpec("aws", "m5.large", real.vcpus, real.memory_gib, None, 0.0, "x86_64", None, None)
    assert catalog.offers(twin)[0].spec is real


def test_import_is_cheap():
    code = ("import sys, skybroker.catalog as c; c.specs('aws');"
            "print(sorted(m for m in ('numpy', 'pandas', 'rich', 'yaml', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


# --- build ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="shared/catalogs-upstream is absent")
def test_build_is_deterministic(tmp_path, capsys):
    date = catalog.info()["build_date"]
    out = tmp_path / "out"
    assert build.main(["--upstream", str(UPSTREAM), "--out", str(out), "--date", date]) == 0
    assert "azure: 1432 specs" in capsys.readouterr().out
    committed = sorted(p.name for p in CATALOGS.iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (CATALOGS / name).read_bytes(), name


def test_build_missing_upstream(tmp_path):
    with pytest.raises(BrokerError) as e:
        build.main(["--upstream", str(tmp_path), "--out", str(tmp_path / "out"), "--date", "2026-01-01"])
    assert "--upstream" in (e.value.hint or "")


def test_build_rules_helpers():
    assert rules.azure_arch("Standard_D4ps_v6") == "arm64"
    assert rules.azure_arch("Standard_NC24ads_A100_v4") == "x86_64"
    assert rules.azure_arch("Standard_HB120-16rs_v3") == "x86_64"
    assert rules.gcp_fixed_gpu("a2-highgpu-3g") is None
    assert rules.gcp_fixed_gpu("g2-standard-24") == ("L4", 2)
    assert rules.gcp_fixed_gpu("n1-standard-8") is None
    assert rules.is_local_zone("usw2-lax1-az1") and not rules.is_local_zone("use1-az1")


# --- classification columns and the lazy index ----------------------------------------------------------
@pytest.mark.parametrize("cloud, itype, burstable", [
    ("aws", "t3.nano", True), ("aws", "t3.2xlarge", True), ("aws", "m6i.large", False),
    ("azure", "Standard_B2s", True), ("azure", "Standard_B2pls_v2", True), ("azure", "Standard_D2s_v5", False),
    ("gcp", "e2-micro", True), ("gcp", "e2-medium", True), ("gcp", "e2-standard-2", False),
])
def test_burstable_flag(cloud, itype, burstable):
    assert spec(cloud, itype).burstable is burstable
    assert rules.is_burstable(cloud, itype) is burstable


def test_generation_column():
    assert spec("aws", "r6i.2xlarge").generation > spec("aws", "r5.2xlarge").generation
    assert spec("gcp", "a3-highgpu-8g", "H100", 8).generation > spec("gcp", "a3-edgegpu-8g", "H100", 8).generation
    assert spec("azure", "Standard_D4s_v5").generation == 50 and spec("azure", "Standard_F4").generation == 10
    assert rules.generation("aws", "m8i-flex.xlarge") == 80 and rules.generation("gcp", "n2d-standard-4") == 20


def test_index_groups_are_sorted_by_bound():
    idx = catalog.load_index("azure")
    seen = set()
    for g in idx.groups:  # (all of them: parsed on this access)
        for spot in (False, True):
            pairs = list(g.bounded(spot))
            specs = [s for _, s in pairs]
            assert len(specs) == g.n
            bounds = [b for b, _ in pairs]  # clean bounds: no Local Zone, no suspicious offer
            known = [b for b in bounds if b is not None]
            assert known == sorted(known) and bounds[:len(known)] == known  # None last
            assert (g.min_spot if spot else g.min_price) == (known[0] if known else None)
            for b, s in pairs:
                full = s.min_spot_price if spot else s.min_price
                assert b is None or (full is not None and full <= b)
            flagged = {s.key for s in specs if any(o.suspicious for o in catalog.offers(s))}
            assert {s.key for s in g.suspect_specs()} == flagged
        for s in specs:
            assert (s.vcpus, s.memory_gib, s.accelerator_name, s.accelerator_count, s.arch, s.burstable) == \
                (g.vcpus, g.memory_gib, g.accelerator, g.count, g.arch, g.burstable)
            seen.add(s.key)
    assert len(seen) == idx.n_specs == len(catalog.specs("azure"))


def test_index_is_parsed_lazily():
    idx = catalog.load_index("gcp")
    assert idx.blocks == {}  # reading the index builds no spec
    (s,) = [x for x in catalog.named("gcp", "n1-highmem-8") if x.key[1:] == ("V100", 1.0)]
    assert len(idx.blocks) == len(catalog.named("gcp", "n1-highmem-8")) < 20
    assert catalog.offers(s)[0].spec is s


def test_region_blocks_give_exact_regional_minima():
    idx = catalog.load_index("aws")
    for region in ("us-east-1", "eu-west-1"):
        for gi, rg in idx.region_groups(region).items():
            assert rg.group is idx.groups[gi]
            for spot in (False, True):
                pairs = list(rg.ordered(spot))
                known = [b for b, _ in pairs if b is not None]
                assert known == sorted(known)
                for b, s in pairs:
                    prices = [o.spot_price if spot else o.price for o in catalog.offers(s) if o.region == region]
                    prices = [p for p in prices if p is not None]
                    assert b == (min(prices) if prices else None)


@pytest.mark.parametrize("cloud", catalog.CLOUDS)
def test_named_lookup_finds_exactly_the_specs_of_a_name(cloud):
    specs = catalog.specs(cloud)
    key = lambda s: (s.accelerator_name or "", s.accelerator_count)  # noqa: E731
    for name in sorted({s.instance_type for s in specs}):
        assert sorted(map(key, catalog.named(cloud, name))) == sorted(key(s) for s in specs if s.instance_type == name)
    for name in ("", "a", "zzzz", "m6i", "Standard_", "TPU-VM0", "~"):
        assert catalog.named(cloud, name) == []
