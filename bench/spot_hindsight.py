"""`hindsight` (sample-average approximation over bootstrapped real futures, skybroker/spot/hindsight.py)
beside `mdp` on the same samples (issue 17). On the fitting set the job's own trace is left out of the
scenario library (leave-one-trace-out: the library is that set).

    PYTHONPATH=. nice -n 10 python3 bench/spot_hindsight.py --set fit --starts 4 \
        --variants "hs:;r0:regime=0;b2:od_bias=0.2"

Sets: fit (2-week, days 0-13), h0..h3 (bench_spot.HELD_OUT). Prints per fraction and overall each
policy's mean gap to the omniscient as a share of Uniform Progress's, deadlines met, seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_spot as B  # noqa: E402
from skybroker.spot import omniscient  # noqa: E402
from skybroker.spot.batch import on_demand_cost  # noqa: E402
from skybroker.spot.hindsight import HindsightPolicy  # noqa: E402
from skybroker.spot.mdp import MDPPolicy  # noqa: E402
from skybroker.spot.policies import Job, make_policy  # noqa: E402
from skybroker.spot.simulator import Prices, sample_starts, simulate  # noqa: E402
from skybroker.spot.traces import default_traces_root, find_traces, infer_nodes  # noqa: E402

FLOATS = ("regime", "od_bias", "z")


def parse_variants(spec: str) -> dict:
    out = {}
    for part in filter(None, spec.split(";")):
        name, _, kv = part.partition(":")
        kw = {}
        for item in filter(None, kv.split(",")):
            k, v = item.split("=")
            kw[k] = v if k == "mode" else float(v) if k in FLOATS else int(v)
        out[name] = kw
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="fit")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--fractions", default="0.6,0.7,0.8,0.9")
    ap.add_argument("--overhead", type=float, default=0.2)
    ap.add_argument("--variants", default="hs:")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sets = {"fit": (B.TWO_WEEK, (0, 13), None, None)}
    for i, (_, pat, days, cap, fr) in enumerate(B.HELD_OUT):
        sets[f"h{i}"] = (pat, days, cap, fr)
    pat, days, cap, fr = sets[args.set]
    fracs = fr or tuple(float(x) for x in args.fractions.split(","))
    paths = find_traces(default_traces_root(), pat)
    nodes = infer_nodes(paths[0])
    trs = B.load(paths, days)
    variants = parse_variants(args.variants)
    names = ["uniform_progress", "mdp", *variants]
    gaps = {n: [] for n in names}
    met = {n: [] for n in names}
    secs = {n: 0.0 for n in names}
    points = {n: 0 for n in variants}
    t0 = time.time()
    for f in fracs:
        fg = {n: [] for n in names}
        for ti, tr in enumerate(trs):
            av = tr.availability(nodes)
            job = Job.from_hours(48, 48 / f, args.overhead, tr.gap_seconds)
            pr = Prices(3.06, 0.9731, nodes)
            st = sample_starts(len(av), job.ticks, min(args.starts, cap or 10**9), args.seed, ti)
            if not len(st):
                continue
            W = np.stack([av[s:s + job.ticks] for s in st])
            om, norm = omniscient.solve(W, job, pr).cost, on_demand_cost(job, pr)
            excl = frozenset({tr.name}) if args.set == "fit" else frozenset()
            for k, s in enumerate(st):
                w, hist = W[k], av[:s]
                for n in names:
                    t1 = time.process_time()
                    if n == "uniform_progress":
                        pol = make_policy(n, job, pr)
                    elif n == "mdp":
                        pol = MDPPolicy(job, pr, history=hist)
                    else:
                        cls = type("H_" + n, (HindsightPolicy,), dict(exclude=excl, **variants[n]))
                        pol = cls(job, pr, history=hist)
                    out = simulate(pol, w, job, pr)
                    secs[n] += time.process_time() - t1
                    if n in points:
                        points[n] += pol.points
                    g = (out.cost - om[k]) / norm
                    fg[n].append(g)
                    gaps[n].append(g)
                    met[n].append(out.met)
        up = np.mean(fg["uniform_progress"])
        print(f"  f={f}: n={len(fg['mdp'])} " + " ".join(
            f"{n} {np.mean(fg[n]) / up:.3f}" for n in names[1:]), flush=True)
    up = np.mean(gaps["uniform_progress"])
    n = len(gaps["mdp"])
    print(f"{args.set} d={args.overhead} starts/trace={args.starts} samples={n} ({time.time() - t0:.0f} s): "
          + ", ".join(f"{k} {np.mean(gaps[k]) / up:.3f} met {100 * np.mean(met[k]):.1f}% "
                      f"({secs[k]:.0f} s CPU)" for k in names[1:])
          + "; decision points per job: "
          + ", ".join(f"{k} {points[k] / max(1, n):.1f}" for k in points), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
