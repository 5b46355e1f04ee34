"""A real PostgreSQL server for tests: Debian's `postgresql` package (initdb/pg_ctl under
/usr/lib/postgresql/*/bin), a throw-away cluster in a temporary directory, listening on 127.0.0.1 on a
free port and on a unix socket inside that directory. As root it runs as `nobody` (PostgreSQL refuses to
run as root). Trust authentication on loopback only; superuser `broker`. `fresh_url()` creates an empty
database per test (from template0: ~0.1 s), so tests never see each other's rows.

    python -m tests.infra.postgres     # start one and print its URL (Ctrl-C stops it)
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid


def bin_dir() -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self):
        self.bin = bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.dir = tempfile.mkdtemp(prefix="broker-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "nobody"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o700)

    def _run(self, *argv, check=True, **kw):
        cmd = list(argv)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.dir, **kw)

    def start(self) -> "Postgres":
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "broker", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                "-c shared_buffers=32MB")
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"),
                  "-o", opts, "-w", "-t", "30", "start")
        return self

    @property
    def url(self) -> str:
        return f"postgresql://broker@127.0.0.1:{self.port}/postgres"

    def fresh_url(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return f"postgresql://broker@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    pg = Postgres().start()
    print(pg.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pg.stop()
