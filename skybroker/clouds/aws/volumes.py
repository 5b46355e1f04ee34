"""EBS volumes (type `aws-ebs`) for the EC2 driver: gp3, in one availability zone, attached to one
instance at a time.

Tags: every volume carries skybroker-volume=NAME and skybroker-user; an ephemeral one also carries the
cluster tag and skybroker-ephemeral=true, so `terminate` deletes it with its cluster and `broker gc` lists
it when its cluster is unknown (an applied volume is never a leak: it has no cluster tag).

Zones: the catalogs (and so the plan) speak AZ IDs (use1-az1); EC2 wants AZ names. A volume is created in
the AZ name the user or the plan gave, and recorded with its AZ ID, so the plan's zone constraint matches.

On the node, an EBS volume attached as /dev/sdX shows up as /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_
vol… on Nitro instances, and as /dev/xvdX on older ones: the mount command waits for whichever appears."""
from __future__ import annotations

import time

from ...errors import InvalidRequestError, Place
from ..base import TAG_CLUSTER, TAG_USER, Leftover, TaggedResource
from . import client as clients

TAG_VOLUME = "skybroker-volume"
TAG_EPHEMERAL = "skybroker-ephemeral"
_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]
_GONE = ("InvalidVolume.NotFound",)


class EBSVolumes:
    """Mixin for the AWS provider (capabilities.volumes)."""

    volume_types = ("aws-ebs",)

    def _ec2v(self, region):
        """One EC2 client per region and session for the volume calls (a boto3 client takes a while to
        build; a launch attaches several volumes)."""
        key = (region, id(clients._session()))
        cache = self.__dict__.setdefault("_vol_clients", {})
        if key not in cache:
            cache[key] = clients.ec2(region)
        return cache[key]

    def _vol_tags(self, name, labels, cluster):
        from ..base import TAG_HOME, home_tag
        from .driver import _user

        tags = {"Name": f"skybroker-{name}", **{str(k): str(v) for k, v in (labels or {}).items()}}
        tags.update({TAG_VOLUME: name, TAG_USER: _user(), TAG_HOME: home_tag()})  # never a label's
        if cluster:
            tags.update({TAG_CLUSTER: cluster, TAG_EPHEMERAL: "true"})
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _find_volume(self, ec2, name):
        resp = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_VOLUME}", "Values": [name]}])
        live = [v for v in resp["Volumes"] if v["State"] not in ("deleting", "deleted", "error")]
        return live[0] if live else None

    def _zone_id(self, ec2, region, zone_name):
        self.zone_name(ec2, region, zone_name)  # fills the map
        return {n: i for i, n in self._azs[region].items()}.get(zone_name, zone_name)

    def _wait_volume(self, ec2, place, vol_id, ok, what):
        from .driver import _poll, _wait_s

        deadline = time.time() + _wait_s()
        while True:
            v = self._call(place, ec2.describe_volumes, VolumeIds=[vol_id])["Volumes"][0]
            if ok(v):
                return v
            if time.time() > deadline:
                raise InvalidRequestError(f"EBS volume {vol_id} not {what} after {_wait_s():.0f}s", place)
            time.sleep(_poll())

    def create_volume(self, name, size_gb, region, zone, labels, cluster=None):
        place = Place("aws", region, zone)
        if not region:
            raise InvalidRequestError("an aws-ebs volume needs a region: `infra: aws/REGION[/ZONE]`", place)
        ec2 = self._call(place, self._ec2v, region)
        have = self._call(place, self._find_volume, ec2, name)
        if have is None:
            if zone:
                az = self.zone_name(ec2, region, zone)
            else:  # the region's first zone (the provider decides; the record says which)
                azs = self._call(place, ec2.describe_availability_zones)["AvailabilityZones"]
                az = min(z["ZoneName"] for z in azs if z.get("State", "available") == "available")
            have = self._call(place, ec2.create_volume, AvailabilityZone=az, Size=int(size_gb), VolumeType="gp3",
                              TagSpecifications=[{"ResourceType": "volume",
                                                  "Tags": self._vol_tags(name, labels, cluster)}])
            self._wait_volume(ec2, place, have["VolumeId"], lambda v: v["State"] == "available", "available")
        else:
            from ..base import TAG_HOME, check_volume_home

            check_volume_home({t["Key"]: t["Value"] for t in have.get("Tags", [])}.get(TAG_HOME), name, place)
        az = have["AvailabilityZone"]
        return have["VolumeId"], region, self._zone_id(ec2, region, az)

    def attach_volume(self, vol, cluster, region, node) -> str:
        place = Place("aws", region, vol.zone)
        ec2 = self._call(place, self._ec2v, region)
        v = self._call(place, ec2.describe_volumes, VolumeIds=[vol.cloud_id])["Volumes"][0]
        mine = [a for a in v.get("Attachments", []) if a["InstanceId"] == node.instance_id]
        if mine:
            return mine[0]["Device"]
        if v.get("Attachments"):
            raise InvalidRequestError(f"EBS volume {vol.cloud_id} is attached to {v['Attachments'][0]['InstanceId']}",
                                      place)
        inst = self._call(place, ec2.describe_instances, InstanceIds=[node.instance_id])["Reservations"][0]["Instances"][0]
        used = {m["DeviceName"] for m in inst.get("BlockDeviceMappings", [])}
        device = next((d for d in _DEVICES if d not in used), None)
        if device is None:
            raise InvalidRequestError(f"instance {node.instance_id} has no free device name for another volume", place)
        self._call(place, ec2.attach_volume, Device=device, InstanceId=node.instance_id, VolumeId=vol.cloud_id)
        self._wait_volume(ec2, place, vol.cloud_id, lambda x: any(a.get("State") == "attached" for a in
                                                                   x.get("Attachments", [])), "attached")
        return device

    def volume_mount_command(self, vol, device, path, sub_path) -> str:
        from ...volumes.mount import block_mount_command

        nvme = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{vol.cloud_id.replace('-', '')}"
        return block_mount_command(device, path, sub_path,
                                   candidates=(nvme, device.replace("/dev/sd", "/dev/xvd"), device))

    def detach_volume(self, vol, cluster, region) -> None:
        from botocore.exceptions import ClientError

        place = Place("aws", region, vol.zone)
        ec2 = self._call(place, self._ec2v, region)
        try:
            v = ec2.describe_volumes(VolumeIds=[vol.cloud_id])["Volumes"][0]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _GONE:
                return
            raise self.classify(exc, place) or exc
        for a in v.get("Attachments", []):
            self._call(place, ec2.detach_volume, VolumeId=vol.cloud_id, InstanceId=a["InstanceId"])
        if v.get("Attachments"):
            self._wait_volume(ec2, place, vol.cloud_id, lambda x: x["State"] == "available", "detached")

    def delete_volume(self, vol) -> None:
        """Delete it. EC2 says VolumeInUse for a while after a detach (or after its instance terminated):
        while no instance holds it attached, the delete is retried for up to `aws_volume_wait` seconds."""
        from botocore.exceptions import ClientError

        from ... import settings
        from .driver import _poll

        place = Place("aws", vol.region, vol.zone)
        ec2 = self._call(place, self._ec2v, vol.region)
        deadline = time.time() + settings.get("aws_volume_wait")
        while True:
            try:
                ec2.delete_volume(VolumeId=vol.cloud_id)
                return
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code in _GONE:
                    return
                if code != "VolumeInUse":
                    raise self.classify(exc, place) or exc
            held = self._attached_to(ec2, place, vol.cloud_id)
            if held is None:
                return  # gone meanwhile
            if held:  # attached to an instance skybroker does not track (its clusters' are detached first)
                err = InvalidRequestError(f"EBS volume {vol.cloud_id} ({vol.name}) is still attached to "
                                          f"{', '.join(held)}", place, code="VolumeInUse",
                                          hint=f"detach it first (`aws ec2 detach-volume --volume-id "
                                          f"{vol.cloud_id}`), then delete it again")
                err.exit_code = 2
                raise err
            if time.time() > deadline:
                raise InvalidRequestError(f"EBS volume {vol.cloud_id} is still in use (detaching) after "
                                          f"{settings.get('aws_volume_wait'):.0f}s", place, code="VolumeInUse")
            time.sleep(_poll())

    def _attached_to(self, ec2, place, vol_id) -> list[str] | None:
        """The instances holding the volume attached (not detaching); None when it no longer exists."""
        from botocore.exceptions import ClientError

        try:
            v = ec2.describe_volumes(VolumeIds=[vol_id])["Volumes"][0]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _GONE:
                return None
            raise self.classify(exc, place) or exc
        if v["State"] in ("deleting", "deleted"):
            return None
        return [a["InstanceId"] for a in v.get("Attachments", []) if a.get("State") in ("attaching", "attached")]

    def _ephemeral_volumes(self, ec2, cluster=None):
        flt = [{"Name": "tag-key", "Values": [TAG_EPHEMERAL]}]
        if cluster:
            flt.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]})
        out = []
        for page in ec2.get_paginator("describe_volumes").paginate(Filters=flt):
            out += [v for v in page["Volumes"] if v["State"] not in ("deleting", "deleted")]
        return out

    def _delete_ephemeral(self, ec2, place, cluster) -> list[str]:
        """terminate(): the cluster's ephemeral volumes go with it (its instances are gone by now)."""
        warns = []
        for v in self._call(place, self._ephemeral_volumes, ec2, cluster):
            rec = type("V", (), {"cloud_id": v["VolumeId"], "region": place.region, "zone": None})()
            try:
                if v.get("Attachments"):
                    self._call(place, ec2.detach_volume, VolumeId=v["VolumeId"], Force=True)
                    self._wait_volume(ec2, place, v["VolumeId"], lambda x: x["State"] == "available", "detached")
                self.delete_volume(rec)
            except InvalidRequestError as exc:  # it still costs money: `down` fails with this (base.Leftover)
                warns.append(Leftover(f"ephemeral volume {v['VolumeId']} of {cluster} could not be deleted: "
                                      f"{exc.message}", v["VolumeId"]))
        return warns

    def _tagged_volumes(self, ec2, region) -> list[TaggedResource]:
        out = []
        for v in self._ephemeral_volumes(ec2):
            tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
            if tags.get(TAG_CLUSTER):
                out.append(TaggedResource("aws", region, tags[TAG_CLUSTER], "volume", v["VolumeId"], live=False,
                                          home=tags.get("skybroker-home")))
        return out
