"""check, show-gpus, catalog."""
from __future__ import annotations

import click

from .. import render


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(as_json):
    """Show which clouds have credentials (no network needed), with a hint to fix each missing one."""
    from ..check import check_all

    checks = check_all()
    if as_json:
        render.print_json([{"cloud": c.cloud, "ok": c.ok, "detail": c.detail, "hint": c.hint} for c in checks])
    else:
        render.print_checks(checks)


@click.command("show-gpus")
@click.argument("name", required=False)
@click.option("--cloud", help="Only this cloud.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_gpus(name, cloud, as_json):
    """Accelerators, counts, and the cheapest on-demand and spot machine per cloud."""
    from .. import api

    rows = api.show_gpus(name, cloud)
    if as_json:
        render.print_json([r.__dict__ for r in rows])
    else:
        render.print_gpus(rows, name)


@click.group()
def catalog():
    """Price catalogs (built from the public data in ../shared/catalogs-upstream)."""


@catalog.command("build")
@click.option("--upstream", type=click.Path(), help="Folder with aws/ gcp/ azure/ vms CSVs.")
@click.option("--out", type=click.Path(), help="Output folder (default: the catalogs/ folder in use).")
def catalog_build(upstream, out):
    """Rebuild the compact catalogs from the upstream CSVs."""
    from ..catalog import build

    argv = []
    if upstream:
        argv += ["--upstream", upstream]
    if out:
        argv += ["--out", out]
    return build.main(argv)


@catalog.command("info")
def catalog_info():
    """Where the catalogs came from and when they were built."""
    from .. import catalog as cat

    render.print_json(cat.info())
