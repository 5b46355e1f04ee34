"""Uploads and downloads through a Store's primitives (list / get / put), the same for every store."""
from __future__ import annotations

from pathlib import Path

from . import _files
from .base import BucketRef, Store


def upload(store: Store, local: str, ref: BucketRef) -> int:
    """A local file or directory → objects under ref.prefix (a directory's contents land directly under
    it; unchanged objects, same size, are skipped). Returns the number of objects written."""
    have = {k: size for k, size, _ in store.list_objects(ref, _files.key_prefix(ref.prefix))}
    n = 0
    import os

    for path, key in _files.local_files(local, ref.prefix):
        if have.get(key) == os.path.getsize(path):
            continue
        store.put_object(ref, key, path)
        n += 1
    return n


def download(store: Store, ref: BucketRef, dest: str) -> tuple[int, bool]:
    """Every object under ref.prefix → files under the directory `dest` (files unchanged since the last
    download are kept). A prefix that is one object (s3://b/file.txt) lands as dest/<its name>.
    Returns (objects fetched, single object?)."""
    prefix = _files.key_prefix(ref.prefix)
    objs = list(store.list_objects(ref, prefix))
    single = False
    if not objs and ref.prefix:
        objs = [o for o in store.list_objects(ref, ref.prefix.strip("/")) if o[0] == ref.prefix.strip("/")]
        single = bool(objs)
        prefix = ref.prefix.strip("/").rsplit("/", 1)[0] + "/" if "/" in ref.prefix.strip("/") else ""
    n = 0
    wanted = set()
    for key, size, mtime in objs:
        path = _files.target(dest, key, prefix)
        if path is None:
            continue
        wanted.add(path)
        if _files.unchanged(path, size, mtime):
            continue
        _files.write_atomically(path, lambda f, k=key: store.get_object(ref, k, f), mtime)
        n += 1
    if not single:  # objects deleted from the bucket since the last download leave the cache too
        for p in [p for p in Path(dest).rglob("*") if p.is_file() and p.resolve() not in wanted]:
            p.unlink()
    return n, single
