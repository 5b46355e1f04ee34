"""A multi-zone experiment: zone policies x random starts on one aligned zone set, against the exact
multi-zone omniscient (and, for reference, the single-zone omniscient of each zone alone). Pure."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from skybroker.errors import UsageError

from . import mz_omniscient, omniscient
from .batch import on_demand_cost
from .mz_policies import MZ_POLICIES
from .policies import Job
from .simulator import Prices, Row, sample_starts, summarise
from .zones import ZoneSet, simulate_zones

MZ_DEFAULT = ("mz_union", "mz_mdp", "mz_failover", "mz_single")


@dataclass
class ZoneResult:
    rows: list[Row]
    summary: list[dict]
    dp_seconds: float
    samples: int
    single_zone_omniscient: list[float]  # mean normalised cost of each zone's own omniscient
    markets: dict | None = None


def check_mz_policies(names) -> list[str]:
    out = []
    for n in names:
        for part in n.split(","):
            part = part.strip()
            if part == "all":
                out.extend(MZ_DEFAULT)
            elif part in MZ_POLICIES or part == "omniscient":
                out.append(part)
            elif part:
                raise UsageError(f"unknown multi-zone policy {part!r}",
                                 "choose from: " + ", ".join([*MZ_POLICIES, "omniscient"]))
    return list(dict.fromkeys(out)) or list(MZ_DEFAULT)


def run_zones(zs: ZoneSet, job: Job, od_price: float, spot_prices, policies, starts: int, seed: int,
              nodes: int = 1, salt: int = 0) -> ZoneResult:
    if zs.ticks < job.ticks:
        raise UsageError(f"the zones cover {zs.ticks * zs.tick_s / 3600:.1f} h together, shorter "
                         f"than the {job.deadline_s / 3600:g} h deadline")
    st = sample_starts(zs.ticks, job.ticks, starts, seed, salt)
    idx = st[:, None] + np.arange(job.ticks)[None, :]
    W = np.stack([zs.avail[:, r] for r in idx])  # (samples, zones, ticks)
    t0 = time.process_time()
    om = mz_omniscient.solve(W, job, od_price, spot_prices, nodes)
    dp = time.process_time() - t0
    od_cost = on_demand_cost(job, Prices(od_price, 1.0, nodes))
    single = [float(np.mean(omniscient.solve(W[:, z], job, Prices(od_price, spot_prices[z], nodes)).cost)
                    / od_cost) for z in range(W.shape[1])]
    rows: list[Row] = []
    for s_idx, start in enumerate(st.tolist()):
        o = float(om.cost[s_idx])
        for name in policies:
            if name == "omniscient":
                cost, sh, oh, met = o, om.spot_hours[s_idx], om.od_hours[s_idx], bool(np.isfinite(o))
            else:
                pol = MZ_POLICIES[name](job, od_price, spot_prices, nodes)
                out = simulate_zones(pol, W[s_idx], job, od_price, spot_prices, nodes)
                cost, sh, oh, met = out.cost, out.spot_hours, out.od_hours, out.met
            rows.append(Row("+".join(zs.names), int(start), name, float(cost), float(cost) / od_cost,
                            (float(cost) - o) / od_cost, float(sh), float(oh), bool(met),
                            bool(np.isfinite(o))))
    return ZoneResult(rows, summarise(rows), dp, len(st), single)
