"""Speed of the exact omniscient DP (issue 17): the packed, windowed DP of skybroker.spot.omniscient
against a straightforward reference implementation (bench/dp_reference.py), measured in the same run
on the same windows: the 2-week traces (first 13 days), 8 files x 300 starts = 2400 windows, C = 48 h,
d = 0.2 h, per job fraction. Prints CPU seconds and the ratio reference / ours (> 1: ours is faster),
and checks both give the same costs.

    PYTHONPATH=. nice -n 10 python3 bench/bench_spot_dp.py [--fractions 0.8] [--starts 300]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dp_reference import solve_reference  # noqa: E402

from skybroker.spot import omniscient  # noqa: E402
from skybroker.spot.policies import Job  # noqa: E402
from skybroker.spot.simulator import Prices, sample_starts, windows  # noqa: E402
from skybroker.spot.traces import default_traces_root, find_traces, load_trace  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--starts", type=int, default=300)
    ap.add_argument("--overhead-hours", type=float, default=0.2)
    args = ap.parse_args(argv)
    paths = find_traces(default_traces_root(), "availability/1-node/aws-10-26-2022/*.json")
    if not paths:
        sys.exit("no 2-week traces (set BROKER_SPOT_TRACES)")
    traces = [load_trace(p).head(13) for p in paths]
    print(f"{'fraction':>8} {'windows':>8} {'ours s':>8} {'ref s':>8} {'ref/ours':>9}  max |cost diff|")
    for f in args.fractions:
        job = Job.from_hours(48, 48 / f, args.overhead_hours, 600)
        W = np.concatenate([windows(t.availability(), sample_starts(len(t), job.ticks, args.starts, 0, i),
                                    job.ticks) for i, t in enumerate(traces)])
        omniscient.solve(W[:8], job, Prices())  # warm-up
        t0 = time.process_time()
        ours = omniscient.solve(W, job, Prices())
        t1 = time.process_time()
        ref = solve_reference(W, job, Prices())
        t2 = time.process_time()
        diff = float(np.max(np.abs(ours.cost - ref)))
        print(f"{f:>8.2f} {len(W):>8} {t1 - t0:>8.2f} {t2 - t1:>8.2f} {(t2 - t1) / (t1 - t0):>8.2f}x"
              f"  {diff:.1e}")


if __name__ == "__main__":
    main()
