"""Optimizer speed against catalog size: today's catalogs vs synthetic 10× and 30× ones, in one run.

    nice -n 10 python bench/bench_optimizer.py [--sizes 10,30] [--runs 5]

A synthetic N× catalog is built (with the real build script, into a temporary folder) from
../shared/catalogs-upstream with every instance type repeated N times under new names (`m6i.xlarge` →
`m6i.xlarge`, `m6i.xlarge-x1`, …): same shapes, same places, prices scaled by a seeded factor in
[0.85, 1.6] per copy (so copies interleave with the originals; a few are cheaper). On GCP the copies of GPU
host types no longer match the attachment rules, so GCP's GPU specs stay as they are (its CPU specs grow).

For each task of the benchmark set it prints the best-of-N time to plan, cold (empty loader caches: index
read, groups split, specs and offers parsed on demand) and warm (caches full), on each catalog, and the
ratio to today's catalog measured in the same run. Times are this process's CPU time (time.process_time:
what the search costs, not how busy the shared machine is). Target (issue 16): ≤ 1.5× on the 10× catalog.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import random
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skybroker import catalog
from skybroker.catalog import build
from skybroker.optimizer import optimize
from skybroker.spec import task_from_dict

UPSTREAM = REPO.parent / "shared" / "catalogs-upstream"
CLOUDS = ("aws", "gcp", "azure")

TASKS = {
    "cpu any_of×10": {"cpus": "4+", "any_of": [
        {"infra": "aws/us-east-1"}, {"infra": "aws/us-west-2"}, {"infra": "aws/eu-west-1"}, {"infra": "gcp"},
        {"infra": "gcp/us-central1"}, {"infra": "gcp/europe-west4"}, {"infra": "azure"},
        {"infra": "azure/eastus"}, {"infra": "azure/westeurope"}, {"memory": "32+"}]},
    "cpu default": {},
    "cpu 4+/16+ spot": {"cpus": "4+", "memory": "16+", "use_spot": True},
    "cpu 64+ on-demand": {"cpus": "64+"},
    "1×V100": {"accelerators": "V100:1"},
    "8×A100": {"accelerators": "A100:8"},
    "H100:8 spot": {"accelerators": "H100:8", "use_spot": True},
    "{A10G, L4, T4}": {"accelerators": {"A10G:1": None, "L4:1": None, "T4:1": None}},
    "named m6i.xlarge": {"instance_type": "m6i.xlarge"},
}


def synth_upstream(dst: pathlib.Path, factor: int, seed: int = 1) -> pathlib.Path:
    rnd = random.Random(seed)
    for rel in build.INPUTS.values():
        src = UPSTREAM / rel
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(src, newline="", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
            r = csv.DictReader(f)
            w = csv.DictWriter(g, fieldnames=r.fieldnames)
            w.writeheader()
            rows = list(r)
            scale: dict[tuple, float] = {}
            for row in rows:
                w.writerow(row)
            for k in range(1, factor):
                for row in rows:
                    itype = row["InstanceType"]
                    if not itype:
                        continue  # GCP accelerator-only rows are shared by the hosts
                    key = (itype, k)
                    if key not in scale:
                        scale[key] = rnd.uniform(0.85, 1.6)
                    new = dict(row, InstanceType=f"{itype}-x{k}")
                    for col in ("Price", "SpotPrice"):
                        if new[col].strip():
                            new[col] = f"{float(new[col]) * scale[key]:.6f}"
                    w.writerow(new)
    return dst


def plan_time(resources: dict, cold: bool) -> float:
    task = task_from_dict({"resources": resources, "run": "x"}, source="bench")
    if cold:
        catalog.clear_cache()
    t = time.process_time()
    optimize(task, CLOUDS)
    return time.process_time() - t


def measure(runs: int) -> dict:
    out = {}
    for name, res in TASKS.items():
        cold = min(plan_time(res, True) for _ in range(runs))
        plan_time(res, False)
        warm = min(plan_time(res, False) for _ in range(runs))
        out[name] = (cold, warm)
    return out


def measure_in_subprocess(d: pathlib.Path, runs: int) -> dict:
    """Each catalog is measured by a fresh interpreter (as a CLI run would see it; the builds' garbage
    does not slow the collector of the measuring process)."""
    import json
    import subprocess

    env = dict(os.environ, BROKER_CATALOG_DIR=str(d), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--measure", str(runs)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return {k: tuple(v) for k, v in json.loads(out).items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,30")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--measure", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        import json

        from skybroker.clouds import registry

        registry.all_providers()  # imported once, as in any run; not a search cost
        print(json.dumps(measure(args.measure)))
        return 0
    sizes = [int(x) for x in args.sizes.split(",") if x]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-catalogs-") as tmp:
        dirs = {1: catalog.PACKAGE_DATA}
        for n in sizes:
            up = synth_upstream(pathlib.Path(tmp) / f"up{n}", n)
            d = pathlib.Path(tmp) / f"cat{n}"
            t = time.perf_counter()
            build.build(up, d, "2000-01-01")
            specs = sum((d / f"{c}.index.tsv").read_text().count("\n") for c in CLOUDS)
            print(f"built {n}× catalog ({specs} index lines) in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            dirs[n] = d
        for n, d in dirs.items():
            results[n] = measure_in_subprocess(d, args.runs)
    head = f"{'task':<20}{'1× cold ms':>11}{'warm ms':>9}"
    for n in sizes:
        head += f"{f'{n}× cold':>10}{'ratio':>7}{f'{n}× warm':>10}{'ratio':>7}"
    print(head)
    worst = {n: 0.0 for n in sizes}
    for name in TASKS:
        c1, w1 = results[1][name]
        line = f"{name:<20}{c1 * 1e3:>11.2f}{w1 * 1e3:>9.2f}"
        for n in sizes:
            cn, wn = results[n][name]
            line += f"{cn * 1e3:>10.2f}{cn / c1:>6.2f}×{wn * 1e3:>10.2f}{wn / w1:>6.2f}×"
            worst[n] = max(worst[n], cn / c1, wn / w1)
        print(line)
    for n in sizes:
        print(f"worst ratio on the {n}× catalog: {worst[n]:.2f}×" + ("  (target ≤ 1.5×)" if n == 10 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
