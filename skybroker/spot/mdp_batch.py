"""The `mdp` policy vectorised over samples (for the simulator): the same decisions as
`MDPPolicy.decide`, sample by sample (tests/unit/test_spot_batch.py checks it)."""
from __future__ import annotations

import numpy as np

from .batch import N_, O_, S_, BatchObs, BatchPolicy
from .mdp import R_N0, R_N1, R_O0, R_O1, R_S, MDPPolicy


class MDPBatch(BatchPolicy):
    def __init__(self, policy: MDPPolicy, n: int):
        super().__init__(policy.job, n)
        self.p = policy
        self.run_avail = np.full(n, -1, np.int8)
        self.run_start = np.zeros(n, np.int64)
        self.loglik = np.zeros((n, len(policy.family)))
        self.runs_seen = np.zeros(n, np.int64)
        self._dense: dict = {}
        self.tail_val = np.full(n, -1, np.int8)  # the zone's last run before the job, if known
        self.tail_len = np.zeros(n, np.int64)
        self.phase = np.full(n, -1, np.int64)  # per sample: table phase (-1: none, see MDPPolicy.phase_of)

    def set_clocks(self, clocks) -> None:
        """Each sample's start on the week clock (s since Monday 00:00), for weekly variants."""
        for s, c in enumerate(clocks):
            ph = self.p.phase_of(c)
            self.phase[s] = -1 if ph is None else ph

    def set_history(self, s: int, history) -> None:
        if history is None or not len(history):
            return
        from .mdp import history_tail

        v, length = history_tail(history, self.job.tick_s)
        self.tail_val[s], self.tail_len[s] = int(v), length
        self.loglik[s] += self.p.history_loglik(history) if len(self.p.family) > 1 else 0.0

    def _table(self, i, m, ph=-1):
        key = (i, m, ph)
        if key not in self._dense:
            if len(self._dense) > 64:
                self._dense.clear()
            self._dense[key] = self.p.table_of(m, None if ph < 0 else ph).dense(i)
        return self._dense[key]

    def decide(self, obs: BatchObs) -> np.ndarray:
        p, j = self.p, self.job
        a, held, left = obs.spot_available, obs.held, obs.overhead_left_s
        first = (self.run_avail < 0) & (self.tail_val == a)
        if first.any():
            self.run_avail[first] = a[first]
            self.run_start[first] = obs.elapsed_s - self.tail_len[first]
            self.runs_seen[first] = 1
        new_run = self.run_avail != a
        ended = new_run & (self.run_avail >= 0)
        if ended.any():
            self.runs_seen += ended
            upd = ended & (self.runs_seen > 1)
            if upd.any() and len(p.family) > 1:
                ll = p.run_loglik()
                L = np.clip(np.round((obs.elapsed_s - self.run_start[upd]) / p.grid.G), 1,
                            ll.shape[2]).astype(np.int64)
                was = np.where(self.run_avail[upd] == 1, 0, 1)
                self.loglik[upd] += ll[:, was, L - 1].T
        self.run_avail = np.where(new_run, a, self.run_avail).astype(np.int8)
        self.run_start = np.where(new_run, obs.elapsed_s, self.run_start)
        slack = p.s0 - (obs.elapsed_s - obs.progress_s + left)
        want = np.full(self.n, O_, np.int8)
        if p.table is not None:
            i, k, age, _ = p._grid_state(obs.elapsed_s, obs.progress_s, left,
                                         obs.elapsed_s - self.run_start + j.tick_s)
            r = np.where(held == N_, np.where(a, R_N1, R_N0),
                         np.where(held == S_, R_S, np.where(a, R_O1, R_O0)))
            mem = np.argmax(self.loglik + p.logprior, axis=1)
            want = np.empty(self.n, np.int8)
            for m, ph in np.unique(np.stack([mem, self.phase], axis=1), axis=0):
                sel = (mem == m) & (self.phase == ph)
                want[sel] = self._table(i, int(m), int(ph))[r[sel], age[sel], k[sel]]
            phase = (left > 0) & (held != N_)
            want[phase] = held[phase]
        return guard_batch(want, held, a, slack, left, j)


def guard_batch(want, held, avail, slack, left, job):
    """mdp._guard over samples."""
    d, g = job.overhead_s, job.tick_s
    want = want.copy()
    bad_spot = (want == S_) & ~avail
    want[bad_spot] = np.where(held[bad_spot] == O_, O_, N_)
    ok_idle = slack - g + left >= d
    ok_spot = np.where(held == S_, slack, slack + left - d) >= d
    ok = np.where(want == N_, ok_idle, np.where(want == S_, ok_spot, True))
    want[~ok] = O_
    return want
