"""The local cloud on a full disk: provisioning says so once (the path, the free space, what to do), exits 4
and leaves nothing of the cluster behind. The disk is made "full" by a write that raises ENOSPC in the real
CLI process (no disk is filled), and, when this test runs as root, by a real 1 MiB tmpfs filled to the brim."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, broker_cmd

TASK = "name: tiny\nresources:\n  infra: local\nrun: echo tiny\n"

# The real CLI, with every node.json write failing as on a full disk (errno 28, no file name: a flush).
_FULL_CLI = ("import errno, os, sys\n"
             "from skybroker.clouds import local\n"
             "def full(path, data):\n"
             "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
             "local._write_json = full\n"
             "from skybroker.entry import main\n"
             "sys.argv = ['broker'] + sys.argv[1:]\n"
             "main()\n")


def _run(argv, env, tmp_path, cli=None):
    cmd = [sys.executable, "-c", cli, *argv] if cli else broker_cmd() + argv
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _check(r, root: Path, env, tmp_path):
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "the local cloud's disk is full" in r.stderr and str(root) in r.stderr, r.stderr
    assert "KiB free" in r.stderr, r.stderr
    assert "Hint:" in r.stderr and "BROKER_LOCAL_ROOT" in r.stderr, r.stderr
    assert r.stderr.count("No space left on device") == 1, r.stderr  # said once, inside the one error
    assert not (root / "full").exists(), list(root.iterdir())  # nothing of the cluster left behind
    st = _run(["status", "--json"], env, tmp_path)
    assert st.returncode == 0, st.stderr
    assert [c["name"] for c in json.loads(st.stdout)] == [], st.stdout


def test_full_disk_on_provisioning_is_one_clear_error(tmp_path):
    root = tmp_path / "localroot"
    env = dict(os.environ, BROKER_LOCAL_ROOT=str(root), PYTHONPATH=str(REPO))
    (tmp_path / "t.yaml").write_text(TASK)
    r = _run(["launch", "-y", "-c", "full", str(tmp_path / "t.yaml")], env, tmp_path, cli=_FULL_CLI)
    _check(r, root, env, tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_tmpfs_on_provisioning(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        try:  # fill it to the last byte
            with open(mnt / "fill", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        root = mnt / "root"
        env = dict(os.environ, BROKER_LOCAL_ROOT=str(root), PYTHONPATH=str(REPO))
        (tmp_path / "t.yaml").write_text(TASK)
        r = _run(["launch", "-y", "-c", "full", str(tmp_path / "t.yaml")], env, tmp_path)
        _check(r, root, env, tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
