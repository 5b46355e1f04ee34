"""Where skybroker keeps its state: BROKER_HOME (default ~/.broker), private to the user.

Everything under it is created 0700 (directories) / 0600 (files) whatever the umask: it holds the state
database, SSH keys, the key that encrypts managed jobs' secrets, and logs.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BrokerError


class HomeError(BrokerError):
    """BROKER_HOME cannot be used by this user: not a directory, not readable or not writable."""

    exit_code = 2


_checked: set[str] = set()  # homes found usable by this process (one stat and access(2) each)


def broker_home() -> Path:
    """BROKER_HOME as an absolute path. A relative one is resolved once, against the directory the command
    started in, and put back in the environment: a later chdir and the processes it starts keep the same
    home (and ~/.ssh/config's Include, sshconfig.py, is not resolved relative to ~/.ssh)."""
    from . import settings

    home = Path(settings.get("home")).expanduser()
    if not home.is_absolute():
        try:
            home = Path(os.path.abspath(home))
        except FileNotFoundError:
            raise HomeError(f"BROKER_HOME {home} is a relative path and the current directory no longer exists",
                            "give BROKER_HOME as an absolute path, or run broker from an existing directory") from None
        os.environ["BROKER_HOME"] = str(home)
    if str(home) not in _checked:
        check_home(home)
    return home


def check_home(home: Path) -> None:
    """An existing BROKER_HOME must be a directory this user can read and write (a missing one is made by
    ensure_home). Said as such, before any file in it is blamed (a state.db "corrupt", an api.json)."""
    try:
        st = home.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HomeError(f"BROKER_HOME {home} cannot be reached: {exc.strerror or exc}",
                        "fix the owner or mode of its parent directories, or point BROKER_HOME elsewhere") from None
    if not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"BROKER_HOME {home} is not a directory",
                        "point BROKER_HOME at a directory (a missing one is created), or move that file away")
    if not os.access(home, os.R_OK | os.X_OK):
        raise HomeError(f"BROKER_HOME {home} is not readable by you (owner uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o})", owner_hint(home, recursive=True))
    if not os.access(home, os.W_OK):
        if _read_only_fs(home):
            raise HomeError(f"BROKER_HOME {home} is not writable by you (a read-only file system)",
                            "mount it read-write, or point BROKER_HOME at a writable directory of yours")
        raise HomeError(f"BROKER_HOME {home} is not writable by you (owner uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o})", owner_hint(home, recursive=True))
    _checked.add(str(home))


def owner_hint(path: Path, recursive: bool = False) -> str:
    """How to give a file or directory under BROKER_HOME back to this user (it was made by `sudo broker`...)."""
    mode = "700" if recursive else "600"
    return (f"fix its owner or mode: `sudo chown {'-R ' if recursive else ''}$(id -u):$(id -g) {path} && "
            f"chmod {mode} {path}` (e.g. after a `sudo broker`), or point BROKER_HOME at a directory of yours")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def private_dir(path: Path) -> Path:
    """mkdir -p with mode 0700 for the new directories (and the last one fixed if it is wider)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def ensure_home() -> Path:
    home = broker_home()
    try:
        return private_dir(home)
    except OSError as exc:
        raise HomeError(f"cannot create BROKER_HOME {home}: {exc.strerror or exc}",
                        "point BROKER_HOME at a directory you can create, or fix its parent's owner or mode") from None


def private_file(path: Path, mode: str = "ab"):
    """Open a file for writing, created 0600 (e.g. a log), whatever the umask."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(str(path), flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        pass
    return os.fdopen(fd, mode)


def touch_private(path: Path) -> None:
    """Create `path` 0600 if missing (before a library creates it with the umask's mode)."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass
