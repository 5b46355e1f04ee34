"""The test infrastructure cleans up after itself: a shared moto server started in the background
(tests/infra/moto_server.prestart) is stopped when the test process exits, even mid-start."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _servers_with(marker: bytes) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if b"moto_server" in (p / "cmdline").read_bytes() and marker in (p / "environ").read_bytes():
                out.append(int(p.name))
        except OSError:
            pass
    return out


def test_a_run_that_ends_while_the_shared_moto_server_starts_leaves_no_server():
    """atexit registered its stop only once start() had returned: a short run (one `-k` test of a module
    whose fixture prestarts the server) exited while the server was still loading, and left it running,
    orphaned, for good (found as stray `python -m tests.infra.moto_server` processes after such runs)."""
    marker = f"SKYBROKER_PRESTART_MARKER=run-{os.getpid()}".encode()
    env = {**os.environ, "SKYBROKER_PRESTART_MARKER": f"run-{os.getpid()}"}
    # exits while the server is still starting (start() waits for its port, then warms its EC2 data: seconds)
    code = "import time; from tests.infra import moto_server; moto_server.prestart(); time.sleep(1.5)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=120, check=True)
    left = _servers_with(marker)
    for pid in left:
        os.kill(pid, 15)
    assert left == []
