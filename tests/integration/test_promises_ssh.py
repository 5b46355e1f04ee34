"""SSH-pool promises on real sshd nodes (network namespaces; root only):

  - teardown of a pool host that is the client's own machine (the same user, the same home) removes only
    what skybroker put there — never the client's state, keys, or a directory the user already had;
  - a changed host key is never accepted, never reported as "unreachable", and still allows `down`
    (with a warning); `broker hostkeys forget` drops a pin.
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, broker_cmd


def run(*args, env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(broker_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, stdin=subprocess.DEVNULL, env=e)


def flat(text: str) -> str:
    return " ".join(text.split())


def _chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.lchown(name, pw.pw_uid, pw.pw_gid)


def test_teardown_on_the_clients_own_machine_deletes_nothing_of_the_clients(node_pool, node_key, tmp_path):
    key, pub = node_key
    (node,) = node_pool.start(1, pub)
    try:
        home = node.home  # the node's home, seen from here: the client uses the very same directory
        env = {"HOME": str(home)}
        env_no_bh = {k: v for k, v in os.environ.items() if k != "BROKER_HOME"}
        env_no_bh.update(env)
        client = home / ".broker"  # the client's default BROKER_HOME is inside the host's home
        client.mkdir()
        (client / "ssh_node_pools.yaml").write_text(f"me:\n  user: {node.user}\n  identity_file: {key}\n"
                                                    f"  hosts: [{node.ip}]\n")
        (home / "sky_workdir").mkdir()
        (home / "sky_workdir" / "mine.txt").write_text("the user's own file")
        (home / "important.txt").write_text("keep me")
        _chown_tree(home / "sky_workdir", node.user)  # the user's own directory, owned by them
        wd = tmp_path / "wd"
        wd.mkdir()
        (wd / "code.py").write_text("print('hi')")
        task = tmp_path / "t.yaml"
        task.write_text(f"name: self\nworkdir: {wd}\nresources: {{infra: ssh/me}}\nrun: ls ~/sky_workdir\n")

        def broker(*args):
            return subprocess.run(broker_cmd() + list(map(str, args)), capture_output=True, text=True, timeout=120,
                                  cwd=REPO, stdin=subprocess.DEVNULL, env=env_no_bh)

        r = broker("launch", "-y", "-c", "self", task)
        assert r.returncode == 0, r.stderr
        assert "code.py" in r.stdout and "mine.txt" in r.stdout
        assert (client / "state.db").exists() and (home / ".skybroker-node" / "agent.py").exists()
        _chown_tree(client, node.user)  # the host's user could delete the client's files, if it tried
        before = sorted(p.relative_to(client).as_posix() for p in client.rglob("*"))
        r = broker("down", "-y", "self")
        assert r.returncode == 0, r.stderr
        assert not (home / ".skybroker-node").exists()  # what skybroker put there is gone
        assert (home / "important.txt").read_text() == "keep me"
        assert (home / "sky_workdir" / "mine.txt").read_text() == "the user's own file"  # it existed before
        assert (client / "state.db").exists() and (client / "keys").is_dir()
        after = sorted(p.relative_to(client).as_posix() for p in client.rglob("*"))
        assert {"state.db", "state.id", "keys", "ssh_node_pools.yaml"} <= set(after), after
        # what down removed is the broker's own bookkeeping of this cluster: its lock, host key pins, ssh config
        assert set(before) - set(after) <= {p for p in before if p.startswith(("locks/", "ssh/")) or "known_hosts" in p}
        r = broker("status", "--json")  # the client's state still works
        assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    finally:
        if node.alive:
            node_pool.kill(node)


def test_changed_host_key_is_refused_but_down_still_works(node_pool, node_key, tmp_path):
    key, pub = node_key
    (node,) = node_pool.start(1, pub)
    bh = Path(os.environ["BROKER_HOME"])
    bh.mkdir(parents=True, exist_ok=True)
    (bh / "ssh_node_pools.yaml").write_text(f"lab:\n  user: {node.user}\n  identity_file: {key}\n  hosts: [{node.ip}]\n")
    task = tmp_path / "t.yaml"
    task.write_text("name: hk\nresources: {infra: ssh/lab}\nrun: echo first\n")
    assert run("launch", "-y", "-c", "hk", task).returncode == 0
    node_pool.kill(node)
    new = node_pool.add_node(pub)  # the same IP, a new machine with a new host key (a re-imaged host)
    try:
        assert new.ip == node.ip
        r = run("exec", "hk", "--", "echo should-not-run")
        assert r.returncode != 0
        assert "host key" in flat(r.stderr) and "changed" in flat(r.stderr) and "unreachable" not in r.stderr
        assert "Traceback" not in r.stderr and "should-not-run" not in r.stdout

        from skybroker.clouds.common import host_keys
        from skybroker.runtime.runner import HostKeyMismatch
        from skybroker.runtime.ssh_runner import SSHRunner

        rec = json.loads(run("status", "--json").stdout)[0]
        iid = f"ssh:lab:{node.user}@{node.ip}:22"
        runner = SSHRunner("hk-node-0", node.ip, 22, node.user, key, host_keys(), connect_timeout=5, instance_id=iid)
        with pytest.raises(HostKeyMismatch):
            runner.alive(5)  # a changed key is not "unreachable"
        runner.close()
        assert rec["name"] == "hk"

        r = run("down", "-y", "hk")
        assert r.returncode == 0, r.stderr
        assert "host key changed" in flat(r.stderr) and "hostkeys forget" in flat(r.stderr)
        assert json.loads(run("status", "--json").stdout) == []
        assert host_keys().get(iid) is None  # down forgot the pin of the instance it released
        # the host is free again and a new launch pins the new key
        r = run("launch", "-y", "-c", "hk2", task)
        assert r.returncode == 0, r.stderr
        assert host_keys().get(iid)[1] in new.host_key
        # `broker hostkeys forget` drops the pin explicitly
        r = run("hostkeys", "forget", "hk2")
        assert r.returncode == 0 and iid in r.stderr
        assert host_keys().get(iid) is None
        assert run("down", "-y", "hk2").returncode == 0
    finally:
        if new.alive:
            node_pool.kill(new)


def test_ssh_cluster_works_after_a_launch_and_goes_with_down(node_pool, node_key, tmp_path):
    key, pub = node_key
    nodes = node_pool.start(2, pub)
    try:
        bh = Path(os.environ["BROKER_HOME"])
        bh.mkdir(parents=True, exist_ok=True)
        hosts = ", ".join(n.ip for n in nodes)
        (bh / "ssh_node_pools.yaml").write_text(f"lab:\n  user: {nodes[0].user}\n  identity_file: {key}\n"
                                                f"  hosts: [{hosts}]\n")
        task = tmp_path / "t.yaml"
        task.write_text("name: s\nnum_nodes: 2\nresources: {infra: ssh/lab}\nrun: echo up\n")
        assert run("launch", "-y", "-c", "sshy", task).returncode == 0
        user_cfg = Path(os.environ["HOME"]) / ".ssh" / "config"
        assert f"Include {bh}/ssh/*.conf" in user_cfg.read_text()
        for alias, node in (("sshy", nodes[0]), ("sshy-worker1", nodes[1])):
            r = subprocess.run(["ssh", "-F", str(user_cfg), "-o", "BatchMode=yes", alias, "hostname -I"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stderr  # the pinned host key is used: no prompt, no "accept"
            assert node.ip in r.stdout
        r = run("ssh", "sshy", "--node", "1", "--", "echo", "from-worker")
        assert r.returncode == 0 and "from-worker" in r.stdout, r.stderr
        assert run("down", "-y", "sshy").returncode == 0
        assert not (bh / "ssh" / "sshy.conf").exists()
    finally:
        for n in nodes:
            if n.alive:
                node_pool.kill(n)


def test_unusable_identity_file_is_exit_2_before_a_host_is_claimed(node_pool, node_key, tmp_path):
    """A pool `identity_file` that is missing, a directory, a public key, passphrase-protected or not a
    key at all is refused before the plan's question and before a host is claimed (it used to wait the
    whole BROKER_WAIT_READY and fail at teardown), naming ssh_node_pools.yaml, the pool and the field."""
    key, pub = node_key
    (node,) = node_pool.start(1, pub)
    try:
        bh = Path(os.environ["BROKER_HOME"])
        bh.mkdir(parents=True, exist_ok=True)
        pw = tmp_path / "pw_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(pw)], check=True)
        (tmp_path / "garbage").write_text("not a key\n")
        task = tmp_path / "t.yaml"
        task.write_text("name: nk\nresources: {infra: ssh/lab}\nrun: echo ran\n")
        pools = bh / "ssh_node_pools.yaml"
        cases = [(tmp_path / "nokey", "does not exist", "lab.identity_file"),
                 (tmp_path, "is not a file", "lab.identity_file"),
                 (f"{pw}.pub", "is a public key", "lab.identity_file"),
                 (pw, "is protected by a passphrase", "lab.identity_file"),
                 (tmp_path / "garbage", "is not an SSH private key", "lab.hosts[0].identity_file")]
        for path, why, fld in cases:
            if fld.startswith("lab.hosts"):
                pools.write_text(f"lab:\n  user: {node.user}\n  hosts: [{{ip: {node.ip}, identity_file: {path}}}]\n")
            else:
                pools.write_text(f"lab:\n  user: {node.user}\n  identity_file: {path}\n  hosts: [{node.ip}]\n")
            r = run("launch", "-y", "-c", "nk", task, env={"BROKER_WAIT_READY": "60"}, timeout=50)
            err = flat(r.stderr)
            assert r.returncode == 2, (path, r.stdout, r.stderr)
            assert f"{pools}: {fld}: {path} {why}" in err, err
            assert "ran" not in r.stdout and "Traceback" not in r.stderr
            assert json.loads(run("status", "--json").stdout) == []
            assert not (node.home / ".skybroker-node").exists()
        # the in-process launch (as the managed-jobs controller makes it: no CLI preflight) checks it too,
        # when the place is chosen, before anything is claimed there
        from skybroker import api, spec, state
        from skybroker.errors import BrokerError

        pools.write_text(f"lab:\n  user: {node.user}\n  identity_file: {tmp_path / 'nokey'}\n  hosts: [{node.ip}]\n")
        t = spec.task_from_dict({"name": "nk", "resources": {"infra": "ssh/lab"}, "run": "echo ran"})
        with pytest.raises(BrokerError) as ei:
            api.launch(t, cluster="nk2", plan=api.plan(t))
        assert ei.value.exit_code == 2 and "lab.identity_file" in ei.value.message
        assert state.get_cluster("nk2") is None and state.open_intents("nk2") == []
    finally:
        if node.alive:
            node_pool.kill(node)


def test_a_refused_key_or_user_is_said_in_seconds_and_tears_down(node_pool, node_key, tmp_path):
    """A host that answers SSH but refuses our key (a wrong `identity_file`, or a wrong `user`) is an
    authentication error naming user, host and key within seconds (it was "unreachable: not reachable
    after 600s"), exit 2, and the failed bring-up is torn down; the host is free again."""
    import time

    key, pub = node_key
    (node,) = node_pool.start(1, pub)
    try:
        bh = Path(os.environ["BROKER_HOME"])
        bh.mkdir(parents=True, exist_ok=True)
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        task = tmp_path / "t.yaml"
        task.write_text("name: ak\nresources: {infra: ssh/lab}\nrun: echo ran\n")
        pools = bh / "ssh_node_pools.yaml"
        for user, ident in ((node.user, other), ("nosuchuser", key)):
            pools.write_text(f"lab:\n  user: {user}\n  identity_file: {ident}\n  hosts: [{node.ip}]\n")
            t0 = time.monotonic()
            r = run("launch", "-y", "-c", "ak", task, env={"BROKER_WAIT_READY": "60"}, timeout=100)
            took = time.monotonic() - t0
            err = flat(r.stderr)
            assert r.returncode == 2, (r.stdout, r.stderr)
            assert f"SSH authentication failed for {user}@{node.ip} with {ident}: check ssh_user / identity_file" in err
            assert "unreachable" not in err and "Traceback" not in err and "ran" not in r.stdout
            assert "was terminated" in err
            assert took < 30, took
            assert json.loads(run("status", "--json").stdout) == []
        pools.write_text(f"lab:\n  user: {node.user}\n  identity_file: {key}\n  hosts: [{node.ip}]\n")
        r = run("launch", "-y", "-c", "ak", task)  # the host was released
        assert r.returncode == 0 and "ran" in r.stdout, r.stderr
        assert run("down", "-y", "ak").returncode == 0
    finally:
        if node.alive:
            node_pool.kill(node)


def test_a_reimaged_host_is_named_for_hostkeys_forget_and_gets_its_agent_again(node_pool, node_key, tmp_path):
    """A pool host replaced at the same IP (new host key, no node agent): the refusal's hint names
    `broker hostkeys forget CLUSTER --node N` and says nothing ran; once the pin is forgotten, `exec` and
    `launch -c` reinstall the missing agent and run (they failed with "python3: can't open file
    .../agent.py"); a read-only command says the agent is missing instead of Python's error."""
    key, pub = node_key
    nodes = node_pool.start(2, pub)
    live = list(nodes)
    try:
        bh = Path(os.environ["BROKER_HOME"])
        bh.mkdir(parents=True, exist_ok=True)
        hosts = ", ".join(n.ip for n in nodes)
        (bh / "ssh_node_pools.yaml").write_text(f"lab:\n  user: {nodes[0].user}\n  identity_file: {key}\n"
                                                f"  hosts: [{hosts}]\n")
        wd = tmp_path / "wd"
        wd.mkdir()
        (wd / "f.txt").write_text("from-workdir")
        task = tmp_path / "t.yaml"
        task.write_text("name: ri\nnum_nodes: 2\nresources: {infra: ssh/lab}\nrun: echo first\n")
        wtask = tmp_path / "w.yaml"
        wtask.write_text(f"name: ri\nnum_nodes: 2\nworkdir: {wd}\nresources: {{infra: ssh/lab}}\n"
                         "setup: echo setup-ran\nrun: cat f.txt\n")
        assert run("launch", "-y", "-c", "ri", task).returncode == 0

        def reimage(rank):
            old = live[rank]
            node_pool.kill(old)
            new = node_pool.add_node(pub)
            assert new.ip == old.ip and not (new.home / ".skybroker-node").exists()
            live[rank] = new

        reimage(1)
        r = run("exec", "ri", "--", "echo should-not-run")
        err = flat(r.stderr)
        assert r.returncode != 0 and "host key" in err and "changed" in err and "should-not-run" not in r.stdout
        assert "`broker hostkeys forget ri --node 1`" in err, err
        assert run("hostkeys", "forget", "ri", "--node", "1").returncode == 0
        r = run("exec", "ri", "--", "echo again-$SKYPILOT_NODE_RANK")
        assert r.returncode == 0, r.stderr
        assert "again-0" in r.stdout and "again-1" in r.stdout and "can't open file" not in r.stderr
        assert (live[1].home / ".skybroker-node" / "agent.py").exists()

        reimage(0)
        assert run("hostkeys", "forget", "ri", "--node", "0").returncode == 0
        r = run("launch", "-y", "-c", "ri", wtask)  # the head: sync, setup (its record went with the host), run
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("from-workdir") == 2 and "(node-0) setup-ran" in r.stdout

        reimage(1)
        assert run("hostkeys", "forget", "ri", "--node", "1").returncode == 0
        r = run("queue", "ri")
        assert "the node agent is missing on ri node 1" in flat(r.stderr) and "can't open file" not in r.stderr
        r = run("launch", "-y", "-c", "ri", task)  # no workdir: the submission itself reinstalls it
        assert r.returncode == 0 and r.stdout.count("first") == 2, r.stderr
        assert run("down", "-y", "ri").returncode == 0
    finally:
        for n in live:
            if n.alive:
                node_pool.kill(n)
