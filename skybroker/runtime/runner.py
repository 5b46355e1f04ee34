"""The command-runner protocol shared by every kind of node, and the pieces both runners use.

A runner executes shell commands on one node (`bash -c` semantics, `~` and relative `cwd` resolved
against the node's home), copies files onto it and syncs directories both ways. Two implementations:
`LocalRunner` (a sandbox directory on this machine) and `SSHRunner` (paramiko + rsync over ssh).

Secrets: callers pass secret values in `env`. Runners never put env values on a command line (local:
the process environment; ssh: a script sent over the channel's stdin), and never in an exception
message or a log line.
"""
from __future__ import annotations

import codecs
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

from skybroker.errors import BrokerError

__all__ = [
    "RunResult", "NodeUnreachable", "AuthRefused", "HostKeyMismatch", "CommandTimeout", "CommandRunner",
    "run_parallel", "check_env", "RUN_ID_VAR",
]

# Exported into every command's environment (unique per run) so that on timeout or interrupt every
# process the command started can be found and killed, even ones that left its process group.
RUN_ID_VAR = "BROKER_RUN_ID"

# Output kept in RunResult per stream (the tail); streaming callbacks see every line regardless.
MAX_CAPTURE = 16 * 1024 * 1024


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class NodeUnreachable(BrokerError):
    """Connect/auth failure, timeout, or the connection died (preemption, network cut)."""

    def __init__(self, node_id: str, reason: str = "", hint: str | None = None):
        msg = f"node {node_id} is unreachable" + (f": {reason}" if reason else "")
        super().__init__(msg, hint)
        self.node_id = node_id


class AuthRefused(NodeUnreachable):
    """The host answers SSH but refuses our key for that user (a wrong `ssh_user` or `identity_file`, or a
    fresh VM whose key is not installed yet: bring-up waits BROKER_SSH_AUTH_GRACE before believing it).
    Still a NodeUnreachable to code that only asks "can I reach it?"; exit 2 when it ends a command."""

    exit_code = 2

    def __init__(self, node_id: str, user: str, host: str, key: str):
        BrokerError.__init__(self, f"SSH authentication failed for {user}@{host} with {key}: check ssh_user / "
                                   "identity_file",
                             "the host answers SSH but does not accept this key for this user: for an SSH node pool "
                             "fix `user` / `identity_file` in ssh_node_pools.yaml; on a cloud, the config's "
                             "`ssh_user:` must be the image's login user")
        self.node_id = node_id


class HostKeyMismatch(BrokerError):
    """The pinned host key of an instance changed. Never accepted silently."""

    def __init__(self, node_id: str, instance_id: str, expected: str, got: str):
        m = re.fullmatch(r"(.+)-node-(\d+)", node_id)  # runners are named CLUSTER-node-RANK
        forget = f"broker hostkeys forget {m[1]} --node {m[2]}" if m else "broker hostkeys forget CLUSTER --node N"
        super().__init__(
            f"host key of node {node_id} (instance {instance_id}) changed: pinned {expected}, "
            f"presented {got}",
            hint=f"this may be a man-in-the-middle; if the host was really re-imaged, `{forget}` drops its pinned "
                 "key, then retry (the node agent is reinstalled if the new host has none)")
        self.node_id = node_id
        self.instance_id = instance_id


class CommandTimeout(BrokerError):
    """`run(timeout=...)` expired; every process of the command was killed. `result` holds the
    output captured so far (exit_code 124, like timeout(1))."""

    def __init__(self, node_id: str, timeout: float, result: RunResult):
        super().__init__(f"command on node {node_id} timed out after {timeout:g}s and was killed")
        self.node_id = node_id
        self.result = result


@runtime_checkable
class CommandRunner(Protocol):
    node_id: str

    def run(self, cmd: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            stream: Callable[[str], None] | None = None, timeout: float | None = None,
            stdin: bytes | None = None) -> RunResult:
        """Run `cmd` with bash on the node (in `cwd`, default home; `~` = home) and wait for it.

        - `env` values arrive verbatim (any bytes but NUL); None values are skipped.
        - `stream(line)` is called for every output line (stdout and stderr, in arrival order,
          newline stripped) while the command runs; RunResult still has stdout/stderr separately
          (each capped to its last MAX_CAPTURE characters).
        - `stdin` is fed to the command; without it the command reads EOF.
        - `timeout` expiry kills every process of the command and raises CommandTimeout; an
          exception in `stream` or Ctrl-C also kills it before propagating.
        - Raises NodeUnreachable when the node cannot be reached or the connection dies mid-command
          (never re-run: commands need not be idempotent), HostKeyMismatch (SSH)."""
        ...

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None: ...

    def sync_up(self, local_dir: str, remote_dir: str, *, ignore_files: bool = True,
                delete: bool = False) -> None: ...

    def sync_down(self, remote_dir: str, local_dir: str, link_dest: str | None = None) -> None: ...

    def alive(self, timeout: float = 5.0) -> bool: ...

    def close(self) -> None: ...


_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate env names/values; errors name the variable, never its value."""
    out: dict[str, str] = {}
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not _ENV_KEY.match(k):
            raise BrokerError(f"invalid environment variable name {k!r}",
                              hint="names must match [A-Za-z_][A-Za-z0-9_]*")
        if v is None:
            continue
        if not isinstance(v, str):
            v = str(v)
        if "\0" in v:
            raise BrokerError(f"environment variable {k} contains a NUL byte")
        out[k] = v
    return out


def new_run_id() -> str:
    return uuid.uuid4().hex


class LineSplitter:
    """Feeds bytes, calls `emit(line)` per complete line (newline stripped), keeps a capped tail."""

    def __init__(self, emit: Callable[[str], None] | None):
        self._emit = emit
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._chunks: list[str] = []
        self._size = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._dec.decode(data, final)
        if text:
            self._chunks.append(text)
            self._size += len(text)
            if self._size > 2 * MAX_CAPTURE:
                joined = "".join(self._chunks)[-MAX_CAPTURE:]
                self._chunks, self._size = [joined], len(joined)
        if self._emit is None:
            return
        buf = self._partial + text
        if "\n" in buf:
            *lines, buf = buf.split("\n")
            for line in lines:
                self._emit(line)
        self._partial = buf
        if final and self._partial:
            line, self._partial = self._partial, ""
            self._emit(line)

    def text(self) -> str:
        s = "".join(self._chunks)
        return s[-MAX_CAPTURE:] if len(s) > MAX_CAPTURE else s


T = TypeVar("T")
R = TypeVar("R")


def run_parallel(items: Sequence[T], fn: Callable[[T], R], max_workers: int = 16) -> list[R]:
    """Apply fn to every item in threads (e.g. one runner per node); results in input order. If any
    call raised, the first error (in input order) is raised after all calls finished. When the caller
    is interrupted (Ctrl-C, SIGTERM) while waiting, calls not started yet are never started; the calls
    in flight are waited for (so the caller knows what happened), then the interrupt propagates."""
    if not items:
        return []
    ex = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items))))
    try:
        futs = [ex.submit(fn, it) for it in items]
        errors = [f.exception() for f in futs]
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futs]
