"""Local side of uploads and downloads, shared by every store."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def local_files(local: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(file path, object key) for a local file or every file under a directory (no .git), keys under
    `prefix` with '/' separators. A directory's contents land directly under the prefix, as SkyPilot does."""
    root = Path(local)
    base = prefix.strip("/")
    if root.is_file():
        yield str(root), f"{base}/{root.name}" if base else root.name
        return
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for f in sorted(files):
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            yield str(p), f"{base}/{rel}" if base else rel


def target(dest: str, key: str, prefix: str) -> Path | None:
    """Where the object `key` (under `prefix`) lands in `dest`; None for a folder marker or a key that
    would escape `dest` (`..`)."""
    rel = key[len(prefix):].lstrip("/") if prefix and key.startswith(prefix) else key
    if not rel or rel.endswith("/"):
        return None
    p = (Path(dest) / rel).resolve()
    if not str(p).startswith(str(Path(dest).resolve()) + os.sep):
        return None
    return p


def unchanged(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and int(st.st_mtime) == int(mtime)


def write_atomically(path: Path, fill, mtime: float) -> None:
    """fill(file object) writes the content; the file appears whole or not at all, with the object's mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.broker-part")
    with open(tmp, "wb") as f:
        fill(f)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def key_prefix(prefix: str) -> str:
    """The listing prefix for a 'folder' prefix: 'a/b' → 'a/b/' ('' stays '')."""
    p = prefix.strip("/")
    return p + "/" if p else ""
