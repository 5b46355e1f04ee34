"""`broker gc`: find what skybroker created but no longer tracks, and remove it on request.

  - resources of every kind a provider lists as tagged by skybroker (instances, security groups, firewall
    rules, resource groups, local node directories) whose cluster the local state does not know, in
    every region of every provider with credentials;
  - clusters whose launch was interrupted (intents.py): they are in the state as INTERRUPTED, and gc
    offers to remove them too.

Only this home's resources are ever removed: a resource tagged with another home's id (clouds.base.TAG_HOME, a
second BROKER_HOME on the same account) is counted in `Scan.foreign` and never touched, whatever its cluster's
name. A resource with no home tag was made before home tags existed (or by a kind the cloud cannot tag): it may be
removed only by a home that launched clusters before then (state.legacy_names); any other home counts it in
`Scan.untagged` and leaves it alone, since it cannot tell whose it is.

A provider that cannot be scanned (no credentials, no SDK, an unknown name) is reported, never skipped
silently: "nothing found" is only said about what was actually scanned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import state
from .errors import BrokerError, UsageError

Event = Callable[[str, str], None]


@dataclass(frozen=True)
class Orphan:
    cloud: str
    region: str | None
    cluster: str  # the user's name of the cluster (for an unknown one: its name on the cloud, less our suffix)
    resources: tuple[tuple[str, str], ...]  # (kind, id)
    interrupted: bool = False  # a known cluster whose launch died (not an unknown one)
    name_on_cloud: str | None = None  # what its resources are named and tagged with (None: `cluster`)

    @property
    def cloud_name(self) -> str:
        return self.name_on_cloud or self.cluster

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return tuple(i for k, i in self.resources if k == "instance")


@dataclass
class Scan:
    orphans: list[Orphan] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)  # provider → regions scanned
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (provider[/region], why)
    foreign: dict[str, int] = field(default_factory=dict)  # provider → resources of other homes (never touched)
    untagged: dict[str, int] = field(default_factory=dict)  # provider → resources with no home tag, left alone


def display_name(name_on_cloud: str) -> str:
    """The user's name of a cluster of this home found by its name on the cloud (state.cloud_name_for's
    inverse; a legacy name is its own)."""
    suffix = "-" + state.home_suffix()
    return name_on_cloud[:-len(suffix)] if name_on_cloud.endswith(suffix) else name_on_cloud


def scan(clouds: tuple[str, ...] | None = None, regions: dict[str, list] | None = None,
         on_event: Event = lambda k, m: None) -> Scan:
    from . import intents
    from .clouds import registry
    from .locks import ClusterBusy, cluster_lock

    out = Scan()
    intents.reconcile(on_event)
    names = _providers(clouds, out)
    known = {(r.cloud, r.cloud_name) for r in state.list_clusters()}
    mine, legacy = state.home_id(), state.legacy_names()
    for name in names:
        prov = registry.get(name, sdk=False)
        missing = registry.missing_sdk(prov)
        if missing:
            out.skipped.append((name, f"its SDK is not installed ({missing}): pip install 'skybroker[{prov.sdk_extra}]'"))
            continue
        check = prov.check()
        if not check.ok:
            out.skipped.append((name, f"no credentials: {check.detail}"))
            continue
        groups: dict[tuple[str | None, str], list] = {}
        n = 0
        for region in (regions or {}).get(name) or prov.regions():
            try:
                found = prov.list_tagged(region)
            except BrokerError as exc:
                out.skipped.append((f"{name}/{region}", exc.message.splitlines()[0]))
                continue
            n += 1
            for t in found:
                if t.home is not None and t.home != mine:
                    out.foreign[name] = out.foreign.get(name, 0) + 1
                    continue
                if t.home is None and not legacy:
                    out.untagged[name] = out.untagged.get(name, 0) + 1
                    continue
                if (t.cloud, t.cluster) in known:
                    continue
                groups.setdefault((t.region, t.cluster), []).append((t.kind, t.id))
        out.scanned[name] = n
        for (region, on_cloud), res in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] or "")):
            cluster = display_name(on_cloud)
            try:
                with cluster_lock(cluster, timeout=0):
                    pass
            except ClusterBusy:
                on_event("skip", f"{name}/{region}: {cluster} is being launched by another broker command")
                continue
            except BrokerError:  # not a name a lock can be made for (a legacy resource's odd tag)
                pass
            out.orphans.append(Orphan(name, region, cluster, tuple(sorted(res)), name_on_cloud=on_cloud))
    for rec in state.list_clusters():
        if rec.status == state.INTERRUPTED:
            kinds = tuple(("instance", n.instance_id) for n in rec.nodes)
            out.orphans.append(Orphan(rec.cloud, rec.region, rec.name, kinds, interrupted=True,
                                      name_on_cloud=rec.cloud_name))
    return out


def _providers(clouds: tuple[str, ...] | None, out: Scan) -> list[str]:
    from .clouds import registry

    if clouds:
        bad = [c for c in clouds if not registry.known(c)]
        if bad:
            raise UsageError(f"unknown cloud {bad[0]!r}", f"known clouds: {', '.join(registry.names())}")
        return [c for c in clouds if registry.get(c, sdk=False).capabilities.tagged_listing] or _none(clouds)
    names = []
    for prov in registry.all_providers():
        if not prov.capabilities.tagged_listing:
            continue
        names.append(prov.name)
    return names


def _none(clouds) -> list[str]:
    raise UsageError(f"{', '.join(clouds)}: nothing to scan (the provider keeps no resources of its own)",
                     "SSH pool hosts are freed by `broker down`")


def remove(orphans: list[Orphan], on_event: Event = lambda k, m: None) -> list[str]:
    """Terminate each orphan (everything of its cluster in its region); returns warnings."""
    import contextlib

    from . import cluster_ops
    from .clouds import registry
    from .locks import ClusterBusy, cluster_lock

    warnings: list[str] = []
    for o in orphans:
        with contextlib.ExitStack() as stack:
            try:  # never race a launch of the same name that started meanwhile
                stack.enter_context(cluster_lock(o.cluster, timeout=0))
            except ClusterBusy:
                on_event("skip", f"{o.cluster} is being launched by another broker command: left alone")
                continue
            except UsageError:  # not a name a lock can be made for (a legacy resource's odd tag)
                pass
            rec = state.get_cluster(o.cluster) if o.interrupted else state.get_cluster_on_cloud(o.cloud_name)
            if o.interrupted:
                if rec is None or rec.status != state.INTERRUPTED:
                    continue
                on_event("down", f"removing {o.cluster} (its launch was interrupted) on {rec.infra}")
                warnings += cluster_ops.terminate(rec, on_event)
                continue
            if rec is not None and rec.cloud == o.cloud and rec.status != state.INTERRUPTED:
                on_event("skip", f"{o.cluster} is now known to the state: not an orphan")
                continue
            where = "/".join(p for p in (o.cloud, o.region) if p)
            on_event("down", f"removing orphan {o.cluster} on {where} ({len(o.resources)} resource(s))")
            for w in registry.get(o.cloud).terminate(o.cloud_name, o.region) or ():
                warnings.append(w)
                on_event("warning", w)
            state.close_intents(o.cluster, o.cloud, o.region)
    return warnings

