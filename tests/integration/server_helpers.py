"""A live broker server for tests: `broker server start` as a real subprocess on a free loopback port,
its own BROKER_HOME (SQLite) or a PostgreSQL database, tokens made with `broker server token create`,
and clients that are the real CLI in client mode (BROKER_API_SERVER + BROKER_API_TOKEN)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.integration.local_helpers import broker, kill_leftovers, kill_pids, wait_for

FAST = {"BROKER_JOBS_POLL": "0.3", "BROKER_CHECKPOINT_INTERVAL": "0.5", "BROKER_AUTOSTOP_POLL": "0.5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, db: str | None = None, port: int | None = None, extra_env: dict | None = None,
                 tls: tuple[Path, Path] | None = None):
        self.home = Path(home)
        self.db = db
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.log = self.home.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def env(self) -> dict:
        e = dict(os.environ, BROKER_HOME=str(self.home), **FAST)
        e.pop("BROKER_API_SERVER", None)
        e.pop("BROKER_API_TOKEN", None)
        if self.db:
            e["BROKER_DB"] = self.db
        e.update(self.extra_env)
        return e

    def start(self, timeout: float = 20) -> "Server":
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            tls = ["--certfile", str(self.tls[0]), "--keyfile", str(self.tls[1])] if self.tls else []
            self.proc = subprocess.Popen([sys.executable, "-m", "skybroker.cli", "server", "start", "--port",
                                          str(self.port), "--allow-local-cloud", *tls], env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self.healthy, timeout, 0.1, f"server on {self.url} (log: {self.log})")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=1, context=ctx) as r:
                return json.loads(r.read())["ok"]
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        kill_leftovers(self.home)

    def token(self, name: str, admin: bool = False) -> str:
        r = subprocess.run([sys.executable, "-m", "skybroker.cli", "server", "token", "create", name, "--json"]
                           + (["--admin"] if admin else []), env=self.env(), capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["token"]

    def client(self, token: str, home: Path) -> "Client":
        return Client(self, token, home)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Client:
    """The real CLI in client mode, as one user."""

    def __init__(self, server: Server, token: str, home: Path):
        self.server, self.token, self.home = server, token, Path(home)
        self.home.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        return {"BROKER_HOME": str(self.home), "BROKER_API_SERVER": self.server.url, "BROKER_API_TOKEN": self.token}

    def __call__(self, *args, timeout: float = 90, cwd=None):
        return broker(*args, env=self.env(), timeout=timeout, cwd=cwd)

    def bg(self, *args, stderr: Path | None = None):
        from tests.integration.local_helpers import broker_bg

        return broker_bg(*args, env=self.env(), stderr=stderr)

    def http(self, fn: str, body: dict | None = None) -> tuple[int, dict]:
        """One raw call: (HTTP status, JSON answer), to check status codes the CLI turns into exit codes."""
        from skybroker import wire

        req = urllib.request.Request(f"{self.server.url}/api/v1/call/{fn}", method="POST",
                                     data=wire.dumps(body or {"args": [], "kwargs": {}}).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.readline() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


__all__ = ["Server", "Client", "free_port", "kill_pids"]
