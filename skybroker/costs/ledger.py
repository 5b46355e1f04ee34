"""The cost ledger (tables cost_runs and cost_intervals in the state database).

A *run* is one life of a cluster's instances: it opens when a provisioning attempt is about to create them
(when its intent is recorded) and closes when they are terminated. It freezes what was known at launch —
node count, resources, market, the price per node, the on-demand price of the same instance type in the same
region (the spot savings' reference), the disk size and its $/GB-month (disks.py). A managed job's every
recovery or market switch creates a new cluster, hence a new run with its own frozen prices (`job_id` ties
them to the job).

Instances that were not kept were paid for too: a failed attempt that created some keeps its run, closed as
`rolled back` (for the nodes it had) when its rollback tore them down; a launch that died (SIGKILL) leaves
its run open, and intents.reconcile marks it `interrupted` when it finds the instances (`down` closes it) or
closes it when they are gone. Only the run of an attempt that created nothing is dropped.

A run's *intervals* say how it was billed: `up` (nodes × (price + disk)) or `stopped` (nodes × disk).
History survives `down`: runs are closed, never deleted. A clock set back never closes an interval before
it began.

The hook points are few: provision.py (an attempt → open_attempt / attempt_created / attempt_gone),
lifecycle.py (the cluster brought up → open_run), intents.py (a dead launch → mark_interrupted /
attempt_gone), cluster_ops.py (terminate → close_run; start → up), clusters.py (stop → stopped;
`status --refresh` → whatever the cloud says), and reconcile() (a run whose cluster vanished from the state
without a teardown is closed when that is noticed).

Time comes from `now()`: the system clock, or, for tests, the file BROKER_LEDGER_CLOCK names (so costs
are exact across processes such as the managed-jobs controller). Every writer also takes `at=`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import settings, state
from . import disks

UP, STOPPED = "up", "stopped"
# a run's outcome (None: the launch brought the cluster up, or a run from before schema v22)
LAUNCHING, CREATED, ROLLED_BACK, INTERRUPTED = "launching", "created", "rolled back", "interrupted"
_ATTEMPT = (LAUNCHING, CREATED)
SPOT, ON_DEMAND = "spot", "on-demand"


def now() -> float:
    path = settings.get("ledger_clock")
    if not path:
        return time.time()
    from ..errors import UsageError

    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError) as exc:
        raise UsageError(f"BROKER_LEDGER_CLOCK={path}: cannot read a time from it ({exc})",
                         "the file holds epoch seconds, e.g. 1700000000.0") from None


def local_prices() -> dict[str, float]:
    from ..clouds.local import local_prices as lp

    return lp()


@dataclass
class Interval:
    state: str
    start: float
    end: float | None
    nodes: int | None = None  # how many of the run's nodes it bills (None: all; fewer once a node was lost)

    def hours(self, at: float) -> float:
        return max(0.0, (self.end if self.end is not None else at) - self.start) / 3600


@dataclass
class Run:
    id: int
    cluster: str
    job_id: int | None
    cloud: str | None
    region: str | None
    zone: str | None
    instance_type: str | None
    accelerators: str | None
    resources: str | None
    num_nodes: int
    market: str
    price: float  # $/h per node, frozen at launch
    od_price: float | None  # on-demand $/h per node of the same instance type in the same region, at launch
    disk_gb: float
    disk_price: float  # $/GB-month, frozen at launch
    started_at: float
    ended_at: float | None
    user_name: str | None = None  # server mode: whose cluster or job it was
    outcome: str | None = None  # LAUNCHING ... INTERRUPTED (None: brought up)
    intervals: list[Interval] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def state(self) -> str:
        if not self.live:
            return "DOWN"
        return (self.intervals[-1].state if self.intervals else UP).upper()

    def hours(self, st: str, at: float) -> float:
        return sum(i.hours(at) for i in self.intervals if i.state == st)

    def _nodes(self, i: Interval | None) -> int:
        return self.num_nodes if i is None or i.nodes is None else i.nodes

    @property
    def nodes_now(self) -> int:
        """The nodes the run bills now (all, unless it lost some)."""
        return self._nodes(self.intervals[-1] if self.intervals else None)

    @property
    def disk_hourly(self) -> float:
        """$/h of the run's disks now (every node it still has)."""
        return self.nodes_now * disks.hourly(self.disk_gb, self.disk_price)

    @property
    def up_hourly(self) -> float:
        return self.nodes_now * (self.price + disks.hourly(self.disk_gb, self.disk_price))

    def _sum(self, at: float, node_price: float) -> float:
        disk = disks.hourly(self.disk_gb, self.disk_price)
        return sum(i.hours(at) * self._nodes(i) * ((node_price if i.state == UP else 0.0) + disk)
                   for i in self.intervals)

    def cost(self, at: float) -> float:
        return self._sum(at, self.price)

    def od_cost(self, at: float) -> float | None:
        """What the same up time would have cost on demand (disks alike); None if unknown."""
        if self.od_price is None:
            return None
        return self._sum(at, self.od_price)

    def savings(self, at: float) -> float | None:
        if self.market != SPOT:
            return 0.0
        od = self.od_cost(at)
        return None if od is None else od - self.cost(at)


# ----------------------------------------------------------------------------------------------
# writers

def _job_of(owner: str | None) -> int | None:
    if owner and owner.startswith("managed:"):
        try:
            return int(owner.split(":", 1)[1])
        except ValueError:
            return None
    return None


def od_price_of(cand) -> float | None:
    """The on-demand $/h per node of the candidate's instance type in its region."""
    if not cand.use_spot:
        return cand.price
    if cand.offer is not None:
        return cand.offer.price
    if cand.cloud == "local":
        return local_prices()["od"]
    return None


def _tx(fn):
    conn = state.db()
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn)
        conn.execute("COMMIT")
        return out
    except BaseException:
        state.rollback(conn)
        raise


def _insert(conn, name: str, owner, zone, nodes: int, user, cand, at: float, intent_id=None, outcome=None) -> int:
    disk_gb = float(getattr(cand.resources, "disk_size", 0) or 0)
    values = (name, _job_of(owner), cand.cloud, cand.region, zone or cand.zone, cand.instance_type,
              cand.accelerators(), cand.resources.describe(), nodes or cand.num_nodes,
              SPOT if cand.use_spot else ON_DEMAND, float(cand.price), od_price_of(cand), disk_gb,
              disks.price_per_gb_month(cand.cloud), at, user or state.current_user.get(), intent_id, outcome)
    _close_open(conn, name, at)
    cur = conn.execute(
        "INSERT INTO cost_runs (cluster, job_id, cloud, region, zone, instance_type, accelerators, resources, "
        "num_nodes, market, price, od_price, disk_gb, disk_price, started_at, user_name, intent_id, outcome) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        values)
    rid = int(cur.lastrowid)
    conn.execute("INSERT INTO cost_intervals (run_id, state, start_at) VALUES (?,?,?)", (rid, UP, at))
    return rid


def open_run(rec, cand, at: float | None = None) -> int:
    """The cluster `rec`'s instances were created from plan candidate `cand` and the launch goes on: the run
    its attempt opened (open_attempt) is kept, billed from when the create call was made; without one, a run
    opens now (frozen prices, first interval `up`). A run still open for the same cluster name is closed first."""
    at = now() if at is None else at
    user = getattr(rec, "user_name", None)

    def do(conn):
        row = conn.execute("SELECT id FROM cost_runs WHERE cluster = ? AND ended_at IS NULL AND outcome IN "
                           "(?, ?) ORDER BY id DESC", (rec.name, *_ATTEMPT)).fetchone()
        if row is not None:
            conn.execute("UPDATE cost_runs SET num_nodes = ?, zone = ?, outcome = NULL WHERE id = ?",
                         (rec.num_nodes or cand.num_nodes, rec.zone or cand.zone, row[0]))
            return int(row[0])
        return _insert(conn, rec.name, rec.owner, rec.zone, rec.num_nodes, user, cand, at)

    return _tx(do)


def open_attempt(cluster: str, cand, intent_id: int, at: float | None = None) -> int:
    """A provisioning attempt is about to create `cand`'s instances (intent `intent_id` recorded): its run
    opens now, `launching` (the cluster's row, written before the attempt, says whose it is)."""
    at = now() if at is None else at
    rec = state.get_cluster(cluster)
    owner, user = (rec.owner, getattr(rec, "user_name", None)) if rec is not None else (None, None)
    return _tx(lambda conn: _insert(conn, cluster, owner, cand.zone, cand.num_nodes, user, cand, at, intent_id,
                                    LAUNCHING))


def attempt_created(intent_id: int, nodes: int) -> None:
    """The attempt's `nodes` instances are known to exist (the create call returned their ids, or the
    rollback found them)."""
    if nodes > 0:
        _tx(lambda conn: conn.execute(
            "UPDATE cost_runs SET outcome = ?, num_nodes = ? WHERE intent_id = ? AND ended_at IS NULL "
            "AND outcome IN (?, ?)", (CREATED, nodes, intent_id, *_ATTEMPT)))


def attempt_gone(intent_id: int, outcome: str, at: float | None = None) -> None:
    """What the attempt made is gone (torn down by its rollback, or found gone by reconcile): a run that saw
    instances closes now as `outcome`; one that never did (nothing was created) is dropped."""
    at = now() if at is None else at

    def do(conn):
        row = conn.execute("SELECT id, outcome FROM cost_runs WHERE intent_id = ? AND ended_at IS NULL "
                           "ORDER BY id DESC", (intent_id,)).fetchone()
        if row is None or row[1] not in _ATTEMPT:
            return
        if row[1] == LAUNCHING:
            conn.execute("DELETE FROM cost_intervals WHERE run_id = ?", (row[0],))
            conn.execute("DELETE FROM cost_runs WHERE id = ?", (row[0],))
            return
        _close_one(conn, row[0], at)
        conn.execute("UPDATE cost_runs SET outcome = ? WHERE id = ?", (outcome, row[0]))

    _tx(do)


def mark_interrupted(cluster: str, nodes: int) -> None:
    """The cluster's launch died and left `nodes` instances (intents.reconcile found them): its open run
    says so, and bills them until `down` closes it."""
    _tx(lambda conn: conn.execute(
        "UPDATE cost_runs SET outcome = ?, num_nodes = ? WHERE cluster = ? AND ended_at IS NULL AND "
        "(outcome IS NULL OR outcome IN (?, ?))", (INTERRUPTED, nodes, cluster, *_ATTEMPT)) if nodes > 0 else None)


def _close_one(conn, rid, at: float) -> None:
    """Close run `rid` at `at`; a clock set back (`at` before its open interval began) closes it when that
    interval began, never before: no negative time, and the run never ends before its intervals."""
    start = conn.execute("SELECT started_at FROM cost_runs WHERE id = ?", (rid,)).fetchone()[0]
    last = conn.execute("SELECT MAX(start_at) FROM cost_intervals WHERE run_id = ?", (rid,)).fetchone()[0]
    when = max(at, start, last if last is not None else start)
    conn.execute("UPDATE cost_intervals SET end_at = ? WHERE run_id = ? AND end_at IS NULL", (when, rid))
    conn.execute("UPDATE cost_runs SET ended_at = ? WHERE id = ?", (when, rid))


def _close_open(conn, cluster: str, at: float) -> None:
    for row in conn.execute("SELECT id FROM cost_runs WHERE cluster = ? AND ended_at IS NULL", (cluster,)).fetchall():
        _close_one(conn, row[0], at)  # (a row object on both backends: index it, do not unpack it)


def close_run(cluster: str, at: float | None = None) -> None:
    """The cluster's instances are terminated (idempotent)."""
    at = now() if at is None else at
    _tx(lambda conn: _close_open(conn, cluster, at))


def set_state(cluster: str, st: str, at: float | None = None, nodes: int | None = None) -> None:
    """The cluster's open run is now `st` (up / stopped) with `nodes` of its nodes (None: all of them; fewer
    when it lost some); nothing happens if it already is, or if no run is open (a cluster launched before the
    ledger existed, or adopted from tags: no price known)."""
    at = now() if at is None else at

    def do(conn):
        row = conn.execute("SELECT id, num_nodes FROM cost_runs WHERE cluster = ? AND ended_at IS NULL "
                           "ORDER BY id DESC", (cluster,)).fetchone()
        if row is None:
            return
        n = None if nodes is None or nodes >= row[1] else max(0, nodes)
        last = conn.execute("SELECT id, state, nodes FROM cost_intervals WHERE run_id = ? AND end_at IS NULL",
                            (row[0],)).fetchone()
        if last is not None and last[1] == st and last[2] == n:
            return
        when = at
        if last is not None:
            start = conn.execute("SELECT start_at FROM cost_intervals WHERE id = ?", (last[0],)).fetchone()[0]
            when = max(at, start)  # a time the cloud reported, or a clock set back: never before the interval began
            conn.execute("UPDATE cost_intervals SET end_at = ? WHERE id = ?", (when, last[0]))
        conn.execute("INSERT INTO cost_intervals (run_id, state, start_at, nodes) VALUES (?,?,?,?)",
                     (row[0], st, when, n))

    _tx(do)


def reconcile(at: float | None = None) -> list[str]:
    """Settle the ledger with the state: an open run whose cluster is gone from the state (removed by
    `status --refresh`, a lost database rebuilt by --adopt, a crash between terminate and close) is
    closed now; an open run whose cluster is STOPPED (or UP) gets that interval. Returns what changed."""
    at = now() if at is None else at
    changed = []
    for r in runs(live_only=True):
        rec = state.get_cluster(r.cluster)
        if rec is None:
            close_run(r.cluster, at)
            changed.append(f"{r.cluster}: closed (no longer in the state)")
        elif rec.status == state.STOPPED and r.state != "STOPPED":
            set_state(r.cluster, STOPPED, at)
            changed.append(f"{r.cluster}: stopped")
        elif rec.status == state.UP and r.state != "UP":
            set_state(r.cluster, UP, at)
            changed.append(f"{r.cluster}: up")
    return changed


# ----------------------------------------------------------------------------------------------
# readers

_RUN_COLS = ("id", "cluster", "job_id", "cloud", "region", "zone", "instance_type", "accelerators", "resources",
             "num_nodes", "market", "price", "od_price", "disk_gb", "disk_price", "started_at", "ended_at", "user_name",
             "outcome")


def runs(*, since: float | None = None, live_only: bool = False, job_id: int | None = None,
         cluster: str | None = None) -> list[Run]:
    """Runs in launch order, with their intervals. `since`: only runs alive at some point after it."""
    q, args = f"SELECT {', '.join(_RUN_COLS)} FROM cost_runs WHERE 1=1", []
    if since is not None:
        q += " AND (ended_at IS NULL OR ended_at >= ?)"
        args.append(since)
    if live_only:
        q += " AND ended_at IS NULL"
    if job_id is not None:
        q += " AND job_id = ?"
        args.append(job_id)
    if cluster is not None:
        q += " AND cluster = ?"
        args.append(cluster)
    conn = state.db()
    out = [Run(**dict(zip(_RUN_COLS, row))) for row in conn.execute(q + " ORDER BY id", args)]
    if out:
        by_id = {r.id: r for r in out}
        marks = ",".join("?" * len(by_id))
        for rid, st, start, end, nodes in conn.execute(
                f"SELECT run_id, state, start_at, end_at, nodes FROM cost_intervals WHERE run_id IN ({marks}) "
                "ORDER BY id", tuple(by_id)):
            by_id[rid].intervals.append(Interval(st, start, end, nodes))
    return out


def cluster_costs(at: float | None = None) -> dict[str, float]:
    """Cost so far of each cluster's open run (what `status` shows)."""
    at = now() if at is None else at
    return {r.cluster: r.cost(at) for r in runs(live_only=True)}


def stopped_hourly() -> dict[str, float]:
    """What each stopped cluster is billed per hour now: its disks (what `status` shows as $/h)."""
    return {r.cluster: r.disk_hourly for r in runs(live_only=True) if r.state == STOPPED.upper()}


def job_costs(at: float | None = None) -> dict[int, float]:
    """Cost so far (or total) of each managed job, across its recoveries (what `jobs queue` shows)."""
    at = now() if at is None else at
    out: dict[int, float] = {}
    for r in runs():
        if r.job_id is not None:
            out[r.job_id] = out.get(r.job_id, 0.0) + r.cost(at)
    return out


def job_cost(job_id: int, at: float | None = None) -> float:
    at = now() if at is None else at
    return sum(r.cost(at) for r in runs(job_id=job_id))
