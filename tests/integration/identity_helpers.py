"""Shared by the remote_identity end-to-end tests (test_azure_identity.py, test_aws_e2e.py): a node-side
report of the copied credential files, and the leak scans (output lines, events, every file under
BROKER_HOME)."""
from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

SECRET = "sb-secret-7f3a91c2-do-not-leak"  # in every local credential file; must never leave them


def report_command(present: list[str], absent: list[str], dirs: list[str] = ()) -> str:
    """A `run:` printing `<path> <mode> <sha256>` for each present file, `<path> absent|PRESENT` for
    each path that must not be there and `<dir> dir <mode>` for each directory (paths relative to the
    node's home)."""
    cmds = [f'f=~/{shlex.quote(p)}; echo "{p} $(stat -c %a "$f") $(sha256sum < "$f" | cut -d" " -f1)"'
            for p in present]
    cmds += [f'echo "{d} dir $(stat -c %a ~/{shlex.quote(d)})"' for d in dirs]
    cmds += [f'if [ -e ~/{shlex.quote(p)} ]; then echo "{p} PRESENT"; else echo "{p} absent"; fi' for p in absent]
    return "; ".join(cmds)


def expected_report(local_root: Path, node_root: str, present: list[str], absent: list[str],
                    dirs: list[str] = ()) -> list[str]:
    """What report_command prints on a node that got exactly the local files, mode 0600, in directories
    of mode 0700."""
    out = []
    for p in present:
        rel = Path(p).relative_to(node_root)
        out.append(f"{p} 600 {hashlib.sha256((local_root / rel).read_bytes()).hexdigest()}")
    return out + [f"{d} dir 700" for d in dirs] + [f"{p} absent" for p in absent]


def files_holding(root: Path, needle: str) -> list[str]:
    """Every file under root whose bytes contain needle (symlinks not followed)."""
    hits, raw = [], needle.encode()
    for d, _, names in os.walk(root):
        for n in names:
            p = Path(d) / n
            if p.is_file() and not p.is_symlink() and raw in p.read_bytes():
                hits.append(str(p))
    return hits


def assert_no_leak(lines, events, broker_home: Path, needle: str = SECRET) -> None:
    """The secret is in no output line, no event the launch reported, no file under BROKER_HOME (the
    state database with its stored events, logs, keys, caches)."""
    assert not [l for l in lines if needle in str(l)]
    assert not [e for e in events if needle in str(e)]
    assert broker_home.is_dir() and files_holding(broker_home, needle) == []
