"""Where the multi-zone policies lose against the exact multi-zone omniscient, per sample: cost
(normalised to always-on-demand), on-demand hours, restarts, preemptions, and the excess split into
"on-demand hours beyond the omniscient's" (priced at on-demand minus the cheapest spot) and the rest
(restart overheads paid at spot price, the dearer zone, idle-free waiting cannot cost).

    PYTHONPATH=. python3 bench/spot_zones.py [--set 0..4] [--fraction 0.8] [--overhead 0.2]
                                             [--samples 10] [--policies mz_union,mz_mdp]
                                             [--fit]   # the 2-week pairs' first 13 days (tuning split)
                                             [--schedules 2 --width 120]

With --schedules N, the first N samples are also drawn one character per tick, the exact multi-zone
omniscient's schedule beside each policy's: a, b, c... spot in that zone, O on-demand, . nothing held
(lines "zone a" ... show each zone's availability, 1 = up).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spot import MULTI_ZONE, load  # noqa: E402
from skybroker.spot import mz_omniscient  # noqa: E402
from skybroker.spot.batch import on_demand_cost  # noqa: E402
from skybroker.spot.mz_policies import MZ_POLICIES  # noqa: E402
from skybroker.spot.plot_zones import zone_schedules  # noqa: E402
from skybroker.spot.policies import Job  # noqa: E402
from skybroker.spot.simulator import Prices, sample_starts  # noqa: E402
from skybroker.spot.traces import default_traces_root, find_traces, infer_nodes  # noqa: E402
from skybroker.spot.zones import align, simulate_zones, zone_prices  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", type=int, default=0, help="index into bench_spot.MULTI_ZONE")
    ap.add_argument("--fit", action="store_true", help="the same files' first 13 days instead")
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--overhead", type=float, default=0.2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--policies", default="mz_union,mz_mdp")
    ap.add_argument("--schedules", type=int, default=0, help="draw the first N samples' schedules")
    ap.add_argument("--width", type=int, default=120)
    args = ap.parse_args(argv)
    label, pat, days, _ = MULTI_ZONE[args.set]
    if args.fit:
        label, days = label.split(",")[0] + ", days 0-13 (fitting split)", (0, 13)
    paths = find_traces(default_traces_root(), pat)
    nodes = infer_nodes(paths[0])
    zs = align(load(paths, days), nodes)
    od, sp, _ = zone_prices(zs.names, zs.instance)
    job = Job.from_hours(48, 48 / args.fraction, args.overhead, zs.tick_s)
    st = sample_starts(zs.ticks, job.ticks, args.samples, 0, 0)
    W = np.stack([zs.avail[:, s + np.arange(job.ticks)] for s in st])
    om = mz_omniscient.solve(W, job, od, sp, nodes)
    norm = on_demand_cost(job, Prices(od, 1.0, nodes))
    od_x = (od - min(sp)) * nodes / norm  # normalised cost of one on-demand hour instead of spot
    names = args.policies.split(",")
    print(f"{label}: fraction {args.fraction}, d = {args.overhead} h; zones "
          + ", ".join(f"{z} ${p:.4g}/h (up {100 * W[:, k].mean():.0f}%)" for k, (z, p) in enumerate(zip(zs.names, sp)))
          + f"; on-demand ${od:.4g}/h")
    tot = {n: np.zeros(3) for n in names}
    for s in range(len(st)):
        o = om.cost[s] / norm
        line = f"{s:3d} omni {o:.3f} OD {om.od_hours[s]:4.1f} h |"
        for n in names:
            r = simulate_zones(MZ_POLICIES[n](job, od, sp, nodes), W[s], job, od, sp, nodes)
            ex = r.cost / norm - o
            ex_od = (r.od_hours - om.od_hours[s]) * od_x
            tot[n] += (ex, ex_od, ex - ex_od)
            line += (f" {n} {r.cost / norm:.3f} OD {r.od_hours:4.1f} h, {r.switches:2d} starts, "
                     f"{r.preemptions:2d} lost: +{ex:.3f} = OD {ex_od:+.3f} + rest {ex - ex_od:+.3f} |")
        print(line)
        if s < args.schedules:
            draw(W[s], job, od, sp, nodes, names, args.width)
    m = float(np.mean(om.cost)) / norm
    for n in names:
        ex, ex_od, rest = tot[n] / len(st)
        print(f"{n}: excess {ex:.4f} ({100 * ex / m:+.1f}% of the omniscient's {m:.4f}): "
              f"on-demand {ex_od:+.4f}, restarts/zone price {rest:+.4f}")


def _sym(x, z):
    if x.value == "spot":
        return chr(ord("a") + z)
    return "O" if x.value == "on_demand" else "."


def draw(av, job, od, sp, nodes, names, width):
    rows = {n: [_sym(x, z) for x, z in s] for n, s in zone_schedules(av, job, od, sp, nodes, names).items()}
    T = max(len(r) for r in rows.values())
    for a in range(0, T, width):
        for z in range(av.shape[0]):
            print(f"    {'zone ' + chr(ord('a') + z):<12}" + "".join("1" if x else "_" for x in av[z, a:min(a + width, T)]))
        for n, r in rows.items():
            print(f"    {n:<12}" + "".join(r[a:a + width]))
        print()


if __name__ == "__main__":
    main()
