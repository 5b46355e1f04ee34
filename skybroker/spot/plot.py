"""`broker simulate --plot FILE.png`: one sample drawn as a picture (matplotlib, an optional extra).

Three panels over the job's wall-clock time: the spot availability of the window, the market each
policy (and the omniscient schedule) holds every tick, and each one's cumulative cost against the
omniscient's. matplotlib is imported only here, with the Agg backend (no display needed).
"""
from __future__ import annotations

import numpy as np

from skybroker.errors import UsageError

from . import omniscient
from .policies import NONE, ON_DEMAND, SPOT, Job, make_policy
from .simulator import Prices, simulate

_COLOR = {SPOT: "#2a9d8f", ON_DEMAND: "#e76f51", NONE: "#f1f1f1"}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         "pip install 'skybroker[plot]' (or: pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_path(path: str) -> str:
    """The file `--plot PATH` will write, checked before anything is simulated: matplotlib installed, a
    format it writes (from the suffix; none = PNG, `.png` added), not a folder, in a folder that exists and
    is writable. A bad one is a UsageError naming --plot."""
    import os

    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    if os.path.isdir(path):
        raise UsageError(f"--plot {path} is a folder", f"give a file name, e.g. {os.path.join(path, 'plot.png')}")
    root, ext = os.path.splitext(path)
    if not ext:
        path += ".png"
    elif ext[1:].lower() not in formats:
        raise UsageError(f"--plot {path}: matplotlib cannot write {ext!r} files",
                         f"use one of: {', '.join('.' + f for f in sorted(formats))} (e.g. {root}.png)")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise UsageError(f"--plot {path}: the folder {folder} does not exist", "create it, or give another path")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--plot {path}: not writable", "give a path in a folder you can write to")
    return path


class _Recorder:
    def __init__(self, policy):
        self.p, self.name, self.trail = policy, policy.name, []

    def decide(self, obs):
        x = self.p.decide(obs)
        self.trail.append(x)
        return x


def schedules(avail: np.ndarray, job: Job, prices: Prices, policies: list[str], history=None
              ) -> dict[str, list]:
    """Per policy (and "omniscient"), the decision of every tick until done."""
    out = {}
    for name in policies:
        if name == "omniscient":
            out[name] = omniscient.plan(avail, job, prices)
            continue
        rec = _Recorder(make_policy(name, job, prices, history))
        simulate(rec, avail, job, prices)
        out[name] = rec.trail
    return out


def plot_sample(path: str, avail: np.ndarray, job: Job, prices: Prices, policies: list[str],
                title: str, history=None) -> dict[str, list]:
    plt = _matplotlib()
    names = [p for p in policies if p != "on_demand"]
    if "omniscient" not in names:
        names.append("omniscient")
    sched = schedules(avail[:job.ticks], job, prices, names, history)
    od_tick, spot_tick = prices.per_tick(job.tick_s)
    price = {SPOT: spot_tick, ON_DEMAND: od_tick, NONE: 0.0}
    hours = np.arange(job.ticks + 1) * job.tick_s / 3600.0
    fig, ax = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True,
                           gridspec_kw={"height_ratios": [1, 0.35 * len(names) + 0.5, 2]})
    ax[0].step(hours[:-1], avail[:job.ticks].astype(int), where="post", color="#264653")
    ax[0].set_yticks([0, 1], ["down", "up"])
    ax[0].set_title(title, fontsize=10)
    ax[0].set_ylabel("spot")
    for row, name in enumerate(names):
        for i, x in enumerate(sched[name]):
            if x is not NONE:
                ax[1].barh(row, job.tick_s / 3600.0, left=hours[i], height=0.8, color=_COLOR[x],
                           linewidth=0)
    ax[1].set_yticks(range(len(names)), names, fontsize=8)
    ax[1].invert_yaxis()
    ax[1].set_ylabel("market")
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOR[m]) for m in (SPOT, ON_DEMAND)]
    ax[1].legend(handles, ["spot", "on-demand"], loc="upper right", fontsize=8, ncol=2)
    finish(fig, ax[2], path, hours, job, {n: [price[x] for x in sched[n]] for n in names})
    return sched


def finish(fig, ax, path: str, hours, job: Job, per_tick: dict) -> None:
    """The cumulative-cost panel (each schedule's cost per tick, the omniscient's in bold) and the file."""
    plt = _matplotlib()
    for name, costs in per_tick.items():
        c = np.concatenate([[0.0], np.cumsum(costs)])
        style = {"color": "black", "linewidth": 2.2} if name == "omniscient" else {"linewidth": 1.3}
        ax.plot(hours[:len(c)], c, label=f"{name} ${c[-1]:.2f}", **style)
    ax.axvline(job.deadline_s / 3600.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylabel("cumulative cost ($)")
    ax.set_xlabel("hours since the job started")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
