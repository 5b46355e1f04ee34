"""What each SkyPilot task field means here, when it is more than a value to parse (used by spec.py).

Every field SkyPilot accepts is one of:
  - honoured (most of the format; see spec.py and resources.py);
  - accepted with a documented meaning and a warning on `Task.warnings`, where ignoring it is harmless
    (`service:` is ignored by launch exactly as `sky launch` ignores it; `inputs`/`outputs` size hints;
    Kubernetes-only settings; `network_tier: best`; `priority`);
  - refused by name with exit 2 and what to do instead, where ignoring it would change what the job does
    (containers, pools, managed secrets, event callbacks, disk tiers we cannot provide, ...).
Also here: SkyPilot's `$VAR`/`${VAR}` substitution, the envs/secrets maps and file mounts.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
from pathlib import Path
from typing import Any

from .errors import SpecError

BUCKET_PREFIXES = ("s3://", "gs://", "gcs://", "r2://", "cos://", "https://", "http://", "az://", "oci://",
                   "nebius://", "hf://", "vastdata://")
_VAR = re.compile(r"\$\{?\b([a-zA-Z_][a-zA-Z0-9_]*)\b\}?")  # SkyPilot's pattern (task_yaml._fill_in_env_vars)


# ----------------------------------------------------------------------------------------------
# Environment variables

def substitute(value: Any, env: dict[str, str]) -> Any:
    """`$VAR` and `${VAR}` → env[VAR] in every string (keys and values, recursively), as SkyPilot fills
    file_mounts, storage name/source/store and workdir. Unknown variables are left as written."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {substitute(k, env): substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    return value


def env_map(m) -> dict[str, str | None]:
    """envs/secrets values as SkyPilot reads them: str(value) (`true` → "True", 3 → "3"), None kept."""
    out: dict[str, str | None] = {}
    for k, v in (m or {}).items():
        out[str(k)] = None if v is None else str(v)
    return out


def normalise_env_scalars(data: dict) -> None:
    """Before the schema check: env keys to str (YAML reads `123:` as an int), as SkyPilot does."""
    for kind in ("envs", "secrets"):
        m = data.get(kind)
        if isinstance(m, dict) and any(not isinstance(k, str) for k in m):
            data[kind] = {str(k): v for k, v in m.items()}


def check_overrides(mapping: dict, flag: str) -> None:
    for k in mapping:
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise SpecError(f"{flag} {str(k)[:40]!r}: not a valid variable name", f"use {flag} KEY=VALUE")


# Linux's MAX_ARG_STRLEN: one NAME=VALUE string of a process's environment (execve says E2BIG past it);
# and the whole environment (with argv) within ARG_MAX, 2 MiB with the usual 8 MiB stack, less room for
# the node's own variables and SKYPILOT_*/BROKER_*
ENV_STRING_MAX = 32 * 4096
ENV_TOTAL_MAX = 2 * 1024 * 1024 - 128 * 1024


def require_values(envs: dict, secrets: dict, source: str) -> None:
    total = 0
    for kind, mapping, flag in (("envs", envs, "--env"), ("secrets", secrets, "--secret")):
        for k, v in mapping.items():
            if v is None:
                raise SpecError(f"{k} has no value (null marks it as required)",
                                f"pass it on the command line: {flag} {k}=VALUE (or {flag} {k} to take it from "
                                f'your environment); for an empty value write {k}: ""', source=source,
                                field=f"{kind}.{k}")
            size = len(f"{k}={v}".encode("utf-8", "surrogateescape")) + 1
            if size > ENV_STRING_MAX:  # the job would fail to start on every node, its log empty
                raise SpecError(f"is {size} bytes: a variable of a process's environment holds at most "
                                f"{ENV_STRING_MAX // 1024} KiB on Linux, so the job could not start",
                                "put the data in a file (the workdir or a file_mounts entry) and pass its path",
                                source=source, field=f"{kind}.{k}")
            total += size + 8  # and its pointer
    if total > ENV_TOTAL_MAX:
        raise SpecError(f"envs and secrets are {total} bytes together: a process's environment holds about 2 MiB "
                        "on Linux (ARG_MAX), so the job could not start",
                        "put the data in files (the workdir or file_mounts entries) and pass their paths",
                        source=source, field="envs")


def secrets_section(raw, source: str) -> dict:
    """The inline secrets of `secrets:`; managed-secret references are refused by name."""
    if isinstance(raw, list):
        raise SpecError("managed secret references (`secrets: [secrets:NAME, ...]`) are not supported",
                        "pass each value instead: --secret NAME (from your environment) or --secret NAME=VALUE",
                        source=source, field="secrets")
    out = env_map(raw)
    for k in out:
        if k.startswith("secrets:"):
            raise SpecError("managed secret references (`secrets:NAME`) are not supported",
                            "pass the value instead: --secret NAME (from your environment) or --secret NAME=VALUE",
                            source=source, field="secrets")
    return out


# ----------------------------------------------------------------------------------------------
# Top-level fields

def docker_config(data: dict, source: str) -> tuple[str, ...]:
    """`config.docker.run_options` (SkyPilot's extra `docker run` options): a string or a list of strings."""
    docker = (data.get("config") or {}).get("docker")
    if docker is None:
        return ()
    if not isinstance(docker, dict):
        raise SpecError("must be a mapping", "e.g. config: {docker: {run_options: [--shm-size=16g]}}",
                        source=source, field="config.docker")
    unknown = sorted(set(map(str, docker)) - {"run_options"})
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r}", "config.docker has only `run_options`", source=source,
                        field=f"config.docker.{unknown[0]}")
    opts = docker.get("run_options") or ()
    opts = [opts] if isinstance(opts, str) else opts
    if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
        raise SpecError("must be a string or a list of strings", None, source=source,
                        field="config.docker.run_options")
    return tuple(opts)


def pool_workers(data: dict, source: str) -> int | None:
    """`pool: {workers: N}` (SkyPilot job pools): how many workers the pool keeps; None for a plain task."""
    pool = data.get("pool")
    if pool is None:
        return None
    if not isinstance(pool, dict):
        raise SpecError("`pool` must be a mapping", "e.g. pool: {workers: 2}", source=source, field="pool")
    for key in pool:
        if key != "workers":
            raise SpecError(f"pool.{key} is not supported", "skybroker pools take `workers: N` (a fixed size; "
                            "apply again with another N to scale)", source=source, field=f"pool.{key}")
    n = pool.get("workers", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > 1000:
        raise SpecError(f"{n!r} is not a worker count", "expected an integer 0-1000", source=source,
                        field="pool.workers")
    return n


def top_level_policy(data: dict, source: str, warnings: list[str]) -> None:
    def refuse(field, what, hint):
        raise SpecError(what, hint, source=source, field=field)

    if data.get("volume_mounts"):
        refuse("volume_mounts", "`volume_mounts` is not supported", "mount volumes with `volumes: {/mnt/path: NAME}` "
               "(README \"Volumes\")")
    if data.get("managed_secrets"):
        refuse("managed_secrets", "managed secrets are not supported",
               "pass each value instead: --secret NAME (from your environment) or --secret NAME=VALUE")
    if data.get("event_callback"):
        refuse("event_callback", "event callbacks are not supported",
               "remove `event_callback`; follow the job with `broker logs` / `broker jobs queue`")
    if data.get("service"):
        warnings.append("service: ignored by launch, as `sky launch` ignores it (skybroker has no `serve`; "
                        "the task runs as one cluster)")
    for key in ("inputs", "outputs"):
        if data.get(key):
            warnings.append(f"{key}: data size hints are ignored (plans compare machine prices only)")
    if data.get("api_server_access"):
        warnings.append("api_server_access: ignored (skybroker has no API server)")


# ----------------------------------------------------------------------------------------------
# Git workdir (`workdir: {url, ref}`)

_GIT_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:[^\s]+$")  # git@github.com:org/repo.git
_BAD_REF = re.compile(r"(^-|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|/$|\.lock$|^/)")


def git_workdir(value: dict, ov: dict, source: str) -> tuple[str | None, str | None]:
    """(url, ref) of a git workdir, from `workdir: {url, ref}` and the --git-url/--git-ref overrides; a
    bad url or ref is refused here, naming the field (the clone itself runs on every node)."""
    url = ov.get("git_url") or (value or {}).get("url")
    ref = ov.get("git_ref") or (value or {}).get("ref")
    field = "--git-url" if ov.get("git_url") else "workdir.url"
    if not url and value is not None:
        raise SpecError("a git workdir needs a repository URL", "write `workdir: {url: https://host/org/repo.git, "
                        "ref: main}`, or a local folder `workdir: path`", source=source, field="workdir.url")
    if not url:
        if ov.get("git_ref"):
            raise SpecError("--git-ref needs a git workdir", "add --git-url URL, or `workdir: {url: URL}` to the "
                            "task", source=source, field="--git-ref")
        return None, None
    url = str(url).strip()
    if url.startswith("-") or any(ord(c) < 33 for c in url) or not (url.startswith(_GIT_SCHEMES) or
                                                                     _SCP_LIKE.match(url)):
        raise SpecError(f"{_clip(_hide_userinfo(url))!r} is not a git repository URL",
                        "use https://host/org/repo.git, ssh://user@host/path, user@host:path (or git://, file://)",
                        source=source, field=field)
    if ref is not None:
        ref = str(ref).strip()
        rfield = "--git-ref" if ov.get("git_ref") else "workdir.ref"
        if not ref or _BAD_REF.search(ref):
            raise SpecError(f"{_clip(ref)!r} is not a git branch, tag or commit", "name a branch (main), a tag "
                            "(v1.2) or a commit (a full or abbreviated hash)", source=source, field=rfield)
    return url, ref or None


def _hide_userinfo(url: str) -> str:
    """`https://user:token@host/...` → `https://***@host/...` (a token in a URL is never shown)."""
    return re.sub(r"^([a-z+]+://)[^/@]*@", r"\1***@", url)


def _clip(v, n: int = 80) -> str:
    s = str(v)
    return s if len(s) <= n else s[:n] + "…"


# ----------------------------------------------------------------------------------------------
# Resources fields

_DISK_TIERS = ("low", "medium", "high", "ultra", "best")


def _tag_hint(tag: str, known: list[str]) -> str:
    from difflib import get_close_matches

    near = get_close_matches(tag.strip().lower(), known, n=4, cutoff=0.6)
    return ((f"did you mean {', '.join(near)}? " if near else "") + "The tags SkyPilot's image catalog has are listed "
            "in skybroker/catalog/data/images.tsv; or give the cloud's own image id, or drop image_id (skybroker "
            "picks an Ubuntu image, with GPU drivers on GPU machines)")


def resources_policy(raw: dict, fp: str, warnings: list[str]) -> None:
    """Refuse or warn about one resources entry's fields (SpecError carries the field path)."""
    images = raw.get("image_id")
    values = images.values() if isinstance(images, dict) else [images]
    for v in values:
        if isinstance(v, str) and v.strip().lower().startswith("docker:") and not v.strip()[7:].strip():
            raise SpecError("`docker:` names no image", "e.g. `image_id: docker:ubuntu:22.04`",
                            field=f"{fp}.image_id")
    from .catalog import images as image_tags

    for v in values:
        if image_tags.is_tag(v) and not image_tags.places(v):
            raise SpecError(f"unknown SkyPilot image tag {_clip(v)!r}",
                            _tag_hint(v, image_tags.known_tags()), field=f"{fp}.image_id")
    tier = raw.get("disk_tier")
    if tier is not None:
        t = str(tier).lower()
        if t not in _DISK_TIERS:
            raise SpecError(f"unknown disk tier {tier!r}", f"one of {', '.join(_DISK_TIERS)}", field=f"{fp}.disk_tier")
        if t in ("high", "ultra"):
            raise SpecError(f"disk_tier {t} cannot be honoured: skybroker provisions the clouds' default SSD "
                            "(SkyPilot's medium tier)", "use `disk_tier: medium` or `best`, or remove it",
                            field=f"{fp}.disk_tier")
        if t == "low":
            warnings.append(f"{fp}.disk_tier: low gets the default SSD (medium)")
    net = raw.get("network_tier")
    if net is not None:
        n = str(net).lower()
        if n not in ("standard", "best"):
            raise SpecError(f"unknown network tier {net!r}", "one of standard, best", field=f"{fp}.network_tier")
        if n == "best":
            warnings.append(f"{fp}.network_tier: best gets standard networking (no GPUDirect/InfiniBand/EFA); "
                            "multi-node jobs run, with less bandwidth")
    if raw.get("local_disk"):
        raise SpecError("local_disk is not supported (the catalogs carry no local-disk data)",
                        "remove `local_disk` (or name an instance type that has local NVMe)", field=f"{fp}.local_disk")
    if raw.get("volumes"):
        raise SpecError("Kubernetes volumes are not supported", "remove `volumes`", field=f"{fp}.volumes")
    if raw.get("priority") is not None:
        warnings.append(f"{fp}.priority: ignored (managed jobs start in submission order)")
    if raw.get("priority_class"):
        warnings.append(f"{fp}.priority_class: ignored (a Kubernetes setting)")
    stop = raw.get("autostop")
    if isinstance(stop, dict):
        if stop.get("hook"):
            raise SpecError("autostop hooks are not supported", "remove `autostop.hook` (run it at the end of `run`)",
                            field=f"{fp}.autostop.hook")
        wait = stop.get("wait_for")
        if wait is not None:
            w = str(wait).lower()
            if w == "none":
                raise SpecError("autostop wait_for: none (stop even while jobs run) is not supported",
                                "remove `wait_for` (idle means: no job running)", field=f"{fp}.autostop.wait_for")
            if w not in ("jobs", "jobs_and_ssh"):
                raise SpecError(f"unknown autostop wait_for {wait!r}", "one of jobs, jobs_and_ssh, none",
                                field=f"{fp}.autostop.wait_for")
            warnings.append(f"{fp}.autostop.wait_for: not configurable; idle means no job running and, where "
                            "autostop runs on the cluster's own remote nodes (AWS, GCP), no interactive SSH session")
    args = raw.get("accelerator_args") or {}
    if args.get("tpu_vm") is False:
        raise SpecError("TPU Nodes (`tpu_vm: false`: Google's older TPU architecture, a TPU reached from a "
                        "separate host VM) are not supported", "remove `tpu_vm: false`: the same TPU runs as a TPU VM "
                        "(the default, and what Google recommends)", field=f"{fp}.accelerator_args.tpu_vm")


def aliases(d: dict, fp: str, source: str) -> dict:
    """SkyPilot's other names: gpus = accelerators, spot_recovery = job_recovery, ephemeral_storage =
    disk_size."""
    for old, new in (("gpus", "accelerators"), ("spot_recovery", "job_recovery"), ("ephemeral_storage", "disk_size")):
        if old in d:
            if d.get(new) is not None and d.get(old) is not None:
                raise SpecError(f"give either {old} or {new}, not both", f"`{old}` is another name for `{new}`",
                                source=source, field=f"{fp}.{old}")
            v = d.pop(old)
            if d.get(new) is None:
                d[new] = v
    return d


def policies(res: dict, source: str, warnings: list[str]) -> None:
    """Fields refused or warned about, on the options that will be planned (an option on a cloud skybroker
    does not run on is skipped whole, so what it says does not matter)."""
    base = {k: v for k, v in res.items() if k not in ("any_of", "ordered")}
    entries = [(f"resources.{k}[{i}]", e) for k in ("any_of", "ordered") for i, e in enumerate(res.get(k) or ())]
    kept = [(fp, e) for fp, e in entries if supported({**base, **e})]
    try:
        if kept or (not entries and supported(base)):
            resources_policy(base, "resources", warnings)
        for fp, e in kept:
            resources_policy(e, fp, warnings)
    except SpecError as exc:
        raise SpecError(exc.message, exc.hint, source=source) from None


def supported(raw: dict) -> bool:
    from . import resources as R

    """False when the option names a SkyPilot cloud skybroker does not run on (other errors come later)."""
    try:
        if raw.get("infra"):
            R.parse_infra(raw["infra"], "resources.infra")
        elif raw.get("cloud"):
            R.normalize_cloud(raw["cloud"], "resources.cloud")
    except R.UnsupportedCloud:
        return False
    except SpecError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# File mounts

# Set (`local_paths_unread()`) where a task is parsed on someone else's behalf (the dashboard's "Plan a
# task"): its local paths (file_mounts sources, workdir) are taken as written, never looked up on this
# machine, so what a plan says cannot tell which of the server's files exist.
_UNREAD = contextvars.ContextVar("skybroker_local_paths_unread", default=False)


@contextlib.contextmanager
def local_paths_unread():
    tok = _UNREAD.set(True)
    try:
        yield
    finally:
        _UNREAD.reset(tok)


def local_paths_read() -> bool:
    return not _UNREAD.get()

def file_mounts(m, source: str, make_mount) -> tuple:
    """`file_mounts` → FileMount tuple. A string is a local path or a bucket URI (copied to the nodes, as
    SkyPilot copies it); a mapping is a SkyPilot storage (skybroker/storage/): `source` a bucket URI, or
    `name` (a bucket, created if missing) with optional local `source`(s) uploaded into it; `mode` MOUNT
    (the default), COPY or MOUNT_CACHED; `persistent: false` deletes a created bucket on `down`."""
    out = []
    for remote, spec in (m or {}).items():
        remote = str(remote)
        fp = f"file_mounts.{remote}"
        if isinstance(spec, dict):
            out.append(_storage(remote, spec, fp, source, make_mount))
            continue
        src = str(spec)
        if src.startswith(BUCKET_PREFIXES):
            out.append(make_mount(remote, _bucket_uri(src, fp, source), is_bucket=True, mode="COPY"))
            continue
        out.append(make_mount(remote, _local(src, fp, source)))
    return tuple(out)


def check_mount_targets(mounts, has_workdir: bool, source: str) -> None:
    """Where file mounts land on the nodes: a path, not a bucket URI (a SkyPilot rule), not the nodes' root, and
    not `~/sky_workdir` itself when a workdir is synced there (SkyPilot's rule: the two would overwrite each
    other; a path inside it is fine)."""
    for m in mounts:
        fp = f"file_mounts.{m.remote}"
        target = m.remote.strip()
        if not target:
            raise SpecError("a file mount needs a destination path (the key is empty)",
                            "e.g. `/data: s3://my-bucket` or `~/model: ./model`", source=source, field=fp)
        if target.startswith(BUCKET_PREFIXES) or "://" in target:
            raise SpecError("the destination of a file mount is a path on the nodes, not a bucket",
                            "write the path first: `/data: s3://my-bucket`", source=source, field=fp)
        norm = os.path.normpath(target)
        if norm == "/":
            raise SpecError("a file mount cannot replace the nodes' root directory", "mount it at a path such as "
                            "/data", source=source, field=fp)
        if has_workdir and norm in ("~/sky_workdir", "sky_workdir"):
            raise SpecError("~/sky_workdir is where the workdir is synced: a file mount there would replace or "
                            "mix into it", "mount it at a path inside it (~/sky_workdir/data) or elsewhere",
                            source=source, field=fp)


def _bucket_uri(uri: str, fp: str, source: str) -> str:
    from .storage.base import StorageError, parse_uri

    try:
        return parse_uri(uri).uri if not uri.startswith("https://") else uri
    except StorageError as exc:
        raise SpecError(exc.message, exc.hint, source=source, field=fp) from None


def _local(src: str, fp: str, source: str) -> str:
    if not local_paths_read():
        return src
    local = Path(os.path.expanduser(src))
    if not local.is_absolute():
        local = Path.cwd() / local
    try:
        ok = local.exists()
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise SpecError(f"local path {src!r} does not exist", "file_mounts map a remote path to a local file or "
                        "folder (or a bucket URI); relative paths are relative to where you run broker",
                        source=source, field=fp)
    return str(local.resolve())


_MODES = ("MOUNT", "COPY", "MOUNT_CACHED")


def _storage(remote: str, spec: dict, fp: str, source: str, make_mount):
    from .storage.base import STORE_NAMES, StorageError, check_name

    mode = str(spec.get("mode") or "MOUNT").upper()
    if mode not in _MODES:
        raise SpecError(f"unknown storage mode {spec.get('mode')!r}", f"one of {', '.join(_MODES)}",
                        source=source, field=f"{fp}.mode")
    store = spec.get("store")
    kind = None
    if store is not None:
        if str(store).lower() == "volume":
            raise SpecError("volume mounts (`store: volume`) are not supported",
                            "sync the data with a plain file mount (remote: local path) or copy it in `setup`",
                            source=source, field=f"{fp}.store")
        kind = STORE_NAMES.get(str(store).lower())
        if kind is None:
            raise SpecError(f"store {str(store)[:40]!r} is not supported", "one of s3, gcs, azure, r2 (or leave "
                            "`store` out: the cluster's cloud decides)", source=source, field=f"{fp}.store")
    src = spec.get("source")
    sources = [str(s) for s in src] if isinstance(src, list) else ([str(src)] if src else [])
    name = spec.get("name")
    persistent = spec.get("persistent")
    persistent = True if persistent is None else persistent
    if not isinstance(persistent, bool):
        raise SpecError(f"persistent must be true or false, not {str(persistent)[:40]!r}", None, source=source,
                        field=f"{fp}.persistent")
    uris = [s for s in sources if s.startswith(BUCKET_PREFIXES)]
    if uris:
        if len(sources) > 1:
            raise SpecError("a bucket source must be the only source", "give one bucket URI, or local paths with "
                            "`name`", source=source, field=f"{fp}.source")
        return make_mount(remote, _bucket_uri(uris[0], f"{fp}.source", source), is_bucket=True, mode=mode)
    if not name:
        if sources:
            raise SpecError("a storage with a local `source` needs `name` (the bucket to create)",
                            "add `name: my-bucket`, or mount the folder directly: `remote: local-path`",
                            source=source, field=f"{fp}.name")
        raise SpecError("a storage mount needs `source` (a bucket URI) or `name` (a bucket)", None,
                        source=source, field=fp)
    name = str(name)
    if kind is not None and "$" not in name:  # an unfilled variable: checked at launch, where it is used
        try:
            check_name(kind, name)
        except StorageError as exc:
            raise SpecError(exc.message, exc.hint, source=source, field=f"{fp}.name") from None
    # COPY with only a `name` (SkyPilot's form): the bucket by that name is copied to the node; one that does not
    # exist yet is created empty first, as for any named storage (storage/mounts.py)
    uploads = tuple(_local(s, f"{fp}.source", source) for s in sources)
    return make_mount(remote, f"{kind}://{name}" if kind else "", is_bucket=True, mode=mode, name=name,
                      store=kind, uploads=uploads, persistent=persistent)
