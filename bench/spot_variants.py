"""Exploration of `mdp` variants (class attributes of MDPPolicy) beside the default, on one split.

    PYTHONPATH=. python3 bench/spot_variants.py --set fit --starts 30 --variants "a48w13:ages=48,od_weight=1.3"

Sets: fit (2-week files, first 13 days: tune here only), h0..h3 (the held-out sets of bench_spot.py).
Prints each variant's mean gap to the omniscient as a share of Uniform Progress's, and deadlines met.
"""
import sys, time, argparse
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import numpy as np
np.seterr(all="ignore")
from skybroker.spot import experiment
from skybroker.spot.mdp import MDPPolicy
from skybroker.spot.policies import register
from skybroker.spot.traces import default_traces_root, find_traces
import bench_spot as B

def variant(name, **kw):
    cls = type("V_"+name, (MDPPolicy,), dict(name=name, **kw))
    register(cls); return name

ap = argparse.ArgumentParser()
ap.add_argument("--set", default="fit")
ap.add_argument("--starts", type=int, default=40)
ap.add_argument("--d", type=float, default=0.2)
ap.add_argument("--variants", default="")
ap.add_argument("--fracs", default="0.6,0.7,0.8,0.9")
a = ap.parse_args()
V = {}
for spec in filter(None, a.variants.split(";")):
    name, _, kv = spec.partition(":")
    kw = {}
    for item in filter(None, kv.split(",")):
        k, v = item.split("=")
        kw[k] = int(v) if k in ("ages", "grid_step_s") else float(v)
    V[name] = variant(name, **kw)
root = default_traces_root()
sets = {"fit": (B.TWO_WEEK, (0, 13), None, None)}
for i, (label, pat, days, cap, fr) in enumerate(B.HELD_OUT):
    sets[f"h{i}"] = (pat, days, cap, fr)
pat, days, cap, fr = sets[a.set]
trs = B.load(find_traces(root, pat), days)
fracs = fr or tuple(float(x) for x in a.fracs.split(","))
pols = ["uniform_progress", "mdp", *V.values(), "omniscient"]
rows = []
t0 = time.time()
for f in fracs:
    s = experiment.Settings(48.0, 48.0 / f, a.d, min(a.starts, cap or 10**9), 0, history=True)
    res = experiment.run(trs, s, pols, 2)
    rows.extend(res.rows)
    bp = {x["policy"]: x for x in res.summary}
    print(f"  f={f}: " + " ".join(f"{p} {bp[p]['mean_gap']/bp['uniform_progress']['mean_gap']:.3f}" for p in pols[1:-1]), flush=True)
tot = {x["policy"]: x for x in experiment.summarise(rows)}
up = tot["uniform_progress"]["mean_gap"]
print(f"{a.set} d={a.d} starts={a.starts} ({time.time()-t0:.0f}s): " + ", ".join(
    f"{p} {tot[p]['mean_gap']/up:.3f} met {100*tot[p]['deadline_met']:.1f}%" for p in pols[1:-1]))
