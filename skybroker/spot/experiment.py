"""An experiment: policies x traces x random starts, with the omniscient DP as the yardstick.

Pure (returns data). Traces are independent, so they can run in worker processes.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from skybroker.errors import UsageError

from . import omniscient
from .policies import Job, policy_class, policy_names
from .simulator import Prices, Row, run_samples, sample_starts, summarise, windows
from .traces import Trace

ALL_POLICIES = ("on_demand", "greedy", "uniform_progress", "slack_aware", "mdp", "omniscient")


@dataclass(frozen=True)
class Settings:
    task_hours: float = 48.0
    deadline_hours: float = 60.0
    overhead_hours: float = 0.2
    starts: int = 300
    seed: int = 0
    prices: Prices = field(default_factory=Prices)
    nodes: int | None = None  # None: from the trace path (`N-node` folder), else 1
    history: bool = True  # policies that learn from a zone's past see the trace before each start


@dataclass
class Result:
    rows: list[Row]
    summary: list[dict]
    dp_seconds: float  # CPU time spent in the omniscient DP (sum over workers)
    samples_per_trace: dict[str, int]
    skipped: dict[str, str]  # trace -> why it was skipped


def check_policies(names: list[str]) -> list[str]:
    known = set(policy_names()) | {"omniscient"}
    out: list[str] = []
    for n in names:
        for part in n.split(","):
            part = part.strip()
            if not part:
                continue
            if part == "all":
                out.extend(ALL_POLICIES)
            elif part not in known:
                raise UsageError(f"unknown policy {part!r}",
                                 "choose from: " + ", ".join(sorted(known)) + " (or all)")
            else:
                out.append(part)
    return list(dict.fromkeys(out))


def run_trace(trace: Trace, index: int, settings: Settings, policies: list[str],
              nodes: int, parent_policies: tuple = ()):
    """(rows, DP seconds, samples, why skipped); `parent_policies` are simulated by the caller
    (`run`) in its own process, with the returned (omniscient, starts)."""
    job = Job.from_hours(settings.task_hours, settings.deadline_hours, settings.overhead_hours,
                         trace.gap_seconds)
    avail = trace.availability(nodes)
    if len(trace) < job.ticks:
        return [], 0.0, 0, (f"covers {trace.hours:.1f} h, shorter than the "
                            f"{settings.deadline_hours:g} h deadline"), None, None
    starts = sample_starts(len(trace), job.ticks, settings.starts, settings.seed, index)
    prices = Prices(settings.prices.on_demand, settings.prices.spot, nodes)
    t0 = time.process_time()
    om = omniscient.solve(windows(avail, starts, job.ticks), job, prices)
    dp = time.process_time() - t0
    rows = run_samples(trace.name, avail, starts, job, prices,
                       [p for p in policies if p not in parent_policies], om.as_dict(), settings.history,
                       start_clocks(trace, starts))
    return rows, dp, len(starts), None, om.as_dict(), starts


def start_clocks(trace: Trace, starts):
    """Each start on the week clock (s since Monday 00:00), or None if the trace has no date."""
    if trace.t0_s is None:
        return None
    return (trace.t0_s + np.asarray(starts) * trace.gap_seconds) % (7 * 86400)


def first_sample(traces: list[Trace], settings: Settings):
    """(trace, job, availability, start, prices) of the first sample of the first usable trace."""
    from .traces import infer_nodes

    for i, tr in enumerate(traces):
        nodes = settings.nodes or infer_nodes(tr.path)
        job = Job.from_hours(settings.task_hours, settings.deadline_hours, settings.overhead_hours,
                             tr.gap_seconds)
        if len(tr) >= job.ticks:
            start = int(sample_starts(len(tr), job.ticks, settings.starts, settings.seed, i)[0])
            return (tr, job, tr.availability(nodes), start,
                    Prices(settings.prices.on_demand, settings.prices.spot, nodes))
    raise UsageError("no trace is long enough for this deadline")


def _run_trace_args(args):
    return run_trace(*args)


def run(traces: list[Trace], settings: Settings, policies: list[str],
        workers: int | None = None) -> Result:
    from .traces import infer_nodes

    Job.from_hours(settings.task_hours, settings.deadline_hours, settings.overhead_hours, 1)  # validate
    if settings.starts < 1:
        raise UsageError(f"--starts must be >= 1, got {settings.starts}")
    # policies whose decision tables are solved per job and cached (mdp) run here, after the
    # workers, so that the tables are solved once and not once per worker process
    parent = tuple(p for p in policies if p != "omniscient"
                   and getattr(policy_class(p), "shared_cache", False))
    jobs = []
    for i, tr in enumerate(traces):
        nodes = settings.nodes or infer_nodes(tr.path)
        jobs.append((tr, i, settings, policies, nodes, parent))
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1, 2)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_run_trace_args, jobs))
    else:
        results = [_run_trace_args(j) for j in jobs]
    rows: list[Row] = []
    dp = 0.0
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for (tr, _, _, _, nodes, _), (r, t, n, why, om, starts) in zip(jobs, results):
        rows.extend(r)
        if parent and om is not None:
            job = Job.from_hours(settings.task_hours, settings.deadline_hours,
                                 settings.overhead_hours, tr.gap_seconds)
            prices = Prices(settings.prices.on_demand, settings.prices.spot, nodes)
            rows.extend(run_samples(tr.name, tr.availability(nodes), starts, job, prices, list(parent),
                                    om, settings.history, start_clocks(tr, starts)))
        dp += t
        counts[tr.name] = n
        if why:
            skipped[tr.name] = why
    # order rows by policy as requested
    order = {p: i for i, p in enumerate(policies)}
    rows.sort(key=lambda r: order.get(r.policy, 99))
    return Result(rows, summarise(rows), dp, counts, skipped)
