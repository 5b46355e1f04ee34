"""`broker volumes ls`: table and JSON."""
from __future__ import annotations

from .console import _say
from .table import Col, _table
from .views import _ago


def volume_json(v) -> dict:
    return {"name": v.name, "type": v.type, "infra": v.infra or v.cloud, "cloud": v.cloud, "region": v.region,
            "zone": v.zone, "size_gb": v.size_gb, "labels": v.labels, "id": v.cloud_id,
            "ephemeral": v.ephemeral, "cluster": v.cluster, "mount_paths": v.mount_paths,
            "created_at": v.created_at, "updated_at": v.updated_at}


def print_volumes(vols) -> None:
    if not vols:
        _say("No volumes. `broker volumes apply volume.yaml` creates one (see README \"Volumes\").")
        return
    rows = [[v.name, v.type, v.infra or v.cloud, f"{v.size_gb} GiB", "ephemeral" if v.ephemeral else "applied",
             f"{v.cluster}:{','.join(v.mount_paths)}" if v.cluster else "-", v.cloud_id, _ago(v.created_at)] for v in vols]
    _table(None, [Col("NAME", soft=14, min=8, squeeze=3), Col("TYPE"), Col("INFRA", soft=16, min=6, squeeze=2),
                  Col("SIZE"), Col("KIND"), Col("ATTACHED TO", soft=16, min=6, squeeze=1),
                  Col("ID", soft=16, min=6, squeeze=1), Col("CREATED")], rows, drop=("ID", "CREATED", "KIND"))
