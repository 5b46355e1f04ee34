"""broker storage: the named buckets of file_mounts (SkyPilot's `sky storage ls / delete`)."""
from __future__ import annotations

import click

from .. import render
from ..errors import names_or_all
from .options import local_only, confirm_destructive, examples


@click.group(epilog=examples("broker storage ls", "broker storage delete my-bucket -y"))
def storage():
    """Buckets created or used by `file_mounts` storages with a `name` (SkyPilot's `sky storage`)."""
    local_only("storage")  # not through a broker server (client mode): refused, not done here silently


@storage.command("ls", epilog=examples("broker storage ls", "broker storage ls --refresh --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--refresh", "-r", is_flag=True, help="Ask each store whether the bucket still exists; forget the "
              "ones that are gone.")
def ls(as_json, refresh):
    """List recorded storages: store URI, mode, whether they outlive their clusters, who uses them.
    Without --refresh this reads the local records only (no network)."""
    from ..storage import records

    if refresh:
        from ..storage import mounts

        for name in mounts.refresh():
            render.info(f"storage {name}: its bucket no longer exists; forgotten")
    recs = records.all_records()
    if as_json:
        render.print_json([render.storage_json(r) for r in recs])
    else:
        render.print_storage(recs)


@storage.command("delete", epilog=examples("broker storage delete my-bucket", "broker storage delete -a -y"))
@click.argument("names", nargs=-1)
@click.option("--all", "-a", "all_", is_flag=True, help="Every recorded storage.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
def delete(names, all_, yes):
    """Delete storages: the bucket and its objects if skybroker created it (and its tag says so); a bucket
    that existed before is only forgotten, never deleted."""
    from ..errors import NotFoundError, UsageError
    from ..storage import mounts, records

    names_or_all(names, all_)
    recs = records.all_records() if all_ else []
    for n in names:
        r = records.get(n)
        if r is None:
            raise NotFoundError(f"no storage named {n!r}", "see `broker storage ls`")
        recs.append(r)
    if not recs:
        if all_:
            render.info("no storage")
            return
        raise UsageError("name the storage(s) to delete, or pass --all", "see `broker storage ls`")
    busy = records.in_use_by_clusters(recs)
    if busy:  # deleting a bucket under a live cluster's mount (or a COPY it re-syncs) loses its data
        raise UsageError("in use by live clusters: " + "; ".join(f"storage {n} by {', '.join(cs)}" for n, cs in busy),
                         f"`broker down {' '.join(sorted({c for _, cs in busy for c in cs}))}` first")
    confirm_destructive(f"Delete {', '.join(r.name for r in recs)} (buckets skybroker created go with their "
                        "objects)?", yes)
    for r in recs:
        clusters = [u.split(":", 1)[1] for u in r.users]
        if clusters:
            render.info(f"warning: storage {r.name} is still used by {', '.join(clusters)}")
        outcome = mounts.delete_bucket(r)
        if outcome == "deleted":
            render.info(f"storage {r.name}: bucket {r.uri} deleted")
        elif outcome == "gone":
            render.info(f"storage {r.name}: forgotten (bucket {r.uri} no longer exists)")
        else:
            render.info(f"storage {r.name}: forgotten (bucket {r.uri} was not created by skybroker and is kept)")
