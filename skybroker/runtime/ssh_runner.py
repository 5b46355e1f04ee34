"""SSHRunner: commands over one reused paramiko connection, files and directories via rsync over ssh.

Connection: a socket we create ourselves with TCP keepalive and TCP_USER_TIMEOUT, so a dead peer or a
cut network is noticed in seconds (paramiko keepalives alone never notice a silent partition). A dropped
transport is reconnected once before a call gives up with NodeUnreachable; a connection that dies while a
command runs raises NodeUnreachable (the command is not re-run: it may not be idempotent).

Host keys: pinned per instance id in a HostKeyStore (trust on first use); a different key for the same
instance id raises HostKeyMismatch. rsync's ssh verifies the same pinned key (StrictHostKeyChecking=yes
against a per-instance known_hosts file).

Commands: the remote side runs a fixed bootstrap (`bash -c 'read ...; eval'`) that reads a script from
the channel's stdin: the exports (ANSI-C quoted), the cd and `bash -c <cmd>`. Env values, secrets
included, therefore never appear in any process's argv on the node nor in anything we raise or log.
"""
from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from skybroker.errors import BrokerError
from skybroker.runtime import sync as _sync
from skybroker.runtime.keys import HostKeyStore, SSHKeyError, fingerprint, load_private_key
from skybroker.runtime.runner import (RUN_ID_VAR, AuthRefused, CommandTimeout, HostKeyMismatch, LineSplitter,
                                      NodeUnreachable, RunResult, check_env, new_run_id)

# paramiko logs socket errors at ERROR; without a handler Python's last-resort handler would print them.
# The CLI decides what gets shown, so the library only makes sure nothing is printed by default.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

TCP_USER_TIMEOUT_MS = 5000
TCP_KEEPIDLE_S = 1
TCP_KEEPINTVL_S = 1
TCP_KEEPCNT = 3
SSH_KEEPALIVE_S = 30

# Reads "<n>\n<n bytes of script>" from stdin, then evaluates the script; whatever follows on stdin is
# the command's own stdin.
_BOOTSTRAP = ("bash -c 'IFS= read -r n || exit 255; IFS= read -r -N \"$n\" s; "
              "[ \"${#s}\" = \"$n\" ] || exit 255; unset n; eval \"$s\"'")

_KILL_SCRIPT = r"""m=%s
p=
find_pids() {
  p=
  for d in /proc/[0-9]*; do
    while IFS= read -r -d '' v; do
      if [ "$v" = "$m" ]; then p="$p ${d#/proc/}"; break; fi
    done 2>/dev/null < "$d/environ"
  done
}
find_pids
[ -z "$p" ] && exit 0
kill -TERM $p 2>/dev/null
for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.1; find_pids; [ -z "$p" ] && exit 0; done
kill -KILL $p 2>/dev/null
exit 0
"""


def ansi_c_quote(s: str) -> str:
    """Quote for bash as $'...' using only printable ASCII (non-ASCII and controls as \\xHH bytes)."""
    out = []
    for b in s.encode("utf-8"):
        if 0x20 <= b < 0x7F and b not in (0x27, 0x5C):
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"


def path_expr(path: str) -> str:
    """A bash word for a node path: '~' / '~/x' relative to $HOME, anything else quoted as is."""
    if path in ("~", "~/"):
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + ansi_c_quote(path[2:])
    return ansi_c_quote(path)


def build_script(cmd: str, env: Mapping[str, str], cwd: str | None, run_id: str) -> str:
    lines = [f"export {RUN_ID_VAR}={ansi_c_quote(run_id)}"]
    lines += [f"export {k}={ansi_c_quote(v)}" for k, v in env.items()]
    if cwd not in (None, ""):
        lines.append(f"cd -- {path_expr(cwd)} || exit 1")
    lines.append(f"bash -c {ansi_c_quote(cmd)}")
    lines.append("exit $?")
    return "\n".join(lines) + "\n"


def _configure_socket(sock: socket.socket, user_timeout_ms: int) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", TCP_KEEPIDLE_S), ("TCP_KEEPINTVL", TCP_KEEPINTVL_S),
                        ("TCP_KEEPCNT", TCP_KEEPCNT), ("TCP_USER_TIMEOUT", user_timeout_ms)):
        opt = getattr(socket, name, None)
        if opt is None and name == "TCP_USER_TIMEOUT" and hasattr(socket, "TCP_KEEPIDLE"):
            opt = 18  # Linux value; older Pythons lack the constant
        if opt is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
            except OSError:
                pass


class SSHRunner:
    def __init__(self, node_id: str, host: str, port: int, user: str, key_path: str | Path,
                 known_hosts: HostKeyStore, connect_timeout: float = 10, *,
                 instance_id: str | None = None, user_timeout_ms: int = TCP_USER_TIMEOUT_MS):
        self.node_id = node_id
        self.host = host
        self.port = int(port)
        self.user = user
        self.key_path = Path(key_path)
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        # the identity whose host key is pinned: pass the cloud's instance id (a relaunched node at the
        # same IP is a new instance with a new key)
        self.instance_id = instance_id or node_id
        self.user_timeout_ms = user_timeout_ms
        self.connect_count = 0  # TCP connections opened so far (observability/tests)
        self._lock = threading.Lock()
        self._transport = None
        self._pkey = None

    def __repr__(self) -> str:
        return f"SSHRunner({self.node_id!r}, {self.user}@{self.host}:{self.port})"

    # ------------------------------------------------------------------ connection
    def _connect(self, timeout: float):
        import paramiko

        if self._pkey is None:
            self._pkey = load_private_key(self.key_path)
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise NodeUnreachable(self.node_id, f"cannot connect to {where}: {_os_reason(e)}") from None
        self.connect_count += 1
        _configure_socket(sock, self.user_timeout_ms)
        t = paramiko.Transport(sock)
        t.banner_timeout = timeout
        t.handshake_timeout = timeout
        t.auth_timeout = timeout
        try:
            t.start_client(timeout=timeout)
            key = t.get_remote_server_key()
            self.known_hosts.check_or_pin(self.instance_id, key.get_name(), key.get_base64(),
                                          host=where, node_id=self.node_id)
            t.auth_publickey(self.user, self._pkey)
        except HostKeyMismatch:
            t.close()
            raise
        except paramiko.AuthenticationException:
            t.close()
            raise AuthRefused(self.node_id, self.user, self.host if self.port == 22 else where,
                              str(self.key_path)) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            t.close()
            raise NodeUnreachable(self.node_id, f"SSH handshake with {where} failed: "
                                                f"{_os_reason(e)}") from None
        t.set_keepalive(SSH_KEEPALIVE_S)
        return t

    def _get_transport(self, timeout: float | None = None, fresh: bool = False):
        with self._lock:
            t = self._transport
            if t is not None and t.is_active() and not fresh:
                return t
            if t is not None:
                t.close()
                self._transport = None
            self._transport = self._connect(timeout or self.connect_timeout)
            return self._transport

    def _open_channel(self, timeout: float | None = None):
        import paramiko

        had = self._transport is not None
        t = self._get_transport(timeout)
        for attempt in (0, 1):
            try:
                return t.open_session(timeout=timeout or self.connect_timeout)
            except paramiko.ChannelException as e:  # the server said no; the connection is fine
                raise BrokerError(f"node {self.node_id} refused a new session: {e}",
                                  hint="too many concurrent commands on one connection (sshd "
                                       "MaxSessions); use one runner per concurrent caller") from None
            except (paramiko.SSHException, EOFError, OSError) as e:
                if attempt == 1 or not had:
                    raise NodeUnreachable(self.node_id, f"cannot open a session: {_os_reason(e)}") \
                        from None
                t = self._get_transport(timeout, fresh=True)  # reconnect once

    def connect(self) -> None:
        """Connect (and pin/verify the host key) now rather than on first use."""
        self._get_transport()

    # ------------------------------------------------------------------ run
    def run(self, cmd: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            stream: Callable[[str], None] | None = None, timeout: float | None = None,
            stdin: bytes | None = None, _connect_timeout: float | None = None) -> RunResult:
        user_env = check_env(env)
        run_id = new_run_id()
        script = build_script(cmd, user_env, cwd, run_id).encode("ascii")
        payload = f"{len(script)}\n".encode() + script + (stdin or b"")
        deadline = time.monotonic() + timeout if timeout is not None else None
        chan = self._open_channel(_connect_timeout)
        transport = chan.get_transport()
        out, err = LineSplitter(stream), LineSplitter(stream)
        done = False
        try:
            try:
                chan.exec_command(_BOOTSTRAP)
            except Exception as e:  # noqa: BLE001 - paramiko raises several kinds here
                raise NodeUnreachable(self.node_id, f"cannot start a command: {_os_reason(e)}") from None
            if len(payload) <= 32768:  # fits the initial window: no writer thread needed
                _send_all(chan, payload)
            else:
                threading.Thread(target=_send_all, args=(chan, payload), daemon=True).start()
            fd = chan.fileno()
            while True:
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                wait = 0.5
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        self._kill_remote(run_id)
                        done = True
                        raise CommandTimeout(self.node_id, timeout or 0,
                                             RunResult(124, out.text(), err.text()))
                if chan.closed or chan.eof_received:
                    # no more output can arrive (paramiko closes both buffers on EOF); the exit
                    # status follows, or the channel closes. The select pipe stays set: don't spin.
                    if chan.recv_ready() or chan.recv_stderr_ready():
                        continue
                    if chan.status_event.is_set():
                        break
                    chan.status_event.wait(wait)
                else:
                    select.select([fd], [], [], wait)
            out.feed(b"", final=True)
            err.feed(b"", final=True)
            code = chan.exit_status if chan.status_event.is_set() else -1
            if code == -1:
                # channel closed without an exit status: the connection died, or the command's shell
                # was killed. Give the transport thread a moment to record which.
                end = time.monotonic() + 0.5
                while transport.is_active() and time.monotonic() < end:
                    time.sleep(0.02)
                if not transport.is_active():
                    raise NodeUnreachable(self.node_id, "connection lost while the command was "
                                                        "running (node preempted, down or cut off)")
                code = 255
            done = True
            return RunResult(code, out.text(), err.text())
        finally:
            if not done and transport.is_active():
                self._kill_remote(run_id)  # interrupted (Ctrl-C, a failing stream callback)
            chan.close()

    def _kill_remote(self, run_id: str) -> None:
        """Best effort: TERM then KILL every process on the node carrying this run id."""
        try:
            self.run(_KILL_SCRIPT % shlex.quote(f"{RUN_ID_VAR}={run_id}"), timeout=15,
                     _connect_timeout=5)
        except BrokerError:
            pass

    # ------------------------------------------------------------------ files
    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        p = path_expr(remote_path)
        cmd = (f'p={p}; mkdir -p -- "$(dirname -- "$p")" && t="$p.broker-tmp-$$" && '
               f'cat > "$t" && chmod {mode & 0o7777:o} "$t" && mv -f -- "$t" "$p"')
        r = self.run(cmd, stdin=data)
        if r.exit_code != 0:
            raise BrokerError(f"writing {remote_path} on node {self.node_id} failed: "
                              f"{r.stderr.strip()[-300:]}")

    def _rsync_ssh(self) -> list[str]:
        self._get_transport()  # pins/verifies the host key before the system ssh sees the node
        kh = self.known_hosts.known_hosts_file(self.instance_id)
        return _sync.ssh_command(key_path=self.key_path, port=self.port, known_hosts_file=kh,
                                 host_key_alias=self.known_hosts.alias(self.instance_id),
                                 connect_timeout=self.connect_timeout)

    def _remote_spec(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{_sync.with_slash(_sync.remote_path(path))}"

    def sync_up(self, local_dir: str, remote_dir: str, *, ignore_files: bool = True,
                delete: bool = False) -> None:
        if not Path(local_dir).is_dir():
            raise _sync.SyncError(f"cannot sync {local_dir}: not a directory")
        ssh = self._rsync_ssh()
        r = self.run(f"mkdir -p -- {path_expr(remote_dir)}")
        if r.exit_code != 0:
            raise _sync.SyncError(f"cannot create {remote_dir} on node {self.node_id}: "
                                  f"{r.stderr.strip()[-300:]}")
        argv = _sync.rsync_argv(_sync.with_slash(local_dir), self._remote_spec(remote_dir),
                                ignore_files=ignore_files, delete=delete, ssh_command=ssh,
                                io_timeout=60)
        self._rsync(argv, f"sync of {local_dir} to {self.node_id}:{remote_dir}")

    def sync_down(self, remote_dir: str, local_dir: str, link_dest: str | None = None) -> None:
        ssh = self._rsync_ssh()
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        argv = _sync.rsync_argv(self._remote_spec(remote_dir), _sync.with_slash(local_dir),
                                ssh_command=ssh, io_timeout=60, delete=True, link_dest=link_dest)
        self._rsync(argv, f"sync of {self.node_id}:{remote_dir} to {local_dir}", ok=_sync.DOWN_OK)

    def _rsync(self, argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> None:
        r = _sync.run_rsync(argv, what=what)
        if r.returncode in ok:
            return
        msg = _sync.describe_failure(r)
        if "Host key verification failed" in r.stderr or "IDENTIFICATION HAS CHANGED" in r.stderr:
            pinned = self.known_hosts.get(self.instance_id)
            raise HostKeyMismatch(self.node_id, self.instance_id,
                                  f"{pinned[0]} {fingerprint(pinned[1])}" if pinned else "?",
                                  "a different key (seen by ssh)")
        if "command not found" in r.stderr or r.returncode == 127:
            raise _sync.SyncError(f"{what} failed: rsync is not installed on node {self.node_id}",
                                  hint="install rsync in the node image")
        if r.returncode == 255 or (r.returncode in (12, 30, 35) and not self.alive(5)):
            raise NodeUnreachable(self.node_id, f"{what} failed: {msg}")
        raise _sync.SyncError(f"{what} failed: {msg}")

    # ------------------------------------------------------------------ liveness
    def alive(self, timeout: float = 5.0) -> bool:
        """True if the node runs a command now. A changed host key is not "unreachable": it raises
        HostKeyMismatch (never waited out, never accepted); a host refusing our key raises AuthRefused,
        and a key that cannot be loaded SSHKeyError (waiting cures neither)."""
        try:
            r = self.run("true", timeout=timeout, _connect_timeout=timeout)
        except (HostKeyMismatch, AuthRefused, SSHKeyError):
            raise
        except BrokerError:
            return False
        return r.exit_code == 0

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def __enter__(self) -> "SSHRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _send_all(chan, payload: bytes) -> None:
    try:
        chan.sendall(payload)
        chan.shutdown_write()
    except Exception:  # noqa: BLE001 - the command may exit before reading its stdin
        pass


def _os_reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
