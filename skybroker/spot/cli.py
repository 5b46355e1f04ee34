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


@click.command("simulate", epilog="""\b
Examples:
  broker simulate --trace ../shared/spot-traces/availability/1-node/aws-10-26-2022/us-west-2a_v100_1.json
  broker simulate --trace DIR --policy greedy,slack_aware --task-hours 48 --deadline-hours 60
  broker simulate --trace FILE --instance p3.2xlarge --cloud aws --region us-west-2 --json""")
@click.option("--trace", "traces", multiple=True, metavar="FILE",
              help="Trace JSON file or folder (repeatable; more files may follow as arguments).")
@click.argument("more_traces", nargs=-1, metavar="[FILE]...")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="greedy, uniform_progress, slack_aware, mdp, omniscient, on_demand or all; with "
                   "--multi-zone: mz_union, mz_mdp, mz_patient, mz_failover, mz_single, omniscient, the "
                   "idealised *_view ones "
                   "(repeatable or comma-separated; default all).")
@click.option("--task-hours", type=float, default=48.0, show_default=True, help="Compute time C.")
@click.option("--deadline-hours", type=float, default=60.0, show_default=True, help="Deadline R.")
@click.option("--overhead-hours", type=float, default=0.2, show_default=True,
              help="Restart overhead d of each switch.")
@click.option("--starts", type=int, default=300, show_default=True, help="Random starts per trace.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
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
    _check_deadline(task_hours, deadline_hours, overhead_hours)
    if plot_path:  # before the simulation runs
        from .plot import check_path

        plot_path = check_path(plot_path)
    if multi_zone:
        return _multi_zone(traces, more_traces, policies, task_hours, deadline_hours, overhead_hours,
                           starts, seed, days, nodes, instance, on_demand_price, zone_prices,
                           as_json, as_csv, plot_path)
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
    for tick in sorted({tr.gap_seconds for tr in loaded}, reverse=True):
        _check_deadline(task_hours, deadline_hours, overhead_hours, int(tick))
    settings = experiment.Settings(task_hours, deadline_hours, overhead_hours, starts, seed,
                                   Prices(od, sp), nodes, history=not no_history)
    from skybroker import render

    progress = render.Progress(quiet=as_json or as_csv)
    with progress:
        progress.event("simulate", f"simulating {len(loaded)} trace(s) × {starts} starts × {len(names)} policies")
        res = experiment.run(loaded, settings, names, workers, **_progress_hook(experiment.run, progress))
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
        from skybroker.render.console import json_safe

        json.dump(json_safe({"settings": meta, "summary": res.summary, "rows": [r.as_dict() for r in res.rows]}),
                  sys.stdout, default=_json_default, allow_nan=False)
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
    from skybroker import render

    render.info(f"wrote {path}")  # flushed (a click 8.1 CliRunner reads stderr unflushed otherwise)


def _multi_zone(traces, more_traces, policies, task_hours, deadline_hours, overhead_hours, starts,
                seed, days, nodes, instance, on_demand_price, zone_prices, as_json, as_csv, plot_path=None):
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
    _check_deadline(task_hours, deadline_hours, overhead_hours, int(zs.tick_s))
    job = Job.from_hours(task_hours, deadline_hours, overhead_hours, zs.tick_s)
    names = check_mz_policies(list(policies) or ["all"])
    if "omniscient" not in names:
        names.append("omniscient")
    res = run_zones(zs, job, od, sp, names, starts, seed, n)
    if plot_path and res.rows:
        from .plot_zones import plot_zones_sample
        from .simulator import sample_starts

        start = int(sample_starts(zs.ticks, job.ticks, starts, seed, 0)[0])  # run_zones' first sample
        plot_zones_sample(plot_path, zs.avail[:, start:start + job.ticks], job, od, sp, n, names, zs.names,
                          f"{' + '.join(zs.names)}, start tick {start}: C = {task_hours:g} h, deadline "
                          f"{deadline_hours:g} h, d = {overhead_hours:g} h")
        from skybroker import render

        render.info(f"wrote {plot_path}")
    meta = {"zones": list(zs.names), "tick_s": zs.tick_s, "ticks": zs.ticks, "nodes": n,
            "task_hours": task_hours, "deadline_hours": deadline_hours,
            "overhead_hours": overhead_hours, "starts": res.samples, "seed": seed,
            "on_demand_price": od, "spot_prices": sp, "prices_from": where,
            "single_zone_omniscient": res.single_zone_omniscient,
            "omniscient_cpu_seconds": round(res.dp_seconds, 3)}
    if as_json:
        from skybroker.render.console import json_safe

        json.dump(json_safe({"settings": meta, "summary": res.summary, "rows": [r.as_dict() for r in res.rows]}),
                  sys.stdout, default=_json_default, allow_nan=False)
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


def _check_deadline(task_hours: float, deadline_hours: float, overhead_hours: float,
                    tick_s: int | None = None) -> None:
    """A job that cannot meet its deadline even on on-demand from the first tick is bad input: the first
    start pays the restart overhead d too, so the deadline R must be at least C + d, and, as the simulator
    rounds the deadline down to whole ticks of the trace (policies.Job.ticks), C + d rounded up to a tick.
    Without this every policy misses and the means are NaN."""
    vals = (task_hours, deadline_hours, overhead_hours)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals) or task_hours <= 0 or \
            overhead_hours < 0 or deadline_hours <= 0:
        return  # policies.Job.from_hours names the bad value
    from skybroker.spot.policies import deadline_room

    have_s, need_s = deadline_room(task_hours, deadline_hours, overhead_hours, tick_s)
    if have_s >= need_s:
        return
    least = need_s / 3600
    if deadline_hours < task_hours:
        why = f"is shorter than the task (--task-hours {task_hours:g})"
    elif round(deadline_hours * 3600) < round(task_hours * 3600) + round(overhead_hours * 3600):
        why = (f"is less than --task-hours {task_hours:g} + --overhead-hours {overhead_hours:g} = "
               f"{task_hours + overhead_hours:g} h (a first start pays the restart overhead too)")
    else:
        why = (f"rounded down to the trace's {tick_s} s ticks, is less than --task-hours {task_hours:g} + "
               f"--overhead-hours {overhead_hours:g}")
    raise UsageError(f"the deadline (--deadline-hours {deadline_hours:g}) {why}: no schedule can meet it",
                     f"give --deadline-hours >= {least:.6g} (--task-hours + --overhead-hours"
                     f"{', in whole ticks' if tick_s else ''}), or a smaller --task-hours / --overhead-hours")


def _json_default(o):
    item = getattr(o, "item", None)  # a numpy scalar
    if callable(item):
        v = item()
        if isinstance(v, (int, float, bool, str)) or v is None:
            from skybroker.render.console import json_safe

            return json_safe(v)
    raise TypeError(type(o))


def _progress_hook(run, progress) -> dict:
    """`on_progress=progress.update` (done, total) once the simulator accepts it; a spinner with the elapsed
    time until then."""
    import inspect

    return {"on_progress": progress.update} if "on_progress" in inspect.signature(run).parameters else {}


def _render(res, meta, multi: bool = False) -> None:
    from skybroker import render

    render.print_simulation(res, meta, multi=multi)
