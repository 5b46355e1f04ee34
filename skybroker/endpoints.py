"""`broker status --ip / --endpoints / --endpoint PORT` (SkyPilot's `sky status` options of those names):
the head node's address and the ports the cluster's task opened (`resources.ports`), from the cluster's
record. Pure apart from asking the cluster's provider where its ports are reached."""
from __future__ import annotations

from .errors import UsageError


def _port_list(spec: str | None) -> list[int]:
    out: list[int] = []
    for part in (spec or "").split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def head_ip(rec) -> str:
    _require_up(rec)
    if rec.head is None:
        raise UsageError(f"cluster {rec.name} has no nodes recorded", f"`broker status --refresh {rec.name}`")
    return rec.head.ip


def endpoints(rec, port: int | None = None) -> dict[int, str]:
    """{port: "host:port"} for every port the cluster's task opened (or just `port`)."""
    from .clouds import registry

    _require_up(rec)
    ports = _port_list(rec.ports)
    if not ports:
        raise UsageError(f"cluster {rec.name} opened no ports",
                         "give the task `resources: {ports: 8080}` (a list or a range '8000-8010' too) and launch a "
                         "new cluster")
    if port is not None and port not in ports:
        raise UsageError(f"port {port} is not among the ports cluster {rec.name} opened ({rec.ports})",
                         f"`broker status --endpoints {rec.name}` lists them")
    host = registry.get(rec.cloud, sdk=False).endpoint_host(rec) if registry.known(rec.cloud) else None
    if host is None:
        raise UsageError(f"the endpoints of a {rec.cloud} cluster are not a node's address",
                         "on Kubernetes the ports are the cluster's Service: "
                         f"`kubectl get service skybroker-{rec.cloud_name}-ports`")
    return {p: f"{host}:{p}" for p in ([port] if port is not None else ports)}


def _require_up(rec) -> None:
    if rec.status != "UP":
        raise UsageError(f"cluster {rec.name} is {rec.status}",
                         f"`broker start {rec.name}` if it is stopped; `broker status {rec.name}` shows it")
