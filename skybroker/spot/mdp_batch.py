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
        self._dense_i = None
        self._dense = None

    def _table(self, i):
        if self._dense_i != i:
            self._dense, self._dense_i = self.p.table.dense(i), i
        return self._dense

    def decide(self, obs: BatchObs) -> np.ndarray:
        p, j = self.p, self.job
        a, held, left = obs.spot_available, obs.held, obs.overhead_left_s
        new_run = self.run_avail != a
        self.run_avail = np.where(new_run, a, self.run_avail).astype(np.int8)
        self.run_start = np.where(new_run, obs.elapsed_s, self.run_start)
        slack = p.s0 - (obs.elapsed_s - obs.progress_s + left)
        want = np.full(self.n, O_, np.int8)
        if p.table is not None:
            i, k, age, _ = p._grid_state(obs.elapsed_s, obs.progress_s, left,
                                         obs.elapsed_s - self.run_start + j.tick_s)
            r = np.where(held == N_, np.where(a, R_N1, R_N0),
                         np.where(held == S_, R_S, np.where(a, R_O1, R_O0)))
            want = self._table(i)[r, age, k].astype(np.int8)
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
