"""`Resources`: one concrete request for a machine shape (the value object optimizer, blocklist and
failover all speak). A task's `resources:` section expands into one or more of these (accelerator
lists/sets, any_of, ordered); see spec.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .errors import SpecError


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
        raise SpecError(f"{text!r} is not an accelerator", "expected NAME[:COUNT], e.g. A100:8 or V100",
                        field=field_path)
    name, count = m.group(1), m.group(2)
    if count is None:
        return name, 1.0
    try:
        value = float(count)
    except ValueError:
        raise SpecError(f"{text!r}: count {count!r} is not a number",
                        "expected NAME[:COUNT], e.g. A100:8 or V100", field=field_path) from None
    if value <= 0:
        raise SpecError(f"{text!r}: count must be positive", "expected NAME[:COUNT], e.g. A100:8",
                        field=field_path)
    return name, value


def parse_amount(value, field_path: str, *, allow_ratio: bool = False) -> Amount | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a number", "e.g. 4, '4+' (at least 4)", field=field_path)
    if isinstance(value, (int, float)):
        if value <= 0:
            raise SpecError(f"{value!r} must be positive", None, field=field_path)
        return Amount(float(value))
    text = str(value).strip().replace(" ", "")
    at_least = per_cpu = False
    if text.endswith("+"):
        at_least, text = True, text[:-1]
    elif allow_ratio and text.lower().endswith("x"):
        per_cpu, text = True, text[:-1]
    if field_path.endswith("memory"):
        for unit in ("GiB", "GB", "gb", "G", "g"):
            if text.endswith(unit):
                text = text[: -len(unit)]
                break
    try:
        num = float(text)
    except ValueError:
        forms = "4, '4+' (at least 4)" + (", '4x' (GiB per vCPU)" if allow_ratio else "")
        raise SpecError(f"{value!r} is not a valid amount", f"expected {forms}", field=field_path) from None
    if num <= 0:
        raise SpecError(f"{value!r} must be positive", None, field=field_path)
    return Amount(num, at_least=at_least, per_cpu=per_cpu)


def parse_infra(text: str, field_path: str) -> tuple[str | None, str | None, str | None]:
    """`cloud[/region[/zone]]` with `*` wildcards. `ssh/<pool>` names a node pool as its region."""
    parts = [p.strip() for p in str(text).strip().strip("/").split("/")]
    if not parts or len(parts) > 3 or any(p == "" for p in parts):
        raise SpecError(f"{text!r} is not an infra", "expected cloud[/region[/zone]], e.g. aws/us-east-1",
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
        close = get_close_matches(n, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known clouds: {', '.join(names)}"
        if n in ("runpod", "oci", "ibm", "nebius", "paperspace", "vast", "fluidstack", "cudo", "do", "scp"):
            hint = f"skybroker supports {', '.join(names)}; {n} is not supported yet"
        raise SpecError(f"unknown cloud {name!r}", hint, field=field_path)
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
            raise SpecError(f"{item!r} is not a port", "expected 8080, '8000-8010' or a list of them",
                            field=field_path)
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not (1 <= lo <= hi <= 65535):
            raise SpecError(f"{item!r} is out of range", "ports are 1-65535, ranges low-high",
                            field=field_path)
        out.append(f"{lo}" if lo == hi else f"{lo}-{hi}")
    return tuple(out)


def parse_duration_minutes(value, field_path: str) -> int:
    """5 → 5 minutes; '1h', '30m', '2d' → minutes."""
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a duration", "e.g. 10 (minutes), '30m', '1h'", field=field_path)
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value).lower())
    if not m:
        raise SpecError(f"{value!r} is not a duration", "e.g. 10 (minutes), '30m', '1h'", field=field_path)
    num, unit = float(m.group(1)), m.group(2) or "m"
    factor = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[unit]
    return int(round(num * factor))


def parse_hours(value, field_path: str) -> float:
    """'60h', '2d', '90m', 60 (hours) → hours."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        hours = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value).lower())
        if not m:
            raise SpecError(f"{value!r} is not a duration", "e.g. '60h', '2d', '90m'", field=field_path)
        hours = float(m.group(1)) * {"s": 1 / 3600, "m": 1 / 60, "h": 1.0, "d": 24.0, "": 1.0}[m.group(2)]
    if hours <= 0:
        raise SpecError(f"{value!r} must be positive", None, field=field_path)
    return hours


def parse_disk_size(value, field_path: str) -> int:
    if value is None:
        return 256
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(GB|GiB|G|TB|T)?\s*", str(value))
        if not m:
            raise SpecError(f"{value!r} is not a disk size", "expected GB as an integer, e.g. 256",
                            field=field_path)
        size = int(m.group(1)) * (1024 if (m.group(2) or "").startswith("T") else 1)
    if size < 1:
        raise SpecError(f"{value!r} must be at least 1 GB", None, field=field_path)
    return size
