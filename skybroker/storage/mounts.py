"""Buckets on a cluster, as SkyPilot's storage modes (called by backend.sync, cluster_ops.terminate and
the managed-jobs controller).

  COPY          the bucket's objects are downloaded HERE through the store's SDK into a private staging
                cache (BROKER_HOME/storage-cache, 0700; unchanged files are not fetched again; pruned: cache.py) and rsynced
                to every node before setup, like a local file mount. The nodes get no credential at all.
  MOUNT         rclone FUSE mount on every node (`--vfs-cache-mode writes`: reads stream, a written file
                is uploaded BROKER_STORAGE_WRITE_BACK (5 s) after it is closed). The default of the mapping
                form, as in SkyPilot.
  MOUNT_CACHED  rclone with a full local cache (`--vfs-cache-mode full`): random I/O and re-reads at disk
                speed, uploads in the background as for MOUNT.

A MOUNT's rclone gets a credential scoped to that one bucket (S3: an STS federation token whose policy
names only the bucket; GCS: a downscoped token; Azure: a container SAS), in its process environment only:
never on the node's disk, never in a command line, never in output. Where no scoped credential can be
made, the mount is refused unless BROKER_STORAGE_FORWARD_CREDENTIALS=1 (then this machine's own
credential goes to the mount process the same way). Your credential files are never copied.

A named storage (`{name: ..., source: ./local}`) is created if missing (tagged skybroker-managed=true),
the local sources uploaded, and recorded (records.py). `persistent: false` buckets are deleted when
their last cluster goes down (a managed job's: when the job ends); only buckets skybroker created and
whose tag still says so are ever deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import shlex
from pathlib import Path

from .. import settings
from . import cache, get_store, records, transfer
from .base import (
    CLOUD_STORE,
    MANAGED_TAG,
    BucketRef,
    StorageError,
    check_name,
    parse_uri,
)


_MISSING_HINT = "check the URI, or create the bucket with a `name:` storage"


def bucket_mounts(task) -> list:
    return [m for m in task.file_mounts if m.is_bucket]


def _field(m) -> str:
    return f"file_mounts.{m.remote}"


def _fail(m, exc: StorageError, task=None) -> StorageError:
    err = StorageError(f"{_field(m)}: {exc.message}", exc.hint)
    err.exit_code = exc.exit_code
    return err


def ref_of(m, cloud: str | None) -> BucketRef:
    """Where a bucket mount's data lives (a named storage: the store it was created in before, else
    `store:`, else the cluster's cloud's store, else S3)."""
    if not m.name:
        ref = parse_uri(m.source)
        if ref.kind == "az" and ref.account is None:
            ref = BucketRef("az", ref.bucket, ref.prefix, get_store("az").default_account())
        return ref
    rec = records.get(m.name)
    if rec is not None:
        return parse_uri(rec.uri)
    kind = m.store or CLOUD_STORE.get(cloud or "", "s3")
    check_name(kind, m.name)
    return BucketRef(kind, m.name, "", get_store("az").default_account() if kind == "az" else None)


def preflight(task) -> None:
    """Before anything is created: the store SDKs are installed, credentials are there, and every bucket the
    task reads by URI exists and may be looked up with them (a named storage is created if missing)."""
    for m in bucket_mounts(task):
        try:
            kind = m.store if m.name else parse_uri(m.source).kind
            if kind is None:
                continue  # a named storage whose store follows the cluster's cloud: checked when it is made
            store = get_store(kind)
            store.check_credentials()
            if kind == "r2" and m.mode != "COPY" and not settings.get("storage_forward_credentials"):
                store.node_env(parse_uri(m.source), forward=False)  # refuses: R2 has no scoped token
            if not m.name:
                ref = ref_of(m, None)
                if store.tags(ref) is None:
                    raise StorageError(f"bucket {ref.uri} does not exist", _MISSING_HINT)
        except StorageError as exc:
            raise _fail(m, exc) from None
        except Exception as exc:  # noqa: BLE001 - an SDK's own error (network, endpoint): named, not a traceback
            raise _fail(m, _sdk_error(exc)) from exc


def preflight_place(task, cloud: str) -> None:
    """Once the plan chose `cloud`, before anything is created there: a named storage whose store follows the
    cloud (no `store:`, not recorded yet) has a name that store allows, and its credentials are there."""
    for m in bucket_mounts(task):
        if not m.name or m.store or "$" in m.name or records.get(m.name) is not None:
            continue
        try:
            kind = CLOUD_STORE.get(cloud, "s3")
            check_name(kind, m.name)
            get_store(kind).check_credentials()
        except StorageError as exc:
            raise _fail(m, exc) from None


def prepare(task, rec, on_event) -> list[tuple]:
    """Resolve, create and upload every bucket of the task for cluster `rec`; record named storages and
    that this cluster (and its managed job) uses them. Returns [(mount, BucketRef)]."""
    out = []
    users = [f"cluster:{rec.name}"] + ([f"owner:{rec.owner}"] if rec.owner else [])
    for m in bucket_mounts(task):
        try:
            ref = ref_of(m, rec.cloud)
            store = get_store(ref.kind)
            store.check_credentials()
            tags = store.tags(ref)
            if not m.name:
                if tags is None:
                    raise StorageError(f"bucket {ref.uri} does not exist", _MISSING_HINT)
                out.append((m, ref))
                continue
            created = False
            if tags is None:
                region = rec.region if CLOUD_STORE.get(rec.cloud or "") == ref.kind else None
                on_event("storage", f"creating bucket {ref.uri}")
                store.create(ref, region, {MANAGED_TAG: "true"})
                created = True
            with records.locked():
                old = records.get(m.name)
                sr = old or records.StorageRecord(m.name, ref.kind, ref.uri)
                sr.managed = created or (bool(old.managed) if old else _ours(tags))
                sr.kind, sr.uri, sr.mode = ref.kind, ref.uri, m.mode
                sr.persistent = m.persistent if old is None else (old.persistent and m.persistent)
                sr.sources = list(m.uploads)
                sr.users = sorted(set(sr.users) | set(users))
                records.save(sr)
            for src in m.uploads:
                n = transfer.upload(store, src, ref)
                on_event("storage", f"uploaded {n} changed file(s) of {src} to {ref.uri}")
            out.append((m, ref))
        except StorageError as exc:
            raise _fail(m, exc) from None
        except Exception as exc:  # noqa: BLE001 - an SDK's own error (network, endpoint): named, not a traceback
            raise _fail(m, _sdk_error(exc)) from exc
    return out


def _sdk_error(exc: Exception) -> StorageError:
    return StorageError(f"the store failed: {type(exc).__name__}: {str(exc)[:300]}",
                        "check the network and the store's endpoint, then retry", exit_code=1)


def _ours(tags: dict) -> bool:
    return any(k.replace("_", "-") == MANAGED_TAG and v == "true" for k, v in (tags or {}).items())


def stage(m, ref: BucketRef, on_event, d: Path) -> tuple[Path, bool]:
    """COPY: the bucket (prefix) downloaded into this machine's cache entry `d` (cache.use); (path, single
    object?)."""
    try:
        n, single = transfer.download(get_store(ref.kind), ref, str(d))
    except StorageError as exc:
        raise _fail(m, exc) from None
    except Exception as exc:  # noqa: BLE001
        raise _fail(m, _sdk_error(exc)) from exc
    on_event("storage", f"fetched {n} changed object(s) of {ref.uri}")
    if single:
        return d / ref.prefix.strip("/").rsplit("/", 1)[-1], True
    return d, False


_NOT_A_DIR = 5  # the mount script's exit code when the mount path is a file


def mount_script(m, ref: BucketRef) -> str:
    """The node-side script of one MOUNT (credentials arrive in the environment, never in the text)."""
    from ..runtime.ssh_runner import path_expr

    rid = hashlib.sha256(f"{m.remote}|{ref.uri}".encode()).hexdigest()[:12]
    back = float(settings.get("storage_write_back"))
    # rclone uploads a closed file `back` seconds later (0 would race a write-then-rename: rclone 1.60 then
    # loses the file); MOUNT caches only what is written, MOUNT_CACHED reads too
    vfs = f"--vfs-cache-mode {'full' if m.mode == 'MOUNT_CACHED' else 'writes'} --vfs-write-back {back:g}s"
    return f"""set -e
umask 077
dst={path_expr(m.remote)}
if ! command -v rclone >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  S=""; [ "$(id -u)" = 0 ] || S="sudo -n"
  $S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone fuse3 >/dev/null 2>&1 || \\
    {{ $S apt-get update -qq >/dev/null 2>&1 && $S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone fuse3 >/dev/null 2>&1; }} || true
fi
command -v rclone >/dev/null 2>&1 || {{ echo "rclone is not installed on the node and could not be installed (apt-get install rclone fuse3)" >&2; exit 3; }}
real=$(realpath -m "$dst")  # an earlier mount there (live, or dead with its rclone gone) is replaced
if grep -qs " $real fuse" /proc/self/mounts; then fusermount3 -uz "$real" 2>/dev/null || fusermount -uz "$real" 2>/dev/null || umount -l "$real" 2>/dev/null || true; fi
if [ -e "$dst" ] && [ ! -d "$dst" ]; then echo "$dst exists and is not a directory" >&2; exit {_NOT_A_DIR}; fi
mkdir -p "$dst" 2>/dev/null || {{ sudo -n mkdir -p "$dst" && sudo -n chown "$(id -u):$(id -g)" "$dst"; }}
mkdir -p "$HOME/.skybroker-node/rclone"
log="$HOME/.skybroker-node/rclone/{rid}.log"
rclone mount {shlex.quote(get_store(ref.kind).rclone_path(ref))} "$dst" --daemon --daemon-wait 30s --allow-non-empty \\
  {vfs} --cache-dir "$HOME/.skybroker-node/rclone/cache-{rid}" --dir-cache-time 5s --poll-interval 0 \\
  --log-file "$log" --log-level NOTICE </dev/null >/dev/null 2>&1 || {{ tail -n 5 "$log" >&2; exit 4; }}
echo "$dst" >> "$HOME/.skybroker-node/mounts"
"""


def sync(rt, task, on_event=lambda k, m: None) -> None:
    """Every bucket mount of the task on every node of the cluster (after its local file mounts); then the
    COPY cache is pruned (cache.py)."""
    with contextlib.ExitStack() as held:  # the COPY entries, until every node has its copy (no prune takes them)
        _sync(rt, task, on_event, held)
    if any(m.mode == "COPY" for m in bucket_mounts(task)):
        cache.prune_quietly()


def _sync(rt, task, on_event, held) -> None:
    from ..runtime.runner import run_parallel

    pairs = prepare(task, rt.rec, on_event)
    copies, mounts = [], []
    for m, ref in pairs:
        if m.mode == "COPY":
            copies.append((m, *stage(m, ref, on_event, held.enter_context(cache.use(ref, rt.rec.name)))))
        else:
            try:
                env = get_store(ref.kind).node_env(ref, forward=bool(settings.get("storage_forward_credentials")))
            except StorageError as exc:
                raise _fail(m, exc) from None
            except Exception as exc:  # noqa: BLE001
                raise _fail(m, _sdk_error(exc)) from exc
            mounts.append((m, ref, env))

    def one(node):
        r = rt.runner(node)
        for m, path, single in copies:
            try:
                if single:
                    r.put_file(path.read_bytes(), m.remote, 0o644)
                else:
                    r.sync_up(str(path), m.remote, ignore_files=False)
            except OSError as exc:  # e.g. the path exists on the node as a file (or as a folder, for one object)
                raise StorageError(f"{_field(m)}: copying the bucket's objects to {m.remote} on node {node.rank} "
                                   f"failed: {exc.strerror or exc}", "mount it at a path that is free on the nodes, "
                                   "or remove what is there") from None
        for m, ref, env in mounts:
            res = r.run(mount_script(m, ref), env=env, timeout=300)
            if res.exit_code == _NOT_A_DIR:
                raise StorageError(f"{_field(m)}: {m.remote} exists on node {node.rank} and is not a directory: a "
                                   "bucket MOUNT needs a directory there", "mount it at another path, or remove the "
                                   "file first")
            if res.exit_code != 0:
                why = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit {res.exit_code}"]
                why = redact(why[0], env)[:300]
                raise StorageError(f"{_field(m)}: mounting {ref.uri} on node {node.rank} failed: {why}",
                                   "the node needs FUSE and rclone (apt-get install rclone fuse3); or use "
                                   "`mode: COPY`")

    if copies or mounts:
        run_parallel(rt.nodes, one)


def redact(text: str, env: dict[str, str]) -> str:
    """A node's message with the credentials it was given taken out (rclone may echo a SAS URL)."""
    import re

    for v in sorted((v for v in env.values() if len(v) >= 8), key=len, reverse=True):
        text = text.replace(v, "<redacted>")
    return re.sub(r"(?i)(sig|signature|x-amz-security-token|token)=[^&\s\"']+", r"\1=<redacted>", text)


def release(user: str, on_event=lambda k, m: None) -> list[str]:
    """`user` (cluster:NAME / owner:ID) no longer uses its buckets: delete the non-persistent ones nobody
    else uses. Returns warnings (a bucket that could not be deleted stays recorded)."""
    warnings = []
    doomed = []
    with records.locked():
        for sr in records.used_by(user):
            sr.users = [u for u in sr.users if u != user]
            records.save(sr)
            if not sr.persistent and not sr.users:
                doomed.append(sr)
    for sr in doomed:
        try:
            delete_bucket(sr, on_event)
        except Exception as exc:  # noqa: BLE001 - a teardown goes on; the record stays for `storage delete`
            records.save(sr)
            warnings.append(f"bucket {sr.uri} (persistent: false) was not deleted: {getattr(exc, 'message', exc)}; "
                            f"`broker storage delete {sr.name}`")
    for w in warnings:
        on_event("warning", w)
    return warnings


def release_cluster(rec, on_event=lambda k, m: None) -> list[str]:
    """A cluster went down. A managed job's cluster keeps the job's buckets (it is relaunched on
    recovery); the job's end releases them."""
    try:
        return release(f"cluster:{rec.name}", on_event)
    except Exception as exc:  # noqa: BLE001 - a teardown never fails on bucket bookkeeping
        return [f"bucket cleanup for {rec.name} failed: {exc}"]
    finally:
        cache.prune_quietly(gone=rec.name)  # its record is still there: it holds no COPY entry any more


def delete_bucket(sr, on_event=lambda k, m: None) -> str:
    """Delete a recorded storage: the bucket itself only if skybroker created it and its tag agrees.
    Returns "deleted", "kept" (not skybroker's bucket) or "gone" (deleted already); the record goes either way."""
    ref = parse_uri(sr.uri)
    outcome = "kept"
    if sr.managed:
        store = get_store(ref.kind)
        tags = store.tags(ref)
        if tags is None:
            outcome = "gone"
        elif _ours(tags) or (not tags and not store.keeps_tags()):
            on_event("storage", f"deleting bucket {ref.uri}")
            store.delete_bucket(ref)
            outcome = "deleted"
        else:
            raise StorageError(f"bucket {ref.uri} does not carry the {MANAGED_TAG} tag: not deleting it",
                               "delete it with the cloud's own tools if it is really yours")
    records.delete(sr.name)
    return outcome


def checkpoint_mount(stored: dict) -> str | None:
    """A managed job whose `envs.BROKER_CHECKPOINT_DIR` is the path of one of its bucket MOUNTs keeps its
    checkpoints in that bucket (the SkyPilot pattern): the controller neither copies them back nor restores
    them. `stored` is the task's storage form (spec.task_to_dict). Returns that directory, or None."""
    want = dict(stored.get("envs") or ()).get("BROKER_CHECKPOINT_DIR")
    if not want:
        return None
    for m in stored.get("file_mounts") or ():
        if m.get("is_bucket") and m.get("mode") in ("MOUNT", "MOUNT_CACHED") and \
                m["remote"].rstrip("/") == want.rstrip("/"):
            return want
    return None


def refresh() -> list[str]:
    """The stores are the truth: records whose bucket is gone are dropped, and a record's `managed` follows
    the bucket's tag where the store keeps tags. Returns the names forgotten."""
    gone = []
    for sr in records.all_records():
        ref = parse_uri(sr.uri)
        store = get_store(ref.kind)
        tags = store.tags(ref)
        if tags is None:
            records.delete(sr.name)
            gone.append(sr.name)
        elif store.keeps_tags() and sr.managed != _ours(tags):
            sr.managed = _ours(tags)
            records.save(sr)
    return gone
