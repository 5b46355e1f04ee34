"""A managed job's checkpoint copy on the controller's side, kept as complete snapshots.

The head node's `$BROKER_CHECKPOINT_DIR` is copied every interval into a new, empty snapshot directory
(`snap-<n>`) with rsync's `--link-dest` pointing at the current snapshot: unchanged files become hard links
to it and changed files are written as new files (so nothing ever writes into the current snapshot), and
only the differences cross the network. Only when the copy has completed is the `current` symlink
switched to it (an atomic rename). A copy that fails
halfway (the node is preempted during the rsync, the network drops) is thrown away: a recovery always
restores the last *complete* snapshot, never a torn one.

Within one copy a file is taken as it is at that moment, so a job must write its checkpoint
write-then-rename (`echo "$i" > "$d/ckpt.tmp" && mv "$d/ckpt.tmp" "$d/ckpt"`): a file rewritten in place
(`echo "$i" > "$d/ckpt"`) may be copied empty. The README shows the pattern.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

CKPT_REMOTE = "broker_checkpoint"  # on a node, under its home; exported to the job as BROKER_CHECKPOINT_DIR
CURRENT = "current"


def root(job_dir: Path) -> Path:
    return Path(job_dir) / "checkpoint"


def current(job_dir: Path) -> Path | None:
    """The last complete snapshot (a directory), or None."""
    link = root(job_dir) / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    path = root(job_dir) / target
    return path if path.is_dir() else None


def has_data(job_dir: Path) -> bool:
    snap = current(job_dir)
    return snap is not None and any(snap.iterdir())


def take(job_dir: Path, copy_into) -> Path:
    """Make a new snapshot: `copy_into(path, link_dest)` fills the empty directory `path` (an rsync from the
    head node with --link-dest=link_dest, the current snapshot or None); only if it returns normally does
    the snapshot become current. Old snapshots are removed afterwards."""
    base = root(job_dir)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    prev = current(job_dir)
    n = 1 + max([int(p.name[5:]) for p in base.glob("snap-*") if p.name[5:].isdigit()] or [0])
    staging = base / f".staging-{n}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        copy_into(staging, prev)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    snap = base / f"snap-{n}"
    os.rename(staging, snap)
    tmp_link = base / f".{CURRENT}-{n}"
    try:
        os.unlink(tmp_link)
    except FileNotFoundError:
        pass
    os.symlink(snap.name, tmp_link)
    os.replace(tmp_link, base / CURRENT)  # the switch: atomic
    for old in base.glob("snap-*"):
        if old.name != snap.name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in base.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return snap

