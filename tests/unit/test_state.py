"""The state layer (state.py, jobs/store.py, users.py), the same tests on both backends: SQLite under
BROKER_HOME and a real PostgreSQL (the `state_backend` fixture in tests/conftest.py)."""
from __future__ import annotations

import threading

import pytest

from skybroker import state, state_db, users
from skybroker.errors import NotFoundError, UsageError
from skybroker.jobs import store


def _rec(name="c1", **kw):
    base = dict(name=name, cloud="local", region="r1", zone=None, instance_type="local-2",
                accelerators=None, use_spot=False, num_nodes=2, hourly_price=0.5, status=state.UP,
                launched_at=100.0, nodes=[state.NodeRecord("i-1", 0, "10.0.0.1", home="/x"),
                                          state.NodeRecord("i-2", 1, "10.0.0.2")])
    base.update(kw)
    return state.ClusterRecord(**base)


def test_backend_is_the_one_asked_for(state_backend):
    state.save_cluster(_rec())
    assert state.is_postgres() == (state_backend == "postgresql")
    if state_backend == "postgresql":
        assert type(state.db()).__module__ == "skybroker.db_pg"
    else:
        import sqlite3

        assert isinstance(state.db(), sqlite3.Connection)


def test_cluster_roundtrip_and_upsert(state_backend):
    state.save_cluster(_rec(use_spot=True, autostop_minutes=5, autostop_down=True, accelerators="V100:1"))
    got = state.get_cluster("c1")
    assert got.use_spot is True and got.autostop_down is True and got.autostop_minutes == 5
    assert [n.instance_id for n in got.nodes] == ["i-1", "i-2"] and got.nodes[0].home == "/x"
    assert got.head.ip == "10.0.0.1" and got.hourly_price == 0.5 and got.accelerators == "V100:1"
    got.status = state.STOPPED
    got.num_nodes = 1
    state.save_cluster(got)  # upsert: same name, new values
    again = state.get_cluster("c1")
    assert (again.status, again.num_nodes) == (state.STOPPED, 1)
    assert [r.name for r in state.list_clusters()] == ["c1"]
    state.set_status("c1", state.UP)
    state.set_autostop("c1", None, False)
    r = state.get_cluster("c1")
    assert (r.status, r.autostop_minutes, r.autostop_down) == (state.UP, None, False)
    state.delete_cluster("c1")
    assert state.get_cluster("c1") is None and state.list_clusters() == []


def test_list_order_and_user_recorded(state_backend):
    state.save_cluster(_rec("b", launched_at=2.0))
    tok = state.current_user.set("alice")
    try:
        state.save_cluster(_rec("a", launched_at=3.0))
    finally:
        state.current_user.reset(tok)
    state.save_cluster(_rec("c", launched_at=1.0, user_name="bob"))
    assert [(r.name, r.user_name) for r in state.list_clusters()] == [("c", "bob"), ("b", None), ("a", "alice")]
    rec = state.get_cluster("a")
    state.save_cluster(rec)  # saving again (another user's request) keeps the owner
    assert state.get_cluster("a").user_name == "alice"


def test_intents_ledger(state_backend):
    a = state.add_intent("c1", "aws", "us-east-1", "use1-az1")
    b = state.add_intent("c1", "local", None, None)
    c = state.add_intent("c2", "aws", "us-east-1", None)
    assert len({a, b, c}) == 3 and all(isinstance(i, int) for i in (a, b, c))
    state.set_intent(a, "created", ["i-1", "i-2"])
    assert [i["instance_ids"] for i in state.open_intents("c1")] == [["i-1", "i-2"], []]
    state.close_intents("c1", "local", None)  # region IS NULL must match a NULL region
    assert [i["id"] for i in state.open_intents("c1")] == [a]
    state.close_intents("c1", state="adopted")
    assert [i["id"] for i in state.open_intents()] == [c]


def test_events(state_backend):
    for i in range(5):
        state.add_event("c1" if i % 2 else "c2", "k", f"m{i} 100%")  # a literal % survives translation
    assert [e["message"] for e in state.events("c1")] == ["m1 100%", "m3 100%"]
    assert [e["message"] for e in state.recent_events(3)] == ["m2 100%", "m3 100%", "m4 100%"]


def test_managed_jobs(state_backend):
    tok = state.current_user.set("carol")
    try:
        j = store.insert("train", '{"run": "x"}', {"TOKEN": "s3cret"}, "1x local")
    finally:
        state.current_user.reset(tok)
    assert j.status == store.PENDING and j.user_name == "carol" and j.task_id.endswith(f"_train_{j.id}")
    assert b"s3cret" not in bytes(j.secrets) and store.decrypt(j.secrets) == {"TOKEN": "s3cret"}
    j2 = store.insert(None, "{}", {}, "x")
    assert j2.id > j.id and j2.secrets is None
    store.update(j.id, status=store.RUNNING, cost=1.25, cluster="job-1")
    assert [x.id for x in store.active()] == [j.id, j2.id]
    assert store.get(j.id).cost == 1.25
    assert store.request_cancel(j.id) is True
    store.update(j2.id, status=store.SUCCEEDED)
    assert store.request_cancel(j2.id) is False  # already ended: nothing changes
    assert [e["kind"] for e in store.events(j.id)] == ["submitted", "cancel"]
    assert [x.id for x in store.all_jobs()] == [j.id, j2.id] and store.get(999) is None


def test_concurrent_inserts_get_distinct_ids(state_backend):
    ids, errors = [], []

    def work():
        try:
            for _ in range(5):
                ids.append(store.insert("p", "{}", {}, "x").id)
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(ids)) == 20
    assert all(store.get(i).task_id.endswith(f"_{i}") for i in ids)


def test_users_tokens(state_backend):
    tok = users.create("alice", admin=True)
    assert tok.startswith("brk_") and len(tok) > 40
    stored = [dict(r) for r in state.db().execute("SELECT * FROM users")]
    assert tok not in repr(stored) and stored[0]["token_hash"] == users.digest(tok)
    assert users.authenticate(tok) == users.User("alice", True, stored[0]["created_at"], None)
    assert users.authenticate(tok + "x") is None and users.authenticate("nope") is None
    with pytest.raises(UsageError):
        users.create("alice")
    with pytest.raises(UsageError):
        users.create("bad name")
    users.revoke("alice")
    assert users.authenticate(tok) is None
    with pytest.raises(NotFoundError):
        users.revoke("alice")
    tok2 = users.create("alice")  # a revoked user gets a new token, the old one stays dead
    assert users.authenticate(tok2).admin is False and users.authenticate(tok) is None
    assert [u.name for u in users.list_users()] == ["alice"]


def test_reconnect_reuses_schema(state_backend):
    state.save_cluster(_rec())
    state_db._local.conn = None  # a new connection (another process) migrates nothing and sees the rows
    assert state.get_cluster("c1").name == "c1"


def test_a_database_of_a_newer_schema_is_refused_and_left_alone(state_backend):
    import sqlite3

    from skybroker.state_schema import SCHEMA_VERSION, NewerSchemaError

    state.save_cluster(_rec())
    newer = SCHEMA_VERSION + 13

    def raw_version():  # read past skybroker's migrate
        if state_backend == "postgresql":
            import psycopg

            with psycopg.connect(state.db_url()) as c:
                return c.execute("SELECT version FROM broker_schema WHERE id = 1").fetchone()[0]
        return sqlite3.connect(state.db_path()).execute("PRAGMA user_version").fetchone()[0]

    if state_backend == "postgresql":
        state.db().execute("UPDATE broker_schema SET version = ? WHERE id = 1", (newer,))
    else:
        state.db().execute(f"PRAGMA user_version = {newer}")
    state_db._local.conn = None  # the next command's connection
    with pytest.raises(NewerSchemaError) as ei:
        state.list_clusters()
    assert ei.value.exit_code == 2 and f"schema v{newer} > v{SCHEMA_VERSION}" in ei.value.message
    assert "newer skybroker" in ei.value.message and "upgrade skybroker" in ei.value.hint
    assert raw_version() == newer


def test_cost_ledger_risk_and_pipeline_rows(state_backend):
    """The tables other features added (cost ledger, spot exposure, pipelines) on both backends."""
    import json

    from skybroker.costs import ledger
    from skybroker.jobs import risk
    from skybroker.optimizer import optimize
    from skybroker.spec import task_from_dict

    rec = _rec("led", cloud="aws", region="us-east-1", zone="use1-az1", instance_type="p3.2xlarge")
    state.save_cluster(rec)
    cand = optimize(task_from_dict({"resources": {"instance_type": "p3.2xlarge", "cloud": "aws"}, "run": "x"}),
                    ("aws",)).chosen
    ledger.open_run(rec, cand, at=1000.0)
    ledger.set_state("led", ledger.STOPPED, at=1000.0 + 3600)
    ledger.close_run("led", at=1000.0 + 7200)
    (run,) = [r for r in ledger.runs() if r.cluster == "led"]
    assert run.cost(1000.0 + 7200) > 0
    ledger.open_attempt("led", cand, 1, at=9000.0)  # an attempt's run (schema v22): dropped, closed, interrupted
    ledger.attempt_gone(1, ledger.ROLLED_BACK, at=9100.0)
    ledger.open_attempt("led", cand, 2, at=9100.0)
    ledger.attempt_created(2, 1)
    ledger.attempt_gone(2, ledger.ROLLED_BACK, at=9000.0)  # a clock set back: closed when it began
    ledger.open_attempt("led", cand, 3, at=9200.0)
    ledger.mark_interrupted("led", 1)
    assert [(r.outcome, r.started_at, r.ended_at) for r in ledger.runs() if r.started_at >= 9000] == [
        (ledger.ROLLED_BACK, 9100.0, 9100.0), (ledger.INTERRUPTED, 9200.0, None)]
    risk.record(("aws", "us-east-1", "use1-az1", "p3.2xlarge"), 2.0, True)
    risk.record(("aws", "us-east-1", "use1-az1", "p3.2xlarge"), 1.0, False)
    assert risk.history()[("aws", "us-east-1", "use1-az1", "p3.2xlarge")] == risk.Exposure(3.0, 1)
    job = store.insert_pipeline("pipe", [("a", json.dumps({"run": "x"}), {}, "res-a"),
                                         ("b", json.dumps({"run": "y"}), {}, "res-b")])
    got = store.get(job.id)
    assert got.stages and got.stage == 0 and got.name == "pipe"


def test_pool_rows_and_worker_claims(state_backend):
    """Job pools (migration v11): a pool's row, its workers, and a claim that only one job can win."""
    from skybroker.jobs import pool_store as PS

    PS.upsert("p1", '{"run": null}', {"K": "v"}, "on-demand", 2)
    for i in range(2):
        PS.add_worker("p1", i)
    PS.add_worker("p1", 0)  # idempotent
    assert [(w.idx, w.cluster, w.status) for w in PS.workers("p1")] == [(0, "pool-p1-0", PS.PROVISIONING),
                                                                       (1, "pool-p1-1", PS.PROVISIONING)]
    assert PS.claim("p1", 0, 7) is False  # not READY yet
    PS.update_worker("p1", 0, status=PS.READY)
    a = store.insert("a", "{}", {}, "pool p1", pool="p1", job_rank=0, num_jobs=2)
    b = store.insert("b", "{}", {}, "pool p1", pool="p1", job_rank=1, num_jobs=2)
    assert (store.get(b.id).pool, store.get(b.id).job_rank, store.get(b.id).num_jobs) == ("p1", 1, 2)
    assert PS.claim("p1", 0, a.id) is True and PS.claim("p1", 0, b.id) is False  # one worker, one job
    assert PS.holder_of(a.id).idx == 0 and PS.holder_of(b.id) is None
    assert [j.id for j in PS.jobs_of("p1")] == [a.id, b.id]
    p = PS.upsert("p1", '{"run": null}', {"K": "v"}, "on-demand", 3)  # resize in place
    assert p.workers == 3 and store.decrypt(p.secrets) == {"K": "v"} and len(PS.all_pools()) == 1
    assert PS.request_down("p1") and PS.get("p1").down_requested == 1
    PS.delete("p1")
    assert PS.get("p1") is None and PS.workers("p1") == [] and PS.request_down("p1") is False


def test_a_claimed_worker_is_never_retired(state_backend):
    from skybroker.jobs import pool_store as PS

    PS.upsert("p2", "{}", {}, "x", 2)
    PS.add_worker("p2", 0)
    PS.add_worker("p2", 1)
    PS.update_worker("p2", 0, status=PS.READY)
    PS.update_worker("p2", 1, status=PS.READY)
    assert PS.claim("p2", 1, 42) is True
    assert PS.retire("p2", 1) is False and PS.worker("p2", 1).status == PS.BUSY  # the job keeps it
    assert PS.retire("p2", 0) is True and PS.claim("p2", 0, 43) is False  # retired: no job can take it


def test_first_connections_of_a_new_home_race_without_a_false_replaced_error(tmp_path):
    """Connections opening a brand-new state database at the same moment (the server's threads, a CLI
    beside the controller): one gives it its id and writes state.id, none sees the file without the id
    (which the truncated-database check would call a replaced database)."""
    for k in range(15):
        path = tmp_path / f"home{k}" / "state.db"
        path.parent.mkdir()
        barrier, errors, ids = threading.Barrier(6), [], set()

        def one():
            barrier.wait()
            try:
                c = state_db.connect(path)
                ids.add(c.execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()[0])
                c.close()
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        assert len(ids) == 1 and (path.parent / state_db.ID_FILE).read_text().strip() in ids


def test_home_id_is_made_once_and_kept_in_the_state(state_backend, monkeypatch, tmp_path):
    """One id per home (per database on PostgreSQL: every server replica has the same), created on first use;
    new clusters' names on the cloud end with its suffix, and a record keeps the name on the cloud it has."""
    hid = state.home_id()
    assert len(hid) == 32 and int(hid, 16) >= 0
    state._home_ids.clear()  # another process of the same home reads the same id
    assert state.home_id() == hid
    assert state.db().execute("SELECT v FROM meta WHERE k = 'home_id'").fetchone()[0] == hid
    assert state.cloud_name_for("dev") == f"dev-{hid[:state.HOME_SUFFIX_LEN]}"
    assert not state.legacy_names()  # a new home: nothing was launched before names had a suffix
    state.save_cluster(_rec("dev", name_on_cloud=state.cloud_name_for("dev")))
    state.save_cluster(_rec("dev", name_on_cloud="other"))  # an upsert never renames it on the cloud
    assert state.get_cluster("dev").cloud_name == state.cloud_name_for("dev")
    assert state.get_cluster_on_cloud(state.cloud_name_for("dev")).name == "dev"
    i = state.add_intent("dev", "aws", "r", None, state.cloud_name_for("dev"))
    assert [it["cluster_on_cloud"] for it in state.open_intents("dev") if it["id"] == i] == [state.cloud_name_for("dev")]
    if state_backend == "sqlite":  # the copy beside the database: a database rebuilt after a loss keeps the id
        assert (state.db_path().parent / "home.id").read_text().strip() == hid
        monkeypatch.setenv("BROKER_HOME", str(tmp_path / "rebuilt"))
        (tmp_path / "rebuilt").mkdir()
        (tmp_path / "rebuilt" / "home.id").write_text(hid + "\n")
        assert state.home_id() == hid


def test_home_id_first_used_by_two_threads_at_once_is_written_once(tmp_path, monkeypatch):
    """The controller's threads (two pool workers, two jobs) may ask for a fresh home's id at the same moment:
    home.id is written once, not twice through the same temporary file (the second rename failed, and the
    bring-up it was part of was taken for a lost node)."""
    import time

    from skybroker import paths

    _fresh_home(tmp_path, monkeypatch, "fresh")
    state.db()  # the database exists; no id yet
    real, writes = paths.touch_private, []

    def slow_touch(path, *a, **kw):  # the window between making the temporary file and renaming it, widened
        if path.name.startswith(".home.id"):
            writes.append(path.name)
            time.sleep(0.5)
        return real(path, *a, **kw)

    monkeypatch.setattr(paths, "touch_private", slow_touch)
    start, ids, errors = threading.Barrier(2), [], []

    def first_use():
        start.wait()
        try:
            ids.append(state.home_id())
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and len(set(ids)) == 1 and len(ids) == 2, (errors, ids)
    assert len(writes) == 1, writes
    assert (tmp_path / "fresh" / "home.id").read_text().split()[0] == ids[0]


def test_migration_to_v19_keeps_old_clusters_names_and_marks_the_home(tmp_path, monkeypatch):
    """A v18 database: its clusters and intents keep their names on the cloud (their resources exist under
    them), and the home is marked as one that may own resources without a home tag."""
    from tests.infra.old_state import state_db_at

    home = tmp_path / "v18"
    conn = state_db_at(home, 18)
    conn.execute("INSERT INTO clusters (name, cloud, num_nodes, status, launched_at, updated_at) "
                 "VALUES ('old', 'aws', 1, 'UP', 1, 1)")
    conn.execute("INSERT INTO intents (cluster, cloud, created_at, state) VALUES ('half', 'aws', 1, 'creating')")
    conn.commit()
    conn.close()
    monkeypatch.setenv("BROKER_HOME", str(home))
    assert state.get_cluster("old").name_on_cloud == "old" and state.get_cluster("old").cloud_name == "old"
    assert [it["cluster_on_cloud"] for it in state.open_intents("half")] == ["half"]
    assert state.legacy_names()
    assert state.cloud_name_for("new").startswith("new-")


def test_migration_to_v22_keeps_old_cost_runs_as_brought_up(tmp_path, monkeypatch):
    """A v21 ledger: its runs read as before (no intent, outcome None: brought up) and a cluster launched after the
    upgrade keeps its attempt's run."""
    from skybroker.costs import ledger
    from tests.infra.old_state import state_db_at

    home = tmp_path / "v21"
    conn = state_db_at(home, 21)
    conn.execute("INSERT INTO cost_runs (cluster, cloud, num_nodes, market, price, disk_gb, disk_price, started_at) "
                 "VALUES ('old', 'aws', 2, 'on-demand', 0.5, 0, 0, 100)")
    conn.execute("INSERT INTO cost_intervals (run_id, state, start_at, end_at) VALUES (1, 'up', 100, 3700)")
    conn.commit()
    conn.close()
    monkeypatch.setenv("BROKER_HOME", str(home))
    (r,) = ledger.runs()
    assert (r.cluster, r.outcome, r.cost(9999)) == ("old", None, pytest.approx(1.0))
    assert [c[1] for c in state.db().execute("PRAGMA table_info(cost_runs)")][-2:] == ["intent_id", "outcome"]


def _fresh_home(tmp_path, monkeypatch, name):
    home = tmp_path / name
    home.mkdir()
    monkeypatch.setenv("BROKER_HOME", str(home))
    state._home_ids.clear()
    return home


@pytest.mark.parametrize("bad", ["not-an-id\n", "dir"])
def test_a_home_id_file_that_cannot_be_read_is_refused_not_replaced(tmp_path, monkeypatch, bad):
    """home.id is what keeps a rebuilt database this home's: one that holds no id or cannot be read is a clear
    error (exit 2), never a new random id (before: a new id, and the file overwritten with it, so every cluster,
    tag and SSH claim of the home looked like another home's)."""
    home = _fresh_home(tmp_path, monkeypatch, "h")
    if bad == "dir":
        (home / "home.id").mkdir()
    else:
        (home / "home.id").write_text(bad)
    with pytest.raises(state_db.StateError) as ei:
        state.home_id()
    assert "home.id" in ei.value.message and ei.value.exit_code == 2 and "skybroker-home" in ei.value.hint
    assert state.db().execute("SELECT v FROM meta WHERE k = 'home_id'").fetchone() is None  # no id was made
    if bad != "dir":
        assert (home / "home.id").read_text() == bad


def test_home_id_file_and_database_kept_in_step(tmp_path, monkeypatch):
    """The copy beside the database is written again when it is lost (before: only when the id was first made,
    so a home that lost home.id, then its database, got a new id); a copy holding another id is refused, not
    silently ignored."""
    home = _fresh_home(tmp_path, monkeypatch, "h")
    hid = state.home_id()
    (home / "home.id").unlink()
    state._home_ids.clear()
    assert state.home_id() == hid and (home / "home.id").read_text().strip() == hid
    (home / "home.id").write_text("f" * 32 + "\n")
    state._home_ids.clear()
    with pytest.raises(state_db.StateError) as ei:
        state.home_id()
    assert hid in ei.value.message and "f" * 32 in ei.value.message and ei.value.exit_code == 2


def test_a_legacy_home_stays_legacy_when_its_database_is_rebuilt(tmp_path, monkeypatch):
    """A home from before schema v19 may own resources without a home tag (gc and --adopt take those only in such
    a home). Its database moved aside and rebuilt, as the recovery hint says, it must stay one: before, the new
    database was a new home's, so its own untagged clusters were "left alone" by gc and never adopted."""

    from tests.infra.old_state import state_db_at

    home = tmp_path / "v18"
    conn = state_db_at(home, 18)
    conn.execute("INSERT INTO events (cluster, ts, kind, message) VALUES ('old', 1, 'up', 'up')")
    conn.commit()
    conn.close()
    monkeypatch.setenv("BROKER_HOME", str(home))
    state._home_ids.clear()
    hid = state.home_id()
    assert state.legacy_names()
    old_db = state.db().execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()[0]
    state_db.close_thread_db()
    aside = tmp_path / "aside"
    aside.mkdir()
    for f in home.iterdir():
        if f.name.startswith("state."):  # state.db, its WAL files, state.id: as the recovery hint says
            f.rename(aside / f.name)
    state._home_ids.clear()
    assert state.db().execute("SELECT v FROM meta WHERE k = 'db_id'").fetchone()[0] != old_db  # a new database
    assert state.home_id() == hid and state.legacy_names()
