"""The `volumes` table: every volume skybroker created (applied or ephemeral), where it is, its id at the
cloud, and the cluster it is attached to. The cloud's tags stay the truth for leaks (`broker gc`): an
ephemeral volume carries its cluster's tag, an applied one only its volume name."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .. import state


@dataclass
class VolumeRecord:
    name: str
    type: str
    cloud: str
    region: str | None
    zone: str | None
    size_gb: int
    cloud_id: str
    labels: dict = field(default_factory=dict)
    ephemeral: bool = False
    cluster: str | None = None  # attached to (None: free)
    mount_path: str | None = None
    user_name: str | None = None
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def mount_paths(self) -> list[str]:
        """Where it is mounted on its cluster (one volume can be mounted at several paths)."""
        return [p for p in (self.mount_path or "").split("\n") if p]

    def add_mount(self, cluster: str, path: str) -> None:
        paths = self.mount_paths if self.cluster == cluster else []
        self.cluster, self.mount_path = cluster, "\n".join(sorted(set(paths + [path])))

    @property
    def infra(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


def _row(r) -> VolumeRecord:
    d = dict(r)
    d["labels"] = json.loads(d["labels"] or "{}")
    d["ephemeral"] = bool(d["ephemeral"])
    return VolumeRecord(**d)


def get(name: str) -> VolumeRecord | None:
    r = state.db().execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
    return None if r is None else _row(r)


def all_records() -> list[VolumeRecord]:
    return [_row(r) for r in state.db().execute("SELECT * FROM volumes ORDER BY name")]


def of_cluster(cluster: str) -> list[VolumeRecord]:
    return [_row(r) for r in state.db().execute("SELECT * FROM volumes WHERE cluster = ? ORDER BY name", (cluster,))]


def save(rec: VolumeRecord) -> None:
    rec.updated_at = time.time()
    rec.created_at = rec.created_at or rec.updated_at
    state.db().execute(
        "INSERT INTO volumes (name, type, cloud, region, zone, size_gb, labels, cloud_id, ephemeral, cluster, "
        "mount_path, user_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET cloud_id=excluded.cloud_id, region=excluded.region, zone=excluded.zone, "
        "cluster=excluded.cluster, mount_path=excluded.mount_path, labels=excluded.labels, "
        "updated_at=excluded.updated_at",
        (rec.name, rec.type, rec.cloud, rec.region, rec.zone, int(rec.size_gb), json.dumps(rec.labels),
         rec.cloud_id, int(rec.ephemeral), rec.cluster, rec.mount_path, rec.user_name, rec.created_at,
         rec.updated_at))


def delete(name: str) -> None:
    state.db().execute("DELETE FROM volumes WHERE name = ?", (name,))
