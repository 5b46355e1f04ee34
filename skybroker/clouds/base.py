"""The cloud protocol: a deliberately small interface every driver implements.

Instances are found by the cluster tag/label/name, so a repeated `provision` resumes instead of
duplicating. Drivers translate SDK errors into the typed errors of skybroker.errors (CapacityError = a
zone, QuotaError = a region, CredentialsError = the cloud, InvalidRequestError = the request); the
provisioner decides failover from the type alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Instance states, normalised across clouds.
PENDING, RUNNING, STOPPING, STOPPED, TERMINATED = "pending", "running", "stopping", "stopped", "terminated"

TAG_CLUSTER = "skybroker-cluster"
TAG_USER = "skybroker-user"


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    state: str
    public_ip: str | None = None
    private_ip: str | None = None
    ssh_user: str | None = None
    ssh_port: int = 22
    zone: str | None = None
    spot: bool = False
    tags: dict = field(default_factory=dict, hash=False, compare=False)
    state_reason: str | None = None  # e.g. AWS "Server.SpotInstanceTermination"
    home: str | None = None  # local cloud: sandbox directory
    identity_file: str | None = None  # ssh pools: the user's own key
    rank_hint: int | None = None


@dataclass(frozen=True)
class ProvisionRequest:
    cluster: str
    region: str | None
    zone: str | None
    instance_type: str
    num_nodes: int
    use_spot: bool = False
    accelerator: str | None = None
    accelerator_count: float = 0
    disk_size: int = 256
    ports: tuple[str, ...] = ()
    image_id: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    public_key: str | None = None
    user: str = "broker"


class Cloud(Protocol):
    name: str
    supports_stop: bool

    def provision(self, req: ProvisionRequest) -> list[InstanceInfo]:
        """Create (or resume) `req.num_nodes` instances for the cluster; return them all, running.
        Idempotent: instances already tagged with the cluster count toward num_nodes."""

    def query(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        """Instances of the cluster that are not terminated (empty after terminate)."""

    def terminate(self, cluster: str, region: str | None) -> None:
        """Remove every instance (and per-cluster resource) of the cluster; safe to repeat."""

    def stop(self, cluster: str, region: str | None) -> None: ...

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]: ...

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None: ...

    def runner(self, cluster: str, node) -> "object":
        """A CommandRunner for one node record (skybroker.state.NodeRecord)."""
