"""Where each cloud's catalog is read from (bundled / refreshed / BROKER_CATALOG_DIR), its price age, and the one
normaliser both the bundled build and `catalog refresh` go through."""
from __future__ import annotations

import csv
import os
import time

import pytest

from skybroker import catalog, settings
from skybroker.catalog import build, refresh
from tests.unit.test_catalog import UPSTREAM


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("BROKER_CATALOG_DIR", raising=False)
    catalog.clear_cache()
    yield
    catalog.clear_cache()


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="shared/catalogs-upstream is absent")
def test_rows_and_csv_give_the_same_bytes(tmp_path):
    """The bundled catalog is the normaliser's output for the upstream CSV; the same rows as dicts (what a
    refresh hands it) give byte-identical files."""
    with open(UPSTREAM / "aws" / "vms_subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts = build.build_cloud("aws", iter(rows), tmp_path)
    assert counts["offers"] == 7656
    for name in ("aws.index.tsv", "aws.offers.tsv", "aws.regions.tsv", "aws.names.tsv"):
        assert (tmp_path / name).read_bytes() == (catalog.PACKAGE_DATA / name).read_bytes(), name


def test_bundled_price_age_uses_the_upstream_snapshot_date():
    gcp = catalog.price_age("gcp", now=time.mktime((2026, 6, 19, 0, 0, 0, 0, 0, 0)) - time.timezone)
    assert (gcp["origin"], gcp["as_of"], gcp["age_days"]) == ("bundled", "2026-05-20", 30.0)
    assert gcp["source"] == "bundled snapshot of 2026-05-20"
    aws = catalog.price_age("aws")
    assert aws["as_of"] == catalog.info()["build_date"] and "snapshot date unknown" in aws["source"]


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="shared/catalogs-upstream is absent")
def test_refreshed_catalog_wins_per_cloud_and_env_dir_wins_over_it(tmp_path, monkeypatch):
    home = tmp_path / "bh"
    monkeypatch.setenv("BROKER_HOME", str(home))
    d = home / "catalogs" / "lambda"
    d.mkdir(parents=True)
    with open(UPSTREAM / "lambda" / "vms.csv", newline="") as f:
        rows = [dict(r, Price=str(float(r["Price"]) / 2)) for r in csv.DictReader(f)]
    build.build_cloud("lambda", rows, d)
    assert catalog.cloud_dir("lambda") == catalog.PACKAGE_DATA  # no meta.json yet: not a complete catalog
    (d / "meta.json").write_text('{"clouds": {"lambda": {"source": "api", "refreshed_at": "2026-12-01T00:00:00Z"}}}')
    catalog.clear_cache()
    assert catalog.cloud_dir("lambda") == d and catalog.cloud_dir("aws") == catalog.PACKAGE_DATA
    h100 = next(s for s in catalog.specs("lambda") if s.instance_type == "gpu_8x_h100_sxm5")
    assert min(o.price for o in catalog.offers(h100)) == 31.92 / 2
    assert catalog.price_age("lambda")["origin"] == "refreshed"
    assert catalog.info()["clouds"]["lambda"]["dir"] == str(d)
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(catalog.PACKAGE_DATA))
    catalog.clear_cache()
    assert catalog.cloud_dir("lambda") == catalog.PACKAGE_DATA and catalog.price_age("lambda")["origin"] == "custom"


def test_swap_is_a_symlink_rename_that_keeps_one_previous_version(tmp_path):
    tmp_path = tmp_path / "catalogs"
    tmp_path.mkdir()
    link = tmp_path / "aws"
    versions = []
    for i in range(3):
        v = tmp_path / f".aws-{i}"
        v.mkdir()
        (v / "x").write_text(str(i))
        refresh._swap(str(link), v)
        versions.append(v)
        assert os.readlink(link) == v.name and (link / "x").read_text() == str(i)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".aws-1", ".aws-2", "aws"]


def test_retry_backs_off_on_throttling_only(monkeypatch):
    from skybroker.errors import InvalidRequestError, ThrottledError

    monkeypatch.setenv("BROKER_THROTTLE_RETRIES", "3")
    monkeypatch.setenv("BROKER_THROTTLE_BACKOFF", "0.5")
    slept, seen = [], iter([ThrottledError("slow down", code="429"), ThrottledError("again"), None])

    def call():
        e = next(seen)
        if e:
            raise RuntimeError(e)
        return "ok"
    r = refresh.Retry(lambda exc: exc.args[0] if isinstance(exc.args[0], Exception) else None, sleep=slept.append)
    assert r("x", call) == "ok" and r.throttled == 2 and r.calls == 3
    assert 0.5 <= slept[0] < 0.56 and 1.0 <= slept[1] < 1.11  # doubles, with a little jitter
    r = refresh.Retry(lambda exc: InvalidRequestError("bad", code="400"), sleep=slept.append)
    with pytest.raises(InvalidRequestError):
        r("x", call)
    assert settings.get("catalog_max_age_days") == 30.0


def test_one_refresh_per_cloud_at_a_time(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setenv("BROKER_HOME", str(tmp_path / "bh"))
    monkeypatch.setenv("BROKER_GCP_ENDPOINT", "http://127.0.0.1:9")  # never reached: the lock is taken first
    monkeypatch.setenv("BROKER_GCP_ANONYMOUS", "1")
    (tmp_path / "bh" / "catalogs").mkdir(parents=True)
    with open(tmp_path / "bh" / "catalogs" / ".gcp.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(refresh.BrokerError, match="another `broker catalog refresh` of gcp is running"):
            refresh.refresh("gcp")
    assert not list((tmp_path / "bh" / "catalogs").glob(".gcp-*"))
