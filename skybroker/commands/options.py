"""Options shared by the commands: task options (launch, exec, jobs launch), confirmation, job ids, shell
completion of cluster names and job ids."""
from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import Declined, UsageError


def use_api():
    """The use cases behind the commands: api.py (local mode), or client/remote.py with the same
    functions when a broker server is configured (`broker login`, BROKER_API_SERVER, `api_server:`)."""
    from ..client import endpoint

    if endpoint() is None:
        from .. import api

        return api
    from ..client import remote

    return remote


def local_only(command: str) -> None:
    """A command group that acts on this machine's state and cloud credentials only (no server call
    exists for it): refused in client mode, where it would make or delete a bucket or a volume the
    server's tasks never see, with this machine's credentials, and list none of the server's."""
    from ..client import endpoint

    where = endpoint()
    if where is not None:
        from ..errors import UsageError

        raise UsageError(f"`broker {command}` does not go through the broker server ({where[0]}): it would act on "
                         f"this machine's own state and cloud credentials, not the server's",
                         f"run it on the server machine for the server's; for this machine's own: "
                         f"BROKER_API_SERVER=local broker {command} ...")


def task_options(f):
    opts = [
        click.option("--infra", help="cloud[/region[/zone]], e.g. aws/us-east-1, gcp, local, ssh/mypool."),
        click.option("--cloud", help="Cloud (aws, gcp, azure, local, ssh)."),
        click.option("--region", help="Region."),
        click.option("--zone", help="Zone (AWS: AZ ID like use1-az1)."),
        click.option("--gpus", help="Accelerators, e.g. A100:8 or V100."),
        click.option("--cpus", help="vCPUs per node: 4 (exactly) or 4+ (at least)."),
        click.option("--memory", help="GiB per node: 32 or 32+."),
        click.option("--instance-type", "-t", help="Instance type, e.g. p3.2xlarge."),
        click.option("--use-spot/--no-use-spot", default=None, help="Use spot instances."),
        click.option("--num-nodes", type=int, help="Number of nodes."),
        click.option("--disk-size", type=int, help="OS disk size in GB."),
        click.option("--env", "envs", multiple=True, metavar="KEY[=VALUE]",
                     help="Set an environment variable (repeatable). KEY alone takes the value from your environment."),
        click.option("--secret", "secrets", multiple=True, metavar="KEY[=VALUE]",
                     help="Set a secret env variable (never printed or stored). KEY alone reads your environment."),
        click.option("--env-file", "env_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Environment variables from a dotenv file (KEY=VALUE lines; repeatable)."),
        click.option("--secret-file", "secret_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Secrets from a dotenv file (never printed or stored in clear; repeatable)."),
        click.option("--name", "-n", "task_name", help="Task name (overrides `name:`)."),
        click.option("--git-url", help="Clone this git repository as the workdir on every node (overrides `workdir:`)."),
        click.option("--git-ref", help="Branch, tag or commit of the git workdir (overrides `workdir.ref`)."),
        click.option("--workdir", help="A local folder to sync as the workdir (overrides `workdir:`)."),
        click.option("--ports", multiple=True, metavar="PORT", help="Ports to open, 8080 or 8000-8010 (repeatable; "
                     "overrides resources.ports)."),
        click.option("--image-id", help="Image of the nodes, e.g. an AMI or docker:IMAGE (overrides resources.image_id)."),
    ]
    for o in reversed(opts):
        f = o(f)

    @functools.wraps(f)
    def wrapper(*args, **kw):
        keys = ("infra", "cloud", "region", "zone", "gpus", "cpus", "memory", "instance_type", "use_spot",
                "num_nodes", "disk_size", "envs", "secrets", "task_name", "env_files", "secret_files", "git_url",
                "git_ref", "workdir", "ports", "image_id")
        raw = {k: kw.pop(k) for k in keys}
        kw["overrides"] = build_overrides(raw)
        return f(*args, **kw)

    return wrapper


def _kv(items, flag):
    out = {}
    for item in items:
        if "=" in item:
            k, v = item.split("=", 1)
        else:
            k, v = item, os.environ.get(item)
            if v is None:
                raise UsageError(f"{flag} {item}: no value given and {item} is not set in your environment",
                                 f"use {flag} {item}=VALUE")
        if not k or not (k[0].isalpha() or k[0] == "_") or not all(ch.isalnum() or ch == "_" for ch in k):
            shown = f"{flag} {k!r}=…" if flag == "--secret" else f"{flag} {item!r}"  # never echo a secret value
            raise UsageError(f"{shown}: {k!r} is not a valid variable name", "use KEY=VALUE")
        out[k] = v
    return out


def read_dotenv(path: str, flag: str, secret: bool) -> dict[str, str]:
    """KEY=VALUE lines (`export ` prefix, # comments, blank lines and single/double quotes allowed).
    Errors name the file and the line, never a value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq or not key or not (key[0].isalpha() or key[0] == "_") or \
                not all(ch.isalnum() or ch == "_" for ch in key):
            what = "a line" if secret else repr(line[:60])
            raise UsageError(f"{flag} {path}:{n}: {what} is not KEY=VALUE with a valid variable name",
                             "one KEY=VALUE per line; # starts a comment")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def build_overrides(raw: dict) -> dict:
    skip = ("envs", "secrets", "task_name", "env_files", "secret_files")
    ov = {k: v for k, v in raw.items() if k not in skip and v is not None and v != ()}
    if raw.get("workdir") and raw.get("git_url"):
        raise UsageError("--workdir and --git-url: give one workdir", "a local folder (--workdir) or a repository "
                         "(--git-url)")
    if raw.get("infra"):  # as `resources: {infra: ..., region: ...}` is refused (spec_groups._resources)
        extra = [f"--{k} {raw[k]}" for k in ("cloud", "region", "zone") if raw.get(k)]
        if extra:
            raise UsageError(f"--infra {raw['infra']} and {', '.join(extra)}: give either --infra or "
                             "--cloud/--region/--zone, not both",
                             "put the whole location in --infra, e.g. --infra aws/us-east-1/use1-az1")
    if raw.get("num_nodes") is not None and raw["num_nodes"] < 1:
        raise UsageError(f"--num-nodes {raw['num_nodes']}: must be at least 1")
    envs: dict[str, str] = {}
    for path in raw.get("env_files") or ():
        envs.update(read_dotenv(path, "--env-file", secret=False))
    secrets: dict[str, str] = {}
    for path in raw.get("secret_files") or ():
        secrets.update(read_dotenv(path, "--secret-file", secret=True))
    envs.update(_kv(raw.get("envs") or (), "--env"))  # a flag wins over a file
    secrets.update(_kv(raw.get("secrets") or (), "--secret"))
    ov["envs"] = envs
    ov["secrets"] = secrets
    if raw.get("task_name"):
        ov["name"] = raw["task_name"]
    return ov


def can_prompt() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(question: str, yes: bool) -> bool:
    """For actions that create (launch): ask unless -y was given or nobody can answer (stdin not a
    terminal: CI goes ahead). The default answer is yes."""
    if yes or not can_prompt():
        return True
    from .. import render

    return render.confirm_prompt(question, default=True)


def confirm_destructive(question: str, yes: bool, flag: str = "-y") -> None:
    """For actions that destroy (down, stop, cancel --all, gc): never without -y when nobody can answer
    (exit 2 with a hint); on a terminal ask, default No (click.Abort when declined)."""
    if yes:
        return
    if not can_prompt():
        raise UsageError(f"{question.rstrip('?')}: not without confirmation, and stdin is not a terminal",
                         f"pass {flag} to confirm")
    from .. import render

    if not render.confirm_prompt(question, default=False):
        raise Declined()


# Job ids are SQLite integers: a larger number is bad input (exit 2), never an overflow traceback.
JOB_ID = click.IntRange(1, 2**63 - 1)


def complete_cluster(ctx, param, incomplete: str):
    """Shell completion: cluster names from the local state (no cloud call)."""
    try:
        names = use_api().cluster_names()
    except Exception:  # completion must never fail loudly
        return []
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_job_id(ctx, param, incomplete: str):
    """Shell completion: job ids of the cluster named earlier on the command line."""
    cluster = (ctx.params or {}).get("cluster")
    if not cluster:
        return []
    try:
        ids = [str(j.job_id) for j in use_api().queue(cluster)]
    except Exception:
        return []
    from click.shell_completion import CompletionItem

    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


def complete_managed_job_id(ctx, param, incomplete: str):
    """Shell completion: managed job ids (local state only; does not start the controller)."""
    try:
        api = use_api()
        if api.__name__ == "skybroker.api":  # local state only: completing never starts the controller
            from ..jobs import store

            ids = [str(j.id) for j in store.all_jobs()]
        else:
            ids = [str(j.id) for j in api.jobs_queue()]
    except Exception:
        return []
    from click.shell_completion import CompletionItem

    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


def examples(*lines: str) -> str:
    """A command's epilog: its examples, kept as written (click does not rewrap a \\b paragraph)."""
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in lines)
