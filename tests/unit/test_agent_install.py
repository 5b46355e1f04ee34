"""AgentClient.install over a runner that is not a directory here (an SSH node): one command writes the
agent's package and launcher, takes away what older agents installed, and the agent then answers."""
import json
import os
import subprocess
import sys

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
