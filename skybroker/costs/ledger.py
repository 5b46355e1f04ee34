"""The cost ledger (tables cost_runs and cost_intervals in the state database).

A *run* is one life of a cluster's instances: it opens when the provisioner has created them and closes
when they are terminated. It freezes what was known at launch — node count, resources, market, the
price per node, the on-demand price of the same instance type in the same region (the spot savings'
reference), the disk size and its $/GB-month (disks.py). A managed job's every recovery or market switch
creates a new cluster, hence a new run with its own frozen prices (`job_id` ties them to the job).

A run's *intervals* say how it was billed: `up` (nodes × (price + disk)) or `stopped` (nodes × disk).
History survives `down`: runs are closed, never deleted.

The hook points are few: lifecycle.py (instances created → open_run), cluster_ops.py (terminate →
close_run; start → up), clusters.py (stop → stopped; `status --refresh` → whatever the cloud says), and
reconcile() (a run whose cluster vanished from the state without a teardown is closed when that is noticed).

Time comes from `now()`: the system clock, or, for tests, the file BROKER_LEDGER_CLOCK names (so costs
are exact across processes such as the managed-jobs controller). Every writer also takes `at=`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import settings, state
from . import disks

UP, STOPPED = "up", "stopped"
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


def open_run(rec, cand, at: float | None = None) -> int:
    """The cluster `rec`'s instances were created from plan candidate `cand`: open a run, frozen prices,
    first interval `up`. A run still open for the same cluster name is closed first."""
    at = now() if at is None else at
    disk_gb = float(getattr(cand.resources, "disk_size", 0) or 0)
    values = (rec.name, _job_of(rec.owner), cand.cloud, cand.region, rec.zone or cand.zone, cand.instance_type,
              cand.accelerators(), cand.resources.describe(), rec.num_nodes or cand.num_nodes,
              SPOT if cand.use_spot else ON_DEMAND, float(cand.price), od_price_of(cand), disk_gb,
              disks.price_per_gb_month(cand.cloud), at, getattr(rec, "user_name", None) or state.current_user.get())

    def do(conn):
        _close_open(conn, rec.name, at)
        cur = conn.execute(
            "INSERT INTO cost_runs (cluster, job_id, cloud, region, zone, instance_type, accelerators, resources, "
            "num_nodes, market, price, od_price, disk_gb, disk_price, started_at, user_name) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            values)
        rid = int(cur.lastrowid)
        conn.execute("INSERT INTO cost_intervals (run_id, state, start_at) VALUES (?,?,?)", (rid, UP, at))
        return rid

    return _tx(do)


def _close_open(conn, cluster: str, at: float) -> None:
    for row in conn.execute("SELECT id FROM cost_runs WHERE cluster = ? AND ended_at IS NULL", (cluster,)).fetchall():
        rid = row[0]  # (a row object on both backends: index it, do not unpack it)
        conn.execute("UPDATE cost_intervals SET end_at = ? WHERE run_id = ? AND end_at IS NULL", (at, rid))
        conn.execute("UPDATE cost_runs SET ended_at = ? WHERE id = ?", (at, rid))


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
             "num_nodes", "market", "price", "od_price", "disk_gb", "disk_price", "started_at", "ended_at", "user_name")


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
