"""The provider protocol: everything cloud-specific lives behind it, in one package per provider.

A provider owns
  - its offers: a price catalog it names (`catalog`), or virtual zero-price offers (`virtual_offers`) for
    providers that have none (this machine, the user's own SSH hosts);
  - its credential check (`check`, no network, no SDK import) and the local files that are its
    credentials (`credential_files`, copied onto the nodes only when a task asks for it with
    `config.<cloud>.remote_identity: LOCAL_CREDENTIALS`, runtime/identity.py);
  - error classification (`classify`: SDK exception → typed ProvisionError with a scope);
  - provisioning split in two (`run_instances` returns the ids of every instance of the cluster, so the
    caller records them in the intents ledger before `wait_instances` waits for them to run); a driver
    keeps a CreateLedger in `run_instances` (with its `refused_answer`) so that a failure it knows created
    no instance says so (ProvisionError.created_nothing);
  - `query` (optionally with the instances that are gone and why), `terminate`, `stop`, `start`,
    `open_ports`, and `list_tagged`, every resource of every kind it creates, for `broker gc`;
  - a command runner per node;
  - autostop on the cluster itself (capabilities.self_stop): `prepare_self_stop` readies the cloud and
    `self_stop_command` says what each node runs once idle (autostop.py arms them through the agent);
  - volumes (capabilities.volumes, types in `volume_types`): `create_volume` (tagged: an ephemeral one with
    its cluster, so gc finds it; an applied one with its name only), `attach_volume` to one node,
    `volume_mount_command` (what the node runs to format a new block volume and mount it),
    `detach_volume`, `delete_volume`; `terminate` deletes the cluster's ephemeral volumes too;
  - its capabilities, declared here and never discovered with `hasattr`.

Every call gets the cluster's name on the cloud (state.ClusterRecord.cloud_name: the user's name plus the home's
suffix), never the user's name; what a provider creates carries TAG_HOME where the cloud has tags or labels.
Instances are found by the cluster tag/label/name, so a repeated `run_instances` resumes instead of
duplicating. The provisioner decides failover from the error's type alone (CapacityError = a zone,
QuotaError = a region, CredentialsError = the cloud, ThrottledError = back off and retry the same place,
InvalidRequestError = the request).

Adding a provider: a package under skybroker/clouds/ with a `PROVIDER` class (subclass of `Provider`), and
one line in registry.PROVIDERS. Nothing else names a cloud.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..check import CloudCheck
    from ..errors import Place, ProvisionError

# Instance states, normalised across clouds.
PENDING, RUNNING, STOPPING, STOPPED, TERMINATED = "pending", "running", "stopping", "stopped", "terminated"
UNREACHABLE = "unreachable"  # a host with no cloud API behind it (ssh pools) that does not answer

TAG_CLUSTER = "skybroker-cluster"
TAG_USER = "skybroker-user"
TAG_HOME = "skybroker-home"  # the id of the BROKER_HOME (or server database) that created it (state.home_id)


def home_tag() -> str:
    """This home's id, for TAG_HOME."""
    from .. import state

    return state.home_id()


def check_volume_home(home: str | None, name: str, place) -> None:
    """A volume that `create_volume` finds already made under `name` (its TAG_HOME is `home`) is this home's to
    use: another home's (a second BROKER_HOME on the account applied the same name) is refused, never recorded
    here (this home's `volumes delete` would delete it, its launches attach it); an untagged one only by a home
    older than home tags (state.legacy_names), as `broker gc` decides."""
    from .. import state
    from ..errors import InvalidRequestError

    if home == home_tag() or (home is None and state.legacy_names()):
        return
    whose = (f"another broker home's (tag {TAG_HOME}={home})" if home else
             f"not this home's (no {TAG_HOME} tag: made before home tags, by another broker or by hand)")
    err = InvalidRequestError(f"volume {name} already exists on {place} and is {whose}: not taking it over", place,
                              code="VolumeOfAnotherHome",
                              hint="pick another volume name; the home that made it uses it, and its "
                              f"`broker volumes delete {name}` removes it")
    err.exit_code = 2
    raise err


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do. The core asks these, never `hasattr`."""

    stop: bool = False  # instances can be stopped and started again (disks kept)
    spot: bool = False  # a spot / preemptible market
    firewall: bool = False  # a per-cluster firewall that opens only the ports asked for
    accelerators: bool = True  # offers with GPUs/TPUs
    priced: bool = True  # offers come from the price catalog named by `catalog`; else `virtual_offers`
    named_only: bool = False  # used only when the task names it (`--infra local`, `ssh/<pool>`)
    remote: bool = True  # nodes are other machines, reached over SSH with the user's key
    gone_reasons: bool = False  # query(include_gone=True) reports instances that went, and why
    tagged_listing: bool = True  # list_tagged() enumerates what it created (broker gc)
    self_stop: bool = False  # a node can stop/terminate its own cluster once idle (autostop on the cluster)
    container_images: bool = False  # a `docker:` image_id IS the node (pods); elsewhere it runs on the node
    volumes: bool = False  # creates, attaches and deletes volumes of its `volume_types` (skybroker/volumes/)
    peer_ssh: bool = False  # nodes are made for the cluster and log in to each other (runtime/peers.py)
    max_nodes: int | None = None  # the most nodes one cluster may have (None: no limit of its own); planned against


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
    # when it entered its state, if the cloud says (epoch s): a node that stopped itself is billed as stopped
    # from then, not from when the broker noticed
    since: float | None = field(default=None, compare=False)


class Leftover(str):
    """A warning of `terminate` about a resource with a cost that it could not remove (an EBS volume still
    in use): `broker down` reports it and exits non-zero instead of only warning. `resource_id` names it."""

    resource_id: str = ""

    def __new__(cls, text: str, resource_id: str = ""):
        obj = super().__new__(cls, text)
        obj.resource_id = resource_id
        return obj


@dataclass(frozen=True)
class TaggedResource:
    """Something a provider created for a cluster (for gc and for reconciling interrupted launches)."""

    cloud: str
    region: str | None
    cluster: str
    kind: str  # "instance", "security-group", "firewall", "resource-group", "node-dir", ...
    id: str
    live: bool = True  # an instance that is running/stopped (costs money), not only a network leftover
    home: str | None = None  # its TAG_HOME: the home that created it (None: untagged, made before home tags)


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
    accelerator_args: tuple[tuple[str, str], ...] = ()  # e.g. (("tpu_runtime_version", "v2-alpha-tpuv5-lite"),)
    options: tuple[tuple[str, str], ...] = ()  # the task's config for this provider, e.g. ("gcp.run_duration", "3600")


@dataclass(frozen=True)
class SelfStop:
    """A node's own autostop: the shell command it runs once idle and, for a worker that only stops
    itself, the head it follows (it fires only once it is idle and the head has stopped answering on
    `follow` = "host:port" for the grace, so a cluster never loses a worker while its head still runs)."""

    command: str
    follow: str | None = None


def http_refusal(status) -> bool:
    """An HTTP status with which a cloud refuses a call it did not carry out (a 4xx; not 408, a timeout)."""
    return isinstance(status, int) and 400 <= status < 500 and status != 408


class CreateLedger:
    """What a failing `run_instances` may have left with a cost, kept by the driver as it goes: an instance
    it found, or a create call that was sent and not refused by the cloud's answer (`refused`: the
    provider's `refused_answer`). `guard()` around the whole call marks the ProvisionError it raises
    `created_nothing` when neither happened (e.g. every call refused the credentials): the provisioner then
    keeps no record that only working credentials could remove (provision._rollback). A timeout, a lost
    answer or a 5xx after a create was sent counts as maybe created: the record stays for `broker down`."""

    def __init__(self, refused: Callable[[BaseException], bool]):
        self._refused = refused
        self.maybe = False

    def found(self, instances) -> None:
        """Instances of the cluster that exist already."""
        if instances:
            self.maybe = True

    def sent(self) -> None:
        """A call that may have created an instance (whatever its outcome)."""
        self.maybe = True

    @contextmanager
    def create(self) -> Iterator[None]:
        """Around one create call (one request): it counts as sent unless the cloud's answer refused it."""
        try:
            yield
        except BaseException as exc:
            from ..errors import ProvisionError

            sdk = exc.__context__ if isinstance(exc, ProvisionError) and exc.__context__ is not None else exc
            if not self._refused(sdk):
                self.maybe = True
            raise
        self.maybe = True

    @contextmanager
    def guard(self) -> Iterator["CreateLedger"]:
        from ..errors import ProvisionError

        try:
            yield self
        except ProvisionError as exc:
            exc.created_nothing = not self.maybe
            raise


class ZoneUnresolved(Exception):
    """A zone spelling (Provider.zone_alias) that cannot be mapped now: args = (message, hint)."""


class Provider:
    """Base class of every provider (defaults for the optional parts)."""

    name: str = ""
    capabilities: Capabilities = Capabilities()
    catalog: str | None = None  # the price catalog this provider's offers come from
    sdk_modules: tuple[str, ...] = ()  # imported lazily by the driver; checked with find_spec
    sdk_extra: str | None = None  # `pip install 'skybroker[<extra>]'`
    default_ssh_user: str = "ubuntu"
    keys_at_boot: bool = True  # a new node gets our SSH key as it boots (it may refuse it for a while)

    # -- offers ------------------------------------------------------------------------------------
    def virtual_offers(self, res) -> list:
        """Zero-price candidates for providers without a catalog (capabilities.priced False):
        a list of skybroker.optimizer.Candidate."""
        return []

    def unavailable_reason(self) -> tuple[str, str] | None:
        """For providers without a catalog: (why it has no offers at all, what to do), e.g. no cluster
        configured; None when it can offer. Used to explain an infeasible plan. A third item True means the
        reason is missing credentials: a task naming only this cloud is then refused as such (exit 4)."""
        return None

    def accelerator_inventory(self, region: str | None = None) -> list[tuple[str, float, str, str | None, float]]:
        """For providers without a catalog: (accelerator, count per node, where, instance type, $/h) of
        what they can offer now (`broker show-gpus --cloud NAME`). Catalog providers are read from their
        catalog instead."""
        return []

    def default_shape(self, res, spec):
        """Provider-specific default (cpus, memory) Amounts for a spec when the task names neither, or
        None for the general default. (GCP sizes N1 GPU hosts like the matching AWS instance.)"""
        return None

    region_word: str = "region"  # what `infra: <cloud>/<region>` names on this provider (ssh: a node pool)

    def known_regions(self) -> list[str] | None:
        """The regions a task may name (`infra: <cloud>/<region>`), checked when planning: an unknown one is a
        user mistake (exit 2). None: not checkable here (the provider finds out when offering)."""
        if self.catalog:
            from .. import catalog

            return list(catalog.regions(self.catalog))
        return None

    def known_zones(self, region: str | None) -> list[str] | None:
        """The zones a task may name in `region` (in any region when None), checked when planning: another is a
        user mistake (exit 2). [] when this provider's offers carry no zone; None: not checkable here."""
        if self.catalog:
            from .. import catalog

            return sorted(z for z, r in catalog.zones(self.catalog).items() if region in (None, r))
        return None

    def zone_alias(self, region: str | None, zone: str) -> tuple[str, str] | None:
        """(region, the catalog's zone) for a zone the user spelled another way (AWS: the account's AZ name
        for the catalog's AZ ID); None when `zone` is no such spelling. Raises ZoneUnresolved when it is one
        but cannot be mapped now."""
        return None

    def regions(self) -> list[str | None]:
        """Regions `broker gc` scans."""
        if self.catalog:
            from .. import catalog

            return list(catalog.regions(self.catalog))
        return [None]

    # -- credentials -------------------------------------------------------------------------------
    def check(self) -> "CloudCheck":
        from ..check import CloudCheck

        return CloudCheck(self.name, True, "no credentials needed")

    def credential_files(self) -> list[tuple[str, bytes]]:
        """(node path under `~/`, contents) of this cloud's local credential files, as its CLI and SDK
        read them on a node; [] when there are none (or the cloud has no such files)."""
        return []

    def credential_hint(self) -> str:
        """What to do when `credential_files` finds nothing."""
        return f"the {self.name} cloud has no credential files to copy"

    def preflight_place(self, region: str | None) -> None:
        """Before anything is created or claimed in `region`: the SSH key the nodes will be reached with
        can be used (a broken one would only show as nodes that never accept commands). Exit 2."""
        if not self.capabilities.remote:
            return
        from ..paths import broker_home
        from ..runtime.keys import SSHKeyError, existing_user_key, key_problem

        path = existing_user_key(broker_home())  # none yet: it is made at provisioning
        why = key_problem(path) if path is not None else None
        if why:
            raise SSHKeyError(f"the broker's SSH key {why}", f"move {path.parent} aside: a new key pair is made "
                              "on the next launch (clusters made with the old key lose access)", exit_code=2)

    # -- errors ------------------------------------------------------------------------------------
    def classify(self, exc: BaseException, place: "Place") -> "ProvisionError | None":
        """A typed error for an SDK exception, or None when it is not a cloud refusal (a bug)."""
        return None

    def refused_answer(self, exc: BaseException) -> bool:
        """The SDK exception is the cloud's answer refusing a call, which it did not carry out (a 4xx, e.g.
        credentials refused), not a lost answer, a timeout or a 5xx. False (the safe side) by default."""
        return False

    # -- provisioning ------------------------------------------------------------------------------
    def run_instances(self, req: ProvisionRequest) -> list[str]:
        """Create what the cluster is missing (idempotent by tag); ids of every instance it has."""
        raise NotImplementedError

    def wait_instances(self, req: ProvisionRequest, ids: Sequence[str]) -> list[InstanceInfo]:
        """Wait until the cluster's `req.num_nodes` instances run; return them, head first."""
        raise NotImplementedError

    def provision(self, req: ProvisionRequest) -> list[InstanceInfo]:
        """run_instances + wait_instances (the provisioner calls them separately)."""
        return self.wait_instances(req, self.run_instances(req))

    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        """Instances of the cluster that are not terminated; with include_gone also those that are,
        with state_reason saying why (when capabilities.gone_reasons)."""
        raise NotImplementedError

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        """Remove every instance and per-cluster resource of the cluster in the region; safe to repeat.
        Returns warnings about what could not be cleaned (never raises for those)."""
        raise NotImplementedError

    def stop(self, cluster: str, region: str | None) -> None:
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} cloud cannot stop instances", hint=f"use `broker down {cluster}`")

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        return self.query(cluster, region)

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        return None

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Every resource this provider created in the region, of every kind, with its cluster."""
        return []

    def runner(self, cluster: str, node):
        """A CommandRunner for one node record (skybroker.state.NodeRecord)."""
        from .common import ssh_runner

        return ssh_runner(cluster, node, default_user=self.default_ssh_user)

    notice_kind: str | None = None  # the node agent watches this cloud's preemption notice ("aws", "gcp", "azure")
    notice_url: str | None = None  # on the instance's metadata server

    def preemption_notice(self) -> dict | None:
        """What the node agent watches on a spot node to learn of a preemption before it happens (None:
        the provider gives no notice). BROKER_NOTICE_ENDPOINT replaces the metadata server (tests)."""
        from .. import settings

        if not self.notice_kind or not self.notice_url:
            return None
        url = self.notice_url
        endpoint = settings.get("notice_endpoint")
        if endpoint:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            url = endpoint.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
        return {"kind": self.notice_kind, "url": url, "grace": settings.get("notice_grace"),
                "every": settings.get("notice_every")}

    # -- autostop on the cluster itself (capabilities.self_stop) ------------------------------------
    def prepare_self_stop(self, cluster: str, region: str | None, action: str) -> str:
        """Cloud-side set-up so that the nodes' own self-stop command does `action` ("stop" or "down"),
        e.g. the instances' shutdown behaviour. Returns the action that will really happen ("down" for
        instances that cannot be stopped, such as spot)."""
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} cloud cannot stop a cluster from its own nodes")

    def release_self_stop(self, cluster: str, region: str | None) -> None:
        """Undo prepare_self_stop once the nodes are disarmed (`autostop --cancel`): the cloud's default
        again, no right left with the nodes. Nothing to undo by default."""

    def self_stop_command(self, cluster: str, node, head, action: str) -> SelfStop | None:
        """What one node (a state.NodeRecord; `head` is rank 0's) runs once idle to stop or terminate
        itself or its whole cluster; None when that node needs no watcher (the head's command covers it)."""
        return None

    # -- volumes (capabilities.volumes) ----------------------------------------------------------
    volume_types: tuple[str, ...] = ()  # skybroker/volumes/model.TYPES this provider owns; the first is its default
    volumes_shared: bool = False  # a volume is seen by every node (one machine); else it attaches to one node

    def create_volume(self, name: str, size_gb: int, region: str | None, zone: str | None, labels: dict,
                      cluster: str | None = None) -> tuple[str, str | None, str | None]:
        """Create a volume (tagged with the cluster when ephemeral); returns (cloud id, region, zone)."""
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} cloud has no volumes")

    def attach_volume(self, vol, cluster: str, region: str | None, node) -> str:
        """Attach volume record `vol` to one node (a state.NodeRecord); returns what the node mounts (a
        device path, or a directory). Attaching it again to the same node is fine."""
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} cloud has no volumes")

    def volume_mount_command(self, vol, device: str, path: str, sub_path: str | None) -> str:
        """The shell command a node runs to make `device` appear at `path` (formatting a new block volume)."""
        from ..volumes.mount import block_mount_command

        return block_mount_command(device, path, sub_path)

    def detach_volume(self, vol, cluster: str, region: str | None) -> None:
        """Detach it from the cluster's node (nothing when it is not attached, or the node is gone)."""

    def delete_volume(self, vol) -> None:
        """Delete it at the cloud (nothing when it is already gone)."""
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} cloud has no volumes")

    def endpoint_host(self, rec) -> str | None:
        """The address at which the ports a cluster's task opened are reached (`broker status --endpoints`):
        its head node's. None when they are not reached at a node's address."""
        head = rec.head
        return head.ip if head else None

    def agent_python(self) -> str:
        """How the node agent is started on a node."""
        return "python3 -S"
