"""BROKER_HOME and its files owned by another user, not writable or on a read-only mount, through the
real CLI on the `local` cloud: refused at once (exit 2) naming the path and saying to fix its owner or
mode, before any cloud is touched and without the "corrupt, move it aside" advice that would lose a
healthy database.

"Another user" is root without its file-permission override (`setpriv` dropping every capability) and
files given to uid 1001; the read-only home is a read-only bind mount in a private mount namespace.
Skipped when not root or without setpriv/unshare.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import broker_cmd
from tests.integration.local_helpers import broker, broker_home, kill_leftovers, node_dir, status_json, write_task

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                 reason="needs root and setpriv (to act as root without its file-permission override)")]

OTHER = 1001


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    home = broker_home()
    if home.exists():
        for p in [home, *home.rglob("*")]:
            os.lchown(p, 0, 0)
        os.chmod(home, 0o700)
    kill_leftovers(home)


def flat(text: str) -> str:
    return " ".join(text.split())


def unprivileged(*args, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """`broker ARGS` as root without CAP_DAC_OVERRIDE & co: files of uid 1001 are another user's."""
    env = dict(os.environ)
    env.pop("BROKER_DEBUG", None)
    cmd = (prefix or []) + ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *broker_cmd(), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


def _clean(r) -> str:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert "corrupt" not in out and "mv " not in out, out  # never the advice that loses a healthy database
    return flat(r.stderr)


def _launch(tmp_path, name: str) -> None:
    task = write_task(tmp_path / "t.yaml", name=name, run="sleep 120")
    r = broker("launch", "-y", "-d", "-c", name, task)
    assert r.returncode == 0, r.stderr


def test_a_state_db_of_another_user_is_refused_before_down_touches_the_nodes(tmp_path):
    _launch(tmp_path, "ro1")
    db = broker_home() / "state.db"
    os.chown(db, OTHER, 0)  # as after one `sudo broker`
    os.chmod(db, 0o644)
    r = unprivileged("down", "-y", "ro1")
    err = _clean(r)
    assert r.returncode == 2, r.stderr
    assert f"the state database file {db} is not writable by you" in err and "chown" in err
    assert node_dir("ro1", 0).exists()  # nothing was terminated
    assert [(c["name"], c["status"]) for c in status_json()] == [("ro1", "UP")]


def test_a_broker_home_of_another_user_is_said_as_such(tmp_path):
    _launch(tmp_path, "ro2")
    home = broker_home()
    files = sorted(p.name for p in home.iterdir())
    for p in [home, *home.rglob("*")]:
        os.lchown(p, OTHER, 0)
    os.chmod(home, 0o755)
    os.chmod(home / "state.db", 0o644)
    r = unprivileged("status")
    err = _clean(r)
    assert r.returncode == 2
    assert f"BROKER_HOME {home} is not writable by you" in err and "fix its owner or mode" in err
    os.chmod(home, 0o700)
    r = unprivileged("status")
    err = _clean(r)
    assert r.returncode == 2
    assert f"BROKER_HOME {home} is not readable by you" in err and "api.json" not in err and "logout" not in err
    assert sorted(p.name for p in home.iterdir()) == files  # nothing moved or made
    assert [c["name"] for c in status_json()] == ["ro2"]  # the healthy database, as it was


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare")
def test_a_read_only_broker_home_is_said_as_such(tmp_path):
    _launch(tmp_path, "ro3")
    home = broker_home()
    env = dict(os.environ)
    env.pop("BROKER_DEBUG", None)
    script = f'mount --bind -o ro "{home}" "{home}" && exec "$@"'
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *broker_cmd(), "status"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    if "mount" in r.stderr and r.returncode != 2:
        pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")
    err = _clean(r)
    assert r.returncode == 2, r.stderr
    assert f"BROKER_HOME {home} is not writable by you (a read-only file system)" in err


def test_a_lock_file_of_another_user_is_named(tmp_path):
    home = broker_home()
    assert broker("status").returncode == 0
    lock = home / "locks" / "dev.lock"
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    lock.write_text("")
    os.chown(lock, OTHER, 0)
    os.chmod(lock, 0o644)
    r = unprivileged("down", "-y", "dev")
    err = _clean(r)
    assert r.returncode == 2, r.stderr
    assert f"cannot use the lock file {lock}: Permission denied" in err and "chown" in err
