"""The COPY staging cache is pruned (skybroker/storage/cache.py): entries unused for longer than
BROKER_STORAGE_CACHE_MAX_AGE_DAYS, and the least recently used over BROKER_STORAGE_CACHE_MAX_GB, are removed;
never one a recorded cluster copied from, nor one a copy in progress holds. It used to grow for ever."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from skybroker import state
from skybroker.state import ClusterRecord, NodeRecord
from skybroker.storage import cache
from skybroker.storage.base import parse_uri
from tests.conftest import REPO

DAY = 86400


def _entry(uri: str, cluster: str | None, age_days: float, size: int = 10):
    ref = parse_uri(uri)
    with cache.use(ref, cluster) as d:
        (d / "obj").write_bytes(b"x" * size)
    use = d.with_name(d.name + ".use")
    info = json.loads(use.read_text())
    info["used"] = time.time() - age_days * DAY
    use.write_text(json.dumps(info))
    return d


def _cluster(name: str) -> None:
    state.save_cluster(ClusterRecord(name, "local", None, None, "local", None, False, 1, 0.0, "UP", time.time(),
                                     nodes=[NodeRecord(f"i-{name}", 0, "127.0.0.1")]))


def test_old_entries_go_recent_and_live_ones_stay(monkeypatch):
    monkeypatch.setenv("BROKER_STORAGE_CACHE_MAX_AGE_DAYS", "7")
    old = _entry("s3://old-bucket/data", "gone-cluster", 30)
    recent = _entry("s3://recent-bucket/data", None, 1)
    live = _entry("gs://live-bucket", "dev", 30)
    _cluster("dev")
    assert cache.prune() == [old]
    assert not old.exists() and not old.with_name(old.name + ".use").exists()
    assert not old.with_name(old.name + ".lock").exists()
    assert recent.is_dir() and live.is_dir() and (live / "obj").is_file()
    assert cache.prune(gone="dev") == [live]  # `down dev`: its entry is no longer held


def test_size_cap_removes_least_recently_used_first(monkeypatch):
    monkeypatch.setenv("BROKER_STORAGE_CACHE_MAX_AGE_DAYS", "0")  # no age limit: the cap alone
    monkeypatch.setenv("BROKER_STORAGE_CACHE_MAX_GB", str(2500 / 1024 ** 3))  # 2500 bytes
    a = _entry("s3://cap-a/x", None, 3, 1000)
    b = _entry("s3://cap-b/x", None, 2, 1000)
    c = _entry("s3://cap-c/x", None, 1, 1000)
    assert cache.prune() == [a]
    assert b.is_dir() and c.is_dir()
    monkeypatch.setenv("BROKER_STORAGE_CACHE_MAX_GB", "0")
    assert cache.prune() == []


def test_an_entry_a_copy_holds_is_never_pruned(monkeypatch, tmp_path):
    """Another process is copying from the entry (it holds its lock): the prune leaves it; once the copy is
    done, it goes."""
    monkeypatch.setenv("BROKER_STORAGE_CACHE_MAX_AGE_DAYS", "7")
    d = _entry("s3://busy/x", None, 30)
    go = tmp_path / "go"
    code = ("import sys, time, pathlib; from skybroker.storage import cache; from skybroker.storage.base import "
            "parse_uri\nwith cache.use(parse_uri('s3://busy/x'), None) as d:\n    print('held', flush=True)\n"
            f"    while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "held"
        assert cache.prune(now=time.time() + 60 * DAY) == []
        assert d.is_dir()
    finally:
        go.write_text("")
        p.wait(timeout=30)
    assert cache.prune(now=time.time() + 60 * DAY) == [d]


def test_settings_list_the_limits():
    from skybroker import settings

    envs = {row[0] for row in settings.table()}
    assert {"BROKER_STORAGE_CACHE_MAX_AGE_DAYS", "BROKER_STORAGE_CACHE_MAX_GB"} <= envs
    assert settings.get("storage_cache_max_age_days") == 7.0 and settings.get("storage_cache_max_gb") == 20.0
