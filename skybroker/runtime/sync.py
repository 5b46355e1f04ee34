"""rsync command lines shared by both runners.

Workdir semantics (`sync_up` with ignore_files=True): `rsync -a` of the directory's contents into the
remote directory, honouring every `.gitignore`, `.brokerignore` and `.skyignore` (SkyPilot's) in the tree (rsync per-directory merge
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

IGNORE_FILES = (".gitignore", ".brokerignore", ".skyignore")  # .skyignore: SkyPilot's own
# rsync exit codes that still mean "copied" when syncing down a directory a job is writing: 24 = some
# source files vanished during the transfer (a job's write-then-rename removes its temporary files).
DOWN_OK = (0, 24)


class SyncError(BrokerError):
    pass


def have_rsync() -> bool:
    return shutil.which("rsync") is not None


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


# ----------------------------------------------------------------------------------------------
# Without rsync (the local cloud only: both sides are this machine)

def _ignore_patterns(d: Path) -> list[str]:
    out = []
    for name in IGNORE_FILES:
        try:
            text = (d / name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")):
                out.append(line)
    return out


def _excluded(rel: str, name: str, is_dir: bool, patterns: list[tuple[str, str]]) -> bool:
    """rsync's reading of a merge-file exclude line, for the common forms: `name`, `*.ext`, `dir/`,
    `/anchored`, `a/b` (relative to the directory holding the ignore file)."""
    import fnmatch

    for base, pat in patterns:
        dir_only = pat.endswith("/")
        p = pat.rstrip("/")
        if dir_only and not is_dir:
            continue
        sub = rel[len(base):].lstrip("/") if base else rel
        if base and not (rel == base or rel.startswith(base + "/")):
            continue
        if p.startswith("/") or "/" in p.strip("/"):
            if fnmatch.fnmatchcase(sub, p.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def copy_tree(src: str | Path, dst: str | Path, *, ignore_files: bool = False, delete: bool = False) -> None:
    """What `rsync -a [--delete] src/ dst/` does, in Python, for when rsync is not installed and both
    directories are on this machine: the same ignore rules (never `.git`; `.gitignore`/`.brokerignore`
    per directory, their negations unsupported as with rsync)."""
    import os
    import shutil

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    kept: set[str] = set()
    patterns: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel_root = "" if rel_root == "." else rel_root
        if ignore_files:
            patterns = [p for p in patterns if not p[0] or rel_root == p[0] or rel_root.startswith(p[0] + "/")]
            patterns += [(rel_root, p) for p in _ignore_patterns(Path(root))]
        for d in list(dirs):
            rel = f"{rel_root}/{d}" if rel_root else d
            if ignore_files and (d == ".git" or _excluded(rel, d, True, patterns)):
                dirs.remove(d)
                continue
            kept.add(rel)
            (dst / rel).mkdir(exist_ok=True)
        for f in files:
            rel = f"{rel_root}/{f}" if rel_root else f
            if ignore_files and (f == ".git" or _excluded(rel, f, False, patterns)):
                continue
            kept.add(rel)
            s_, d_ = Path(root) / f, dst / rel
            try:
                st = s_.lstat()
                if d_.exists() and d_.stat().st_size == st.st_size and int(d_.stat().st_mtime) == int(st.st_mtime):
                    continue
            except OSError:
                pass
            tmp = d_.with_name(f".{d_.name}.broker-tmp")
            shutil.copy2(s_, tmp, follow_symlinks=False)
            os.replace(tmp, d_)
    if delete:
        for root, dirs, files in os.walk(dst, topdown=False):
            rel_root = os.path.relpath(root, dst)
            rel_root = "" if rel_root == "." else rel_root
            for name in files + dirs:
                rel = f"{rel_root}/{name}" if rel_root else name
                if rel not in kept:
                    p = Path(root) / name
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
