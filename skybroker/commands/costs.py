"""broker cost-report: what clusters and managed jobs cost, from the cost ledger."""
from __future__ import annotations

import click

from .. import render
from .options import examples


@click.command("cost-report", epilog=examples(
    "broker cost-report                                   # the last 30 days, live and gone",
    "broker cost-report --since 7d",
    "broker cost-report --all --json | jq .total"))
@click.option("--all", "-a", "all_", is_flag=True, help="The whole history (default: the last 30 days).")
@click.option("--since", metavar="DURATION", help="Only what was alive in this window: 7d, 12h, 30m.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every run and interval).")
def cost_report(all_, since, as_json):
    """Every cluster and managed job, live or gone: resources, time up and stopped, cost so far or total,
    spot savings against the same instance on demand, and a total.

    Costs come from the ledger: the price per node frozen when the instances were created (each
    recovery of a managed job has its own), and the time spent up (price + disks) and stopped (disks
    only; README "What it costs" names the disk price table)."""
    from ..costs.report import parse_since
    from .options import use_api

    api = use_api()

    if all_ and since:
        from ..errors import UsageError

        raise UsageError("--all and --since exclude each other", "broker cost-report --since 7d")
    rep = api.cost_report(parse_since(since) if since else None, all_)
    if as_json:
        render.print_json(rep)
    else:
        render.print_cost_report(rep)
