"""Volumes of the local cloud (type `local-dir`): a directory on this machine, seen by every node of a
local cluster (they share the machine), made to appear at the task's mount path as a symbolic link
(no root needed).

  applied     BROKER_HOME/volumes/NAME
  ephemeral   BROKER_HOME/local/CLUSTER/volumes/NAME: inside the cluster's directory, so terminating the
              cluster removes it and `broker gc` sees it with the cluster's other leftovers

Each volume directory holds `.skybroker-volume.json` (its name, cluster and labels: the "tags")."""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from ..errors import InvalidRequestError, Place
from ..paths import broker_home, private_dir

_TAG = ".skybroker-volume.json"


class LocalVolumes:
    """Mixin for the local provider (capabilities.volumes)."""

    volume_types = ("local-dir",)
    volumes_shared = True

    def create_volume(self, name, size_gb, region, zone, labels, cluster=None):
        if cluster:
            d = broker_home() / "local" / cluster / "volumes" / name
        else:
            d = private_dir(broker_home() / "volumes") / name
        d.mkdir(parents=True, exist_ok=True)
        (d / _TAG).write_text(json.dumps({"name": name, "cluster": cluster, "labels": labels, "size_gb": size_gb}))
        return str(d), None, None

    def attach_volume(self, vol, cluster, region, node) -> str:
        if not Path(vol.cloud_id, _TAG).is_file():
            raise InvalidRequestError(f"volume {vol.name} is gone from this machine ({vol.cloud_id})",
                                      Place("local"))
        return vol.cloud_id

    def volume_mount_command(self, vol, device, path, sub_path) -> str:
        target = os.path.join(device, sub_path) if sub_path else device
        t, p = shlex.quote(target), shlex.quote(path)
        return "\n".join([
            "set -e", f"mkdir -p {t} \"$(dirname {p})\"",
            f"if [ -L {p} ]; then ln -sfn {t} {p}",
            f"elif [ -d {p} ] && [ -z \"$(ls -A {p})\" ]; then rmdir {p} && ln -s {t} {p}",
            f"elif [ -e {p} ]; then echo '{path} exists and is not empty: cannot mount the volume there' >&2; exit 1",
            f"else ln -s {t} {p}; fi"])

    def detach_volume(self, vol, cluster, region) -> None:
        for path in vol.mount_paths:
            if os.path.islink(path) and os.path.realpath(path).startswith(os.path.realpath(vol.cloud_id)):
                os.unlink(path)

    def delete_volume(self, vol) -> None:
        d = Path(vol.cloud_id)
        if d.is_dir() and (d / _TAG).is_file():  # only a directory we made
            shutil.rmtree(d, ignore_errors=True)
