"""Options shared by commands that take a task (launch, exec, jobs launch)."""
from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import UsageError


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
        click.option("--name", "-n", "task_name", help="Task name (overrides `name:`)."),
    ]
    for o in reversed(opts):
        f = o(f)

    @functools.wraps(f)
    def wrapper(*args, **kw):
        keys = ("infra", "cloud", "region", "zone", "gpus", "cpus", "memory", "instance_type", "use_spot",
                "num_nodes", "disk_size", "envs", "secrets", "task_name")
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
            raise UsageError(f"{flag} {item!r}: {k!r} is not a valid variable name", "use KEY=VALUE")
        out[k] = v
    return out


def build_overrides(raw: dict) -> dict:
    ov = {k: v for k, v in raw.items() if k not in ("envs", "secrets", "task_name") and v is not None}
    if raw.get("num_nodes") is not None and raw["num_nodes"] < 1:
        raise UsageError(f"--num-nodes {raw['num_nodes']}: must be at least 1")
    ov["envs"] = _kv(raw.get("envs") or (), "--env")
    ov["secrets"] = _kv(raw.get("secrets") or (), "--secret")
    if raw.get("task_name"):
        ov["name"] = raw["task_name"]
    return ov


def can_prompt() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(question: str, yes: bool) -> bool:
    """Ask unless -y was given or nobody can answer (stdin not a terminal: CI)."""
    if yes or not can_prompt():
        return True
    return click.confirm(question, default=True)
