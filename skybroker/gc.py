"""`broker gc`: find instances tagged by skybroker that the local state does not know (a crash, a
killed process, another machine's state) in every region of every cloud with credentials, and
terminate them on request."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import state
from .errors import BrokerError


@dataclass(frozen=True)
class Orphan:
    cloud: str
    region: str
    cluster: str
    instance_ids: tuple[str, ...]


def find_orphans(clouds: tuple[str, ...] | None = None, regions: dict[str, list[str]] | None = None,
                 on_event: Callable[[str, str], None] = lambda k, m: None) -> list[Orphan]:
    from . import catalog
    from .check import enabled_clouds
    from .clouds.registry import get_cloud

    if clouds is None:
        clouds, _ = enabled_clouds()
    known = {(r.cloud, r.region, r.name) for r in state.list_clusters()}
    out = []
    for cloud_name in clouds:
        try:
            cloud = get_cloud(cloud_name)
        except BrokerError as exc:
            on_event("skip", f"{cloud_name}: {exc.message}")
            continue
        if not hasattr(cloud, "tagged_clusters"):
            continue
        for region in (regions or {}).get(cloud_name) or catalog.regions(cloud_name):
            try:
                found = cloud.tagged_clusters(region)
            except BrokerError as exc:
                on_event("skip", f"{cloud_name}/{region}: {exc.message}")
                continue
            for cluster, ids in sorted(found.items()):
                if (cloud_name, region, cluster) in known:
                    continue
                if _busy(cluster):
                    on_event("skip", f"{cloud_name}/{region}: {cluster} is being launched by another broker command")
                    continue
                out.append(Orphan(cloud_name, region, cluster, tuple(sorted(ids))))
    return out


def _busy(cluster: str) -> bool:
    """A broker command on this machine holds the cluster's lock (e.g. a launch still provisioning: its
    instances are tagged but not yet in the state)."""
    from .locks import cluster_lock

    try:
        with cluster_lock(cluster, timeout=0):
            return False
    except BrokerError:
        return True


def remove(orphans: list[Orphan], on_event: Callable[[str, str], None] = lambda k, m: None) -> None:
    import contextlib

    from .clouds.registry import get_cloud
    from .locks import cluster_lock

    for o in orphans:
        with contextlib.ExitStack() as stack:
            try:  # never race a launch of the same name that started meanwhile
                stack.enter_context(cluster_lock(o.cluster, timeout=0))
            except BrokerError:
                on_event("skip", f"{o.cluster} is being launched by another broker command: left alone")
                continue
            rec = state.get_cluster(o.cluster)
            if rec is not None and (rec.cloud, rec.region) == (o.cloud, o.region):
                on_event("skip", f"{o.cluster} is now known to the state: not an orphan")
                continue
            on_event("down", f"terminating orphan {o.cluster} on {o.cloud}/{o.region} "
                     f"({len(o.instance_ids)} instance(s))")
            get_cloud(o.cloud).terminate(o.cluster, o.region)
            state.close_intents(o.cluster, o.cloud, o.region)
