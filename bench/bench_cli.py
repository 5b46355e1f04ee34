"""CLI start-up and planning speed: skybroker vs SkyPilot, measured in the same run.

    python bench/bench_cli.py [--runs 7] [--skypilot /tmp/skypilot-baseline]

Prints medians (wall seconds, including process start) of:
  python -c 'import skybroker' · broker --help · broker launch --dryrun on three tasks
  (1×V100; cpus 4+ memory 16+ spot; 8×A100)
and, when SkyPilot is set up beside it (bash ../shared/skypilot-baseline/setup.sh DIR), the same for
`sky` with the ratio SkyPilot/skybroker. Targets (2-core machine): --help ≤ 0.15 s, dry-run ≤ 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO.parent / "shared" / "skypilot-baseline" / "tasks"
LOCAL_TASKS = {"v100": REPO / "examples" / "v100.yaml", "cpu_spot": REPO / "examples" / "cpu_spot.yaml",
               "a100x8": REPO / "bench" / "a100x8.yaml"}


def timed(cmd, env=None, runs=7) -> float:
    subprocess.run(cmd, env=env, capture_output=True, stdin=subprocess.DEVNULL)  # warm-up (caches), not timed
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr.decode()[-2000:]}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--skypilot", default=os.environ.get("SKYPILOT_BASELINE", "/tmp/skypilot-baseline"))
    args = ap.parse_args()
    py = sys.executable
    broker = [py, "-m", "skybroker.cli"]
    bindir = Path(py).parent
    if (bindir / "broker").exists():
        broker = [str(bindir / "broker")]  # the installed console script, as a user runs it
    # as users run it: no cloud credentials in the way, and Python's bytecode cache on (this sandbox sets
    # PYTHONDONTWRITEBYTECODE=1, which makes every start recompile every module; SkyPilot gets the same)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GOOGLE_", "AZURE_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["BROKER_HOME"] = tempfile.mkdtemp(prefix="bench-home-")
    tasks = {n: (TASKS / f"{n}.yaml" if (TASKS / f"{n}.yaml").exists() else LOCAL_TASKS[n])
             for n in ("v100", "cpu_spot", "a100x8")}
    rows = [
        ("import", [py, "-c", "import skybroker"], None, 0.15),
        ("--help", broker + ["--help"], "--help", 0.15),
    ]
    for name, path in tasks.items():
        rows.append((f"dryrun {name}", broker + ["launch", "--dryrun", "-y", str(path)],
                     ["launch", "--dryrun", "-y", str(path)], 0.3))

    sky_dir = Path(args.skypilot)
    sky_env = None
    if (sky_dir / "venv" / "bin" / "sky").exists():
        sky_env = dict(env, HOME=str(sky_dir / "home"), SKYPILOT_DISABLE_USAGE_COLLECTION="1",
                       PATH=f"{sky_dir / 'venv' / 'bin'}:{os.environ['PATH']}")
    print(f"{'what':<18}{'skybroker s':>12}{'target':>8}{'ok':>4}{'skypilot s':>12}{'ratio':>8}")
    worst = 0
    for label, cmd, sky_args, target in rows:
        ours = timed(cmd, env=env, runs=args.runs)
        sky = None
        if sky_env is not None:
            if label == "import":
                sky_cmd = [str(sky_dir / "venv" / "bin" / "python"), "-c", "import sky"]
            elif sky_args == "--help":
                sky_cmd = ["sky", "--help"]
            else:
                sky_cmd = ["sky"] + sky_args
            sky = timed(sky_cmd, env=sky_env, runs=max(3, args.runs // 2))
        ok = "yes" if ours <= target else "NO"
        worst += ok == "NO"
        ratio = f"{sky / ours:7.1f}x" if sky else "      -"
        print(f"{label:<18}{ours:>12.3f}{target:>8.2f}{ok:>4}{(f'{sky:.3f}' if sky else '-'):>12}{ratio:>8}")
    if sky_env is None:
        print("(SkyPilot baseline not found: run `bash ../shared/skypilot-baseline/setup.sh /tmp/skypilot-baseline` "
              "to measure ratios in the same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
