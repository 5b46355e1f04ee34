"""The `broker` console script (skybroker/entry.py): a Ctrl-C while the CLI is still being imported (the
first fraction of a second: `import click`, rich, yaml) exits 130 with one line, never a traceback."""
from __future__ import annotations

import builtins
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _interrupt_import_of(monkeypatch, module: str) -> None:
    real = builtins.__import__

    def fake(name, globals=None, locals=None, fromlist=(), level=0):
        pkg = (globals or {}).get("__package__") or ""
        full = f"{pkg}.{name}" if level and name else (pkg if level else name)
        if full == module or (level and not name and module in {f"{pkg}.{f}" for f in fromlist or ()}):
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    for m in {module, "skybroker.cli"}:  # so that importing the CLI runs its imports again
        monkeypatch.delitem(sys.modules, m, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("module", ["skybroker.cli", "click"])
def test_ctrl_c_during_import_exits_130_without_traceback(monkeypatch, capsys, module):
    from skybroker import entry

    _interrupt_import_of(monkeypatch, module)
    with pytest.raises(SystemExit) as ei:
        entry.main(["--version"])
    assert ei.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "Interrupted." and "Traceback" not in err


def test_ctrl_c_before_the_cli_handler_exits_130(monkeypatch, capsys):
    from skybroker import cli, entry

    def boom(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", boom)
    with pytest.raises(SystemExit) as ei:
        entry.main([])
    assert ei.value.code == 130 and "Traceback" not in capsys.readouterr().err


def test_the_console_script_is_the_entry_function_and_runs():
    text = (REPO / "pyproject.toml").read_text()
    assert 'broker = "skybroker.entry:main"' in text
    # `python -m skybroker` too (no __main__.py: "'skybroker' is a package and cannot be directly executed")
    for argv in (["-m", "skybroker.entry", "--version"], ["-m", "skybroker.cli", "--version"],
                 ["-m", "skybroker", "--version"]):
        r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip(), (argv, r.stdout, r.stderr)
