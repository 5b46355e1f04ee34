"""`Resources`: one concrete request for a machine shape (the value object optimizer, blocklist and
failover all speak). A task's `resources:` section expands into one or more of these (accelerator
lists/sets, any_of, ordered); see spec.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from .errors import SpecError

# Clouds SkyPilot knows and skybroker does not run on: an `any_of`/`ordered` option naming one is skipped
# (as SkyPilot skips clouds that are not enabled); a task whose every option names one is refused.
OTHER_SKYPILOT_CLOUDS = ("kubernetes", "k8s", "lambda", "runpod", "oci", "ibm", "nebius", "cudo", "fluidstack",
                         "paperspace", "do", "vast", "scp", "vsphere", "seeweb", "shadeform", "hyperbolic",
                         "primeintellect", "mithril", "verda", "yotta", "slurm", "coreweave", "together",
                         "hyperpod")


class UnsupportedCloud(SpecError):
    """A SkyPilot cloud skybroker does not support (spec.py skips the option that names it)."""

    def __init__(self, cloud: str, supported: str, field: str | None = None):
        self.cloud = cloud
        super().__init__(f"{cloud} is not supported by skybroker", f"skybroker runs on {supported}", field=field)


# SkyPilot's default for a CPU-only task that names neither cpus nor memory nor an instance type.
DEFAULT_CPUS = 8.0
DEFAULT_MEMORY_PER_CPU = 4.0


@dataclass(frozen=True)
class Amount:
    """`cpus`/`memory`: exactly `value`, at least `value` (`4+`), or for memory a ratio to vCPUs (`4x`)."""

    value: float
    at_least: bool = False
    per_cpu: bool = False  # memory only: value GiB per vCPU, at least

    def admits(self, actual: float, vcpus: float = 0.0) -> bool:
        want = self.value * vcpus if self.per_cpu else self.value
        if self.at_least or self.per_cpu:
            return actual >= want - 1e-9
        return abs(actual - want) < 1e-6

    def __str__(self) -> str:
        v = f"{self.value:g}"
        return v + ("x" if self.per_cpu else "+" if self.at_least else "")


@dataclass(frozen=True)
class JobRecovery:
    strategy: str = "EAGER_NEXT_REGION"
    max_restarts_on_errors: int = 0
    recover_on_exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Autostop:
    idle_minutes: int
    down: bool = False


@dataclass(frozen=True)
class Resources:
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    accelerator: str | None = None
    accelerator_count: float = 0.0
    cpus: Amount | None = None
    memory: Amount | None = None
    instance_type: str | None = None
    use_spot: bool = False
    use_spot_explicit: bool = False  # False: the task did not say; CLI/--use-spot may decide
    disk_size: int = 256
    disk_tier: str | None = None
    ports: tuple[str, ...] = ()
    image_id: tuple[tuple[str, str], ...] = ()  # (region or "", image); "" = every region
    labels: tuple[tuple[str, str], ...] = ()
    max_hourly_cost: float | None = None
    autostop: Autostop | None = None
    job_recovery: JobRecovery | None = None
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    options: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # task config (task_config.py)

    @property
    def infra(self) -> str:
        parts = [self.cloud or "*", self.region or "*", self.zone or "*"]
        while len(parts) > 1 and parts[-1] == "*":
            parts.pop()
        return "/".join(parts)

    def accelerator_str(self) -> str | None:
        if not self.accelerator:
            return None
        return f"{self.accelerator}:{self.accelerator_count:g}"

    def describe(self) -> str:
        bits = []
        if self.accelerator:
            bits.append(self.accelerator_str())
        if self.instance_type:
            bits.append(self.instance_type)
        if self.cpus:
            bits.append(f"cpus={self.cpus}")
        if self.memory:
            bits.append(f"memory={self.memory}")
        bits.append("spot" if self.use_spot else "on-demand")
        if self.infra != "*":
            bits.append(f"infra={self.infra}")
        return ", ".join(bits)

    def with_overrides(self, **kw) -> "Resources":
        return replace(self, **{k: v for k, v in kw.items()})


# ----------------------------------------------------------------------------------------------
# Parsers for the small value syntaxes. Each raises SpecError naming the field and the expected form.

_ACC_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(?::\s*([^\s].*?))?\s*$")


def parse_accelerator(text: str, field_path: str) -> tuple[str, float]:
    m = _ACC_RE.match(str(text))
    if not m:
        raise SpecError(f"{_clip(text)!r} is not an accelerator", "expected NAME[:COUNT], e.g. A100:8 or V100",
                        field=field_path)
    name, count = m.group(1), m.group(2)
    if count is None:
        return name, 1.0
    try:
        value = float(count)
    except ValueError:
        raise SpecError(f"{_clip(text)!r}: count {_clip(count)!r} is not a number",
                        "expected NAME[:COUNT], e.g. A100:8 or V100", field=field_path) from None
    if not math.isfinite(value) or value > 1e6:
        raise SpecError(f"{_clip(text)!r}: count must be a finite number of accelerators",
                        "expected NAME[:COUNT], e.g. A100:8", field=field_path)
    if value <= 0:
        raise SpecError(f"{_clip(text)!r}: count must be positive", "expected NAME[:COUNT], e.g. A100:8",
                        field=field_path)
    return name, value


_MEM_UNITS = {"k": 1 / 1024 ** 2, "m": 1 / 1024, "g": 1.0, "t": 1024.0, "p": 1024.0 ** 2}


def _clip(v, n: int = 40) -> str:
    t = str(v)
    return t if len(t) <= n else t[:n - 3] + "..."


def parse_amount(value, field_path: str, *, allow_ratio: bool = False) -> Amount | None:
    """`4` exactly, `4+` at least, memory `4x` (GiB per vCPU) and units (`64GB`, `1024MB`, `1TB`; GiB)."""
    if value is None:
        return None
    forms = "4, '4+' (at least 4)" + (", '4x' (GiB per vCPU), '64GB'" if allow_ratio else "")
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a number", f"expected {forms}", field=field_path)
    if isinstance(value, (int, float)):
        num, at_least, per_cpu = float(value), False, False
    else:
        text = str(value).strip().replace(" ", "")
        at_least = per_cpu = False
        if text.endswith("+"):
            at_least, text = True, text[:-1]
        elif allow_ratio and text.lower().endswith("x"):
            per_cpu, text = True, text[:-1]
        factor = 1.0
        if allow_ratio and not per_cpu:
            m = re.fullmatch(r"(.*?)([kmgtpKMGTP])(?:i?[bB])?", text)
            if m and m.group(1):
                text, factor = m.group(1), _MEM_UNITS[m.group(2).lower()]
        try:
            num = float(text) * factor
        except ValueError:
            raise SpecError(f"{_clip(value)!r} is not a valid amount", f"expected {forms}", field=field_path) from None
    if not math.isfinite(num):
        raise SpecError(f"{_clip(value)!r} is not a finite amount", f"expected {forms}", field=field_path)
    if num <= 0:
        raise SpecError(f"{_clip(value)!r} must be positive", None, field=field_path)
    return Amount(num, at_least=at_least, per_cpu=per_cpu)


def parse_infra(text: str, field_path: str) -> tuple[str | None, str | None, str | None]:
    """`cloud[/region[/zone]]` with `*` wildcards. `ssh/<pool>` names a node pool as its region."""
    parts = [p.strip() for p in str(text).strip().strip("/").split("/")]
    if parts and parts[0].lower() in OTHER_SKYPILOT_CLOUDS:
        cloud = normalize_cloud(parts[0], field_path)  # raises UnsupportedCloud for clouds we do not run on
        if cloud == "kubernetes" and len(parts) > 1 and all(parts[1:]):
            # `k8s/<context>`: a context may hold slashes (EKS ARNs end in `cluster/<name>`); the first part
            # is kept as the region and the rest as the zone, which the provider joins back into the context
            rest = "/".join(parts[1:])
            region, _, zone = rest.partition("/")
            return cloud, region, zone or None
    if not parts or len(parts) > 3 or any(p == "" for p in parts):
        raise SpecError(f"{_clip(text)!r} is not an infra", "expected cloud[/region[/zone]], e.g. aws/us-east-1",
                        field=field_path)
    cloud, region, zone = (parts + [None, None])[:3]
    cloud = None if cloud == "*" else cloud.lower()
    region = None if region in (None, "*") else region
    zone = None if zone in (None, "*") else zone
    if cloud is not None:
        cloud = normalize_cloud(cloud, field_path)
    return cloud, region, zone


def normalize_cloud(name: str, field_path: str) -> str:
    from .clouds import registry

    n = str(name).strip().lower()
    n = registry.ALIASES.get(n, n)
    if not registry.known(n):
        from difflib import get_close_matches

        names = registry.names()
        if n in OTHER_SKYPILOT_CLOUDS:
            raise UnsupportedCloud(n, ", ".join(names), field=field_path)
        close = get_close_matches(n, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known clouds: {', '.join(names)}"
        raise SpecError(f"unknown cloud {_clip(name)!r}", hint, field=field_path)
    return n


def parse_ports(value, field_path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        text = str(item).strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if not m:
            raise SpecError(f"{_clip(item)!r} is not a port", "expected 8080, '8000-8010' or a list of them",
                            field=field_path)
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not (1 <= lo <= hi <= 65535):
            raise SpecError(f"{item!r} is out of range", "ports are 1-65535, ranges low-high",
                            field=field_path)
        out.append(f"{lo}" if lo == hi else f"{lo}-{hi}")
    return tuple(out)


def parse_duration_minutes(value, field_path: str) -> int:
    """5 → 5 minutes; '30s', '30m', '1h', '2d', '1w' → minutes."""
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a duration", "e.g. 10 (minutes), '30m', '1h'", field=field_path)
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise SpecError(f"{_clip(value)!r} is not a duration", "minutes, ≥ 0", field=field_path)
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value).lower())
    if not m:
        raise SpecError(f"{_clip(value)!r} is not a duration", "e.g. 10 (minutes), '30m', '1h'", field=field_path)
    num, unit = float(m.group(1)), m.group(2) or "m"
    factor = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080}[unit]
    minutes = num * factor
    if minutes > 10 ** 9:
        raise SpecError(f"{_clip(value)!r} is too long", None, field=field_path)
    return int(round(minutes))


def parse_hours(value, field_path: str) -> float:
    """'60h', '2d', '90m', 60 (hours) → hours."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        hours = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value).lower())
        if not m:
            raise SpecError(f"{_clip(value)!r} is not a duration", "e.g. '60h', '2d', '90m'", field=field_path)
        hours = float(m.group(1)) * {"s": 1 / 3600, "m": 1 / 60, "h": 1.0, "d": 24.0, "": 1.0}[m.group(2)]
    if not math.isfinite(hours) or hours <= 0:
        raise SpecError(f"{_clip(value)!r} must be a positive duration", None, field=field_path)
    return hours


def parse_disk_size(value, field_path: str) -> int:
    """GB: 256, '256GB', '1TB', '2048MB' (floored to whole GB, as SkyPilot does)."""
    if value is None:
        return 256
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:([kmgtpKMGTP])(?:i?[bB])?)?\s*", str(value))
        if not m:
            raise SpecError(f"{_clip(value)!r} is not a disk size", "expected GB as an integer, e.g. 256, or "
                            "'256GB', '1TB'", field=field_path)
        size = int(int(m.group(1)) * _MEM_UNITS[(m.group(2) or "g").lower()])
    if size < 1:
        raise SpecError(f"{_clip(value)!r} must be at least 1 GB", None, field=field_path)
    if size > 10 ** 7:
        raise SpecError(f"{_clip(value)!r} is larger than any disk", None, field=field_path)
    return size
