"""Where the remaining gap comes from: the omniscient schedule and the policies' side by side, one
character per tick (S spot, O on-demand, . idle; the first line is the availability, 1 = up).

    PYTHONPATH=. python3 bench/spot_schedules.py [--trace FILE] [--fraction 0.8] [--overhead 0.2]
                                                 [--samples 3] [--days-from 13]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skybroker.spot.batch import on_demand_cost  # noqa: E402
from skybroker.spot.plot import schedules  # noqa: E402
from skybroker.spot.policies import Job  # noqa: E402
from skybroker.spot.simulator import Prices, run_plan, sample_starts  # noqa: E402
from skybroker.spot.traces import default_traces_root, load_trace  # noqa: E402

SYM = {"none": ".", "spot": "S", "on_demand": "O"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(default_traces_root() /
                                           "availability/1-node/aws-10-26-2022/us-west-2b_k80_8.json"))
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--overhead", type=float, default=0.2)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--days-from", type=int, default=13, help="held out: the trace from this day on")
    ap.add_argument("--policies", default="uniform_progress,mdp")
    ap.add_argument("--width", type=int, default=120)
    args = ap.parse_args(argv)
    tr = load_trace(args.trace)
    av = tr.availability()
    job = Job.from_hours(48, 48 / args.fraction, args.overhead, tr.gap_seconds)
    lo = args.days_from * 86400 // tr.gap_seconds
    starts = lo + sample_starts(len(av) - lo, job.ticks, args.samples, 0, 0)
    names = ["omniscient", *args.policies.split(",")]
    od = on_demand_cost(job, Prices())
    for s in starts.tolist():
        w = av[s:s + job.ticks]
        sched = schedules(w, job, Prices(), names, history=av[:s])
        costs = {n: run_plan(p, w, job, Prices()) for n, p in sched.items()}
        print(f"\n{tr.name} start {s}: " + ", ".join(
            f"{n} {c.cost / od:.3f} (OD {c.od_hours:.1f} h, {c.switches} switches)"
            for n, c in costs.items()))
        for a in range(0, job.ticks, args.width):
            print(f"  {'avail':<17}" + "".join("1" if x else "_" for x in w[a:a + args.width]))
            for n in names:
                print(f"  {n:<17}" + "".join(SYM[x.value] for x in sched[n][a:a + args.width]))


if __name__ == "__main__":
    main()
