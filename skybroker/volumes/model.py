"""Parsing: the task's `volumes:` field and a volume YAML (`broker volumes apply`). Pure; no state."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import SpecError

# Our type names, with SkyPilot's names (and obvious spellings) that map onto them.
TYPES = ("local-dir", "aws-ebs", "gcp-pd")
TYPE_ALIASES = {"local": "local-dir", "dir": "local-dir", "ebs": "aws-ebs", "aws-ebs": "aws-ebs",
                "gcp-pd": "gcp-pd", "pd": "gcp-pd", "gcp-persistent-disk": "gcp-pd", "local-dir": "local-dir"}
# SkyPilot types on clouds or services skybroker does not provide volumes for (refused with the reason).
FOREIGN_TYPES = {"k8s-pvc": "Kubernetes PVCs are not created by skybroker yet",
                 "runpod-network-volume": "RunPod is not a skybroker cloud",
                 "gcp-local-ssd": "local SSDs are instance storage, not a volume skybroker can keep"}
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # the strictest of the clouds' (GCE disk names)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?|[KMGTP]B?)?\s*$", re.I)


@dataclass(frozen=True)
class VolumeMount:
    """One entry of a task's `volumes:`: a named (applied) volume, or an ephemeral one (size given)."""

    path: str
    name: str | None = None
    sub_path: str | None = None
    size_gb: int | None = None  # ephemeral only
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def ephemeral(self) -> bool:
        return self.name is None

    @property
    def field(self) -> str:
        return f"volumes.{self.path}"


@dataclass(frozen=True)
class VolumeSpec:
    """A volume YAML."""

    name: str
    type: str
    cloud: str
    region: str | None
    zone: str | None
    size_gb: int
    labels: tuple[tuple[str, str], ...] = ()


def size_gb(value, fp: str, source: str | None = None) -> int:
    """`10Gi`, `1Ti`, `500Mi` (rounded up), `100` (GB), `100GB` → whole GiB (at least 1)."""
    if isinstance(value, bool):
        value = None
    m = _SIZE.match(str(value)) if value is not None else None
    if not m:
        raise SpecError(f"{str(value)[:40]!r} is not a size", "e.g. 10Gi, 1Ti or 100 (GB)", source=source, field=fp)
    n = float(m.group(1))
    unit = (m.group(2) or "G")[0].upper()
    n *= {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024, "P": 1024 ** 2}[unit]
    if n <= 0 or n > 64 * 1024:
        raise SpecError(f"size {value} is out of range", "between 1 GiB and 64 TiB", source=source, field=fp)
    return max(1, math.ceil(n))


def check_name(name, fp: str, source: str | None = None) -> str:
    name = str(name)
    if not _NAME.match(name):
        raise SpecError(f"{name[:70]!r} is not a volume name", "lowercase letters, digits and hyphens, starting "
                        "with a letter, at most 63 characters (what every cloud's disk names allow)",
                        source=source, field=fp)
    return name


def _labels(raw, fp: str, source: str | None) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SpecError("labels are a mapping of key: value", None, source=source, field=fp)
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def task_volumes(raw, source: str) -> tuple[VolumeMount, ...]:
    """The task's `volumes:` → VolumeMount tuple (mount paths absolute; sub_path relative, no `..`)."""
    out = []
    for path, spec in (raw or {}).items():
        path = str(path)
        fp = f"volumes.{path}"
        if not path.startswith("/") or path.rstrip("/") == "" or ".." in path.split("/"):
            raise SpecError(f"mount path {path!r} must be an absolute path (not /)", "e.g. `/mnt/data: my-volume`",
                            source=source, field=fp)
        path = path.rstrip("/")
        if isinstance(spec, str):
            out.append(VolumeMount(path, check_name(spec, fp, source)))
            continue
        if not isinstance(spec, dict):
            raise SpecError("expected a volume name or `{name, sub_path}` or `{size, labels}`", None, source=source,
                            field=fp)
        unknown = sorted(set(map(str, spec)) - {"name", "sub_path", "size", "labels"})
        if unknown:
            raise SpecError(f"unknown key {unknown[0]!r}", "a volume entry has name and sub_path (an applied "
                            "volume), or size and labels (an ephemeral one)", source=source, field=f"{fp}.{unknown[0]}")
        sub = spec.get("sub_path")
        if sub is not None:
            sub = str(sub).strip("/")
            if not sub or ".." in sub.split("/") or "\x00" in sub:
                raise SpecError(f"sub_path {spec.get('sub_path')!r} must be a relative path inside the volume",
                                "e.g. `sub_path: datasets/v1`", source=source, field=f"{fp}.sub_path")
        if spec.get("name") is not None:
            if spec.get("size") is not None:
                raise SpecError("give either `name` (an applied volume) or `size` (an ephemeral one), not both",
                                "create the named volume with `broker volumes apply`; its size is set there",
                                source=source, field=f"{fp}.size")
            out.append(VolumeMount(path, check_name(spec["name"], f"{fp}.name", source), sub,
                                   labels=_labels(spec.get("labels"), f"{fp}.labels", source)))
            continue
        if spec.get("size") is None:
            raise SpecError("a volume entry needs `name` (an applied volume) or `size` (an ephemeral one)",
                            "e.g. `/mnt/data: {name: my-volume}` or `/mnt/scratch: {size: 100Gi}`", source=source,
                            field=fp)
        out.append(VolumeMount(path, None, sub, size_gb(spec["size"], f"{fp}.size", source),
                               _labels(spec.get("labels"), f"{fp}.labels", source)))
    paths = [m.path for m in out]
    for p in paths:
        if any(q != p and q.startswith(p + "/") for q in paths):
            raise SpecError(f"mount paths {p} and one inside it overlap", "mount volumes at separate paths",
                            source=source, field=f"volumes.{p}")
    return tuple(out)


def parse_type(value, fp: str, source: str | None) -> str:
    t = str(value).strip().lower()
    if t in TYPE_ALIASES:
        return TYPE_ALIASES[t]
    if t in FOREIGN_TYPES:
        raise SpecError(f"volume type {t}: {FOREIGN_TYPES[t]}", f"types skybroker creates: {', '.join(TYPES)}",
                        source=source, field=fp)
    raise SpecError(f"unknown volume type {str(value)[:40]!r}", f"one of {', '.join(TYPES)} (SkyPilot's gcp-pd "
                    "is the same)", source=source, field=fp)


def volume_spec(data, source: str, default_type) -> VolumeSpec:
    """A volume YAML → VolumeSpec. `default_type(cloud)` gives the type when only `infra` is given."""
    from .. import resources as R

    if not isinstance(data, dict):
        raise SpecError("expected a mapping (name, type, infra, size, labels)", None, source=source)
    unknown = sorted(set(map(str, data)) - {"name", "type", "infra", "size", "labels", "use_existing", "config"})
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r}", "a volume has name, type, infra, size and labels",
                        source=source, field=unknown[0])
    if data.get("use_existing"):
        raise SpecError("use_existing (adopt a volume skybroker did not create) is not supported",
                        "let skybroker create the volume (drop use_existing), or copy the data in `setup`",
                        source=source, field="use_existing")
    if data.get("config"):
        raise SpecError("volume config (namespace, storage class, access mode) is not supported",
                        "remove `config` (those are Kubernetes PVC settings)", source=source, field="config")
    if not data.get("name"):
        raise SpecError("a volume needs a name", "add `name: my-volume`", source=source, field="name")
    name = check_name(data["name"], "name", source)
    try:
        cloud, region, zone = R.parse_infra(data["infra"], "infra") if data.get("infra") else (None, None, None)
    except SpecError as exc:
        raise SpecError(exc.message, exc.hint, source=source, field="infra") from None
    vtype = parse_type(data["type"], "type", source) if data.get("type") else None
    if vtype is None:
        if not cloud:
            raise SpecError("a volume needs `type` or `infra`", "e.g. `type: aws-ebs` and `infra: "
                            f"aws/us-east-1/us-east-1a` (types: {', '.join(TYPES)})", source=source, field="type")
        vtype = default_type(cloud)
        if vtype is None:
            raise SpecError(f"skybroker creates no volumes on {cloud}", f"types skybroker creates: {', '.join(TYPES)}",
                            source=source, field="infra")
    if data.get("size") is None:
        raise SpecError("a volume needs a size", "e.g. `size: 100Gi`", source=source, field="size")
    return VolumeSpec(name, vtype, cloud or "", region, zone, size_gb(data["size"], "size", source),
                      _labels(data.get("labels"), "labels", source))
