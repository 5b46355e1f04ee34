"""rsync command lines shared by both runners.

Workdir semantics (`sync_up` with ignore_files=True): `rsync -a` of the directory's contents into the
remote directory, honouring every `.gitignore` and `.brokerignore` in the tree (rsync per-directory merge
filters, so nested ones apply to their own subtree), never shipping `.git`. Files excluded this way are
also protected from `--delete` on the receiving side. Limitation: gitignore negations (`!pattern`) are
not supported (rsync reads each line as an exclude pattern).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from skybroker.errors import BrokerError

IGNORE_FILES = (".gitignore", ".brokerignore")
# rsync exit codes that still mean "copied" when syncing down a directory a job is writing: 24 = some
# source files vanished during the transfer (a job's write-then-rename removes its temporary files).
DOWN_OK = (0, 24)


class SyncError(BrokerError):
    pass


def require_rsync() -> str:
    path = shutil.which("rsync")
    if path is None:
        raise SyncError("rsync is not installed on this machine",
                        hint="install it: apt-get install rsync / brew install rsync / dnf install rsync")
    return path


def filter_args(ignore_files: bool) -> list[str]:
    if not ignore_files:
        return []
    args = ["--exclude=.git"]  # the directory (or a worktree's .git file), at any depth
    args += [f"--filter=:- {name}" for name in IGNORE_FILES]
    return args


def rsync_argv(src: str, dst: str, *, ignore_files: bool = False, delete: bool = False,
               ssh_command: Sequence[str] | None = None, io_timeout: int | None = None,
               link_dest: str | None = None) -> list[str]:
    """argv for `rsync -a src dst`; `src`/`dst` are used as given (add the trailing slash to copy a
    directory's contents). `ssh_command` is the remote shell (see `ssh_command`); `link_dest` an
    earlier local copy: unchanged files are hard-linked from it, changed ones written anew."""
    argv = [require_rsync(), "-a", "--no-owner", "--no-group"]
    argv += filter_args(ignore_files)
    if delete:
        argv.append("--delete")
    if link_dest:
        argv.append(f"--link-dest={Path(link_dest).resolve()}")
    if io_timeout:
        argv.append(f"--timeout={int(io_timeout)}")
    if ssh_command:
        argv += ["-e", " ".join(shlex.quote(a) for a in ssh_command)]
    argv += [src, dst]
    return argv


def ssh_command(*, key_path: str | Path, port: int, known_hosts_file: str | Path,
                host_key_alias: str, connect_timeout: float = 10) -> list[str]:
    """The system ssh, locked down: only our key, no prompts, and only the pinned host key (written to
    a per-instance known_hosts file under `host_key_alias`)."""
    return [
        "ssh", "-F", "/dev/null", "-i", str(key_path), "-p", str(int(port)),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={host_key_alias}", "-o", "UpdateHostKeys=no",
        "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
    ]


def remote_path(path: str) -> str:
    """A path for the remote side of rsync/sftp, relative to the login (home) directory:
    '~' -> '.', '~/x' -> 'x'; absolute and relative paths unchanged."""
    if path in ("~", "~/"):
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    if path.startswith("~"):
        raise SyncError(f"unsupported remote path {path!r}", hint="use ~/... or an absolute path")
    return path or "."


def with_slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def run_rsync(argv: list[str], *, what: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run rsync; raise SyncError (with rsync's own message) on failure. Callers map connection
    failures (exit 255, or 12 from a dead ssh) to NodeUnreachable themselves."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SyncError(f"{what} timed out after {timeout:g}s") from None
    except FileNotFoundError:
        require_rsync()
        raise
    return r


def describe_failure(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (r.stderr or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else f"rsync exited with {r.returncode}")[:500]
