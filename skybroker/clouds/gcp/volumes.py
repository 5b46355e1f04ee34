"""GCE persistent disks (type `gcp-pd`, SkyPilot's name) for the GCP driver: pd-balanced, in one zone,
attached READ_WRITE to one instance at a time with device name = the volume name, so the node finds it at
/dev/disk/by-id/google-NAME.

Labels: skybroker-volume=NAME and skybroker-user on every disk; an ephemeral one also carries the cluster
label and skybroker-ephemeral=true, so `terminate` deletes it with its cluster and `broker gc` lists it
when its cluster is unknown (an applied disk has no cluster label: never a leak)."""
from __future__ import annotations

from ...errors import InvalidRequestError, Place
from ..base import TAG_CLUSTER, TAG_HOME, TAG_USER, TaggedResource, home_tag
from . import client as clients

TAG_VOLUME = "skybroker-volume"
TAG_EPHEMERAL = "skybroker-ephemeral"
PD_TYPE = "pd-balanced"


class PersistentDisks:
    """Mixin for the GCP provider (capabilities.volumes)."""

    volume_types = ("gcp-pd",)

    def _pick_zone(self, region: str | None, zone: str | None, place: Place) -> str:
        if zone:
            return zone
        if not region:
            raise InvalidRequestError("a gcp-pd volume needs a region or zone: `infra: gcp/REGION[/ZONE]`", place)
        from ... import catalog

        zones = sorted(z for z, r in catalog.zones("gcp").items() if r == region)
        if not zones:
            raise InvalidRequestError(f"no zone of region {region} in the GCP catalog", place)
        return zones[0]  # the provider decides; the record says which

    def create_volume(self, name, size_gb, region, zone, labels, cluster=None):
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1 as c

        from .instances import _label, _label_key, _user, region_of

        place = Place("gcp", region, zone)
        zone = self._pick_zone(region, zone, place)
        place = Place("gcp", region_of(zone), zone)
        project = self._call(place, clients.project)
        lab = {_label_key(k): _label(v) for k, v in (labels or {}).items()}
        lab.update({TAG_VOLUME: _label(name), TAG_USER: _label(_user()), TAG_HOME: home_tag()})
        if cluster:
            lab.update({TAG_CLUSTER: _label(cluster), TAG_EPHEMERAL: "true"})
        disk = c.Disk(name=name, size_gb=int(size_gb), type_=f"zones/{zone}/diskTypes/{PD_TYPE}", labels=lab)
        try:
            op = clients.disks().insert_unary(project=project, zone=zone, disk_resource=disk)
        except Conflict:  # the name exists in the zone: ours (a retried apply or launch) or somebody else's
            got = self._call(place, clients.disks().get, project=project, zone=zone, disk=name)
            if got.labels.get(TAG_VOLUME) != _label(name):
                raise InvalidRequestError(f"a disk named {name} exists in {zone} and was not made by skybroker",
                                          place) from None
            from ..base import check_volume_home

            check_volume_home((got.labels or {}).get(TAG_HOME), name, place)
        except Exception as exc:  # noqa: BLE001 - typed
            from .errors import classify

            raise (classify(exc, place) or exc) from None
        else:
            self._wait_all(project, place, [(zone, op)])
        return name, region_of(zone), zone

    def attach_volume(self, vol, cluster, region, node) -> str:
        from google.cloud import compute_v1 as c

        place = Place("gcp", vol.region, vol.zone)
        project = self._call(place, clients.project)
        device = f"/dev/disk/by-id/google-{vol.name}"
        inst = self._call(place, clients.instances().get, project=project, zone=vol.zone, instance=node.instance_id)
        if any(d.device_name == vol.name for d in inst.disks):
            return device
        att = c.AttachedDisk(source=f"projects/{project}/zones/{vol.zone}/disks/{vol.cloud_id}", device_name=vol.name,
                             mode="READ_WRITE", auto_delete=False)
        op = self._call(place, clients.instances().attach_disk_unary, project=project, zone=vol.zone,
                        instance=node.instance_id, attached_disk_resource=att)
        self._wait_all(project, place, [(vol.zone, op)])
        return device

    def detach_volume(self, vol, cluster, region) -> None:
        from google.api_core.exceptions import NotFound

        place = Place("gcp", vol.region, vol.zone)
        project = self._call(place, clients.project)
        try:
            disk = clients.disks().get(project=project, zone=vol.zone, disk=vol.cloud_id)
        except NotFound:
            return
        ops = []
        for user in disk.users:
            try:
                ops.append((vol.zone, self._call(place, clients.instances().detach_disk_unary, project=project,
                                                 zone=vol.zone, instance=user.rsplit("/", 1)[-1],
                                                 device_name=vol.name)))
            except InvalidRequestError:
                continue  # the instance is going or gone: it lets go of the disk itself
        self._wait_all(project, place, ops, ignore=("RESOURCE_NOT_FOUND",))

    def delete_volume(self, vol) -> None:
        from google.api_core.exceptions import NotFound

        place = Place("gcp", vol.region, vol.zone)
        project = self._call(place, clients.project)
        try:
            op = clients.disks().delete_unary(project=project, zone=vol.zone, disk=vol.cloud_id)
        except NotFound:
            return
        except Exception as exc:  # noqa: BLE001 - typed below
            from .errors import classify

            raise (classify(exc, place) or exc) from None
        self._wait_all(project, place, [(vol.zone, op)], ignore=("RESOURCE_NOT_FOUND",))

    def _ephemeral_disks(self, project, cluster, region):
        from google.cloud import compute_v1

        from .instances import _label, _last, region_of

        flt = f"labels.{TAG_EPHEMERAL}=true" + (f" AND labels.{TAG_CLUSTER}={_label(cluster)}" if cluster else "")
        req = compute_v1.AggregatedListDisksRequest(project=project, filter=flt)
        out = []
        for scope, scoped in clients.disks().aggregated_list(request=req):
            zone = _last(scope)
            if region is None or region_of(zone) == region:
                out += [(zone, d) for d in scoped.disks]
        return out

    def _delete_ephemeral(self, project, place, cluster, region) -> list[str]:
        """terminate(): the cluster's ephemeral disks go with it (its instances are deleted by now)."""
        warns = []
        for zone, d in self._call(place, self._ephemeral_disks, project, cluster, region):
            rec = type("V", (), {"cloud_id": d.name, "region": place.region, "zone": zone, "name": d.name})()
            try:
                self.detach_volume(rec, cluster, region)
                self.delete_volume(rec)
            except InvalidRequestError as exc:
                warns.append(f"ephemeral disk {d.name} of {cluster}: {exc.message}; `broker gc` removes it")
        return warns

    def _tagged_disks(self, project, place, region) -> list[TaggedResource]:
        return [TaggedResource("gcp", region, d.labels[TAG_CLUSTER], "volume", d.name, live=False,
                               home=d.labels.get(TAG_HOME))
                for _, d in self._call(place, self._ephemeral_disks, project, None, region) if TAG_CLUSTER in d.labels]
