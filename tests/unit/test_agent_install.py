"""AgentClient.install over a runner that is not a directory here (an SSH node): one command writes the
agent's package and launcher, takes away what older agents installed, and the agent then answers."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from skybroker.runtime import agent as agent_mod
from skybroker.runtime.agent_client import OLD_FILES, AgentClient
from skybroker.runtime.local_runner import LocalRunner


class Remote:
    """A runner with only what an SSH runner has (no local_home): every call is a command."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, cmd, **kw):
        self.calls.append(cmd)
        self.written = [f[0] for f in json.loads(kw["stdin"])[0]]
        return self.inner.run(cmd, **kw)

    def put_file(self, data, path, mode=0o644):
        raise AssertionError("install must not write file by file over a remote runner")


def test_install_is_one_command_and_replaces_an_older_agent(tmp_path):
    home = tmp_path / "node"
    node_dir = home / agent_mod.NODE_DIR
    node_dir.mkdir(parents=True)
    for name in OLD_FILES:  # a node set up by a broker from before the package
        (node_dir / name).write_text("raise SystemExit('the old agent ran')\n")
    # its container module, which a runner of the old agent imports when its queued job's turn comes
    (node_dir / "skybroker_container.py").write_text("OLD = True\n")
    (node_dir / "agent.py").write_text("import skybroker_agent\n")
    runner = Remote(LocalRunner("n0", home))
    AgentClient(runner, sys.executable + " -S").install()
    assert len(runner.calls) == 1
    assert runner.written[-2:] == [f"{agent_mod.PACKAGE}/__init__.py", "agent.py"]  # the package whole first
    assert not any((node_dir / name).exists() for name in OLD_FILES)
    old_runner = ("import sys; sys.path.insert(0, sys.argv[1]); import skybroker_container as m; "
                  "assert m.OLD")  # what a runner the old agent started still finds after the upgrade
    subprocess.run([sys.executable, "-S", "-c", old_runner, str(node_dir)], check=True)
    for name, data in agent_mod.sources():
        assert (node_dir / agent_mod.PACKAGE / name).read_bytes() == data
    launcher = node_dir / "agent.py"
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert not list(node_dir.rglob("*.broker-tmp-*"))
    out = subprocess.run([sys.executable, "-S", str(launcher), "version"], capture_output=True,
                         env=dict(os.environ, HOME=str(home)), check=True).stdout
    assert json.loads(out) == {"version": agent_mod.agent_version()}


def test_version_covers_every_file_of_the_package(tmp_path, monkeypatch):
    """A change to any shipped file (the container part too) is a new version, so nodes get it."""
    before = agent_mod.agent_version()
    real = agent_mod.sources()
    changed = [(n, d + b"\n# changed\n" if n == "container.py" else d) for n, d in real]
    monkeypatch.setattr(agent_mod, "sources", lambda: changed)
    assert agent_mod.agent_version() != before


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): a node's disk that fills up."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def _fill(disk, leave_kib: int) -> None:
    (disk / "fill").unlink(missing_ok=True)
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave_kib * 1024
    with open(disk / "fill", "wb") as f:
        f.write(b"\0" * max(size, 0))


def test_a_full_disk_during_install_names_the_node_and_disk_and_leaves_no_half_file(small_disk, monkeypatch,
                                                                                  capsys):
    """Found by exploratory testing: a local node whose disk filled while its agent was installed said only
    "[Errno 28] No space left on device" (and compileall printed "*** Error compiling" on stdout). Now it is
    said like the agent's own disk-full answer: the node, the file, the free space and the hint. Whatever
    point the disk fills at (the sources or their bytecode), no half-written file is left in place, and
    once there is space again the next install gives a working agent."""
    import importlib.util
    import marshal

    from skybroker.runtime.agent_client import AgentError

    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the install writes the bytecode too
    failed = 0
    for leave in (0, 24, 48, 96, 144, 192):
        home = small_disk / f"node-{leave}"
        home.mkdir()
        _fill(small_disk, leave)
        client = AgentClient(LocalRunner("c1 node 0", home), sys.executable + " -S", label="c1 node 0")
        try:
            client.install()
        except AgentError as e:
            failed += 1
            msg = e.message
            assert "\n" not in msg and msg.startswith("installing the node agent on c1 node 0 failed: its disk is "
                                                      f"full: {home / agent_mod.NODE_DIR}/"), msg
            assert "cannot be written ([Errno 28] No space left on device; " in msg and " KiB free)" in msg, msg
            assert "disk_size" in e.hint
        pkg = home / agent_mod.NODE_DIR / agent_mod.PACKAGE
        assert not list(home.rglob("*broker-tmp*")), list(home.rglob("*broker-tmp*"))
        for name, data in agent_mod.sources():  # each file there whole or not at all
            p = pkg / name
            assert not p.exists() or p.read_bytes() == data, (leave, name)
            c = importlib.util.cache_from_source(str(p))
            if os.path.exists(c):
                with open(c, "rb") as f:
                    marshal.loads(f.read()[16:])  # "marshal data too short" for a truncated one
        (small_disk / "fill").unlink()
        client.install()  # space again: the agent works
        out = subprocess.run([sys.executable, "-S", str(home / agent_mod.NODE_DIR / "agent.py"), "version"],
                             capture_output=True, env=dict(os.environ, HOME=str(home)), check=True).stdout
        assert json.loads(out) == {"version": agent_mod.agent_version()}
        shutil.rmtree(home)
    assert failed >= 2  # the disk filled at more than one point
    assert "Error compiling" not in capsys.readouterr().out


def test_a_full_disk_during_a_remote_install_is_said_the_same_and_leaves_no_temporary_file(small_disk):
    """Over a runner that is not a directory here (SSH) the one install command says the same, and takes
    away its temporary file (it was left behind, and the error was "OSError: [Errno 28] ...")."""
    from skybroker.runtime.agent_client import AgentError

    home = small_disk / "node"
    home.mkdir()
    _fill(small_disk, 24)
    with pytest.raises(AgentError) as ei:
        AgentClient(Remote(LocalRunner("c1 node 0", home)), sys.executable + " -S", label="c1 node 0").install()
    msg = ei.value.message
    assert msg.startswith("installing the node agent on c1 node 0 failed: its disk is full: "
                          f"{home / agent_mod.NODE_DIR}/"), msg
    assert "cannot be written ([Errno 28] No space left on device; " in msg and " KiB free)" in msg, msg
    assert "disk_size" in ei.value.hint
    assert not list(home.rglob("*broker-tmp*")), list(home.rglob("*broker-tmp*"))


def _agent(home, *args):
    return subprocess.run([sys.executable, "-S", str(home / agent_mod.NODE_DIR / "agent.py"), *args],
                          capture_output=True, text=True, env=dict(os.environ, HOME=str(home)), timeout=60)


def test_the_agent_writes_no_bytecode_on_a_nearly_full_disk(small_disk):
    """Python writes a .pyc without checking for a short write: on a full disk the agent's first call left a
    truncated one, and every later call failed on it ("EOFError: marshal data too short", found by
    exploratory testing on a local node whose disk filled). With under 1 MiB free the launcher writes none."""
    home = small_disk / "node"
    home.mkdir()
    AgentClient(Remote(LocalRunner("n0", home)), sys.executable + " -S").install()  # the sources only
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([sys.executable, "-S", str(home / agent_mod.NODE_DIR / "agent.py"), "status"],
                       capture_output=True, text=True, env=dict(env, HOME=str(home)), timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == {"jobs": []}, r
    assert not list(home.rglob("*.pyc")), list(home.rglob("*.pyc"))


def test_a_truncated_bytecode_file_left_by_an_older_agent_heals(tmp_path):
    """A node with truncated bytecode from before: the agent's package is compiled afresh (its __init__ at once;
    a module loaded later: that call says so and the next one works), instead of failing on every call."""
    home = tmp_path / "node"
    AgentClient(LocalRunner("n0", home), sys.executable + " -S").install()
    env = dict({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, HOME=str(home))
    agent = [sys.executable, "-S", str(home / agent_mod.NODE_DIR / "agent.py")]
    for which in ("all", "modules"):  # __init__'s too (the launcher loads it), or only the modules after it
        assert subprocess.run(agent + ["status"], env=env, capture_output=True).returncode == 0
        pycs = [p for p in home.rglob("*.pyc") if which == "all" or not p.name.startswith("__init__")]
        assert len(pycs) >= 2, pycs
        for p in pycs:
            p.write_bytes(p.read_bytes()[:100])
        first = subprocess.run(agent + ["status"], env=env, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in first.stderr, first.stderr
        if which == "all":
            assert first.returncode == 0, first
        else:
            assert first.returncode == 1 and "truncated bytecode" in json.loads(first.stdout)["error"], first
        again = subprocess.run(agent + ["status"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and json.loads(again.stdout) == {"jobs": []}, again
