"""Command runners against a sandbox directory (LocalRunner) and real sshd nodes (SSHRunner)."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skybroker.errors import BrokerError
from skybroker.runtime import (CommandTimeout, HostKeyMismatch, NodeUnreachable, RunResult,
                               run_parallel)
from skybroker.runtime import sync as rsync
from skybroker.runtime.keys import HostKeyStore, ensure_user_key
from skybroker.runtime.local_runner import LocalRunner
from skybroker.runtime.ssh_runner import SSHRunner

SECRET = "s3cr3t-Value with 'quotes' \"and\" $dollars\nnewline"
NASTY = {
    "SPACES": "a b  c",
    "QUOTES": "it's \"quoted\" `backticks` $(not run) \\ backslash",
    "NEWLINES": "line1\nline2\n\nline4",
    "UNICODE": "héllo wörld ✓",
    "EMPTY": "",
    "GLOB": "* ? [a-z]",
}


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ssh_node(node_pool, node_key):
    """One long-lived node shared by the non-destructive SSH tests."""
    node = node_pool.add_node(node_key[1])
    yield node
    node_pool.kill(node)


def make_ssh(node, node_key, home: Path, node_id: str = "c-node-0", **kw) -> SSHRunner:
    store = HostKeyStore(home / "known_hosts.json")
    return SSHRunner(node_id, node.ip, node.port, node.user, node_key[0], store,
                     instance_id=kw.pop("instance_id", node.instance_id), **kw)


@pytest.fixture(params=["local", "ssh"])
def runner(request, runtime_home, tmp_path):
    if request.param == "local":
        r = LocalRunner("local-node-0", tmp_path / "node-home")
        r.node_home = r.home  # where the node's home is, as seen from here
    else:
        node = request.getfixturevalue("ssh_node")
        key = request.getfixturevalue("node_key")
        r = make_ssh(node, key, runtime_home)
        r.node_home = node.home
    yield r
    r.close()


def wait_thread(th: threading.Thread, bound: float) -> None:
    th.join(bound)
    assert not th.is_alive(), f"still hanging after {bound}s"


def run_in_thread(fn):
    box: dict = {}

    def target():
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
        box["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


# ------------------------------------------------------------------------------- both runners
def test_exit_code_and_output(runner):
    r = runner.run("echo out; echo err >&2; exit 7")
    assert r == RunResult(7, "out\n", "err\n")
    assert runner.run("true").exit_code == 0
    assert runner.run("exit 0").ok


def test_home_cwd_and_tilde(runner):
    home = runner.run('echo "$HOME"; pwd').stdout.split("\n")
    assert home[0] == home[1]  # commands start in the node's home
    runner.run("mkdir -p sub/dir")
    assert runner.run("pwd", cwd="sub/dir").stdout.strip() == f"{home[0]}/sub/dir"
    assert runner.run("pwd", cwd="~/sub").stdout.strip() == f"{home[0]}/sub"
    assert runner.run("echo ~").stdout.strip() == home[0]
    missing = runner.run("echo never", cwd="no/such/dir")
    assert missing.exit_code != 0 and "never" not in missing.stdout


def test_bash_semantics_and_stdin(runner):
    r = runner.run("set -o pipefail; arr=(a b c); echo ${#arr[@]}; false | true")
    assert r.exit_code == 1 and r.stdout == "3\n"
    assert runner.run("cat", stdin=b"line one\nline two\n").stdout == "line one\nline two\n"
    assert runner.run("cat | wc -c").stdout.strip() == "0"  # no stdin given: EOF, never hangs
    blob = os.urandom(300_000)
    r = runner.run("sha256sum", stdin=blob)
    assert r.stdout.split()[0] == hashlib.sha256(blob).hexdigest()


def test_signal_exit_code(runner):
    assert runner.run("kill -KILL $$").exit_code == 137


def test_env_values_arrive_intact(runner):
    env = dict(NASTY, SECRET_TOKEN=SECRET)
    names = list(env)
    r = runner.run("".join(f'printf "%s\\0" "${k}"; ' for k in names), env=env)
    assert r.exit_code == 0
    assert r.stdout.split("\0")[:-1] == [env[k] for k in names]
    # exported to child processes too, and None means "unset"
    r = runner.run('python3 -c "import os; print(os.environ[\'UNICODE\'])"; echo "[${GONE-unset}]"',
                   env={"UNICODE": NASTY["UNICODE"], "GONE": None})
    assert r.stdout == f"{NASTY['UNICODE']}\n[unset]\n"


def test_secret_env_not_on_any_command_line(runner):
    # scan every process's argv on the node while the command (and its wrapper) runs
    r = runner.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -cF -f <(printf '%s\\n' \"$SECRET_TOKEN\")",
                   env={"SECRET_TOKEN": "tok-" + "9" * 20})
    assert r.stdout.strip() == "0", "a secret value is visible in a process command line"


def test_invalid_env_rejected_without_value(runner):
    with pytest.raises(BrokerError) as ei:
        runner.run("true", env={"BAD-NAME": SECRET})
    assert SECRET not in str(ei.value) and "BAD-NAME" in str(ei.value)


def test_stream_lines_in_order_as_produced(runner):
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    r = runner.run("for i in 1 2 3; do echo line$i; sleep 0.3; done; echo oops >&2; printf tail",
                   stream=lambda line: seen.append((time.monotonic() - t0, line)))
    end = time.monotonic() - t0
    assert [line for _, line in seen] == ["line1", "line2", "line3", "oops", "tail"]
    assert seen[0][0] < end - 0.4, "first line was not delivered while the command was running"
    assert r.stdout == "line1\nline2\nline3\ntail" and r.stderr == "oops\n"


def test_timeout_kills_every_process(runner):
    tag = f"{os.getpid() % 1000 + 3000}"
    cmd = f"sleep {tag}1 & (setsid sleep {tag}2 &); sleep {tag}3"
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as ei:
        runner.run(f"echo started; {cmd}", timeout=1, env={"SECRET_TOKEN": SECRET})
    assert time.monotonic() - t0 < 20
    assert ei.value.result.exit_code == 124 and ei.value.result.stdout == "started\n"
    assert SECRET not in str(ei.value)
    left = runner.run(f"ps -eo args | grep -c '^sleep {tag}'")
    assert left.stdout.strip() == "0", "processes of the timed-out command survived"


def test_interrupting_stream_callback_kills_command(runner):
    tag = f"{os.getpid() % 1000 + 5000}"

    def boom(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(f"echo go; sleep {tag}", stream=boom)
    assert runner.run(f"ps -eo args | grep -c '^sleep {tag}'").stdout.strip() == "0"


def test_put_file(runner):
    data = bytes(range(256)) * 100
    runner.put_file(data, "~/deep/dir/blob.bin", mode=0o600)
    r = runner.run("stat -c %a deep/dir/blob.bin; sha256sum < deep/dir/blob.bin")
    mode, digest = r.stdout.split()[:2]
    assert mode == "600" and digest == hashlib.sha256(data).hexdigest()
    runner.put_file(b"#!/bin/sh\necho hi\n", "bin/tool", mode=0o755)  # relative = under home
    assert runner.run("bin/tool").stdout == "hi\n"
    runner.put_file(b"v2", "~/deep/dir/blob.bin")  # overwrite
    assert (runner.node_home / "deep/dir/blob.bin").read_bytes() == b"v2"


def make_workdir(root: Path) -> Path:
    files = {
        "a.txt": "a", "x.log": "ignored by root .gitignore", ".gitignore": "*.log\nbuild/\n",
        "build/out.bin": "ignored dir", "src/main.py": "print(1)", "src/debug.log": "ignored",
        "sub/.gitignore": "# comment\nsecret.txt\n", "sub/secret.txt": "ignored (nested)",
        "sub/keep.txt": "kept", "other/secret.txt": "kept: nested rule only covers sub/",
        ".brokerignore": "data/\n", "data/big.bin": "ignored by .brokerignore",
        "deep/nested/.brokerignore": "*.tmp\n", "deep/nested/x.tmp": "ignored", "deep/nested/y.txt": "y",
        ".skyignore": "ckpt/\n", "ckpt/model.pt": "ignored by SkyPilot's .skyignore",
        ".git/config": "[core]", ".git/objects/ab/cdef": "obj", "sub/.git": "gitdir: ../.git/x",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


EXPECTED_SYNCED = {
    ".brokerignore", ".gitignore", ".skyignore", "a.txt", "src/main.py", "sub/.gitignore", "sub/keep.txt",
    "other/secret.txt", "deep/nested/.brokerignore", "deep/nested/y.txt",
}


def remote_files(runner, d: str) -> set[str]:
    r = runner.run("find . -type f | sed 's|^\\./||' | sort", cwd=d)
    assert r.exit_code == 0, r.stderr
    return set(r.stdout.split())


def test_sync_up_honours_ignore_files_and_never_ships_git(runner, tmp_path):
    wd = make_workdir(tmp_path / "wd")
    runner.sync_up(str(wd), "~/sky_workdir")
    assert remote_files(runner, "~/sky_workdir") == EXPECTED_SYNCED
    assert runner.run("cat other/secret.txt", cwd="sky_workdir").stdout.startswith("kept")

    # --delete removes what vanished locally, but keeps ignored files on the node
    (wd / "a.txt").unlink()
    runner.run("echo stale > stale.txt; echo remote-log > run.log", cwd="sky_workdir")
    runner.sync_up(str(wd), "~/sky_workdir", delete=True)
    assert remote_files(runner, "~/sky_workdir") == EXPECTED_SYNCED - {"a.txt"} | {"run.log"}

    # ignore_files=False ships everything (file_mounts semantics)
    runner.sync_up(str(wd), "mounts/raw", ignore_files=False)
    assert {".git/config", "data/big.bin", "x.log", "sub/secret.txt"} <= remote_files(runner, "mounts/raw")


def test_sync_down(runner, tmp_path):
    runner.run("mkdir -p out/ckpt && echo 1 > out/a && head -c 5000 /dev/urandom > out/ckpt/b.bin")
    digest = runner.run("sha256sum < out/ckpt/b.bin").stdout.split()[0]
    dest = tmp_path / "down"
    runner.sync_down("~/out", str(dest))
    assert (dest / "a").read_text() == "1\n"
    assert hashlib.sha256((dest / "ckpt/b.bin").read_bytes()).hexdigest() == digest


def test_alive(runner):
    assert runner.alive() is True


# ----------------------------------------------------------------------------------- SSH only
def sshd_accepts(node) -> int:
    return node.log_path.read_text(errors="replace").count("Accepted publickey")


def test_ssh_connection_reused(ssh_node, node_key, runtime_home, tmp_path):
    before = sshd_accepts(ssh_node)
    r = make_ssh(ssh_node, node_key, runtime_home)
    for i in range(10):
        assert r.run(f"echo {i}").stdout == f"{i}\n"
    r.put_file(b"x", "reuse.txt")
    assert r.alive()
    assert r.connect_count == 1
    assert sshd_accepts(ssh_node) - before == 1  # the node saw one login (rsync would add its own)
    r.close()


def test_ssh_reconnects_once_after_dropped_connection(ssh_node, node_key, runtime_home):
    r = make_ssh(ssh_node, node_key, runtime_home)
    assert r.run("true").ok
    # kill this connection's sshd session process on the node: the transport drops
    with pytest.raises(NodeUnreachable):
        r.run("pkill -KILL -u broker -f '^sshd: broker@'; sleep 5")
    assert r.run("echo back").stdout == "back\n"
    assert r.connect_count == 2
    r.close()


def test_ssh_host_key_pinned_per_instance(node_pool, node_key, runtime_home):
    node = node_pool.add_node(node_key[1])
    store = HostKeyStore(runtime_home / "known_hosts.json")
    first = SSHRunner("c-node-0", node.ip, 22, node.user, node_key[0], store,
                      instance_id=node.instance_id)
    assert first.run("true").ok
    assert store.get(node.instance_id) == tuple(node.host_key.split())
    first.close()

    # the node is replaced: same IP, new host key
    old_id = node.instance_id
    node_pool.kill(node)
    new = node_pool.add_node(node_key[1])
    assert new.ip == node.ip and new.host_key != node.host_key
    same_id = SSHRunner("c-node-0", new.ip, 22, new.user, node_key[0], store, instance_id=old_id)
    with pytest.raises(HostKeyMismatch) as ei:
        same_id.run("true")
    assert old_id in str(ei.value)
    with pytest.raises(HostKeyMismatch):  # and again: never accepted, never re-pinned
        same_id.sync_up(str(runtime_home), "x")
    assert store.get(old_id) == tuple(node.host_key.split())

    fresh = SSHRunner("c-node-0", new.ip, 22, new.user, node_key[0], store,
                      instance_id=new.instance_id)
    assert fresh.run("hostname").ok  # a new instance at a reused IP is fine
    fresh.close()
    node_pool.kill(new)


def test_rsync_ssh_verifies_pinned_key(node_pool, ssh_node, node_key, runtime_home, tmp_path):
    """The system ssh used by rsync refuses a host whose key is not the pinned one."""
    store = HostKeyStore(runtime_home / "known_hosts.json")
    r = make_ssh(ssh_node, node_key, runtime_home)
    assert r.run("true").ok
    other = node_pool.add_node(node_key[1])
    try:
        ssh = rsync.ssh_command(key_path=node_key[0], port=22,
                                known_hosts_file=store.known_hosts_file(ssh_node.instance_id),
                                host_key_alias=store.alias(ssh_node.instance_id))
        good = subprocess.run(ssh + [f"broker@{ssh_node.ip}", "echo ok"], capture_output=True,
                              text=True, timeout=30)
        assert good.stdout == "ok\n", good.stderr
        bad = subprocess.run(ssh + [f"broker@{other.ip}", "echo ok"], capture_output=True, text=True,
                             timeout=30)
        assert bad.returncode == 255 and "Host key verification failed" in bad.stderr
    finally:
        node_pool.kill(other)
        r.close()


def test_ssh_unreachable_and_auth_errors(ssh_node, node_key, runtime_home, tmp_path):
    wrong_port = SSHRunner("c-node-9", ssh_node.ip, 2222, "broker", node_key[0],
                           HostKeyStore(runtime_home / "kh.json"), connect_timeout=3)
    with pytest.raises(NodeUnreachable) as ei:
        wrong_port.run("true", env={"SECRET_TOKEN": SECRET})
    assert "c-node-9" in str(ei.value) and SECRET not in str(ei.value)
    assert wrong_port.alive(timeout=2) is False

    other_key, _ = ensure_user_key(tmp_path / "other-user")
    stranger = SSHRunner("c-node-0", ssh_node.ip, 22, "broker", other_key,
                         HostKeyStore(runtime_home / "kh2.json"))
    with pytest.raises(NodeUnreachable, match="authentication"):
        stranger.run("true")


def test_ssh_kill_node_mid_command(node_pool, node_key, runtime_home, caplog):
    caplog.set_level(logging.DEBUG)
    node = node_pool.add_node(node_key[1])
    r = make_ssh(node, node_key, runtime_home, connect_timeout=3)
    assert r.run("true").ok
    th, box = run_in_thread(lambda: r.run("echo started; sleep 300", env={"SECRET_TOKEN": SECRET}))
    time.sleep(0.5)
    node_pool.kill(node)
    wait_thread(th, 20)
    assert isinstance(box.get("error"), NodeUnreachable), box
    assert SECRET not in str(box["error"])
    assert SECRET not in caplog.text
    print(f"preemption noticed after {box['elapsed'] - 0.5:.2f}s")
    # and the next call fails fast too: the reconnect attempt finds nobody
    with pytest.raises(NodeUnreachable):
        r.run("true", env={"SECRET_TOKEN": SECRET})
    r.close()


def test_ssh_network_cut_mid_command(node_pool, node_key, runtime_home):
    node = node_pool.add_node(node_key[1])
    r = make_ssh(node, node_key, runtime_home, connect_timeout=3)
    assert r.run("true").ok
    th, box = run_in_thread(lambda: r.run("sleep 300"))
    time.sleep(0.5)
    t0 = time.monotonic()
    node_pool.cut_network(node)
    wait_thread(th, 20)  # TCP_USER_TIMEOUT: noticed in seconds, not minutes
    assert isinstance(box.get("error"), NodeUnreachable), box
    print(f"network cut noticed after {time.monotonic() - t0:.1f}s")
    assert r.alive(timeout=2) is False
    node_pool.restore_network(node)
    assert r.alive(timeout=5) is True  # back: reconnects
    r.close()
    node_pool.kill(node)


def test_ssh_four_nodes_in_parallel(node_pool, node_key, runtime_home, tmp_path):
    nodes = node_pool.start(4, node_key[1])
    runners = [make_ssh(n, node_key, runtime_home, node_id=f"c-node-{i}") for i, n in enumerate(nodes)]
    wd = make_workdir(tmp_path / "wd")
    try:
        run_parallel(runners, lambda r: r.sync_up(str(wd), "~/sky_workdir"))
        results = run_parallel(runners, lambda r: r.run(
            "date +%s.%N; sleep 2; hostname; ls -A sky_workdir | wc -l; date +%s.%N"))
        starts, names, counts, ends = zip(*(res.stdout.split() for res in results))
        assert len(set(names)) == 4
        assert set(counts) == {str(len({p.split('/')[0] for p in EXPECTED_SYNCED}))}
        assert max(map(float, starts)) < min(map(float, ends)), "commands did not overlap"
        assert all(r.connect_count == 1 for r in runners)
    finally:
        for r in runners:
            r.close()
        for n in nodes:
            node_pool.kill(n)


# ---------------------------------------------------------------------------------- keys & sync
def test_user_key_generated_once_under_lock(tmp_path):
    home = tmp_path / "bh"
    code = ("import sys; from pathlib import Path; from skybroker.runtime.keys import ensure_user_key;"
            "print(ensure_user_key(Path(sys.argv[1]))[1])")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(4)]
    pubs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(pubs) == 1 and next(iter(pubs)).startswith(("ssh-ed25519 ", "ssh-rsa "))
    priv, pub = ensure_user_key(home)
    assert pub in pubs
    assert (priv.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in (home / "keys").iterdir() if not p.name.startswith(".")) == \
        sorted([priv.name, priv.name + ".pub"])


def test_rsync_argv():
    argv = rsync.rsync_argv("wd/", "u@h:sky_workdir/", ignore_files=True, delete=True,
                            ssh_command=["ssh", "-i", "/k ey"])
    assert argv[1:4] == ["-a", "--no-owner", "--no-group"]
    assert "--exclude=.git" in argv and "--filter=:- .gitignore" in argv
    assert "--filter=:- .brokerignore" in argv and "--delete" in argv
    assert argv[argv.index("-e") + 1] == "ssh -i '/k ey'"
    assert "--exclude=.git" not in rsync.rsync_argv("a/", "b/")
    assert rsync.remote_path("~/sky_workdir") == "sky_workdir" and rsync.remote_path("~") == "."


def test_missing_rsync_is_a_broker_error(monkeypatch, tmp_path):
    """Remote sync needs rsync (a clear error with the install hint); the local runner copies without it."""
    monkeypatch.setattr(rsync.shutil, "which", lambda name: None)
    with pytest.raises(BrokerError) as ei:
        rsync.require_rsync()
    assert "rsync" in str(ei.value) and "install" in (ei.value.hint or "")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    LocalRunner("n", tmp_path / "h").sync_up(str(src), "wd")
    assert (tmp_path / "h" / "wd" / "f.txt").read_text() == "x"
