"""`broker status --ip / --endpoints / --endpoint PORT` through the real CLI on the local cloud: a task that
opens a port serves on it, and the endpoint the CLI prints reaches that server (SkyPilot's `sky status
--endpoint 8080 c`, which scripts feed to curl)."""
from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from tests.integration.local_helpers import broker, broker_home, kill_leftovers, wait_for, write_task


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    broker("down", "-a", "-y")
    kill_leftovers(broker_home())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_printed_endpoint_reaches_the_server_the_task_runs(tmp_path):
    port = _free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("served by the job\n")
    task = write_task(tmp_path / "web.yaml", name="web", workdir=str(tmp_path / "www"),
                      resources={"infra": "local", "ports": [port]},
                      run=f"exec python3 -m http.server {port} --bind 127.0.0.1")
    r = broker("launch", "-y", "-d", "-c", "web", task)
    assert r.returncode == 0, r.stderr

    r = broker("status", "--endpoint", port, "web")
    assert r.returncode == 0, r.stderr
    ep = r.stdout.strip()
    assert ep.endswith(f":{port}") and "\n" not in ep, r.stdout

    def served():
        try:
            return urllib.request.urlopen(f"http://{ep}/hello.txt", timeout=2).read().decode()
        except OSError:
            return None

    wait_for(lambda: served() == "served by the job\n", 30, 0.2, "the job's server at the printed endpoint")
    r = broker("status", "--endpoints", "web")
    assert r.returncode == 0 and r.stdout == f"{port}: {ep}\n", r.stdout
    r = broker("status", "--endpoints", "web", "--json")
    assert json.loads(r.stdout) == {"cluster": "web", "endpoints": {str(port): ep}}
    r = broker("status", "--ip")  # the only cluster: no name needed
    assert r.returncode == 0 and r.stdout.strip() == ep.rsplit(":", 1)[0], r.stdout + r.stderr

    for argv, needle in [(["--endpoint", port + 1, "web"], f"port {port + 1} is not among the ports"),
                         (["--ip", "--endpoints", "web"], "exclude each other"),
                         (["--endpoint", "0", "web"], "--endpoint")]:
        r = broker("status", *argv)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
    r = broker("status", "--ip", "nosuch")
    assert r.returncode == 5 and "not found" in r.stderr
