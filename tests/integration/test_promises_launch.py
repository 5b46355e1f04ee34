"""The README's promises for `broker launch`, each proven by injecting the fault, through the real CLI on
the `local` cloud (no root needed):

  - "a failure after provisioning tears down" (and says so; `--keep-on-failure` keeps it, and says so);
  - "no traceback for user mistakes": bad input is reported before anything is created;
  - Ctrl-C / SIGTERM during job submission to many nodes: nothing runs, and the message says so;
  - a node that misses the submit leaves no job PENDING forever on the others;
  - a corrupt or truncated state database is a clear error, never "No clusters" or a traceback;
  - `gc` never says "nothing found" about clouds it did not scan;
  - one failing cluster does not end autostop for the others;
  - the launch of a job with a `run:` beyond the argument-size limit works.

Faults are real: signals to the real process while a failpoint (skybroker/failpoints.py) holds it inside
the stage under test.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.local_helpers import (broker, broker_bg, broker_home, cloud_name, cluster_dir, kill_leftovers,
                                             node_dir, status_json, wait_for, write_task)


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    kill_leftovers(broker_home())


def flat(text: str) -> str:
    """Output with line wrapping undone (messages are wrapped to the terminal width)."""
    return " ".join(text.split())


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr


def _nothing_left(cluster: str) -> None:
    assert not cluster_dir(cluster).exists(), list((broker_home() / "local").iterdir())
    assert all(c["name"] != cluster for c in status_json())
    from skybroker import state

    assert state.open_intents(cluster) == []


# -- a failure after provisioning tears down ---------------------------------------------------------
@pytest.mark.parametrize("stage", ["agent", "sync", "submit"])
def test_failure_after_provisioning_tears_the_new_cluster_down(tmp_path, stage):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "a.txt").write_text("x")
    task = write_task(tmp_path / "t.yaml", name="tear", num_nodes=2, workdir=str(wd), run="echo hi")
    r = broker("launch", "-y", "-c", "tear", task, env={"BROKER_FAILPOINTS": f"{stage}=raise"})
    assert r.returncode == 1, r.stdout + r.stderr
    _no_traceback(r)
    assert "launch of tear failed while" in flat(r.stderr) and f"failpoint {stage}" in r.stderr
    assert "cluster tear was terminated, nothing is left running" in flat(r.stderr)
    _nothing_left("tear")


def test_keep_on_failure_keeps_the_cluster_and_says_so(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="keep", run="echo hi")
    r = broker("launch", "-y", "-c", "keep", "--keep-on-failure", task, env={"BROKER_FAILPOINTS": "submit=raise"})
    assert r.returncode == 1
    _no_traceback(r)
    assert "cluster keep was kept as asked (--keep-on-failure); `broker down keep` removes it" in flat(r.stderr)
    assert [(c["name"], c["status"]) for c in status_json()] == [("keep", "UP")]
    assert broker("down", "-y", "keep").returncode == 0
    _nothing_left("keep")


def test_failure_on_a_reused_cluster_keeps_it_up(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="reuse", run="echo hi")
    assert broker("launch", "-y", "-c", "reuse", task).returncode == 0
    r = broker("launch", "-y", "-c", "reuse", task, env={"BROKER_FAILPOINTS": "submit=raise"})
    assert r.returncode == 1
    assert "existed before this launch and stays up" in flat(r.stderr)
    assert [(c["name"], c["status"]) for c in status_json()] == [("reuse", "UP")]


def test_bad_input_is_reported_before_anything_is_created(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="bad", file_mounts={"/data/x": str(tmp_path / "missing.txt")},
                      run="echo hi")
    r = broker("launch", "-y", "-c", "bad", task)
    assert r.returncode == 2
    _no_traceback(r)
    assert "file_mounts./data/x" in flat(r.stderr) and "does not exist" in flat(r.stderr)
    assert not (broker_home() / "local").exists()
    task2 = write_task(tmp_path / "t2.yaml", name="bad", workdir=str(tmp_path / "nope"), run="echo hi")
    r = broker("launch", "-y", "-c", "bad", task2)
    assert r.returncode == 2 and "workdir" in r.stderr
    _no_traceback(r)


def test_run_script_beyond_the_argument_limit_runs(tmp_path):
    big = "\n".join(f"# filler line {i} " + "x" * 180 for i in range(900)) + "\necho BIG-DONE\n"
    assert len(big) > 140_000
    task = write_task(tmp_path / "t.yaml", name="big", run=big)
    r = broker("launch", "-y", "-c", "big", task, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BIG-DONE" in r.stdout


# -- submission: interrupted, or a node misses it -----------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_submission_to_many_nodes_runs_nothing(tmp_path, sig):
    """Node 0's submit is held up; the signal lands while the others already have the job (held, not
    released): every node cancels it, the new cluster is torn down, and the message says what happened."""
    ledger = tmp_path / "ran.txt"
    task = write_task(tmp_path / "t.yaml", name="gang", num_nodes=6, run=f'echo "$SKYPILOT_NODE_RANK" >> {ledger}')
    err = tmp_path / "err.txt"
    p = broker_bg("launch", "-y", "-c", "gang", task, stderr=err, env={"BROKER_FAILPOINTS": "submit-node-0=sleep(3)"})
    try:
        wait_for(lambda: "submitting the job to 6 node(s)" in err.read_text() or p.poll() is not None, 60,
                 what="submission to start")
        time.sleep(1.0)  # nodes 1-5 have it now; node 0 is still waiting
        t0 = time.time()
        p.send_signal(sig)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    text = flat(err.read_text())
    assert p.returncode == 130, text
    assert "Traceback" not in text + out
    assert "launch interrupted while submitting the job" in text
    assert "had received it and cancelled it; nothing runs" in text, text
    assert "cluster gang was terminated" in text
    assert time.time() - t0 < 30
    time.sleep(1.0)
    assert not ledger.exists(), ledger.read_text()
    _nothing_left("gang")


def test_a_node_that_misses_the_submit_leaves_no_job_pending(tmp_path):
    """On a reused 3-node cluster, node 1 never gets the job: the others had it held and cancelled it
    (no PENDING-forever job, nothing ran), and the cluster stays up."""
    ledger = tmp_path / "ran.txt"
    task = write_task(tmp_path / "t.yaml", name="miss", num_nodes=3, run=f'echo "$SKYPILOT_NODE_RANK" >> {ledger}')
    assert broker("launch", "-y", "-c", "miss", task).returncode == 0
    ledger.unlink()
    r = broker("exec", "miss", "--", f"echo again >> {ledger}", env={"BROKER_FAILPOINTS": "submit-node-1=raise"})
    assert r.returncode == 1
    _no_traceback(r)
    assert "submitting job 2 failed" in flat(r.stderr) and "cancelled it; nothing runs" in flat(r.stderr)
    q = json.loads(broker("queue", "miss", "--json").stdout)
    assert [j["status"] for j in q if j["job_id"] == 2] in ([], ["CANCELLED"]), q
    assert all(j["status"] != "PENDING" for j in q)
    assert not ledger.exists()
    assert [(c["name"], c["status"]) for c in status_json()] == [("miss", "UP")]


# -- state ------------------------------------------------------------------------------------------
def test_corrupt_state_database_is_a_clear_error(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="st", run="echo hi")
    assert broker("launch", "-y", "-c", "st", task).returncode == 0
    db = broker_home() / "state.db"
    for f in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        if f.exists():
            f.unlink()
    db.write_bytes(b"this is not a database" * 100)
    r = broker("status")
    assert r.returncode == 1
    _no_traceback(r)
    assert "corrupt or unreadable" in flat(r.stderr)
    # the hint's commands, followed as written, recover the cluster from the cloud's tags
    import re
    import subprocess

    hint = flat(r.stderr).split("Hint:", 1)[1]
    move = re.search(r"\(`(cd [^`]+)`\)", hint).group(1)
    assert "state.id" in move
    subprocess.run(["sh", "-c", move], check=True)
    assert re.search(r"then `broker status --refresh --adopt`", hint)
    r = broker("status", "--refresh", "--adopt", "--json")
    assert r.returncode == 0, r.stderr
    assert [(c["name"], c["status"]) for c in json.loads(r.stdout)] == [("st", "UP")]
    assert (broker_home() / "state.bad" / "state.db").read_bytes() == b"this is not a database" * 100
    assert broker("down", "-y", "st").returncode == 0


def _damage(db: Path, how: str) -> None:
    import sqlite3

    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if how == "dropped table":
        c.execute("DROP TABLE clusters")
        c.commit()
        c.close()
        return
    root = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'clusters'").fetchone()[0]
    size = c.execute("PRAGMA page_size").fetchone()[0]
    c.close()
    with open(db, "r+b") as f:  # the table's root page overwritten: a torn write, a bad sector
        f.seek((root - 1) * size)
        f.write(b"\x0d" + b"\xff" * 200)


@pytest.mark.parametrize("how,said", [("bad page", "is corrupt or unreadable (database disk image is malformed)"),
                                      ("dropped table", "is damaged: no such table: clusters")])
def test_a_database_damaged_inside_is_a_clear_error(tmp_path, how, said):
    """A database that opens but whose pages or tables are damaged failed at its first query with a
    traceback (sqlite3.DatabaseError / OperationalError): now the same clear error and recovery hint as a
    corrupt file (exit 1), and the cluster comes back from the cloud's tags."""
    task = write_task(tmp_path / "t.yaml", name="dm", run="echo hi")
    assert broker("launch", "-y", "-c", "dm", task).returncode == 0
    _damage(broker_home() / "state.db", how)
    r = broker("status")
    assert r.returncode == 1, r.stdout + r.stderr
    _no_traceback(r)
    assert said in flat(r.stderr) and "broker status --refresh --adopt" in flat(r.stderr)
    import re
    import subprocess

    subprocess.run(["sh", "-c", re.search(r"\(`(cd [^`]+)`\)", flat(r.stderr)).group(1)], check=True)
    r = broker("status", "--refresh", "--adopt", "--json")
    assert r.returncode == 0, r.stderr
    assert [(c["name"], c["status"]) for c in json.loads(r.stdout)] == [("dm", "UP")]
    assert broker("down", "-y", "dm").returncode == 0


def test_a_query_of_a_table_the_schema_lacks_is_not_called_damage(tmp_path):
    """Only what the schema has counts as damage: a wrong table name in our own SQL stays a bug (raised)."""
    import sqlite3

    from skybroker import state_db

    conn = state_db.connect(tmp_path / "state.db")
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELECT * FROM no_such_table_here")
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELECT no_such_column FROM clusters")
    with pytest.raises(sqlite3.IntegrityError):  # a constraint is the caller's to handle, not corruption
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    conn.close()


def test_truncated_state_database_is_not_an_empty_one(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="tr", run="sleep 30")
    assert broker("launch", "-y", "-d", "-c", "tr", task).returncode == 0
    db = broker_home() / "state.db"
    for f in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        if f.exists():
            f.unlink()
    db.write_bytes(b"")  # 0 bytes: SQLite would happily call it an empty database
    r = broker("status")
    assert r.returncode == 1, r.stdout
    _no_traceback(r)
    assert "truncated or replaced" in flat(r.stderr)
    assert "No clusters" not in r.stdout + r.stderr


def test_state_files_are_private_whatever_the_umask(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="perm", run="echo hi")
    old = os.umask(0o000)
    try:
        assert broker("launch", "-y", "-c", "perm", task).returncode == 0
    finally:
        os.umask(old)
    home = broker_home()
    assert (home.stat().st_mode & 0o777) == 0o700
    for p in [home / "state.db", home / "state.id", *home.glob("state.db-*")]:
        assert (p.stat().st_mode & 0o077) == 0, (p, oct(p.stat().st_mode))
    for d in (home / "locks", home / "local"):
        assert (d.stat().st_mode & 0o077) == 0, (d, oct(d.stat().st_mode))


def test_cluster_names_are_validated_before_any_path_is_built(tmp_path):
    for bad in ("../etc", "a/b", "UPPER", ""):
        r = broker("down", "-y", bad)
        assert r.returncode == 2, (bad, r.stderr)
        _no_traceback(r)
    assert not (broker_home() / "locks").exists() or not any("etc" in p.name for p in (broker_home() / "locks").iterdir())


# -- gc says what it scanned ---------------------------------------------------------------------------
def test_gc_never_claims_clouds_it_did_not_scan():
    r = broker("gc", "--cloud", "aws")
    assert r.returncode == 4, r.stdout + r.stderr
    _no_traceback(r)
    assert "nothing was scanned" in flat(r.stderr) and "no credentials" in flat(r.stderr)
    r = broker("gc", "--cloud", "nosuchcloud")
    assert r.returncode == 2 and "unknown cloud" in r.stderr
    r = broker("gc")  # default: what can be scanned is scanned, the rest is named
    assert r.returncode == 0, r.stderr
    assert "not scanned: aws" in flat(r.stderr) and "scanned: local" in flat(r.stderr)


def test_gc_removes_local_nodes_the_state_does_not_know(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="orph", run="sleep 60")
    assert broker("launch", "-y", "-d", "-c", "orph", task).returncode == 0
    from skybroker import state

    state.delete_cluster("orph")  # as if the state had been lost
    r = broker("gc")
    assert r.returncode == 2 and f"orphan: cluster orph ({cloud_name('orph')} on the cloud) on local" in flat(r.stderr)
    r = broker("gc", "--yes")
    assert r.returncode == 0, r.stderr
    assert not cluster_dir("orph").exists()


# -- autostop --------------------------------------------------------------------------------------
def test_one_failing_cluster_does_not_end_autostop_for_the_others(tmp_path, monkeypatch):
    from skybroker import autostop, clusters, state

    task = write_task(tmp_path / "t.yaml", name="as", run="echo hi")
    for name in ("as-a", "as-b"):
        assert broker("launch", "-y", "-c", name, task).returncode == 0
        state.set_autostop(name, 0, True)
    real_down = clusters.down

    def flaky_down(names, **kw):
        if names == ["as-a"]:
            raise RuntimeError("cloud API exploded")
        return real_down(names, **kw)

    monkeypatch.setattr(clusters, "down", flaky_down)
    actions = dict(autostop.check_once())
    assert actions["as-b"] == "down" and actions["as-a"].startswith("error:")
    assert state.get_cluster("as-b") is None and state.get_cluster("as-a") is not None
    assert any("cloud API exploded" in e["message"] for e in state.events("as-a"))
    monkeypatch.setattr(clusters, "down", real_down)
    assert dict(autostop.check_once())["as-a"] == "down"  # the next round still serves it
    assert not node_dir("as-a", 0).exists()


def test_lost_state_is_rebuilt_from_what_the_clouds_know(tmp_path):
    """The recovery the corrupt-state error suggests: move the database aside, then
    `status --refresh --adopt` records the clusters the providers still have, and they work again."""
    task = write_task(tmp_path / "t.yaml", name="lost", num_nodes=2, run="echo hi")
    assert broker("launch", "-y", "-c", "lost", task).returncode == 0
    home = broker_home()
    for f in [home / "state.db", home / "state.id", *home.glob("state.db-*")]:
        f.rename(f.with_name(f.name + ".bad"))
    assert status_json() == []
    r = broker("status", "--refresh", "--adopt", "--json")
    assert r.returncode == 0, r.stderr
    assert [(c["name"], c["status"], c["num_nodes"]) for c in json.loads(r.stdout)] == [("lost", "UP", 2)]
    r = broker("exec", "lost", "--", "echo again-$SKYPILOT_NODE_RANK")
    assert r.returncode == 0, r.stderr
    assert "again-0" in r.stdout and "again-1" in r.stdout
    assert broker("down", "-y", "lost").returncode == 0
    _nothing_left("lost")


def test_the_first_readme_command_works_without_rsync(tmp_path):
    """`broker launch -y examples/hello.yaml` on a fresh machine that has no rsync: the local cloud copies
    the workdir itself (rsync is only needed for remote nodes, and then checked before anything is made)."""
    import shutil

    from tests.conftest import REPO

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for p in Path(d).iterdir() if Path(d).is_dir() else ():
            if p.name != "rsync" and not (bindir / p.name).exists():
                (bindir / p.name).symlink_to(p)
    assert shutil.which("rsync", path=str(bindir)) is None
    r = broker("launch", "-y", "examples/hello.yaml", cwd=REPO, env={"PATH": str(bindir)})
    assert r.returncode == 0, r.stderr
    assert "(node-0)" in r.stdout and "(node-1)" in r.stdout
    remote = write_task(tmp_path / "r.yaml", name="r", workdir=str(tmp_path), resources={"infra": "aws/us-east-1", "instance_type": "t3.micro"}, run="true")
    r = broker("launch", "-y", remote, env={"PATH": str(bindir)})
    assert r.returncode != 0 and "rsync is not installed" in flat(r.stderr)
    _no_traceback(r)


def test_events_show_what_happened_to_a_cluster(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="ev", run="echo hi")
    assert broker("launch", "-y", "-c", "ev", task).returncode == 0
    assert broker("down", "-y", "ev").returncode == 0
    r = broker("events", "ev", "--json")
    assert r.returncode == 0, r.stderr
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert kinds[0] == "launch" and "up" in kinds and kinds[-1] == "down", kinds
    assert broker("events", "nosuch").returncode == 5
    r = broker("events")
    assert r.returncode == 0 and "ev" in r.stdout


def test_config_file_defaults_apply_to_a_launch(tmp_path):
    cfg = tmp_path / "team.yaml"
    cfg.write_text("autostop: {idle_minutes: 45, down: true}\n")
    task = write_task(tmp_path / "t.yaml", name="cfg", run="echo hi")
    r = broker("--config", cfg, "launch", "-y", "-c", "cfg", task)
    assert r.returncode == 0, r.stderr
    (c,) = status_json()
    assert (c["autostop_minutes"], c["autostop_down"], c["autostop_where"]) == (45, True, "node")
    r = broker("--config", tmp_path / "nope.yaml", "launch", "-y", "-c", "cfg2", task)
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "does not exist" in r.stderr
    _no_traceback(r)


def test_launch_json_is_json_lines_only(tmp_path):
    task = write_task(tmp_path / "t.yaml", name="js", num_nodes=2, run="echo out-$SKYPILOT_NODE_RANK")
    r = broker("launch", "--json", "-c", "js", task)
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]  # every stdout line is JSON
    types = [o["type"] for o in objs]
    assert types[0] == "plan" and types[-1] == "result" and "event" in types
    assert {o["line"] for o in objs if o["type"] == "line"} == {"out-0", "out-1"}
    assert objs[-1]["status"] == "SUCCEEDED" and objs[-1]["exit_code"] == 0 and objs[-1]["cluster_status"] == "UP"


@pytest.mark.parametrize("action", ["stop", "down"])
def test_a_followed_launch_says_what_a_stop_or_down_during_the_job_left(tmp_path, action):
    """It said "cluster … stays up: `broker exec` runs more" about a cluster the user had just stopped (and
    "`broker down` cleans up" about one already torn down)."""
    started = tmp_path / "started"
    task = write_task(tmp_path / "t.yaml", run=f"touch {started}; sleep 60")
    bg = broker_bg("launch", "-y", "-c", "held", task)
    try:
        wait_for(started.exists, 60, 0.1, "the job to start")
        r = broker(action, "held", "-y")
        assert r.returncode == 0, r.stderr
        out, err = bg.communicate(timeout=60)
    finally:
        if bg.poll() is None:
            bg.kill()
    text = flat(err)
    assert bg.returncode == 1 and "stays up" not in text, text
    if action == "stop":
        assert "cluster held was stopped during the job: `broker start held`" in text, text
    else:
        assert "cluster held was torn down during the job" in text and "broker down held" not in text, text
    assert "Traceback" not in out + err, out + err
