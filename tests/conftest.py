"""Test isolation: every test gets its own BROKER_HOME and HOME, and no cloud credentials leak in from
the developer's environment (so plans are deterministic: all catalog clouds, no credentials)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BROKER_SHARED", REPO.parent / "shared"))
# Every subprocess a test starts (the CLI, the managed-jobs controller, the autostop watcher, local nodes'
# agents) imports this checkout's skybroker, whichever checkout the editable install points at (a git
# worktree, a moved clone). tests/packaging removes it to test the installed wheel.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                           if p and Path(p).resolve() != REPO])

_CRED_PREFIXES = ("AWS_", "GOOGLE_", "CLOUDSDK_", "GCLOUD_", "AZURE_", "LAMBDA_", "KUBECONFIG", "KUBERNETES_")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith(_CRED_PREFIXES):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BROKER_HOME", str(tmp_path / "broker_home"))
    monkeypatch.delenv("BROKER_DEBUG", raising=False)
    for key in ("BROKER_DB", "BROKER_API_SERVER", "BROKER_API_TOKEN", "BROKER_SECRETS_KEY"):
        monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/infra/postgres.py). Skipped only when PostgreSQL
    or psycopg is not installed (CI installs both)."""
    from tests.infra import postgres as pgmod

    if pgmod.bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    pg = pgmod.Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request, monkeypatch):
    """Runs a test once on SQLite under BROKER_HOME and once on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres")
        monkeypatch.setenv("BROKER_DB", pg.fresh_url())
    yield request.param


def cli_runner():
    """A click CliRunner whose result has separate .stdout and .stderr on every click the project supports:
    click < 8.2 (the floor is 8.1.3) mixes stderr into stdout unless told not to; 8.2 removed the flag."""
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def broker_cmd() -> list[str]:
    """The CLI as a real subprocess, through the same interpreter running the tests."""
    return [sys.executable, "-m", "skybroker.cli"]


class _Reports(list):
    """Tables that tests produce for the record (e.g. the fault-injection matrix), printed at the end of
    the run. Under pytest-xdist the tests run in worker processes: each report is also written to a folder
    the main process created (SKYBROKER_TEST_REPORTS, inherited by the workers), and the main process
    prints what is there."""

    def append(self, text: str) -> None:
        super().append(text)
        folder = os.environ.get("SKYBROKER_TEST_REPORTS")
        if folder and os.path.isdir(folder):
            import uuid

            Path(folder, f"{time.time():.6f}-{uuid.uuid4().hex}.txt").write_text(text)


REPORTS: list[str] = _Reports()


def add_table_rows(title: str, columns, rows, *, order: int = 0, footer: str | None = None) -> None:
    """Rows of a table several tests build together (e.g. the fault matrix, one test per stage, perhaps in
    different xdist workers): the summary prints each title once, rows in `order`, and `footer` formatted
    with n (rows) and bad (rows whose last column is non-zero)."""
    import json
    import uuid

    folder = os.environ.get("SKYBROKER_TEST_REPORTS")
    if folder and os.path.isdir(folder):
        Path(folder, f"table-{uuid.uuid4().hex}.json").write_text(json.dumps(
            {"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "order": order,
             "footer": footer}))


def _tables(files) -> list[str]:
    import json

    by_title: dict = {}
    for f in files:
        t = json.loads(f.read_text())
        by_title.setdefault(t["title"], []).append(t)
    out = []
    for title, parts in by_title.items():
        parts.sort(key=lambda t: t["order"])
        cols = parts[0]["columns"]
        rows = [[str(c) for c in r] for t in parts for r in t["rows"]]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        lines = [title, "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        if parts[0]["footer"]:
            bad = sum(1 for r in rows if r and r[-1] not in ("0", "", "-"))
            lines.append(parts[0]["footer"].format(n=len(rows), bad=bad))
        out.append("\n".join(lines))
    return out


_SLOW_DIRS = (REPO / "tests" / "integration", REPO / "tests" / "packaging")


def pytest_collection_modifyitems(config, items):
    """Everything that starts clouds, emulators, sshd nodes, servers or the controller (tests/integration,
    tests/packaging) counts as slow: `pytest -m "not slow"` is the fast loop of the pure core, the CLI and
    the compatibility corpus; the whole suite (CI) runs everything."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if any(d in path.parents for d in _SLOW_DIRS):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the main process (or a run without xdist)
        import tempfile

        os.environ["SKYBROKER_TEST_REPORTS"] = tempfile.mkdtemp(prefix="skybroker-reports-")
        _compile_once()


def _compile_once() -> None:
    """The suite starts a few thousand Python processes (the CLI, controllers, servers, fakes). Where the
    environment forbids writing bytecode (PYTHONDONTWRITEBYTECODE, as in this sandbox),
    each of them would compile this checkout's modules again; compiling them once here lets every one of
    them load the cached bytecode instead (Python checks it against the source, so it is never stale)."""
    if not sys.dont_write_bytecode:
        return  # every process writes what it compiles: nothing to do
    import compileall

    for d in (REPO / "skybroker", REPO / "tests"):
        compileall.compile_dir(str(d), quiet=1, workers=1)


def pytest_terminal_summary(terminalreporter):
    import shutil

    folder = os.environ.get("SKYBROKER_TEST_REPORTS")
    if not folder or not os.path.isdir(folder) or "PYTEST_XDIST_WORKER" in os.environ:
        return  # (a worker that finishes early must not remove the folder the others still write to)
    files = sorted(Path(folder).iterdir())
    texts = [f.read_text() for f in files if not f.name.startswith("table-")]
    for text in texts + _tables([f for f in files if f.name.startswith("table-")]):
        terminalreporter.write_sep("-", "report")
        terminalreporter.write_line(text)
    shutil.rmtree(folder, ignore_errors=True)
