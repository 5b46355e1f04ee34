"""Volume use cases: apply / delete / list, the plan constraint, the launch checks, attach + mount at
bring-up, and release on teardown (called from lifecycle.py, which owns the teardown policy)."""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

from .. import state
from ..errors import BrokerError, InvalidRequestError, NotFoundError, SpecError, UsageError
from . import records
from .model import TYPES, VolumeMount, volume_spec
from .records import VolumeRecord

Event = Callable[[str, str], None]
_APPLY_HINT = "create it first: `broker volumes apply VOLUME.yaml` (name, type, infra, size; README \"Volumes\")"


# ----------------------------------------------------------------------------------------------
# which provider owns a type

def _providers():
    from ..clouds import registry

    return [p for p in registry.all_providers() if p.capabilities.volumes]


def provider_of(vtype: str, sdk: bool = True):
    from ..clouds import registry

    for p in _providers():
        if vtype in p.volume_types:
            return registry.get(p.name, sdk=sdk)
    raise UsageError(f"no provider creates {vtype} volumes", f"types: {', '.join(TYPES)}")


def default_type(cloud: str) -> str | None:
    for p in _providers():
        if p.name == cloud and p.volume_types:
            return p.volume_types[0]
    return None


def volume_clouds() -> tuple[str, ...]:
    return tuple(p.name for p in _providers())


# ----------------------------------------------------------------------------------------------
# broker volumes apply / delete / ls

def apply(data: dict, source: str, on_event: Event = lambda k, m: None) -> VolumeRecord:
    """Create the volume a volume YAML describes and record it; applying the same volume again is a no-op
    (a different type/place/size under the same name is refused)."""
    spec = volume_spec(data, source, default_type)
    prov = provider_of(spec.type)
    if spec.cloud and spec.cloud != prov.name:
        raise SpecError(f"a {spec.type} volume lives on {prov.name}, not {spec.cloud}", f"use infra: {prov.name}/... "
                        f"or the {spec.cloud} type ({default_type(spec.cloud) or 'none'})", source=source,
                        field="infra")
    _check_place(spec, prov.name, source)
    have = records.get(spec.name)
    if have is not None:
        if have.ephemeral or have.type != spec.type or have.size_gb != spec.size_gb or (
                spec.region and spec.region != have.region):
            raise UsageError(f"volume {spec.name} exists already ({have.type}, {have.size_gb} GiB on {have.infra or have.cloud})",
                             "pick another name, or `broker volumes delete` it first")
        on_event("exists", f"volume {spec.name} exists ({have.infra or have.cloud}): nothing to do")
        return have
    on_event("create", f"creating {spec.type} volume {spec.name} ({spec.size_gb} GiB) on "
             f"{'/'.join(p for p in (prov.name, spec.region, spec.zone) if p)}")
    try:
        cloud_id, region, zone = prov.create_volume(spec.name, spec.size_gb, spec.region, spec.zone, dict(spec.labels))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP
        _undo_create(prov, spec, on_event)
        raise
    rec = VolumeRecord(spec.name, spec.type, prov.name, region, zone, spec.size_gb, cloud_id, dict(spec.labels),
                       user_name=state.current_user.get())
    records.save(rec)
    return rec


def _undo_create(prov, spec, on_event: Event) -> None:
    """An apply interrupted while the cloud made the volume: its create call may have gone out, and an applied
    volume carries no cluster tag, so nothing (`volumes ls`, `gc`) would ever show it. Find it as a repeated
    apply would (create_volume is idempotent by name) and delete it."""
    on_event("cleanup", f"interrupted: removing volume {spec.name} if the cloud made it (Ctrl-C again to stop)")
    try:
        cloud_id, region, zone = prov.create_volume(spec.name, spec.size_gb, spec.region, spec.zone, dict(spec.labels))
        prov.delete_volume(VolumeRecord(spec.name, spec.type, prov.name, region, zone, spec.size_gb, cloud_id,
                                        dict(spec.labels)))
    except (KeyboardInterrupt, BrokerError) as exc:
        on_event("warning", f"volume {spec.name} may be left in {prov.name} ({getattr(exc, 'message', 'interrupted')}):"
                 f" `broker volumes apply` the same file again records it, then `broker volumes delete {spec.name}`")


def _check_place(spec, cloud: str, source: str) -> None:
    """A region or zone the provider does not have is refused here, as a task's `infra` is when planning (exit
    2 with close matches), not sent to the cloud (an unknown region's endpoint, an error that is no answer)."""
    if not spec.region:
        return
    from .. import plan_places
    from ..resources import Resources

    _, why = plan_places._left_out(Resources(cloud=cloud, region=spec.region, zone=spec.zone), None, {}, "")
    if why is not None:
        raise SpecError(why[0], why[1], source=source, field="infra")


def delete(name: str, on_event: Event = lambda k, m: None) -> None:
    rec = records.get(name)
    if rec is None:
        raise NotFoundError(f"no volume named {name!r}", "see `broker volumes ls`")
    if rec.cluster and state.get_cluster(rec.cluster) is not None:  # (a forgotten cluster: the cloud decides)
        what = "an ephemeral volume of" if rec.ephemeral else "attached to"
        raise UsageError(f"volume {name} is {what} cluster {rec.cluster}",
                         f"`broker down {rec.cluster}` first (it detaches the volume; ephemeral ones go with it)")
    provider_of(rec.type).delete_volume(rec)
    records.delete(name)
    on_event("delete", f"volume {name} deleted")


def list_volumes() -> list[VolumeRecord]:
    return records.all_records()


# ----------------------------------------------------------------------------------------------
# planning: a placement constraint on Resources

def constrain(task, clouds: tuple[str, ...] | None = None) -> tuple[object, list[str]]:
    """The task with its Resources narrowed to where its volumes are (an applied volume's cloud/region/zone)
    or to the clouds that can create them (ephemeral volumes), and plan notes (a named volume that does not
    exist yet is a note here; launching refuses it, see `preflight`)."""
    mounts = getattr(task, "volumes", ()) or ()
    if not mounts:
        return task, []
    notes, place, first = [], None, None
    for m in mounts:
        if m.ephemeral:
            continue
        v = records.get(m.name)
        if v is None or v.ephemeral:
            notes.append(f"volume {m.name} ({m.field}) does not exist yet; `broker volumes apply` it before launching")
            continue
        where = (v.cloud, v.region, v.zone)
        if place is not None and where != place:
            raise SpecError(f"volume {m.name} is on {v.infra}, volume {first.name} on {'/'.join(p for p in place if p)}: "
                            "a cluster runs in one place", "use volumes in the same zone", source=task.source,
                            field=m.field)
        place, first = where, m
    groups = task.groups
    if place is not None:
        cloud, region, zone = place
        groups = [tuple(replace(r, cloud=cloud, region=region, zone=zone) for r in g
                        if _fits(r, cloud, region, zone)) for g in groups]
        if not any(groups):
            asked = ", ".join(sorted({r.infra for g in task.groups for r in g}))
            raise SpecError(f"volume {first.name} is on {'/'.join(p for p in place if p)}, but the task's resources ask "
                            f"for {asked}", "drop the task's infra (the volume decides where it runs), or apply a "
                            "volume where the task runs", source=task.source, field=first.field)
    elif any(m.ephemeral for m in mounts):
        able = volume_clouds()
        open_ = tuple(c for c in (clouds or able) if c in able and not _named_only(c))
        groups = [tuple(x for r in g for x in ((r,) if r.cloud in able else () if r.cloud else
                                              tuple(replace(r, cloud=c) for c in open_))) for g in groups]
        if not any(groups):
            e = next(m for m in mounts if m.ephemeral)
            raise SpecError(f"ephemeral volumes need a cloud that creates volumes ({', '.join(able)})",
                            "run the task on one of them (resources.infra), or drop the ephemeral volume",
                            source=task.source, field=e.field)
    groups = tuple(g for g in groups if g)
    return (task if groups == task.groups else replace(task, groups=groups)), notes


def _fits(r, cloud, region, zone) -> bool:
    return (r.cloud in (None, cloud)) and (r.region in (None, region) or region is None) and \
        (r.zone in (None, zone) or zone is None)


def _named_only(cloud: str) -> bool:
    from ..clouds import registry

    return registry.get(cloud, sdk=False).capabilities.named_only


# ----------------------------------------------------------------------------------------------
# launch: checked before anything is created

def preflight(task, cluster: str | None = None) -> None:
    """Every applied volume the task names exists and is free (or already on this cluster)."""
    for m in getattr(task, "volumes", ()) or ():
        if m.ephemeral:
            continue
        v = records.get(m.name)
        if v is None or v.ephemeral:
            raise SpecError(f"volume {m.name} does not exist", _APPLY_HINT, source=task.source, field=m.field)
        if v.cluster and v.cluster != cluster and state.get_cluster(v.cluster) is not None:
            # also a volume every node sees (local-dir): its record names one cluster, whose `down` detaches it
            why = "" if provider_of(v.type, sdk=False).volumes_shared else \
                f" (a {v.type} volume attaches to one machine at a time)"
            raise SpecError(f"volume {m.name} is attached to cluster {v.cluster}{why}",
                            f"`broker down {v.cluster}` first, or use another volume",
                            source=task.source, field=m.field)


def warnings(task) -> list[str]:
    """What the user should know before a launch: block volumes on a multi-node cluster go to the head."""
    if task.num_nodes <= 1:
        return []
    out = []
    for m in task.volumes:
        v = None if m.ephemeral else records.get(m.name)
        if v is not None and not provider_of(v.type, sdk=False).volumes_shared:
            out.append(f"{m.field}: a {v.type} volume attaches to one machine: it is mounted on the head node only")
    return out


# ----------------------------------------------------------------------------------------------
# bring-up: attach and mount (lifecycle's sync stage), release on teardown

def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:30] or "root"


def attach(rt, task, on_event: Event = lambda k, m: None) -> None:
    """Attach every volume of the task to the cluster (`rt`, a backend.ClusterRuntime) and mount it on the
    node(s). Ephemeral volumes are created here, in the cluster's zone, one per node, recorded with the
    cluster; applied block volumes go to the head node. Safe to repeat (a relaunch on the same cluster)."""
    rec = rt.rec
    prov = rt.provider
    for w in warnings(task):
        on_event("warning", w)

    for m in task.volumes:
        if m.ephemeral:
            if not prov.capabilities.volumes:
                raise InvalidRequestError(f"the {rec.cloud} cloud cannot create the ephemeral volume at {m.path}")
            for node in (rt.nodes[:1] if prov.volumes_shared else rt.nodes):  # one per node, or one seen by all
                name = f"{rec.cloud_name}-{_slug(m.path)}-{node.rank}"[:63].rstrip("-")
                v = records.get(name)
                if v is None:
                    on_event("volume", f"creating ephemeral volume {name} ({m.size_gb} GiB) in {rec.infra}")
                    cloud_id, region, zone = prov.create_volume(name, m.size_gb, rec.region, rec.zone,
                                                                dict(m.labels), cluster=rec.cloud_name)
                    v = VolumeRecord(name, prov.volume_types[0], rec.cloud, region, zone, m.size_gb, cloud_id,
                                     dict(m.labels), ephemeral=True, cluster=rec.name, mount_path=m.path,
                                     user_name=state.current_user.get())
                    records.save(v)
                _attach_one(rt, prov, v, node, m, on_event)
            continue
        v = records.get(m.name)
        if v is None:
            raise SpecError(f"volume {m.name} does not exist", _APPLY_HINT, source=task.source, field=m.field)
        if v.cloud != rec.cloud:
            raise SpecError(f"volume {m.name} is on {v.cloud}, cluster {rec.name} on {rec.cloud}",
                            "use another cluster name", source=task.source, field=m.field)
        v.add_mount(rec.name, m.path)
        records.save(v)  # attached from now on: `down` detaches it even if what follows fails
        _attach_one(rt, prov, v, rt.nodes[0], m, on_event)  # the head (block volumes attach to one machine;
        # a shared one is seen by every node from there)


def _attach_one(rt, prov, v: VolumeRecord, node, m: VolumeMount, on_event: Event) -> None:
    on_event("volume", f"attaching volume {v.name} at {m.path} on node {node.rank}")
    device = prov.attach_volume(v, rt.rec.cloud_name, rt.rec.region, node)
    res = rt.runner(node).run(prov.volume_mount_command(v, device, m.path, m.sub_path), timeout=180)
    if not res.ok:
        raise BrokerError(f"mounting volume {v.name} at {m.path} on node {node.rank} failed: "
                          f"{(res.stderr or res.stdout).strip()[-300:]}")


def release_cluster(rec, on_event: Event = lambda k, m: None, failed: frozenset = frozenset()) -> list[str]:
    """After the cluster's instances are gone: its ephemeral volumes are deleted, applied ones detached
    (free for the next cluster). Returns warnings (never raises for one volume). `failed`: cloud ids the
    provider's terminate already tried to delete and could not (reported there; not waited for again)."""
    warns = []
    for v in records.of_cluster(rec.name):
        if v.cloud_id in failed:
            continue
        try:
            prov = provider_of(v.type)
            prov.detach_volume(v, rec.cloud_name, v.region)
            if v.ephemeral:
                prov.delete_volume(v)
                records.delete(v.name)
                on_event("volume", f"ephemeral volume {v.name} deleted")
            else:
                v.cluster, v.mount_path = None, None
                records.save(v)
                on_event("volume", f"volume {v.name} detached (kept)")
        except BrokerError as exc:
            warns.append(f"volume {v.name}: {exc.message.splitlines()[0]}; `broker volumes ls` shows it")
            on_event("warning", warns[-1])
    return warns
