"""`broker simulate --multi-zone --plot FILE.png`: one multi-zone sample as a picture (matplotlib).

Three panels over the job's wall-clock time: each zone's spot availability, the market and zone each
policy (and the exact multi-zone omniscient schedule) holds every tick, and each one's cumulative cost
against the omniscient's. `zone_schedules` is also what `bench/spot_zones.py --schedules` draws as text.
"""
from __future__ import annotations

import numpy as np

from . import mz_omniscient
from .mz_policies import MZ_POLICIES
from .plot import _matplotlib, finish
from .policies import NONE, ON_DEMAND, SPOT, Job
from .zones import simulate_zones

_ZONE_COLORS = ("#2a9d8f", "#457b9d", "#8ab17d", "#9d4edd", "#f4a261", "#6d597a")
_OD_COLOR = "#e76f51"


class _Recorder:
    """A zone policy that remembers each tick's decision and what was held when it was asked."""

    def __init__(self, policy):
        self.p, self.trail, self.name = policy, [], policy.name
        self.observes_all = getattr(policy, "observes_all", False)

    def decide(self, obs):
        x, z = self.p.decide(obs)
        self.trail.append((x, z, obs.held, obs.zone))
        return x, z


def zone_schedules(avail: np.ndarray, job: Job, od: float, spot_prices, nodes: int, policies
                   ) -> dict[str, list]:
    """Per policy (and "omniscient"), the (market, zone) held every tick until done, as the simulator
    ran it: a launch into a zone that is down fails and keeps what was held."""
    out = {"omniscient": mz_omniscient.plan(avail, job, od, spot_prices, nodes)}
    for name in policies:
        if name == "omniscient":
            continue
        rec = _Recorder(MZ_POLICIES[name](job, od, spot_prices, nodes))
        simulate_zones(rec, avail, job, od, spot_prices, nodes)
        out[name] = [(h, hz) if x is SPOT and not avail[z, i] else (x, z)
                     for i, (x, z, h, hz) in enumerate(rec.trail)]
    return out


def plot_zones_sample(path: str, avail: np.ndarray, job: Job, od: float, spot_prices, nodes: int,
                      policies, zone_names, title: str) -> dict[str, list]:
    plt = _matplotlib()
    sched = zone_schedules(avail, job, od, spot_prices, nodes, policies)
    names = [n for n in policies if n != "omniscient"] + ["omniscient"]
    f = job.tick_s / 3600.0 * nodes
    step = job.tick_s / 3600.0
    hours = np.arange(job.ticks + 1) * step
    Z = avail.shape[0]
    fig, ax = plt.subplots(3, 1, figsize=(11, 8), sharex=True,
                           gridspec_kw={"height_ratios": [0.3 * Z + 0.6, 0.35 * len(names) + 0.5, 2]})
    for z in range(Z):
        ax[0].fill_between(hours[:-1], z + 0.1, z + 0.1 + 0.8 * avail[z, :job.ticks], step="post",
                           color=_ZONE_COLORS[z % len(_ZONE_COLORS)], linewidth=0)
    ax[0].set_yticks([z + 0.5 for z in range(Z)], [f"{n} ${p:.3g}/h" for n, p in zip(zone_names, spot_prices)],
                     fontsize=8)
    ax[0].set_title(title, fontsize=10)
    ax[0].set_ylabel("spot up")
    for row, name in enumerate(names):
        for i, (x, z) in enumerate(sched[name]):
            if x is not NONE:
                color = _OD_COLOR if x is ON_DEMAND else _ZONE_COLORS[z % len(_ZONE_COLORS)]
                ax[1].barh(row, step, left=hours[i], height=0.8, color=color, linewidth=0)
    ax[1].set_yticks(range(len(names)), names, fontsize=8)
    ax[1].invert_yaxis()
    ax[1].set_ylabel("market / zone")
    handles = [plt.Rectangle((0, 0), 1, 1, color=_ZONE_COLORS[z % len(_ZONE_COLORS)]) for z in range(Z)]
    handles.append(plt.Rectangle((0, 0), 1, 1, color=_OD_COLOR))
    ax[1].legend(handles, [f"spot {n}" for n in zone_names] + ["on-demand"], loc="upper right", fontsize=7,
                 ncol=Z + 1)
    finish(fig, ax[2], path, hours, job, {n: [0.0 if x is NONE else od * f if x is ON_DEMAND else spot_prices[z] * f
                                              for x, z in sched[n]] for n in names})
    return sched
