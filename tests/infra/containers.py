"""A real container engine and registry for the container tests: rootful podman + Debian's docker-registry.

Nothing here is faked: podman really pulls (over HTTP, with htpasswd basic auth checked by the registry),
creates and runs containers, and `exec`s the job into them.

* `EngineConfig(dir)`: podman's three config files (containers.conf, storage.conf, registries.conf) and the
  environment variables that point podman at them. Storage is `vfs` under DIR (no overlay, no daemon),
  cgroups are managed by cgroupfs, events go to a file, and the OCI runtime is `runc` (crun refuses the
  hybrid cgroup layout of this sandbox). The default ulimits are lowered to the current ones: the sandbox
  drops CAP_SYS_RESOURCE, so podman's default (raise nofile to 1048576) fails with EPERM.
* `build_rootfs(dir)`: a ~5 MB image root assembled from the host's bash/coreutils and their libraries,
  with its own /etc/os-release (`ID=brokertest`) and a marker file /opt/brokertest/IMAGE_ONLY, so a test
  can prove a command ran inside the image. `podman import` of its tarball takes ~0.4 s.
* `Registry(dir, host)`: `docker-registry serve` on HOST:free port with htpasswd (bcrypt) auth; `push`
  puts an image there, logged in through `--password-stdin`. A wrong or missing password gets the
  registry's real 401.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MARKER = "/opt/brokertest/IMAGE_ONLY"
_TOOLS = ("bash", "sh", "cat", "ls", "sleep", "env", "id", "mkdir", "touch", "pwd", "echo", "rm", "kill", "mv", "cp")


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (rootful podman)"
    for tool in ("podman", "runc", "docker-registry", "htpasswd"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install -y podman runc docker-registry apache2-utils)"
    return None


class EngineConfig:
    """podman configuration under ROOT (storage included); `env` points podman at it. With `node_tmp`,
    the paths are written as the node sees them (a netns node's /tmp is its own directory)."""

    def __init__(self, root: Path, seen_as: str | None = None, insecure: tuple[str, ...] = ()):
        root.mkdir(parents=True, exist_ok=True)
        inner = Path(seen_as) if seen_as else root
        nofile = _limit("RLIMIT_NOFILE")
        nproc = min(_limit("RLIMIT_NPROC"), 4096)
        (root / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
            f'tmp_dir = "{inner}/tmp"\n'
            f'events_logfile_path = "{inner}/events.log"\n')
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{inner}/run"\ngraphroot = "{inner}/graph"\n')
        (root / "registries.conf").write_text(
            "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in insecure))
        self.root, self.inner = root, inner
        self.env = {"CONTAINERS_CONF": f"{inner}/containers.conf",
                    "CONTAINERS_STORAGE_CONF": f"{inner}/storage.conf",
                    "CONTAINERS_REGISTRIES_CONF": f"{inner}/registries.conf"}

    def podman(self, *args, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", *args], input=stdin, capture_output=True, env={**os.environ, **self.env},
                           timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {r.stderr.decode(errors='replace')[-500:]}")
        return r

    def containers(self) -> list[str]:
        """Names of every container the engine has (running or not)."""
        out = self.podman("ps", "-a", "--format", "{{.Names}}").stdout.decode()
        return [n for n in out.split() if n]


def _limit(name: str) -> int:
    import resource

    soft, hard = resource.getrlimit(getattr(resource, name))
    return hard if hard != resource.RLIM_INFINITY else 1048576


def build_rootfs(root: Path, os_release: str = 'ID=brokertest\nPRETTY_NAME="broker test image"\n') -> Path:
    """A minimal image root from the host's own binaries (see the module docstring)."""
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev", "opt/brokertest"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for tool in _TOOLS:
        path = shutil.which(tool)
        if path is None:
            continue
        shutil.copy2(os.path.realpath(path), root / "bin" / tool)
        ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for lib in (w for w in ldd.split() if w.startswith("/")):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(os.path.realpath(lib), dest)
    (root / "etc" / "os-release").write_text(os_release)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / MARKER.lstrip("/")).write_text("only in the image\n")
    return root


def import_image(engine: EngineConfig, rootfs: Path, ref: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run(["podman", "import", "-", ref], stdin=tar.stdout, capture_output=True,
                       env={**os.environ, **engine.env}, timeout=120)
    tar.wait()
    if r.returncode != 0:
        raise RuntimeError(f"podman import: {r.stderr.decode(errors='replace')[-500:]}")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry with htpasswd auth on HOST (see the module docstring)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", user: str = "reguser", password: str = "regpass-s3cr3t"):
        root.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.port = _free_port(host)
        self.address = f"{host}:{self.port}"
        htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
        (root / "htpasswd").write_text(htpasswd.stdout)
        (root / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root}/data}}}}\n"
            f"http: {{addr: '{self.address}'}}\n"
            f"auth: {{htpasswd: {{realm: test, path: {root}/htpasswd}}}}\n")
        self.log = open(root / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=self.log,
                                     stderr=self.log, start_new_session=True)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection((host, self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-500:]}")
                time.sleep(0.05)

    def push(self, engine: EngineConfig, local_ref: str, name: str) -> str:
        auth = engine.root / "push-auth.json"
        engine.podman("login", "--authfile", str(auth), "--username", self.user, "--password-stdin", self.address,
                      stdin=self.password.encode())
        ref = f"{self.address}/{name}"
        engine.podman("push", "--authfile", str(auth), local_ref, ref)
        auth.unlink()
        return ref

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
