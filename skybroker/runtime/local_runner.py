"""LocalRunner: a "node" that is a sandbox directory on this machine (the local cloud, and tests).

Commands run as `bash -c` with HOME set to the sandbox, a small clean environment, and their own process
session/group; on timeout or interrupt the group (and any process carrying the run's BROKER_RUN_ID, even
if it left the group) is killed. No SSH, no root.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from skybroker.runtime import sync as _sync
from skybroker.runtime.runner import (NodeUnreachable, RUN_ID_VAR, CommandTimeout, LineSplitter, RunResult, check_env,
                                      new_run_id)

# Host variables a sandboxed command inherits; everything else comes from `env`.
_INHERIT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL", "TERM",
            # the host's container engine settings: a local node's task container runs on the host's engine
            "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF", "DOCKER_HOST")

# cd first (a missing cwd is an ordinary failure, exit 1, like on a remote node), then the command.
_WRAPPER = 'cd -- "$0" || exit 1\nexec bash -c "$1"'


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def kill_marked(run_id: str, sig: int = signal.SIGKILL) -> int:
    """Signal every process (that we may signal) whose environment carries this run id."""
    marker = f"{RUN_ID_VAR}={run_id}".encode()
    n = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            os.kill(int(pid), sig)
            n += 1
        except (OSError, ValueError):
            continue
    return n


class LocalRunner:
    def __init__(self, node_id: str, home: Path | str, *, create: bool = True):
        """`create=False` for a node the local cloud provisioned: if its sandbox is gone (terminated,
        "preempted"), commands raise NodeUnreachable instead of silently recreating an empty node."""
        self.node_id = node_id
        self.home = Path(home).resolve()
        if create:
            self.home.mkdir(parents=True, exist_ok=True)

    def _check_home(self) -> None:
        if not self.home.is_dir():
            raise NodeUnreachable(self.node_id, "the node's sandbox is gone (terminated or preempted)")

    def __repr__(self) -> str:
        return f"LocalRunner({self.node_id!r}, {str(self.home)!r})"

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str | None) -> Path:
        """Node path -> host path: None/'~' = home, '~/x' and relative = under home, absolute as is."""
        if path is None or path in ("", "~", "~/"):
            return self.home
        if path.startswith("~/"):
            return self.home / path[2:]
        p = Path(path)
        return p if p.is_absolute() else self.home / p

    # ------------------------------------------------------------------ run
    def run(self, cmd: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            stream: Callable[[str], None] | None = None, timeout: float | None = None,
            stdin: bytes | None = None) -> RunResult:
        user_env = check_env(env)
        self._check_home()
        run_id = new_run_id()
        penv = {k: os.environ[k] for k in _INHERIT if k in os.environ}
        penv.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        penv["HOME"] = str(self.home)
        penv.update(user_env)
        penv[RUN_ID_VAR] = run_id
        proc = subprocess.Popen(
            ["bash", "-c", _WRAPPER, str(self.resolve(cwd)), cmd],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=penv, cwd=str(self.home),
            start_new_session=True)
        if stdin is not None:
            threading.Thread(target=self._feed_stdin, args=(proc, stdin), daemon=True).start()
        out, err = LineSplitter(stream), LineSplitter(stream)
        deadline = time.monotonic() + timeout if timeout is not None else None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        finished = False
        try:
            while sel.get_map():
                wait = 0.5
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise _Expired()
                for key, _ in sel.select(wait):
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data.feed(data)
                    else:
                        sel.unregister(key.fileobj)
                        key.data.feed(b"", final=True)
            while proc.poll() is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise _Expired()
                time.sleep(0.005)
            finished = True
        except _Expired:
            self._kill(proc, run_id)
            finished = True
            raise CommandTimeout(self.node_id, timeout or 0,
                                 RunResult(124, out.text(), err.text())) from None
        finally:
            sel.close()
            if not finished:
                self._kill(proc, run_id)
            for f in (proc.stdout, proc.stderr):
                f.close()
        return RunResult(_exit_code(proc.returncode), out.text(), err.text())

    @staticmethod
    def _feed_stdin(proc: subprocess.Popen, data: bytes) -> None:
        try:
            proc.stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    @staticmethod
    def _kill(proc: subprocess.Popen, run_id: str) -> None:
        """TERM the process group, give it a second, then KILL the group and every marked process."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            end = time.monotonic() + 1.0
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.01)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_marked(run_id)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    # ------------------------------------------------------------------ files
    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        self._check_home()
        path = self.resolve(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.broker-tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise

    def sync_up(self, local_dir: str, remote_dir: str, *, ignore_files: bool = True,
                delete: bool = False) -> None:
        self._check_home()
        src = Path(local_dir)
        if not src.is_dir():
            raise _sync.SyncError(f"cannot sync {local_dir}: not a directory")
        dst = self.resolve(remote_dir)
        dst.mkdir(parents=True, exist_ok=True)
        if _sync.have_rsync():
            argv = _sync.rsync_argv(_sync.with_slash(str(src)), _sync.with_slash(str(dst)),
                                    ignore_files=ignore_files, delete=delete)
            self._rsync(argv, f"sync of {local_dir} to {self.node_id}:{remote_dir}")
        else:  # both sides are this machine: no rsync needed
            _sync.copy_tree(src, dst, ignore_files=ignore_files, delete=delete)

    def sync_down(self, remote_dir: str, local_dir: str, link_dest: str | None = None) -> None:
        self._check_home()
        src = self.resolve(remote_dir)
        if not src.is_dir():
            raise _sync.SyncError(f"cannot sync down {self.node_id}:{remote_dir}: not a directory")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        with os.scandir(src) as it:
            empty = next(it, None) is None
        if empty:  # nothing to copy (a managed job's unused checkpoint directory): no rsync process
            if any(Path(local_dir).iterdir()):
                _sync.copy_tree(src, local_dir, delete=True)
            return
        if not _sync.have_rsync():
            _sync.copy_tree(src, local_dir, delete=True)
            return
        argv = _sync.rsync_argv(_sync.with_slash(str(src)), _sync.with_slash(str(local_dir)), delete=True,
                                link_dest=link_dest)
        self._rsync(argv, f"sync of {self.node_id}:{remote_dir} to {local_dir}", ok=_sync.DOWN_OK)

    def _rsync(self, argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> None:
        r = _sync.run_rsync(argv, what=what)
        if r.returncode not in ok:
            raise _sync.SyncError(f"{what} failed: {_sync.describe_failure(r)}")

    def alive(self, timeout: float = 5.0) -> bool:
        return self.home.is_dir()

    def local_home(self) -> Path:
        """The node's directory on this machine, for readers of the agent's files (runtime/channel.py);
        NodeUnreachable if the node is gone."""
        self._check_home()
        return self.home

    def close(self) -> None:
        pass


class _Expired(Exception):
    pass
