"""An experiment: policies x traces x random starts, with the omniscient DP as the yardstick.

Pure (returns data). Traces are independent, so they can run in worker processes.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from skybroker.errors import UsageError

from . import omniscient
from .policies import Job, policy_names
from .simulator import Prices, Row, run_samples, sample_starts, summarise, windows
from .traces import Trace

ALL_POLICIES = ("on_demand", "greedy", "uniform_progress", "slack_aware", "omniscient")


@dataclass(frozen=True)
class Settings:
    task_hours: float = 48.0
    deadline_hours: float = 60.0
    overhead_hours: float = 0.2
    starts: int = 300
    seed: int = 0
    prices: Prices = field(default_factory=Prices)
    nodes: int | None = None  # None: from the trace path (`N-node` folder), else 1


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
              nodes: int) -> tuple[list[Row], float, int, str | None]:
    job = Job.from_hours(settings.task_hours, settings.deadline_hours, settings.overhead_hours,
                         trace.gap_seconds)
    avail = trace.availability(nodes)
    if len(trace) < job.ticks:
        return [], 0.0, 0, (f"covers {trace.hours:.1f} h, shorter than the "
                            f"{settings.deadline_hours:g} h deadline")
    starts = sample_starts(len(trace), job.ticks, settings.starts, settings.seed, index)
    prices = Prices(settings.prices.on_demand, settings.prices.spot, nodes)
    t0 = time.process_time()
    om = omniscient.solve(windows(avail, starts, job.ticks), job, prices)
    dp = time.process_time() - t0
    rows = run_samples(trace.name, avail, starts, job, prices, policies, om.as_dict())
    return rows, dp, len(starts), None


def _run_trace_args(args):
    return run_trace(*args)


def run(traces: list[Trace], settings: Settings, policies: list[str],
        workers: int | None = None) -> Result:
    from .traces import infer_nodes

    Job.from_hours(settings.task_hours, settings.deadline_hours, settings.overhead_hours, 1)  # validate
    if settings.starts < 1:
        raise UsageError(f"--starts must be >= 1, got {settings.starts}")
    jobs = []
    for i, tr in enumerate(traces):
        nodes = settings.nodes or infer_nodes(tr.path)
        jobs.append((tr, i, settings, policies, nodes))
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
    for tr, (r, t, n, why) in zip(traces, results):
        rows.extend(r)
        dp += t
        counts[tr.name] = n
        if why:
            skipped[tr.name] = why
    # order rows by policy as requested
    order = {p: i for i, p in enumerate(policies)}
    rows.sort(key=lambda r: order.get(r.policy, 99))
    return Result(rows, summarise(rows), dp, counts, skipped)
