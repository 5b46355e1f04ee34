"""Is there a time-of-day / day-of-week pattern in spot run endings?  (issue 17, diurnal idea)

    PYTHONPATH=. python3 bench/spot_diurnal.py [--set fit|h0|h1|h2] [--buckets 6] [--boot 2000]

For each trace tick t (skipping the first run, whose age is unknown) the age-only model
(`avail_model.json`, fitted on the fitting set) predicts the chance that the current up (or down) run
ends at t+1; the observed endings O and the expected E are summed per clock bucket of t. Each trace's
E is first rescaled so that its total O = E (a per-trace level, as the adaptive family does), so a
bucket's O/E is the multiplicative time-of-day factor on the age hazard that a proportional model
would fit. The traces carry no timestamp: the clock is the time since the trace's first sample
(the folder's start date, at an unknown time of day), the same for every trace of a set.

Significance: a block bootstrap over days (all traces of a day resampled together, since traces of
a set share the calendar) gives 90% intervals; a null distribution of the spread statistic
sum_b (O_b - E_b)^2 / E_b comes from giving each day a random clock rotation (which keeps each
run's age but destroys any diurnal phase).
"""
import sys
import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import numpy as np

from skybroker.spot.availmodel import default_model
from skybroker.spot.traces import default_traces_root, find_traces, infer_nodes, load_trace


def per_tick(avail, model, step_s):
    """(state, ended, expected) per tick t = 0..n-2, NaN-masked on the first (left-censored) run."""
    a = np.asarray(avail, bool)
    n = len(a)
    hu, hd = model.hazards(step_s, 200)
    age = np.zeros(n, int)
    known = np.zeros(n, bool)
    cur, ok = 1, False
    for t in range(n):
        if t and a[t] != a[t - 1]:
            cur, ok = 1, True
        elif t:
            cur += 1
        age[t], known[t] = cur, ok
    st = a[:-1]
    ended = (a[1:] != a[:-1]).astype(float)
    ag = np.minimum(age[:-1], 200) - 1
    exp = np.where(st, hu[ag], hd[ag])
    return st, ended, exp, known[:-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="fit")
    ap.add_argument("--buckets", type=int, default=6)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", help="write the weekday/weekend hazard factors (JSON) to this file")
    a = ap.parse_args()
    import bench_spot as B
    sets = {"fit": (B.TWO_WEEK, (0, 13), None, None)}
    for i, (label, pat, days, cap, fr) in enumerate(B.HELD_OUT):
        sets[f"h{i}"] = (pat, days, cap, fr)
    pat, days, _, _ = sets[a.set]
    root = default_traces_root()
    model = default_model()
    rows = []  # per trace: day index, bucket, weekend flag, state, ended, expected
    for p in find_traces(root, pat):
        tr = load_trace(p)
        lo, hi = days or (0, None)
        n0 = round(lo * 86400 / tr.gap_seconds)
        n1 = round(hi * 86400 / tr.gap_seconds) if hi else len(tr)
        av = tr.availability(infer_nodes(p))[n0:n1]
        st, ended, exp, known = per_tick(av, model, tr.gap_seconds)
        t = (np.arange(len(st)) + n0) * tr.gap_seconds  # seconds since the trace's first sample
        day = (t // 86400).astype(int)
        bucket = ((t % 86400) * a.buckets // 86400).astype(int)
        m = known
        for s in (True, False):  # per-trace level per state
            k = m & (st == s)
            if exp[k].sum() > 0:
                exp[k] *= ended[k].sum() / exp[k].sum()
        if m.any():  # a trace that is one run over the window tells nothing
            rows.append((day[m], bucket[m], st[m], ended[m], exp[m], t[m], tr.gap_seconds))
    rng = np.random.default_rng(a.seed)
    ndays = max(int(r[0].max()) for r in rows) + 1
    dmin = min(int(r[0].min()) for r in rows)
    B_ = a.buckets

    def table(day_w, rot=None):
        """O, E per (state, bucket), days weighted by day_w (bootstrap counts), clocks rotated."""
        O = np.zeros((2, B_))
        E = np.zeros((2, B_))
        for day, b, st, en, ex, t, g in rows:
            w = day_w[day]
            if rot is not None:
                b = (((t + rot[day]) % 86400) * B_ // 86400).astype(int)
            for si, s in enumerate((True, False)):
                k = st == s
                np.add.at(O[si], b[k], en[k] * w[k])
                np.add.at(E[si], b[k], ex[k] * w[k])
        return O, E

    ones = np.ones(ndays)
    O, E = table(ones)
    stat = ((O - E) ** 2 / E).sum(axis=1)
    boots = []
    for _ in range(a.boot):
        w = np.bincount(rng.integers(dmin, ndays, ndays - dmin), minlength=ndays).astype(float)
        o, e = table(w)
        boots.append(o / e)
    boots = np.array(boots)
    null = []
    for _ in range(max(200, a.boot // 4)):
        rot = rng.integers(0, 86400, ndays)
        o, e = table(ones, rot)
        null.append(((o - e) ** 2 / e).sum(axis=1))
    null = np.array(null)
    hrs = 24 / B_
    print(f"set {a.set} ({pat}, days {days}), {len(rows)} traces with a run ending, {B_} clock buckets of {hrs:g} h "
          f"(hours since the first sample, mod 24)")
    for si, nm in enumerate(("up->down (preemption)", "down->up (return)")):
        print(f"  {nm}: endings {O[si].sum():.0f}")
        for b in range(B_):
            lo, hi = np.percentile(boots[:, si, b], [5, 95])
            print(f"    {b*hrs:4.0f}-{(b+1)*hrs:2.0f} h  O {O[si, b]:5.0f}  E {E[si, b]:6.1f}  O/E "
                  f"{O[si, b]/E[si, b]:.2f}  [90%: {lo:.2f}-{hi:.2f}]")
        print(f"    spread sum (O-E)^2/E = {stat[si]:.1f}; day-rotation null: median {np.median(null[:, si]):.1f}, "
              f"95th pct {np.percentile(null[:, si], 95):.1f}, p = {np.mean(null[:, si] >= stat[si]):.3f}")
    # weekday vs weekend, if the set's start date is known (folder name)
    import re, datetime
    mm = re.search(r"(\d\d)-(\d\d)-(\d{4})", pat)
    if mm:
        d0 = datetime.date(int(mm.group(3)), int(mm.group(1)), int(mm.group(2)))
        wk = np.array([(d0 + datetime.timedelta(days=int(i))).weekday() >= 5 for i in range(ndays)])
        fac = {}
        for si, nm in enumerate(("up->down", "down->up")):
            parts = []
            for flag, lab in ((False, "weekday"), (True, "weekend")):
                o = e = 0.0
                for day, b, st, en, ex, t, g in rows:
                    k = (st == (si == 0)) & (wk[day] == flag)
                    o += en[k].sum()
                    e += ex[k].sum()
                parts.append(f"{lab} O {o:.0f} E {e:.1f} O/E {o/max(e,1e-9):.2f}")
                fac.setdefault(lab, {})["up" if si == 0 else "down"] = round(o / max(e, 1e-9), 3)
            print(f"  {nm} by calendar day (start {d0}, day boundary at the unknown start time): " + "; ".join(parts))
        # per-day O/E, and an exact permutation test: every choice of as many days as the weekend has
        import itertools
        od = np.zeros((2, ndays))
        ed = np.zeros((2, ndays))
        for day, b, st, en, ex, t, g in rows:
            for si, s in enumerate((True, False)):
                k = st == s
                np.add.at(od[si], day[k], en[k])
                np.add.at(ed[si], day[k], ex[k])
        idx = np.arange(dmin, ndays)
        wdays = [i for i in idx if wk[i]]
        for si, nm in enumerate(("up->down", "down->up")):
            print(f"  {nm} per day O/E: " + " ".join(
                f"{i}{'*' if wk[i] else ''}:{od[si, i]/ed[si, i]:.2f}" for i in idx))

            def lr(sel):
                sel = np.asarray(sel)
                rest = np.setdiff1d(idx, sel)
                return np.log((od[si, sel].sum() / ed[si, sel].sum()) / (od[si, rest].sum() / ed[si, rest].sum()))
            obs = lr(wdays)
            perm = np.array([lr(c) for c in itertools.combinations(idx, len(wdays))])
            print(f"    weekend/weekday O/E ratio {np.exp(obs):.2f}; share of the {len(perm)} choices of "
                  f"{len(wdays)} days at least as extreme (two-sided): {np.mean(np.abs(perm) >= abs(obs) - 1e-12):.3f}")


        if a.write:
            import json
            fac["source"] = (f"{pat}, days {days}: O/E of run endings on weekdays / weekends (Sat, Sun; "
                             f"day boundary at sample 0) against avail_model.json; bench/spot_diurnal.py")
            Path(a.write).write_text(json.dumps(fac, indent=1) + "\n")
            print(f"wrote {a.write}: {fac}")


if __name__ == "__main__":
    main()
