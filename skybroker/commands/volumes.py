"""broker volumes: SkyPilot's `sky volumes apply / ls / delete`."""
from __future__ import annotations

import click

from .. import render
from ..errors import Declined
from .options import local_only, confirm, confirm_destructive, examples


@click.group(epilog=examples("broker volumes apply volume.yaml", "broker volumes ls --json",
                             "broker volumes delete my-volume -y"))
def volumes():
    """Volumes a task mounts with `volumes: {/mnt/path: NAME}` (README "Volumes")."""
    local_only("volumes")  # not through a broker server (client mode): refused, not done here silently


@volumes.command("apply", epilog=examples("broker volumes apply volume.yaml -y"))
@click.argument("volume_file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def apply(volume_file, yes):
    """Create the volume VOLUME_FILE describes (name, type, infra, size, labels)."""
    from ..errors import SpecError
    from ..taskfile import read_yaml_docs
    from ..volumes import ops

    docs, shown = read_yaml_docs(volume_file, "volume")
    if len(docs) != 1:
        raise SpecError(f"holds {len(docs)} YAML documents; a volume file holds one", None, source=shown)
    data = docs[0][0]
    name = data.get("name") if isinstance(data, dict) else None
    if not confirm(f"Create volume {name}?", yes):
        raise Declined()
    rec = ops.apply(data, shown, on_event=lambda k, m: render.info(m))
    render.info(f"volume {rec.name}: {rec.type}, {rec.size_gb} GiB on {rec.infra or rec.cloud} ({rec.cloud_id})")


@volumes.command("ls", epilog=examples("broker volumes ls", "broker volumes ls --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json):
    """List volumes: type, where, size, the cluster each is attached to (local records; no network)."""
    from ..volumes import ops

    vols = ops.list_volumes()
    if as_json:
        render.print_json([render.volume_json(v) for v in vols])
    else:
        render.print_volumes(vols)


@volumes.command("delete", epilog=examples("broker volumes delete my-volume", "broker volumes delete a b -y"))
@click.argument("names", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
def delete(names, yes):
    """Delete volumes and their data (refused while a cluster has one attached)."""
    from ..volumes import ops

    confirm_destructive(f"Delete volume(s) {', '.join(names)} and their data?", yes)
    for n in names:
        ops.delete(n, on_event=lambda k, m: render.info(m))
