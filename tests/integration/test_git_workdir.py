"""Git workdirs (`workdir: {url, ref}`) end to end: cloned at the ref on every node before setup, on the
local cloud (a bare repository served as file://) and on real sshd nodes (a private bare repository
served over SSH by another node of the node network, reached with a key the user names). A bad url or ref
is a clear error naming the field, and the cluster the launch created is torn down."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.local_helpers import broker, node_dir, node_lines, status_json, write_task

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("rsync") is None,
                                reason="git and rsync are needed")


def _git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@x"})


def make_repo(where: Path) -> Path:
    """A bare repository whose f.txt reads one (tag v1, lightweight), two (tag v2, annotated), three (main)."""
    src = where / "src"
    _git("init", "-q", "-b", "main", str(src))
    for text, tag in (("one", ["v1"]), ("two", ["-a", "v2", "-m", "v2"]), ("three", None)):
        (src / "f.txt").write_text(text + "\n")
        _git("add", "f.txt", cwd=src)
        _git("commit", "-qm", text, cwd=src)
        if tag:
            _git("tag", *tag, cwd=src)
    bare = where / "repo.git"
    _git("clone", "-q", "--bare", str(src), str(bare))
    return bare


RUN = 'echo "rank=$SKYPILOT_NODE_RANK f=$(cat f.txt) pwd=$(pwd)"'


def test_local_cloud_tag_on_every_node_then_bad_ref_and_url(tmp_path):
    bare = make_repo(tmp_path)
    t = write_task(tmp_path / "t.yaml", name="g", num_nodes=2, workdir={"url": f"file://{bare}", "ref": "v1"},
                   setup="cat f.txt > from_setup.txt", run=RUN)
    r = broker("launch", "-y", "-c", "gitc", t)
    assert r.returncode == 0, r.stderr
    lines = node_lines(r.stdout)
    assert sorted(lines) == [0, 1]
    for rank in (0, 1):
        assert any("f=one" in ln and ln.endswith("/sky_workdir") for ln in lines[rank]), lines
        wd = node_dir("gitc", rank) / "sky_workdir"
        assert (wd / "from_setup.txt").read_text() == "one\n"  # cloned before setup ran
        assert not list((node_dir("gitc", rank) / ".skybroker-node" / "git").glob("key-*"))
    # the same cluster again at an annotated tag, and at a commit given by its abbreviated hash
    r = broker("exec", "gitc", t, "--git-ref", "v2")
    assert r.returncode == 0 and "f=two" in r.stdout, r.stderr
    broker("down", "-y", "gitc")

    r = broker("launch", "-y", "-c", "gitbad", t, "--git-ref", "no-such-tag")
    assert r.returncode == 2, r.stderr
    assert "workdir.ref" in r.stderr and "'no-such-tag' is not a branch, tag or commit" in r.stderr
    assert "Traceback" not in r.stderr and "was terminated" not in r.stderr  # refused before anything was created
    assert "gitbad" not in {c["name"] for c in status_json()}
    assert not (node_dir("gitbad", 0)).exists()
    # a ref that might be a commit cannot be refused from the listing: the nodes refuse it, and the
    # cluster the launch created is torn down
    r = broker("launch", "-y", "-c", "gitbad", t, "--git-ref", "deadbeef")
    assert r.returncode == 2 and "workdir.ref" in r.stderr and "gitbad was terminated" in r.stderr, r.stderr
    assert "gitbad" not in {c["name"] for c in status_json()}
    # with the preflight off the nodes refuse the missing tag as before
    r = broker("launch", "-y", "-c", "gitbad", t, "--git-ref", "no-such-tag", env={"BROKER_GIT_PREFLIGHT_TIMEOUT": "0"})
    assert r.returncode == 2 and "gitbad was terminated" in r.stderr, r.stderr

    r = broker("launch", "-y", "-c", "gitbad", t, "--git-url", f"file://{tmp_path}/missing.git")
    assert r.returncode == 2 and "workdir.url" in r.stderr and "cannot be fetched" in r.stderr, r.stderr
    assert "gitbad" not in {c["name"] for c in status_json()}


def test_commit_ref_and_branch(tmp_path):
    bare = make_repo(tmp_path)
    head1 = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=tmp_path / "src", capture_output=True,
                           text=True, check=True).stdout.strip()
    t = write_task(tmp_path / "t.yaml", name="g", workdir={"url": f"file://{bare}", "ref": head1[:9]},
                   run=RUN + '; echo "branch=$(git branch --show-current)"')
    r = broker("launch", "-y", "-c", "gitk", t)
    assert r.returncode == 0 and "f=two" in r.stdout, r.stderr
    r = broker("exec", "gitk", t, "--git-ref", "main")
    assert r.returncode == 0 and "f=three" in r.stdout and "branch=main" in r.stdout, r.stdout
    broker("down", "-y", "gitk")


# ------------------------------------------------------------------------------------------------ ssh
def _chown(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.lchown(name, pw.pw_uid, pw.pw_gid)


def test_private_repo_over_ssh_on_two_real_nodes(node_pool, node_key, tmp_path):
    """Nodes 1-2 are the cluster (ssh pool `lab`), node 3 serves a bare repository over SSH to a key only
    the user has; the key reaches the nodes for the clone only."""
    key, pub = node_key
    nodes = node_pool.start(3, pub)
    try:
        server = nodes[2]
        bare = make_repo(tmp_path)
        shutil.copytree(bare, server.home / "repo.git")
        _chown(server.home / "repo.git", server.user)
        git_key = tmp_path / "git_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(git_key)], check=True)
        with open(server.home / ".ssh" / "authorized_keys", "a") as f:
            f.write((tmp_path / "git_key.pub").read_text())
        home = Path(os.environ["BROKER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "ssh_node_pools.yaml").write_text(
            f"lab:\n  user: {nodes[0].user}\n  identity_file: {key}\n  hosts: [{nodes[0].ip}, {nodes[1].ip}]\n")
        url = f"{server.user}@{server.ip}:repo.git"
        t = write_task(tmp_path / "t.yaml", name="g", num_nodes=2, resources={"infra": "ssh/lab"},
                       workdir={"url": url, "ref": "v1"}, run=RUN)

        r = broker("launch", "-y", "-c", "gits", t, env={"BROKER_GIT_SSH_KEY": str(git_key)}, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = node_lines(r.stdout)
        assert all(any("f=one" in ln for ln in lines[rank]) for rank in (0, 1)), r.stdout
        secret = git_key.read_text()
        for n in nodes[:2]:
            assert (n.home / "sky_workdir" / "f.txt").read_text() == "one\n"
            left = [p for p in (n.home / ".skybroker-node" / "git").iterdir() if p.name.startswith("key-")]
            assert left == []  # removed after the clone
        assert secret not in r.stdout + r.stderr and str(git_key) not in r.stdout
        broker("down", "-y", "gits")

        # without the key the nodes cannot read the repository: a clear error, the new cluster torn down
        r = broker("launch", "-y", "-c", "gits2", t, timeout=120)
        assert r.returncode == 2 and "workdir.url" in r.stderr and "GIT_SSH_KEY_PATH" in r.stderr, r.stderr
        assert "gits2 was terminated" in r.stderr
        assert json.loads(broker("status", "--json").stdout) == []
        for n in nodes[:2]:
            assert not (n.home / ".skybroker-node").exists()
    finally:
        for n in nodes:
            if n.alive:
                node_pool.kill(n)


# ------------------------------------------------------------------------------------------------ https
def test_private_repo_over_http_with_git_token(tmp_path):
    """GIT_TOKEN (here `--secret GIT_TOKEN=...`) reaches git through the credential helper: the server
    (git's own http-backend, demanding Basic auth) gets it; it is never printed or left in a file."""
    from tests.infra.git_http import GitHTTPServer

    make_repo(tmp_path)
    token = "ghp_Sup3rSecretTokenValue"
    with GitHTTPServer(tmp_path, token) as srv:
        t = write_task(tmp_path / "t.yaml", name="g", workdir={"url": srv.url("repo.git"), "ref": "v2"}, run=RUN)
        r = broker("launch", "-y", "-c", "gith", t)  # no token: refused by the server
        assert r.returncode == 2 and "workdir.url" in r.stderr and "GIT_TOKEN" in r.stderr, r.stderr
        assert "gith" not in {c["name"] for c in status_json()}
        r = broker("launch", "-y", "-c", "gith", t, "--secret", f"GIT_TOKEN={token}")
        assert r.returncode == 0 and "f=two" in r.stdout, r.stderr
        assert any(base64_password(h) == token for h in srv.seen_auth)
        assert token not in r.stdout + r.stderr
        node = node_dir("gith", 0)
        for p in node.rglob("*"):
            if p.is_file() and p.stat().st_size < 1 << 20:
                assert token.encode() not in p.read_bytes(), p  # not in .git/config, not in a credential file
        broker("down", "-y", "gith")


def base64_password(header: str) -> str | None:
    import base64

    if not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().partition(":")[2]
