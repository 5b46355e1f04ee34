"""`broker catalog build` with bad inputs: every bad upstream file is an error naming the file (and the line or
column), exit 2, and the catalogs in --out stay as they were: the build is staged and moved in only when
complete."""
from __future__ import annotations

import pathlib
import subprocess

import pytest

from skybroker import catalog
from skybroker.catalog import build
from skybroker.errors import BrokerError
from tests.conftest import REPO, broker_cmd

UPSTREAM = REPO.parent / "shared" / "catalogs-upstream"
pytestmark = pytest.mark.skipif(not UPSTREAM.is_dir(), reason="shared/catalogs-upstream is absent")


@pytest.fixture
def upstream(tmp_path):
    """A small upstream folder: the first 300 rows of each real file (GCP's e2-standard rows: its first rows
    are GPU machine types, priced only with accelerator rows further down)."""
    up = tmp_path / "up"
    for cloud, rel in build.INPUTS.items():
        (up / rel).parent.mkdir(parents=True, exist_ok=True)
        lines = (UPSTREAM / rel).read_text().splitlines(keepends=True)
        if cloud == "gcp":
            lines = lines[:1] + [ln for ln in lines if ln.startswith("e2-standard")]
        (up / rel).write_text("".join(lines[:301]))
    return up


@pytest.fixture
def live(tmp_path, upstream, monkeypatch):
    """A catalog folder built from `upstream` (the one in use: BROKER_CATALOG_DIR), and its bytes."""
    out = tmp_path / "catlive"
    build.build(upstream, out, "2026-01-01")
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(out))
    catalog.clear_cache()
    yield out, _snapshot(out)
    catalog.clear_cache()


def _snapshot(d: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


AWS = "aws/vms_subset.csv"


def _aws_lines():
    return (UPSTREAM / AWS).read_text().splitlines(keepends=True)[:301]


BAD = {
    "empty": (b"", "the file is empty"),
    "wrong header": (b"a,b\n1,2\n", "lacks column(s) InstanceType"),
    "binary": (bytes(range(256)) * 20, "not UTF-8"),
    "header only": ("".join(_aws_lines()[:1]).encode() if UPSTREAM.is_dir() else b"", "header but no rows"),
    "bad number": ("".join(_aws_lines()[:5] + [_aws_lines()[5].replace(",8.0,", ",eight,", 1)]).encode()
                   if UPSTREAM.is_dir() else b"", "line 6: column MemoryGiB: 'eight' is not a number"),
    "short row": ("".join(_aws_lines()[:3] + ["x,y\n"]).encode() if UPSTREAM.is_dir() else b"",
                  "line 4: 2 field(s) where the header has 15"),
    "nul bytes": (b"InstanceType,Arch\n\x00\x00,\x00\n", "lacks column(s)"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_upstream_file_is_exit_2_and_leaves_the_catalog_in_use(kind, upstream, live):
    out, before = live
    data, needle = BAD[kind]
    (upstream / AWS).write_bytes(data)
    with pytest.raises(BrokerError) as e:
        build.main(["--upstream", str(upstream), "--out", str(out), "--date", "2026-02-02"])
    assert e.value.exit_code == 2
    assert str(upstream / AWS) in e.value.message and needle in e.value.message, e.value.message
    assert _snapshot(out) == before  # nothing written, no staging folder left
    assert catalog.specs("aws")  # plans still work


def test_crash_in_the_middle_leaves_the_catalog_in_use(upstream, live, monkeypatch):
    out, before = live
    (upstream / AWS).write_text("".join(_aws_lines()[:100]))  # a good file, but other catalogs than the live ones
    real = build.write_cloud

    def crash(acc, where):
        if acc.cloud == "azure":  # aws and gcp are written by then
            raise RuntimeError("disk gone")
        return real(acc, where)

    monkeypatch.setattr(build, "write_cloud", crash)
    with pytest.raises(RuntimeError):
        build.main(["--upstream", str(upstream), "--out", str(out), "--date", "2026-02-02"])
    assert _snapshot(out) == before


def test_good_build_replaces_the_catalog_and_keeps_other_files(upstream, live):
    out, before = live
    (out / "images.tsv").write_text("# kept\n")  # made by images.py, not rebuilt without its inputs
    build.main(["--upstream", str(upstream), "--out", str(out), "--date", "2026-02-02"])
    after = _snapshot(out)
    assert set(after) == set(before) | {"images.tsv"}
    assert b"2026-02-02" in after["meta.json"] and after["images.tsv"] == b"# kept\n"
    assert catalog.info()["build_date"] == "2026-02-02"  # the loader's cache was dropped


def test_failed_build_into_a_new_folder_leaves_no_folder(upstream, tmp_path):
    (upstream / AWS).write_bytes(b"")
    with pytest.raises(BrokerError):
        build.build(upstream, tmp_path / "new", "2026-01-01")
    assert not (tmp_path / "new").exists()


def test_out_is_a_file_is_exit_2_without_traceback(upstream, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep")
    r = subprocess.run(broker_cmd() + ["catalog", "build", "--upstream", str(upstream), "--out", str(f)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"--out {f} is not a folder" in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "keep"
