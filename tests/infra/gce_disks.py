"""Persistent disks for the GCE fake (tests/infra/gce_fake.py mixes this in): the REST shapes of
`disks.insert / get / list / aggregatedList / delete` and `instances.attachDisk / detachDisk`, as the
google-cloud-compute SDK sends and parses them.

What it reproduces from GCE:
  - `POST zones/Z/disks` with `{name, sizeGb (an int64, so a JSON string), type: zones/Z/diskTypes/T,
    labels}` → an Operation; a second insert of the same name is 409 alreadyExists; bad names/labels 400;
  - a disk resource: `kind compute#disk`, `id`, `sizeGb` (string), `zone`/`type`/`selfLink` full URLs,
    `status READY`, `labels`, `labelFingerprint`, and `users` (the instances it is attached to, URLs);
  - `POST zones/Z/instances/I/attachDisk` with an AttachedDisk (`source` a disk URL or partial path,
    `deviceName`, `mode`, `autoDelete`): the disk joins the instance's `disks` with `index`, `type
    PERSISTENT`, and its `users` gains the instance; a READ_WRITE disk in use by another instance is 400
    `resourceInUseByAnotherResource` (synchronous, as GCE answers it); the disk must be in the
    instance's zone;
  - `POST zones/Z/instances/I/detachDisk?deviceName=D` (400 `invalid` for a device it does not have);
  - `DELETE zones/Z/disks/D` of a disk with users is 400 `resourceInUseByAnotherResource`;
  - deleting an instance detaches its disks (auto-delete ones are deleted with it), as GCE does.
Not modelled: boot disks as separate disk resources, snapshots, regional disks, resizing."""
from __future__ import annotations

import re
import time
import uuid

BASE = "https://www.googleapis.com/compute/v1"


class GCEDisks:
    """Mixin: needs self.project, self._instances, self._op, self._get_inst, self._url, self._ids."""

    def _disk_routes(self):
        return [
            ("POST", r"zones/([^/]+)/disks", self._disk_insert),
            ("GET", r"zones/([^/]+)/disks", self._disk_list),
            ("GET", r"zones/([^/]+)/disks/([^/]+)", self._disk_get),
            ("DELETE", r"zones/([^/]+)/disks/([^/]+)", self._disk_delete),
            ("GET", r"aggregated/disks", self._disk_aggregated),
            ("POST", r"zones/([^/]+)/instances/([^/]+)/attachDisk", self._attach_disk),
            ("POST", r"zones/([^/]+)/instances/([^/]+)/detachDisk", self._detach_disk),
        ]

    def disk(self, name: str) -> dict:
        with self.lock:
            for (_, n), d in self._disks.items():
                if n == name:
                    return dict(d)
        raise KeyError(name)

    def disks(self) -> list[dict]:
        with self.lock:
            self._reap()
            return [dict(d) for d in self._disks.values()]

    def _disk_url(self, zone: str, name: str) -> str:
        return f"{BASE}/projects/{self.project}/zones/{zone}/disks/{name}"

    def _get_disk(self, zone: str, name: str) -> dict:
        from tests.infra.gce_fake import _not_found

        d = self._disks.get((zone, name))
        if d is None:
            raise _not_found(f"projects/{self.project}/zones/{zone}/disks/{name}")
        return d

    def _in_use(self, d: dict, by: str):
        from tests.infra.gce_fake import ApiError

        return ApiError(400, f"The disk resource '{d['selfLink'].split('/compute/v1/')[-1]}' is already being used by "
                        f"'{by.split('/compute/v1/')[-1]}'", "resourceInUseByAnotherResource")

    def _disk_insert(self, zone, *, query, body):
        from tests.infra.gce_fake import _LABEL_KEY, _LABEL_VALUE, _NAME, ApiError, _invalid

        b = dict(body or {})
        name = b.get("name", "")
        if not _NAME.match(name):
            raise _invalid(f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        for k, v in (b.get("labels") or {}).items():
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v):
                raise _invalid(f"Invalid value for field 'resource.labels': '{k}={v}'.")
        dtype = b.get("type") or f"zones/{zone}/diskTypes/pd-standard"
        m = re.search(r"(?:zones/([^/]+)/)?diskTypes/([a-z0-9-]+)$", dtype)
        if not m or (m.group(1) and m.group(1) != zone):
            raise _invalid(f"Invalid value for field 'resource.type': '{dtype}'.")
        try:
            size = int(b.get("sizeGb") or 10)
        except ValueError:
            raise _invalid(f"Invalid value for field 'resource.sizeGb': '{b.get('sizeGb')}'.") from None
        if (zone, name) in self._disks:
            raise ApiError(409, f"The resource 'projects/{self.project}/zones/{zone}/disks/{name}' already exists",
                           "alreadyExists")
        url = self._disk_url(zone, name)
        self._disks[(zone, name)] = {
            "kind": "compute#disk", "id": str(next(self._ids)), "creationTimestamp": _now(), "name": name,
            "sizeGb": str(size), "zone": f"{BASE}/projects/{self.project}/zones/{zone}", "status": "READY",
            "selfLink": url, "type": f"{BASE}/projects/{self.project}/zones/{zone}/diskTypes/{m.group(2)}",
            "labels": dict(b.get("labels") or {}), "labelFingerprint": uuid.uuid4().hex[:12],
            "physicalBlockSizeBytes": "4096"}
        return self._op(zone, "insert", url)

    def _disk_get(self, zone, name, *, query, body):
        return dict(self._get_disk(zone, name))

    def _disk_list(self, zone, *, query, body):
        from tests.infra.gce_fake import _matches

        items = [dict(d) for (z, _), d in sorted(self._disks.items()) if z == zone and _matches(d, query.get("filter"))]
        return {"kind": "compute#diskList", "id": f"projects/{self.project}/zones/{zone}/disks", "items": items,
                "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/disks"}

    def _disk_aggregated(self, *, query, body):
        from tests.infra.gce_fake import _matches

        items: dict[str, dict] = {}
        for (zone, _), d in sorted(self._disks.items()):
            if _matches(d, query.get("filter")):
                items.setdefault(f"zones/{zone}", {"disks": []})["disks"].append(dict(d))
        return {"kind": "compute#diskAggregatedList", "id": f"projects/{self.project}/aggregated/disks", "items": items}

    def _disk_delete(self, zone, name, *, query, body):
        d = self._get_disk(zone, name)
        if d.get("users"):
            raise self._in_use(d, d["users"][0])
        del self._disks[(zone, name)]
        return self._op(zone, "delete", self._disk_url(zone, name))

    def _attach_disk(self, zone, name, *, query, body):
        from tests.infra.gce_fake import _invalid

        inst = self._get_inst(zone, name)
        b = dict(body or {})
        src = b.get("source", "")
        m = re.search(r"zones/([^/]+)/disks/([^/]+)$", src)
        if not m:
            raise _invalid(f"Invalid value for field 'resource.source': '{src}'.")
        if m.group(1) != zone:
            raise _invalid(f"Invalid value for field 'resource.source': '{src}'. Disk must be in the same zone as "
                           "the instance.")
        d = self._get_disk(zone, m.group(2))
        me = self._url(zone, name)
        others = [u for u in d.get("users", []) if u != me]
        if others and b.get("mode", "READ_WRITE") == "READ_WRITE":
            raise self._in_use(d, others[0])
        disks = inst.setdefault("disks", [])
        if any(x.get("source") == d["selfLink"] for x in disks):
            return self._op(zone, "attachDisk", me)
        device = b.get("deviceName") or f"persistent-disk-{len(disks)}"
        if any(x.get("deviceName") == device for x in disks):
            raise _invalid(f"Invalid value for field 'resource.deviceName': '{device}'. Device name is already in use.")
        disks.append({"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": b.get("mode", "READ_WRITE"),
                      "source": d["selfLink"], "deviceName": device, "index": len(disks), "boot": False,
                      "autoDelete": bool(b.get("autoDelete", False)), "interface": "SCSI"})
        d["users"] = d.get("users", []) + [me]
        return self._op(zone, "attachDisk", me)

    def _detach_disk(self, zone, name, *, query, body):
        from tests.infra.gce_fake import _invalid

        inst = self._get_inst(zone, name)
        device = query.get("deviceName", "")
        kept = [x for x in inst.get("disks", []) if x.get("deviceName") != device]
        if len(kept) == len(inst.get("disks", [])):
            raise _invalid(f"Invalid value for field 'deviceName': '{device}'. No attached disk found with device "
                           "name")
        gone = [x for x in inst["disks"] if x.get("deviceName") == device]
        inst["disks"] = kept
        self._release(self._url(zone, name), gone)
        return self._op(zone, "detachDisk", self._url(zone, name))

    def _release(self, inst_url: str, attached: list[dict]) -> None:
        """The instance no longer uses these disks (detached, or the instance was deleted)."""
        for x in attached:
            for key, d in list(self._disks.items()):
                if d["selfLink"] == x.get("source"):
                    d["users"] = [u for u in d.get("users", []) if u != inst_url]
                    if not d["users"]:
                        d.pop("users")
                    if x.get("autoDelete"):
                        del self._disks[key]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())
