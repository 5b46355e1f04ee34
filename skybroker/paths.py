"""Where skybroker keeps its state: BROKER_HOME (default ~/.broker), private to the user.

Everything under it is created 0700 (directories) / 0600 (files) whatever the umask: it holds the state
database, SSH keys, the key that encrypts managed jobs' secrets, and logs.
"""
from __future__ import annotations

import os
from pathlib import Path


def broker_home() -> Path:
    from . import settings

    return Path(settings.get("home")).expanduser()


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
    return private_dir(broker_home())


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
