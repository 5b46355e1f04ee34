"""`broker simulate`: measure deadline-aware spot policies on spot traces.

Parse -> call the core (experiment.run) -> render. The only module of skybroker.spot that prints.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import click

from skybroker.errors import BrokerError, UsageError

from .simulator import PAPER_ON_DEMAND_PRICE, PAPER_SPOT_PRICE, Prices

DEFAULT_POLICIES = ("greedy", "uniform_progress", "slack_aware", "mdp", "omniscient", "on_demand")
CLOUD_ORDER = ("aws", "gcp", "azure")


def catalog_prices(instance: str, cloud: str | None = None, region: str | None = None,
                   zone: str | None = None) -> tuple[float, float, str]:
    """(on-demand $/h, spot $/h, where) for an instance type: the cheapest on-demand price and the
    cheapest spot price of that type (in `region`/`zone` if given), searching aws, gcp, azure."""
    from skybroker import catalog

    clouds = [cloud] if cloud else list(CLOUD_ORDER)
    for cl in clouds:
        try:
            specs = [s for s in catalog.specs(cl) if s.instance_type == instance]
        except BrokerError:  # this cloud's catalog is missing or broken
            if cloud:
                raise
            continue
        if not specs:
            continue
        # GCP hosts come with and without attached GPUs: the bare type is the plain host
        specs.sort(key=lambda s: (s.accelerator_count, s.accelerator_name or ""))
        offers = [o for o in catalog.offers(specs[0])
                  if (region is None or o.region == region) and (zone is None or o.zone == zone)
                  and (zone is not None or not o.local_zone)]
        od = [o.price for o in offers if o.price is not None]
        sp = [o.spot_price for o in offers if o.spot_price is not None]
        where = "/".join(x for x in (cl, region, zone) if x)
        if not od or not sp:
            missing = "on-demand" if not od else "spot"
            raise UsageError(f"{instance} has no {missing} price in the {where} catalog",
                             "drop --region/--zone, or give --on-demand-price/--spot-price")
        return min(od), min(sp), where
    raise UsageError(f"unknown instance type {instance!r} in the "
                     f"{cloud or ', '.join(CLOUD_ORDER)} catalog(s)",
                     "check the spelling, e.g. p3.2xlarge, or pass --cloud")


def _expand_traces(paths: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        pp = Path(p)
        if pp.is_dir():
            found = sorted(pp.rglob("*.json"))
            if not found:
                raise UsageError(f"no *.json trace files under {pp}")
            out.extend(found)
        else:
            out.append(pp)
    if not out:
        raise UsageError("no trace given", "pass --trace FILE (several allowed, or a folder)")
    return out


@click.command("simulate")
@click.option("--trace", "traces", multiple=True, metavar="FILE",
              help="Trace JSON file or folder (repeatable; more files may follow as arguments).")
@click.argument("more_traces", nargs=-1, metavar="[FILE]...")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="greedy, uniform_progress, slack_aware, mdp, omniscient, on_demand or all; with "
                   "--multi-zone: mz_mdp, mz_mdp_view, mz_failover, mz_single, omniscient "
                   "(repeatable or comma-separated; default all).")
@click.option("--task-hours", type=float, default=48.0, show_default=True, help="Compute time C.")
@click.option("--deadline-hours", type=float, default=60.0, show_default=True, help="Deadline R.")
@click.option("--overhead-hours", type=float, default=0.2, show_default=True,
              help="Restart overhead d of each switch.")
@click.option("--starts", type=int, default=300, show_default=True, help="Random starts per trace.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--days", type=float, default=None, help="Use only the first N days of each trace.")
@click.option("--nodes", type=int, default=None,
              help="Gang size: spot counts as available when the trace count reaches it "
                   "(default: N for traces under an `N-node` folder, else 1).")
@click.option("--instance", default=None, help="Take prices from the catalogs (e.g. p3.2xlarge).")
@click.option("--cloud", type=click.Choice(CLOUD_ORDER), default=None)
@click.option("--region", default=None)
@click.option("--zone", default=None)
@click.option("--on-demand-price", type=float, default=None,
              help=f"$/h (default {PAPER_ON_DEMAND_PRICE}, the paper's).")
@click.option("--spot-price", type=float, default=None, help=f"$/h (default {PAPER_SPOT_PRICE}).")
@click.option("--workers", type=int, default=None, help="Processes (default: up to 2).")
@click.option("--multi-zone", is_flag=True,
              help="Take the traces as simultaneous zones of one instance type (aligned by index).")
@click.option("--zone-prices", default=None, metavar="P1,P2,...",
              help="With --multi-zone: spot $/h per zone, in trace order (default: the catalogs).")
@click.option("--no-history", is_flag=True,
              help="Do not show policies the trace before each start (mdp learns from it).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Draw the first sample: availability, markets, cumulative cost (matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print summary and per-sample rows as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the per-sample rows as CSV.")
def simulate(traces, more_traces, policies, task_hours, deadline_hours, overhead_hours, starts, seed,
             days, nodes, instance, cloud, region, zone, on_demand_price, spot_price, workers,
             multi_zone, zone_prices, no_history, plot_path, as_json, as_csv):
    """Simulate deadline-aware spot policies on spot availability traces.

    Every sample is a random start in a trace; costs are normalised to always-on-demand on the same
    sample, and the gap is (cost - omniscient) / always-on-demand cost.
    """
    from . import experiment
    from .traces import load_trace

    if as_json and as_csv:
        raise UsageError("--json and --csv are exclusive")
    if nodes is not None and nodes < 1:
        raise UsageError(f"--nodes must be >= 1, got {nodes}")
    if days is not None and days <= 0:
        raise UsageError(f"--days must be > 0, got {days}")
    if multi_zone:
        return _multi_zone(traces, more_traces, policies, task_hours, deadline_hours, overhead_hours,
                           starts, seed, days, nodes, instance, on_demand_price, zone_prices,
                           as_json, as_csv)
    if zone_prices:
        raise UsageError("--zone-prices needs --multi-zone")
    names = experiment.check_policies(list(policies) or list(DEFAULT_POLICIES))
    od, sp, where = PAPER_ON_DEMAND_PRICE, PAPER_SPOT_PRICE, "paper (p3.2xlarge us-west-2)"
    if instance:
        od, sp, where = catalog_prices(instance, cloud, region, zone)
        where = f"{instance} {where} catalog"
    elif cloud or region or zone:
        raise UsageError("--cloud/--region/--zone select catalog prices and need --instance")
    od = on_demand_price if on_demand_price is not None else od
    sp = spot_price if spot_price is not None else sp
    for label, v in (("on-demand", od), ("spot", sp)):
        if not (v > 0 and math.isfinite(v)):
            raise UsageError(f"the {label} price must be > 0, got {v}")
    loaded = [load_trace(p).head(days) for p in _expand_traces(tuple(traces) + tuple(more_traces))]
    settings = experiment.Settings(task_hours, deadline_hours, overhead_hours, starts, seed,
                                   Prices(od, sp), nodes, history=not no_history)
    res = experiment.run(loaded, settings, names, workers)
    if plot_path and res.rows:
        _plot(plot_path, loaded, settings, names)
    if not res.rows:
        reasons = "; ".join(f"{k}: {v}" for k, v in res.skipped.items())
        raise UsageError(f"no trace is long enough for this deadline ({reasons})",
                         "use a shorter --deadline-hours or longer traces")
    meta = {"task_hours": task_hours, "deadline_hours": deadline_hours,
            "overhead_hours": overhead_hours, "starts": starts, "seed": seed,
            "on_demand_price": od, "spot_price": sp, "prices_from": where,
            "traces": res.samples_per_trace, "skipped": res.skipped,
            "omniscient_cpu_seconds": round(res.dp_seconds, 3)}
    if as_json:
        json.dump({"settings": meta, "summary": res.summary,
                   "rows": [r.as_dict() for r in res.rows]}, sys.stdout, default=_json_default)
        sys.stdout.write("\n")
        return
    if as_csv:
        buf = io.StringIO()
        fields = list(res.rows[0].as_dict())
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in res.rows:
            w.writerow(r.as_dict())
        sys.stdout.write(buf.getvalue())
        return
    _render(res, meta)


def _plot(path, loaded, settings, names) -> None:
    from .experiment import first_sample
    from .plot import plot_sample

    tr, job, avail, start, prices = first_sample(loaded, settings)
    hist = avail[:start] if settings.history else None
    plot_sample(path, avail[start:start + job.ticks], job, prices, names,
                f"{tr.name}, start tick {start}: C = {settings.task_hours:g} h, deadline "
                f"{settings.deadline_hours:g} h, d = {settings.overhead_hours:g} h", hist)
    sys.stderr.write(f"wrote {path}\n")


def _multi_zone(traces, more_traces, policies, task_hours, deadline_hours, overhead_hours, starts,
                seed, days, nodes, instance, on_demand_price, zone_prices, as_json, as_csv):
    from .mz_experiment import check_mz_policies, run_zones
    from .policies import Job
    from .traces import infer_nodes, load_trace
    from .zones import align, zone_prices as catalog_zone_prices

    paths = _expand_traces(tuple(traces) + tuple(more_traces))
    loaded = [load_trace(p).head(days) for p in paths]
    n = nodes or infer_nodes(paths[0])
    zs = align(loaded, n)
    inst = instance or zs.instance
    if zone_prices:
        try:
            sp = [float(x) for x in zone_prices.split(",")]
        except ValueError:
            raise UsageError(f"--zone-prices must be numbers, got {zone_prices!r}") from None
        if len(sp) != len(zs.names) or not all(v > 0 and math.isfinite(v) for v in sp):
            raise UsageError(f"--zone-prices needs {len(zs.names)} prices > 0, got {zone_prices!r}")
        od = on_demand_price or PAPER_ON_DEMAND_PRICE
        where = "--zone-prices"
    elif inst:
        od, sp, where = catalog_zone_prices(zs.names, inst)
        od = on_demand_price or od
    else:
        raise UsageError("no per-zone prices: the trace names imply no instance type",
                         "pass --instance TYPE or --zone-prices P1,P2,...")
    job = Job.from_hours(task_hours, deadline_hours, overhead_hours, zs.tick_s)
    names = check_mz_policies(list(policies) or ["all"])
    if "omniscient" not in names:
        names.append("omniscient")
    res = run_zones(zs, job, od, sp, names, starts, seed, n)
    meta = {"zones": list(zs.names), "tick_s": zs.tick_s, "ticks": zs.ticks, "nodes": n,
            "task_hours": task_hours, "deadline_hours": deadline_hours,
            "overhead_hours": overhead_hours, "starts": res.samples, "seed": seed,
            "on_demand_price": od, "spot_prices": sp, "prices_from": where,
            "single_zone_omniscient": res.single_zone_omniscient,
            "omniscient_cpu_seconds": round(res.dp_seconds, 3)}
    if as_json:
        json.dump({"settings": meta, "summary": res.summary,
                   "rows": [r.as_dict() for r in res.rows]}, sys.stdout, default=_json_default)
        sys.stdout.write("\n")
        return
    if as_csv:
        w = csv.DictWriter(sys.stdout, fieldnames=list(res.rows[0].as_dict()), lineterminator="\n")
        w.writeheader()
        for r in res.rows:
            w.writerow(r.as_dict())
        return
    om = next(s for s in res.summary if s["policy"] == "omniscient")["mean_norm_cost"]
    for s in res.summary:
        s["vs_omniscient"] = s["mean_norm_cost"] / om - 1
    meta["zones_text"] = ", ".join(f"{z} ${p:.4g}/h" for z, p in zip(zs.names, sp))
    _render(res, meta, multi=True)


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return
    raise TypeError(type(o))


def _render(res, meta, multi: bool = False) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=120)
    if multi:
        console.print(f"{res.samples} samples, {len(meta['zones'])} zones as one ({meta['zones_text']}; "
                      f"on-demand ${meta['on_demand_price']:.4g}/h; {meta['prices_from']}); "
                      f"C = {meta['task_hours']:g} h, deadline {meta['deadline_hours']:g} h, "
                      f"d = {meta['overhead_hours']:g} h")
        console.print("single-zone omniscient, each zone alone: "
                      + ", ".join(f"{z} {c:.4f}" for z, c in zip(meta["zones"],
                                                                  meta["single_zone_omniscient"])))
    else:
        n = sum(res.samples_per_trace.values())
        console.print(f"{n} samples over {len(res.samples_per_trace) - len(res.skipped)} trace(s); "
                      f"C = {meta['task_hours']:g} h, deadline {meta['deadline_hours']:g} h, "
                      f"d = {meta['overhead_hours']:g} h; on-demand ${meta['on_demand_price']:.4g}/h, "
                      f"spot ${meta['spot_price']:.4g}/h ({meta['prices_from']})")
        for name, why in res.skipped.items():
            console.print(f"[yellow]skipped {name}: {why}[/yellow]")
    t = Table(title="cost normalised to always-on-demand; gap = (cost - omniscient) / on-demand",
              box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["policy", "cost", "p25", "p75", "spot h", "OD h", "met", "gap", "gap p25", "gap p75"]
    if multi:
        cols.append("vs omni")
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for s in res.summary:
        cells = [s["policy"], f"{s['mean_norm_cost']:.4f}", f"{s['p25_norm_cost']:.4f}",
                 f"{s['p75_norm_cost']:.4f}", f"{s['spot_hours']:.1f}", f"{s['od_hours']:.1f}",
                 f"{100 * s['deadline_met']:.0f}%", f"{s['mean_gap']:.4f}", f"{s['p25_gap']:.4f}",
                 f"{s['p75_gap']:.4f}"]
        if multi:
            cells.append(f"{100 * s['vs_omniscient']:+.1f}%")
        t.add_row(*cells)
    console.print(t)
    console.print(f"omniscient DP: {meta['omniscient_cpu_seconds']:.1f} s CPU")
