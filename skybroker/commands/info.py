"""check, show-gpus, catalog, completion, settings, examples."""
from __future__ import annotations

import click

from .. import render
from .options import examples


@click.command(epilog=examples("broker check", "broker check --json | jq '.[] | select(.ok) | .cloud'"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(as_json):
    """Show which clouds are ready: credentials found (no network needed) and the SDK extra installed,
    with a hint to fix each one that is not. Plans use only the ready clouds."""
    from ..check import check_all

    checks = check_all()
    if as_json:
        render.print_json([render.check_json(c) for c in checks])
    else:
        render.print_checks(checks)


@click.command("show-gpus", epilog=examples(
    "broker show-gpus                                     # common accelerators, cheapest per cloud",
    "broker show-gpus --all                               # every accelerator in the catalogs",
    "broker show-gpus A100:8 --spot                       # 8×A100 machines with a spot price",
    "broker show-gpus H100 --cloud gcp --region us-central1",
    "broker show-gpus V100 --count 1 --json"))
@click.argument("name", required=False, metavar="[NAME[:COUNT]]")
@click.option("--cloud", help="Only this cloud (aws, gcp, azure).")
@click.option("--region", help="Only offers in this region.")
@click.option("--count", type=click.FloatRange(min=0, min_open=True), help="Only this many accelerators per machine.")
@click.option("--spot", is_flag=True, help="Only machines with a spot offer; show spot prices.")
@click.option("--all", "-a", "all_", is_flag=True, help="Every accelerator, not only the common ones.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_gpus(name, cloud, region, count, spot, all_, as_json):
    """Accelerators, counts, and the cheapest on-demand and spot machine per cloud ($/h for the machine).

    Without NAME only common accelerators are listed (--all for every one). An accelerator that is not in
    the catalogs exits 3, as `launch --gpus` does."""
    from .. import api

    rows = api.show_gpus(name, cloud, region=region, count=count, spot=spot, all_gpus=all_)
    if as_json:
        render.print_json([render.gpu_json(r) for r in rows])
        return
    note = None
    if not name and not all_:
        note = "common accelerators only; `broker show-gpus --all` lists every one"
    render.print_gpus(rows, name, spot_only=spot, note=note)


@click.group(epilog=examples("broker catalog info", "broker catalog info --json",
                             "broker catalog refresh --cloud aws --region us-east-1",
                             "broker catalog build --upstream ../shared/catalogs-upstream"))
def catalog():
    """Price catalogs: shipped inside the package (skybroker/catalog/data), built from public upstream data
    (shared/catalogs-upstream); `refresh` fetches current ones from the clouds' own APIs into BROKER_HOME,
    which win over the bundled ones (BROKER_CATALOG_DIR overrides both)."""


@catalog.command("build", epilog=examples("broker catalog build --upstream ../shared/catalogs-upstream",
                                          "broker catalog build --upstream DIR --out /tmp/catalogs"))
@click.option("--upstream", type=click.Path(), help="Folder with aws/ gcp/ azure/ vms CSVs.")
@click.option("--out", type=click.Path(),
              help="Output folder (default: $BROKER_CATALOG_DIR, else the package's skybroker/catalog/data).")
def catalog_build(upstream, out):
    """Rebuild the compact catalogs from the upstream CSVs."""
    from ..catalog import build

    argv = []
    if upstream:
        argv += ["--upstream", upstream]
    if out:
        argv += ["--out", out]
    return build.main(argv)


@catalog.command("info", epilog=examples("broker catalog info", "broker catalog info --json"))
@click.option("--json", "as_json", is_flag=True, help="The build metadata as JSON (meta.json, plus `dir`).")
def catalog_info(as_json):
    """Where the catalogs are read from, where they came from and when they were built."""
    from .. import catalog as cat

    meta = cat.info()
    meta["dir"] = str(cat.catalog_dir())
    meta["max_age_days"] = api_price_limit()
    if as_json:
        render.print_json(meta)
    else:
        render.catalog_summary(meta)


def api_price_limit() -> float:
    from .. import settings as settings_mod

    return float(settings_mod.get("catalog_max_age_days"))


@catalog.command("refresh", epilog=examples(
    "broker catalog refresh                               # every cloud whose credentials are found",
    "broker catalog refresh --cloud aws --region us-east-1 --region us-west-2",
    "broker catalog refresh --cloud gcp --json"))
@click.option("--cloud", "clouds", multiple=True, type=click.Choice(("aws", "gcp", "azure")),
              help="Refresh this cloud (repeatable; default: every cloud whose credentials are found).")
@click.option("--region", "regions", multiple=True,
              help="Only these regions (repeatable, needs one --cloud); the others keep their current prices.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def catalog_refresh(clouds, regions, as_json):
    """Rebuild the price catalogs from the clouds' own APIs with your credentials (AWS EC2 + Price List,
    GCP Compute + Cloud Billing Catalog, Azure Retail Prices + resource SKUs). The new catalog replaces the
    current one only when the whole refresh succeeded; it lives under BROKER_HOME/catalogs/<cloud>."""
    from ..catalog import refresh as refresh_mod
    from ..check import check_all
    from ..errors import UsageError

    if regions and len(clouds) != 1:
        raise UsageError("--region needs exactly one --cloud", "e.g. broker catalog refresh --cloud aws --region us-east-1")
    if not clouds:
        clouds = tuple(c.cloud for c in check_all() if c.cloud in refresh_mod.REFRESHABLE and c.credentials)
        if not clouds:
            raise UsageError("no cloud to refresh: no AWS, GCP or Azure credentials found",
                             "see `broker check`, or name one with --cloud")
    results = []
    with render.Progress(quiet=as_json) as progress:
        for cloud in clouds:
            results.append(refresh_mod.refresh(cloud, list(regions) or None, progress=progress.event))
    if as_json:
        render.print_json(results)
    else:
        render.refresh_summary(results)


SHELLS = ("bash", "zsh", "fish")


@click.command(epilog=examples(
    "broker completion bash > ~/.local/share/bash-completion/completions/broker",
    "broker completion zsh > \"${fpath[1]}/_broker\"",
    "broker completion fish > ~/.config/fish/completions/broker.fish",
    "eval \"$(broker completion bash)\"                      # this shell only"))
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for SHELL (commands, options, cluster names, job ids)."""
    from click.shell_completion import get_completion_class

    from ..cli import cli

    cls = get_completion_class(shell)
    comp = cls(cli, {}, "broker", "_BROKER_COMPLETE")
    render.raw(comp.source())


@click.command(epilog=examples("broker settings", "BROKER_WAIT_READY=120 broker settings --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def settings(as_json):
    """Every BROKER_* setting: its value in effect, its default and what it does."""
    from .. import settings as settings_mod

    rows = settings_mod.table()
    if as_json:
        render.print_json([{"env": e, "value": v, "default": d, "doc": doc} for e, v, d, doc in rows])
    else:
        render.print_settings(rows)


@click.command("examples", epilog=examples(
    "broker examples && broker launch -y examples/hello.yaml   # copy them here, run the first one",
    "broker examples --dir ~/try && cd ~/try && broker launch -y examples/hello.yaml"))
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Write the examples/ folder inside this directory.")
def examples_(parent):
    """Copy the example tasks that ship with skybroker into ./examples (or DIR/examples), so the README's
    commands (`broker launch -y examples/hello.yaml`) work without a checkout. Run them from the folder
    that holds examples/: hello.yaml's workdir, examples/hello_workdir, is relative to where you run
    broker, as every workdir is. Files already there are kept, never overwritten."""
    from ..bundled_examples import copy_examples

    dest, copied, kept = copy_examples(parent)
    render.examples_copied(str(dest), copied, kept, parent)
