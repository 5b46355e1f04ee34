"""What server replicas with different BROKER_HOMEs share through PostgreSQL: cluster locks (advisory
locks, released when the holder's connection dies) and the broker's SSH key pair (stored encrypted,
copied 0600 into each home). On SQLite both stay in BROKER_HOME, as before."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from skybroker import state


@pytest.fixture
def pg(postgres, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.setenv("BROKER_DB", postgres.fresh_url())
    monkeypatch.setenv("BROKER_SECRETS_KEY", Fernet.generate_key().decode())
    state.db()
    return postgres


def _holder(home, name: str, seconds: float):
    """Another process (another replica's home) holding cluster `name`'s lock for `seconds`."""
    code = ("import sys, time\nfrom skybroker.locks import cluster_lock\n"
            f"with cluster_lock({name!r}):\n    print('held', flush=True)\n    time.sleep({seconds})\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, BROKER_HOME=str(home)),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_cluster_locks_hold_across_homes_and_die_with_their_holder(pg, tmp_path):
    from skybroker.intents import lock_is_free
    from skybroker.locks import ClusterBusy, cluster_lock

    p = _holder(tmp_path / "replica-a", "dev", 60)
    try:
        assert not lock_is_free("dev")  # this process has another BROKER_HOME, the same database
        with pytest.raises(ClusterBusy):
            with cluster_lock("dev", timeout=0):
                pass
        assert lock_is_free("other")
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 10
    while not lock_is_free("dev"):  # the holder died: PostgreSQL released its lock with its connection
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waited = []
    with cluster_lock("dev", on_wait=waited.append):
        assert not (tmp_path / "broker_home" / "locks").exists()  # no lock files on PostgreSQL
    assert waited == []


def test_a_waiting_command_gets_the_lock_when_the_holder_ends(pg, tmp_path):
    from skybroker.locks import cluster_lock

    p = _holder(tmp_path / "replica-a", "dev", 1.0)
    t0 = time.monotonic()
    waited = []
    with cluster_lock("dev", on_wait=waited.append, timeout=30):
        assert time.monotonic() - t0 > 0.5 and waited  # it waited, said so, then got it
    p.wait(10)


def test_replicas_share_one_ssh_key_through_the_database(pg, tmp_path, monkeypatch):
    from skybroker.runtime.keys import ensure_user_key

    a, b = tmp_path / "a", tmp_path / "b"
    pa, puba = ensure_user_key(a)
    pb, pubb = ensure_user_key(b)
    assert puba == pubb and pa.read_text() == pb.read_text() and pa.parent != pb.parent
    assert stat.S_IMODE(pb.stat().st_mode) == 0o600
    row = state.db().execute("SELECT private FROM ssh_keys").fetchone()
    assert b"PRIVATE KEY" not in bytes(row[0])  # stored encrypted
    from cryptography.fernet import Fernet

    monkeypatch.setenv("BROKER_SECRETS_KEY", Fernet.generate_key().decode())  # a replica with another key
    from skybroker.runtime.keys import SSHKeyError

    with pytest.raises(SSHKeyError, match="secrets key differs") as exc:
        ensure_user_key(tmp_path / "c")
    assert "BROKER_SECRETS_KEY" in exc.value.hint


def test_on_sqlite_the_key_and_the_locks_stay_in_the_home(tmp_path):
    from skybroker.locks import cluster_lock
    from skybroker.runtime.keys import ensure_user_key

    p1, _ = ensure_user_key(tmp_path / "a")
    p2, _ = ensure_user_key(tmp_path / "b")
    assert p1.read_text() != p2.read_text()
    with cluster_lock("dev"):
        assert (state.db_path().parent / "locks" / "dev.lock").exists()


def test_host_key_pins_are_the_replicas_common_truth(pg, tmp_path):
    """The first replica to see a node pins its key for all of them: another home (no local pin yet) refuses
    a different key for that instance and gets the pin copied for its system ssh; a forget on one replica is
    a forget for all (the database is the truth, a home's file only its copy)."""
    from skybroker.runtime.keys import HostKeyStore
    from skybroker.runtime.runner import HostKeyMismatch

    a, b = HostKeyStore(tmp_path / "a" / "known_hosts.json"), HostKeyStore(tmp_path / "b" / "known_hosts.json")
    assert a.check_or_pin("i-1", "ssh-ed25519", "KEY1") is True
    with pytest.raises(HostKeyMismatch):
        b.check_or_pin("i-1", "ssh-ed25519", "KEY2")  # a man in the middle for replica b
    assert b.check_or_pin("i-1", "ssh-ed25519", "KEY1") is False
    assert b.get("i-1") == ("ssh-ed25519", "KEY1")
    assert "KEY1" in b.known_hosts_file("i-1").read_text()
    b.forget("i-1")
    assert a.get("i-1") is None  # gone for every replica
    assert a.check_or_pin("i-1", "ssh-ed25519", "KEY3") is True  # a new instance behind the id: pinned anew
    with pytest.raises(HostKeyMismatch):
        b.check_or_pin("i-1", "ssh-ed25519", "KEY1")  # the stale copy in b's file does not count
