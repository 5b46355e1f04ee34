"""How much of `mdp`'s remaining gap is not knowing the availability regime of the job's own window: `mdp`
beside an *oracle* variant whose model is fitted on the very window the job runs in (its future, which no
policy can see), and beside one fitted on the window plus the whole trace. Same decision problem, same
deadline rule; only the availability model differs. A diagnostic, not a policy.

    PYTHONPATH=. python3 bench/spot_ceiling.py [--set fit|h0|h1|h2|h3] [--starts 6] [--fraction 0.8]

Prints, cumulatively per trace, each policy's mean gap to the omniscient as a share of Uniform Progress's
(d = 0.2 h; the sets of bench_spot.py; scalar simulation, about 1-3 min per set at 6 starts per trace).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_spot as B  # noqa: E402
from skybroker.spot import omniscient  # noqa: E402
from skybroker.spot.availmodel import AvailModel  # noqa: E402
from skybroker.spot.batch import on_demand_cost  # noqa: E402
from skybroker.spot.mdp import MDPPolicy  # noqa: E402
from skybroker.spot.policies import Job, make_policy  # noqa: E402
from skybroker.spot.simulator import Prices, sample_starts, simulate  # noqa: E402
from skybroker.spot.traces import default_traces_root, find_traces, infer_nodes  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="h0", help="fit (2-week, days 0-13) or h0..h3 (bench_spot.HELD_OUT)")
    ap.add_argument("--starts", type=int, default=6)
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--overhead", type=float, default=0.2)
    args = ap.parse_args(argv)
    sets = {"fit": (B.TWO_WEEK, (0, 13), None)}
    for i, (_, pat, days, cap, _) in enumerate(B.HELD_OUT):
        sets[f"h{i}"] = (pat, days, cap)
    pat, days, cap = sets[args.set]
    paths = find_traces(default_traces_root(), pat)
    nodes = infer_nodes(paths[0])
    gaps: dict[str, list] = {"uniform_progress": [], "mdp": [], "oracle window": [], "oracle window+trace": []}
    for ti, tr in enumerate(B.load(paths, days)):
        av = tr.availability(nodes)
        job = Job.from_hours(48, 48 / args.fraction, args.overhead, tr.gap_seconds)
        pr = Prices(3.06, 0.9731, nodes)
        st = sample_starts(len(av), job.ticks, min(args.starts, cap or 10**9), 0, ti)
        W = np.stack([av[s:s + job.ticks] for s in st])
        om, norm = omniscient.solve(W, job, pr).cost, on_demand_cost(job, pr)
        for k, s in enumerate(st):
            w, hist = W[k], av[:s]
            win = AvailModel.fit([w], tr.gap_seconds, source="the window itself")
            both = AvailModel.fit([w, av], tr.gap_seconds, source="the window and the trace")
            pols = {"uniform_progress": make_policy("uniform_progress", job, pr),
                    "mdp": MDPPolicy(job, pr, history=hist),
                    "oracle window": MDPPolicy(job, pr, model=win, adaptive=False, history=hist),
                    "oracle window+trace": MDPPolicy(job, pr, model=both, adaptive=False, history=hist)}
            for name, pol in pols.items():
                out = simulate(pol, w, job, pr)
                assert out.met, (name, tr.name, s)  # the deadline rule holds whatever the model
                gaps[name].append((out.cost - om[k]) / norm)
        up = np.mean(gaps["uniform_progress"])
        print(f"{tr.name:<60} " + "  ".join(f"{n} {np.mean(g) / up:.3f}" for n, g in gaps.items()
                                              if n != "uniform_progress"), flush=True)
    print(f"{args.set}, fraction {args.fraction}, d = {args.overhead} h, {len(gaps['mdp'])} samples: gap / UP's gap: "
          + ", ".join(f"{n} {np.mean(g) / np.mean(gaps['uniform_progress']):.2f}" for n, g in gaps.items()
                      if n != "uniform_progress"))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
