"""Without rsync, the local cloud copies with Python: the same files as rsync with the same ignore rules."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from skybroker.runtime import sync


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _make(src: Path) -> None:
    for rel, text in {"a.py": "x", "b.log": "log", "keep/c.txt": "c", "build/out.bin": "b", ".git/HEAD": "ref",
                      "sub/.gitignore": "*.tmp\n/local-only\n", "sub/x.tmp": "t", "sub/y.txt": "y",
                      "sub/local-only": "l", "sub/deep/local-only": "d", "sub/deep/z.tmp": "z",
                      ".gitignore": "*.log\nbuild/\n# comment\n", ".brokerignore": "secret.key\n",
                      "secret.key": "k", "other/secret.key": "k2"}.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="compares with rsync")
def test_copy_tree_matches_rsync_with_ignore_files(tmp_path):
    src = tmp_path / "src"
    _make(src)
    a, b = tmp_path / "rsync", tmp_path / "py"
    subprocess.run(sync.rsync_argv(sync.with_slash(str(src)), sync.with_slash(str(a)), ignore_files=True),
                   check=True)
    sync.copy_tree(src, b, ignore_files=True)
    assert _tree(b) == _tree(a)
    assert "sub/y.txt" in _tree(b) and "sub/deep/local-only" in _tree(b) and ".git/HEAD" not in _tree(b)


def test_copy_tree_delete_and_update(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("1")
    sync.copy_tree(src, dst)
    (dst / "stale").write_text("old")
    (src / "d" / "f").write_text("22")
    sync.copy_tree(src, dst, delete=True)
    assert _tree(dst) == {"d/f"} and (dst / "d" / "f").read_text() == "22"
