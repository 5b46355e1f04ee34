"""`config.<cloud>.remote_identity: LOCAL_CREDENTIALS`: copy that cloud's credential files onto the nodes.

An explicit, SkyPilot-compatible opt-in (skybroker's default is NO_UPLOAD: the nodes get no credential of
yours). The provider declares which local files are its credentials (`Provider.credential_files`); this
module checks they exist before anything is created and writes them onto every node before setup, mode
0600 in directories made 0700, through the node's runner (the bytes cross on stdin, never on a command line). Their contents are
never printed, logged or recorded; only the number of files is said.
"""
from __future__ import annotations

from ..errors import BrokerError, SpecError
from ..task_config import option

LOCAL = "LOCAL_CREDENTIALS"


def wanted(task, cloud: str) -> bool:
    """The task asks for `cloud`'s credentials on its nodes."""
    return any(option(r, f"{cloud}.remote_identity") == LOCAL for g in getattr(task, "groups", ()) or () for r in g)


def files(task, provider) -> list[tuple[str, bytes]]:
    """(node path, contents) of what goes onto the nodes; [] when the task does not ask for it. Missing
    credential files are refused naming the field (exit 2)."""
    if not wanted(task, provider.name):
        return []
    found = provider.credential_files()
    if not found:
        raise SpecError(f"remote_identity LOCAL_CREDENTIALS: no {provider.name} credential files found on this "
                        "machine to copy onto the nodes",
                        provider.credential_hint() + f"; or set `config.{provider.name}.remote_identity: NO_UPLOAD`",
                        source=getattr(task, "source", None), field=f"config.{provider.name}.remote_identity")
    return found


def preflight(task, cloud: str) -> None:
    """Before anything is created: the chosen cloud's credential files exist when the task wants them."""
    from ..clouds import registry

    if wanted(task, cloud):
        files(task, registry.get(cloud, sdk=False))


def upload(rt, task, on_event=lambda k, m: None) -> None:
    """Write the credential files onto every node of the cluster (mode 0600, the login user's)."""
    from .runner import run_parallel

    found = files(task, rt.provider)
    if not found:
        return
    on_event("sync", f"copying {len(found)} {rt.provider.name} credential file(s) onto every node "
                     f"(config.{rt.provider.name}.remote_identity: LOCAL_CREDENTIALS)")

    dirs = credential_dirs([p for p, _ in found])

    def one(node):
        from .ssh_runner import path_expr

        r = rt.runner(node)
        for path, data in found:
            r.put_file(data, path, 0o600)
        if dirs:  # the directories they live in are the user's alone too (a new one would get the umask's mode)
            res = r.run("chmod 700 -- " + " ".join(path_expr(d) for d in dirs))
            if res.exit_code != 0:
                raise BrokerError(f"making the credential directories private on node {node.rank} failed: "
                                  f"{res.stderr.strip()[-200:]}")

    run_parallel(rt.nodes, one)


def credential_dirs(paths: list[str]) -> list[str]:
    """The directories of the copied files, from their common root down (e.g. ~/.aws; ~/.azure and
    ~/.azure/sub), never the home directory itself."""
    import posixpath

    parents = sorted({posixpath.dirname(p) for p in paths})
    if not parents:
        return []
    root = posixpath.commonpath(parents)
    out = {root}
    for d in parents:
        while d != root and d.startswith(root + "/"):
            out.add(d)
            d = posixpath.dirname(d)
    return sorted(d for d in out if d not in ("~", "", "/"))
