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
