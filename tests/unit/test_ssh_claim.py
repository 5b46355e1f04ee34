"""The SSH pool claim file (~/.skybroker-claim, clouds/ssh.py) under races between two claimers, with the
claim's shell commands run by the POSIX sh of this machine in a scratch HOME (as they run on a pool host)."""
from __future__ import annotations

import subprocess

import pytest

from skybroker.clouds import ssh


@pytest.fixture
def host(tmp_path, monkeypatch):
    """_run_on runs the command here; `before_takeover` (if set) runs once, just before a takeover command:
    another claimer acting between our read of the claim and our takeover."""
    calls = {"before_takeover": None, "n": 0}

    def run_on(pool, h, cmd):
        calls["n"] += 1
        if calls["n"] == 2 and calls["before_takeover"] is not None:  # the claim read it; this takes it over
            hook, calls["before_takeover"] = calls["before_takeover"], None
            hook()
        r = subprocess.run(["sh", "-c", cmd], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=30)
        return r.stdout if r.returncode == 0 else None

    monkeypatch.setattr(ssh, "_run_on", run_on)
    calls["file"] = tmp_path / ".skybroker-claim"
    return calls


def test_a_free_host_is_claimed_once(host):
    assert ssh._claim(None, None, "dev-aaaaaa", "a" * 32, set())
    assert host["file"].read_text() == f"{'a' * 32} dev-aaaaaa\n"
    assert not ssh._claim(None, None, "dev-bbbbbb", "b" * 32, set())  # another home: held
    assert ssh._claim(None, None, "dev-aaaaaa", "a" * 32, {"dev-aaaaaa"})  # its own claim again: still its own
    assert not list(host["file"].parent.glob(".skybroker-claim.*"))  # no temporary file or lock left


@pytest.mark.parametrize("found", ["stale", "empty"])
def test_two_claimers_of_a_stale_or_empty_claim_do_not_both_win(host, found):
    """A's read finds this home's stale claim (a cluster it no longer knows), or an empty file (another home's
    claim still being written); before A's takeover runs, the other claimer gets the host (a second launch of
    this home took the stale claim over / the other home's write landed). A must then not claim the host too:
    before, its takeover overwrote the file and both used the host."""
    home = "a" * 32
    host["file"].write_text(f"{home} gone-aaaaaa\n" if found == "stale" else "")
    other = (f"{home} job-aaaaaa\n" if found == "stale" else f"{'b' * 32} dev-bbbbbb\n")
    host["before_takeover"] = lambda: host["file"].write_text(other)
    assert not ssh._claim(None, None, "dev-aaaaaa", home, {"dev-aaaaaa", "job-aaaaaa"})
    assert host["before_takeover"] is None  # it ran
    assert host["file"].read_text() == other
    assert not (host["file"].parent / ".skybroker-claim.lock").exists()


@pytest.mark.parametrize("found", ["stale", "empty"])
def test_a_stale_or_empty_claim_is_taken_over(host, found):
    home = "a" * 32
    host["file"].write_text(f"{home} gone-aaaaaa\n" if found == "stale" else "")
    assert ssh._claim(None, None, "dev-aaaaaa", home, {"dev-aaaaaa"})
    assert host["file"].read_text() == f"{home} dev-aaaaaa\n"
    assert not list(host["file"].parent.glob(".skybroker-claim.*"))


# A pool of two hosts (10.9.1.1, 10.9.1.2) whose claim commands run in a scratch HOME per host, for this process
# and for a launch process that is killed (os._exit, like SIGKILL) right after it claimed both.
_HOSTS = """
import os, subprocess, sys
from skybroker.clouds import ssh

def run_on(pool, h, cmd):
    home = os.path.join(BASE, h.ip)
    os.makedirs(home, exist_ok=True)
    r = subprocess.run(["sh", "-c", cmd], env={"HOME": home, "PATH": "/usr/bin:/bin"}, capture_output=True,
                       text=True, timeout=30)
    return r.stdout if r.returncode == 0 else None

ssh._run_on = run_on
ssh._port_open = lambda ip, port: True
"""
_CRASH = "import sys\nBASE = sys.argv[1]\n" + _HOSTS + """
from skybroker import state
from skybroker.clouds.base import ProvisionRequest

real, done = ssh._claim, []

def claim(*a):
    done.append(real(*a))
    if len(done) == 2:
        os._exit(137)  # killed after claiming both hosts, before run_instances returned their ids
    return done[-1]

ssh._claim = claim
state.add_intent("crashy", "ssh", "lab", None, "crashy-abc123")  # as provision._attempt does before the create
ssh.SSHCloud().run_instances(ProvisionRequest("crashy-abc123", "lab", None, "ssh-node", 2))
"""


def test_a_launch_killed_after_claiming_leaves_claims_its_home_releases(tmp_path, monkeypatch):
    """A launch SIGKILLed after writing its claims on the hosts but before recording them used to leave
    `~/.skybroker-claim` on each host, blocking every other home until removed by hand. Each host is now in the
    launch's intent before its claim is written: the home's next command (intents.reconcile) releases them."""
    import sys

    from skybroker import intents, state
    from skybroker.paths import broker_home
    from tests.conftest import REPO

    broker_home().mkdir(parents=True, exist_ok=True)
    (broker_home() / "ssh_node_pools.yaml").write_text("lab:\n  user: u\n  hosts: [10.9.1.1, 10.9.1.2]\n")
    base = tmp_path / "hosts"
    r = subprocess.run([sys.executable, "-c", _CRASH, str(base)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 137, r.stderr
    claims = [base / ip / ".skybroker-claim" for ip in ("10.9.1.1", "10.9.1.2")]
    me = f"{state.home_id()} crashy-abc123\n"
    assert [c.read_text() for c in claims] == [me, me]
    assert [it["instance_ids"] for it in state.open_intents("crashy")] == [
        ["ssh:lab:u@10.9.1.1:22", "ssh:lab:u@10.9.1.2:22"]]

    from skybroker.clouds.ssh_pools import PoolHost

    for name in ("_run_on", "_port_open"):  # undone at the end of the test
        monkeypatch.setattr(ssh, name, getattr(ssh, name))
    exec(_HOSTS, {"BASE": str(base)})  # this process's claim commands run on the same scratch hosts
    intents.reconcile()
    assert not any(c.exists() for c in claims), [c.read_text() for c in claims if c.exists()]
    assert state.open_intents("crashy") == []
    assert ssh._claim(None, PoolHost("10.9.1.1", 22, "u", None), "dev-other", "b" * 32, set())  # another home's now
