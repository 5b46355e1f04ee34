"""An age-dependent model of spot availability, fitted on past traces (for the `mdp` policy).

Spot alternates between up runs and down runs. The chance that a run ends in the next step falls
steeply with the run's age (on the 2-week traces: about 0.33 per 10-min step for a run 10 minutes
old, 0.1 at one hour, 0.03 beyond three hours). The model keeps, for up and for down runs, the
discrete hazard h(age) = P(run ends after `age` steps | it lasted `age` steps) at the fitting traces'
step, pooled over the fitting traces, with ages past `max_age` pooled into a constant tail. It
converts to any other step through the survival curve in seconds (log-linear between samples).

The shipped fit (`avail_model.json`, made by `python -m skybroker.spot.availmodel`) uses only the
first 13 days of the 8 "2-week" traces; everything else (their days 13-27, the 16-node, 4-node and
1-node preemption sets) is held out. Pure; numpy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = Path(__file__).with_name("avail_model.json")
UNION_FILE = Path(__file__).with_name("avail_model_union.json")  # "spot up in zone a or b"
FAMILY_FILE = Path(__file__).with_name("avail_model_family.json")  # one fit per fitting trace
# weekday / weekend multipliers of the hazards (bench/spot_diurnal.py --set fit --write ...)
WEEKLY_FILE = Path(__file__).with_name("avail_model_weekly.json")
FIT_GLOB = "availability/1-node/aws-10-26-2022/*.json"
FIT_DAYS = 13
_CLAMP = (0.002, 0.998)  # no step is certain: every run may end, every outage may last


def runs(avail: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, values, censored) of the runs of a bool series; the first and last are censored."""
    a = np.asarray(avail, bool).astype(np.int8)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(a)) + 1])
    lengths = np.diff(np.concatenate([starts, [len(a)]]))
    cens = np.zeros(len(lengths), bool)
    cens[0] = cens[-1] = True
    return lengths, a[starts].astype(bool), cens


@dataclass(frozen=True)
class AvailModel:
    step_s: int  # step of the hazards
    up: tuple[float, ...]  # hazard of an up run at ages 1..len (the last entry is the tail)
    down: tuple[float, ...]
    source: str = ""

    @classmethod
    def fit(cls, series: list[np.ndarray], step_s: int, max_age: int = 30, source: str = "",
            pool_from: int = 8) -> AvailModel:
        """Kaplan-Meier discrete hazards, pooled over `series`; ages >= `pool_from` are smoothed
        over growing buckets (2, 4, 8 ... ages) since few runs reach them."""
        out = []
        for val in (True, False):
            ends = np.zeros(max_age + 1)
            risk = np.zeros(max_age + 1)
            for s in series:
                for length, v, c in zip(*runs(s)):
                    if v != val:
                        continue
                    ages = np.minimum(np.arange(1, length + 1), max_age)
                    np.add.at(risk, ages, 1)
                    if not c:
                        ends[min(length, max_age)] += 1
            h = np.zeros(max_age + 1)
            a, width = 1, 1
            while a <= max_age:
                b = max_age + 1 if a == max_age else min(a + width, max_age)
                h[a:b] = ends[a:b].sum() / max(1.0, risk[a:b].sum())
                if a >= pool_from:
                    width *= 2
                a = b
            out.append(tuple(float(x) for x in np.clip(h[1:], *_CLAMP)))
        return cls(int(step_s), out[0], out[1], source)

    def hazards(self, step_s: int, ages: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-step hazards (up, down) at `step_s` for ages 1..`ages` (the last is the tail)."""
        return self._convert(self.up, step_s, ages), self._convert(self.down, step_s, ages)

    def _convert(self, h: tuple[float, ...], step_s: int, ages: int) -> np.ndarray:
        h = np.asarray(h)
        logs = np.concatenate([[0.0], np.cumsum(np.log1p(-h))])  # log S at 0, 1, ... steps
        tail = math.log1p(-h[-1]) / self.step_s  # per second beyond the table

        def log_surv(t):
            x = t / self.step_s
            n = len(h)
            if x >= n:
                return logs[n] + (t - n * self.step_s) * tail
            j = int(x)
            return logs[j] + (x - j) * (logs[j + 1] - logs[j])

        out = np.empty(ages)
        for j in range(ages):
            a, b = j * step_s, (j + 1) * step_s
            if j == ages - 1:  # tail bucket: the mean hazard over the next few steps
                b = a + 4 * step_s
                out[j] = 1 - math.exp((log_surv(b) - log_surv(a)) / 4)
            else:
                out[j] = 1 - math.exp(log_surv(b) - log_surv(a))
        return np.clip(out, *_CLAMP)

    def scaled(self, up: float, down: float) -> AvailModel:
        """The same shape with every hazard multiplied (a zone whose runs end `up` times as often)."""
        return AvailModel(self.step_s, tuple(float(np.clip(h * up, *_CLAMP)) for h in self.up),
                          tuple(float(np.clip(h * down, *_CLAMP)) for h in self.down),
                          f"{self.source} x({up:g}, {down:g})")

    def log_surv(self, step_s: int, ages: int, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """log P(run lasts >= L steps) and log P(run lasts exactly L steps), L = 0..upto, for up
        runs (row 0) and down runs (row 1), at `step_s` with `ages` ages (the last is the tail)."""
        out_s, out_e = [], []
        for h in self.hazards(step_s, ages):
            hh = h[np.minimum(np.arange(upto + 1), ages - 1)]
            ls = np.concatenate([[0.0], np.cumsum(np.log1p(-hh))])[:upto + 1]
            out_s.append(ls)
            out_e.append(ls + np.log(hh))  # lasted L steps (>= L-1 survived... see caller)
        return np.array(out_s), np.array(out_e)

    def to_json(self) -> str:
        return json.dumps({"step_s": self.step_s, "up": [round(x, 5) for x in self.up],
                           "down": [round(x, 5) for x in self.down], "source": self.source}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> AvailModel:
        raw = json.loads(text)
        return cls(int(raw["step_s"]), tuple(raw["up"]), tuple(raw["down"]), raw.get("source", ""))


_MODELS: dict = {}


def default_model(union: bool = False) -> AvailModel:
    """The shipped fit: one zone, or (union) "spot up in some zone" of the 2-week zone pairs."""
    f = UNION_FILE if union else MODEL_FILE
    if f not in _MODELS:
        _MODELS[f] = AvailModel.from_json(f.read_text())
    return _MODELS[f]


def weekly_factors() -> tuple[tuple[float, float], tuple[float, float]]:
    """((down, up) hazard multipliers on weekdays, the same on Saturdays and Sundays)."""
    if WEEKLY_FILE not in _MODELS:
        raw = json.loads(WEEKLY_FILE.read_text())
        _MODELS[WEEKLY_FILE] = tuple((float(raw[k]["down"]), float(raw[k]["up"]))
                                     for k in ("weekday", "weekend"))
    return _MODELS[WEEKLY_FILE]


def fit_default(root=None, union: bool = False) -> AvailModel:
    from .traces import default_traces_root, find_traces, load_trace

    root = root or default_traces_root()
    paths = find_traces(root, FIT_GLOB)
    if not paths:
        raise FileNotFoundError(f"no traces matching {FIT_GLOB} under {root}")
    trs = [load_trace(p).head(FIT_DAYS) for p in paths]
    series = [t.availability() for t in trs]
    what = f"{FIT_GLOB}, first {FIT_DAYS} days ({len(trs)} files)"
    if union:  # us-west-2a | us-west-2b of each instance type
        by_kind: dict = {}
        for p, s in zip(paths, series):
            by_kind.setdefault(p.name.split("_", 1)[1], []).append(s)
        series = [np.logical_or.reduce(v) for v in by_kind.values() if len(v) > 1]
        what = f"union of the zone pairs of {what}"
    return AvailModel.fit(series, trs[0].gap_seconds, source=what)


def prototypes() -> tuple[AvailModel, ...]:
    """The per-trace fits of the fitting traces (shipped), for the adaptive family of `mdp`."""
    if FAMILY_FILE not in _MODELS:
        raw = json.loads(FAMILY_FILE.read_text()) if FAMILY_FILE.exists() else []
        _MODELS[FAMILY_FILE] = tuple(AvailModel.from_json(json.dumps(r)) for r in raw)
    return _MODELS[FAMILY_FILE]


def fit_prototypes(root=None) -> list[AvailModel]:
    from .traces import default_traces_root, find_traces, load_trace

    root = root or default_traces_root()
    out = []
    for p in find_traces(root, FIT_GLOB):
        t = load_trace(p).head(FIT_DAYS)
        out.append(AvailModel.fit([t.availability()], t.gap_seconds,
                                  source=f"{p.name}, first {FIT_DAYS} days"))
    return out


if __name__ == "__main__":  # regenerate the shipped fits
    for union, f in ((False, MODEL_FILE), (True, UNION_FILE)):
        m = fit_default(union=union)
        f.write_text(m.to_json() + "\n")
        print(f"wrote {f}: up {m.up[:4]}..., down {m.down[:4]}...")
    protos = fit_prototypes()
    FAMILY_FILE.write_text("[\n" + ",\n".join(m.to_json() for m in protos) + "\n]\n")
    print(f"wrote {FAMILY_FILE}: {len(protos)} prototypes")
