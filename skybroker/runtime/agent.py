#!/usr/bin/env python3
"""skybroker node agent: the per-node FIFO job queue.

Self-contained, stdlib only, Python >= 3.8.  Copied to every node as ~/.skybroker-node/agent.py and driven
only by the client in skybroker/runtime/agent_client.py (the one place that speaks this protocol) as
``python3 -S ~/.skybroker-node/agent.py <command> ...``; every command prints one JSON document on stdout
(except ``logs`` without ``--b64``, which streams raw bytes).  Exit codes: 0 ok, 1 internal error, 2 bad
input, 3 no such job.

The node's own files live in ``~/.skybroker-node`` (never ``~/.broker``, which is the client's default
state directory: an SSH pool host may be the user's own machine).  ``claim PATH`` records in the manifest
a path the broker is about to create (the workdir, the checkpoint directory) if it does not exist yet;
``cleanup`` (teardown of an SSH pool host) cancels every job, removes the claimed paths and the node
directory, and nothing else.

Design
------
* State: ``~/.broker/agent.db`` (SQLite, WAL).  Every read-modify-write is a ``BEGIN IMMEDIATE``
  transaction, so concurrent agent invocations serialise on SQLite's lock.  Logs: ``~/.broker/jobs/<id>/run.log``.
* One runner per job, no long-lived scheduler.  ``submit`` inserts the job (PENDING) and spawns a detached
  runner (``_runner ID``: new session via setsid, stdio on /dev/null / a private file, so it survives the SSH
  session closing and never holds the client's pipes).  The runner waits for its turn — the job is the
  oldest (lowest ``seq``) non-terminal job on the node — then takes ``run.lock`` (flock; held until the
  runner exits, so the previous job's runner has finished cleaning up) and runs setup, then run.
  There is therefore no "queue empty -> scheduler exits" step and no lost wake-up race: a job can never be
  enqueued without a live process that is responsible for it.  FIFO follows from ``seq`` being assigned
  at insert time; "one at a time" from the head-of-queue rule plus ``run.lock``.
* Secrets: ``secret_env`` values never touch disk.  ``submit`` writes them to the runner's stdin pipe (not
  argv, not the db, not a file); the runner keeps them in memory and passes them only to the job's own
  environment.  The db stores the non-secret payload plus the secret *names* (an identical resubmit is
  recognised by comparing that; secret values are deliberately not compared, not even hashed).
  If ``submit`` dies before handing the secrets over, the runner deletes the half-submitted job.
* Liveness: each job records its runner's pid, the pid's start time (/proc) and the boot id.  Any command
  that looks at jobs first reconciles: a non-terminal job whose runner is gone (SIGKILLed, zombie, pid
  reused, node rebooted) becomes FAILED with a reason, and its surviving process group is killed.
* Cancel: mark CANCELLED in a transaction, then SIGTERM the job's process group, SIGKILL after a grace.
  The runner records the pgid with a conditional update (only while SETTING_UP/RUNNING), so a cancel that
  lands between "spawn" and "record pgid" is seen by the runner, which then kills the group itself.
* Setup is skipped when ``setup_key`` is recorded in ``setup_done`` (written after a successful setup).
* ``next-id`` reserves the id it returns (max of known and previously issued ids, + 1).  With ``--token T``
  it is idempotent: the same token always gets the same id, so a client that restarts (the managed-jobs
  controller) finds the job it already submitted (``status --token T``) instead of running it twice.
* Gang submit is two-phase: the client submits with ``held`` to every node, then ``release``s it on every
  node once all have it; a held job does not start.  A job never released within ``held_seconds`` (the
  client died mid-submit) cancels itself, so a node that missed the submit never leaves the others running
  or PENDING forever.

* Containers (``image_id: docker:...``): ``container-up`` (spec and registry password on stdin),
  ``container-check``, ``container-restart``, ``container-stop``, ``container-status``; the work is in
  ``skybroker_container.py`` next to this file (runtime/container.py). While the node has a container,
  every phase runs in it through the engine's ``exec`` (exit codes 4/5/6: no engine, pull failed, start
  failed). ``exec`` does not forward signals, so cancel and notices also signal the job's marked
  processes directly (they are this machine's processes), and give them the grace before SIGKILL.

Protocol details: ``status --job ID`` of an unknown job gives ``{"jobs": []}``; ``wait`` prints
``{"jobs": [job], "timed_out": bool}`` (exit 0 either way, 3 if unknown); ``logs`` without ``--follow``
prints what is there from ``--offset`` (with ``--wait-seconds`` it first waits up to S seconds for new bytes),
with ``--follow`` it streams until the job is terminal (or S seconds passed); ``--b64`` prints
``{"data": base64, "offset": O, "next": N, "status": S}`` instead, so the client's offset advances by the
exact number of bytes read, whatever they are.  ``run --marker M`` is submit + follow in one call (a one-node
``exec``): the id is allocated as ``next-id`` would (by the payload's token), ``id_env`` values get it for
``{job_id}``, and stdout carries ``M {start}``, the raw log, then ``M {"job": row}``; the job's runner is
spawned without the call's BROKER_RUN_ID, so killing the call (Ctrl-C) leaves the job running.
``watch ID...`` is a long-lived command: one JSON line per change of the jobs (row, log growth) and a beat
(cmd_watch), until every job is terminal or the client is gone.
Jobs get PYTHONUNBUFFERED=1 unless their env sets it.
"""
import fcntl
import os
import sys
import time

# Imported where used, because the agent starts for every command the broker sends and its start-up is
# paid on every poll: sqlite3 (see _sqlite), json (it imports and compiles `re`; answers are encoded by
# _dumps below), re,
# signal (it imports enum), contextlib, base64, hashlib, shutil, subprocess, traceback.

PENDING = "PENDING"
SETTING_UP = "SETTING_UP"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
FAILED_SETUP = "FAILED_SETUP"
CANCELLED = "CANCELLED"
STATUSES = (PENDING, SETTING_UP, RUNNING, SUCCEEDED, FAILED, FAILED_SETUP, CANCELLED)
ACTIVE_STATUSES = (PENDING, SETTING_UP, RUNNING)
TERMINAL_STATUSES = frozenset((SUCCEEDED, FAILED, FAILED_SETUP, CANCELLED))

POLL = 0.05            # seconds between checks while waiting for a turn / for log data
CANCEL_GRACE = 3.0     # SIGTERM -> SIGKILL
NODE_DIR = ".skybroker-node"  # under the node's home
HELD_SECONDS = 600.0   # default: a held (gang) job never released within this cancels itself
_ACTIVE_SQL = "status IN ('PENDING', 'SETTING_UP', 'RUNNING')"


def source() -> bytes:
    """This file's bytes, so the client can upload it to nodes."""
    with open(os.path.abspath(__file__), "rb") as f:
        return f.read()


def _sha256(data):
    """hashlib's sha256 without hashlib's import (it loads OpenSSL): the builtin module where there is one."""
    for name in ("_sha2", "_sha256"):  # 3.12+, 3.8-3.11
        try:
            return __import__(name).sha256(data)
        except (ImportError, AttributeError):
            continue
    import hashlib  # pragma: no cover - a Python built without the builtin hashes

    return hashlib.sha256(data)


def agent_version():
    try:
        return "1+" + _sha256(source()).hexdigest()[:12]
    except OSError:  # pragma: no cover - running without a source file
        return "1+unknown"


class AgentError(Exception):
    def __init__(self, message, code=2):
        Exception.__init__(self, message)
        self.code = code


# ----------------------------------------------------------------------------------------------- storage
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER UNIQUE NOT NULL, name TEXT, rank INTEGER, num_nodes INTEGER,
    spec TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER, reason TEXT,
    submitted_at REAL, started_at REAL, ended_at REAL,
    runner_pid INTEGER, runner_start TEXT, boot_id TEXT, pid INTEGER, pgid INTEGER,
    token TEXT, held_until REAL, notice TEXT);
CREATE TABLE IF NOT EXISTS setup_done (key TEXT PRIMARY KEY, done_at REAL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, job_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (path TEXT PRIMARY KEY, claimed_at REAL);
"""


def _base():
    return os.path.join(os.path.expanduser("~"), NODE_DIR)


def _job_dir(job_id):
    return os.path.join(_base(), "jobs", str(job_id))


def _log_path(job_id):
    return os.path.join(_job_dir(job_id), "run.log")


SCHEMA_VERSION = 2  # PRAGMA user_version once SCHEMA (with the columns added since) is in place


def _sqlite():
    """The C module the sqlite3 package wraps: the package's Python layer imports datetime, collections
    and more for adapters the agent never uses (a third of a call's start-up). The package if it is missing."""
    try:
        import _sqlite3 as m

        m.connect, m.Row
    except (ImportError, AttributeError):  # pragma: no cover - a Python built differently
        import sqlite3 as m
    return m


def _db():
    base = _base()
    sq = _sqlite()
    path = os.path.join(base, "agent.db")
    if not os.path.exists(path):
        os.makedirs(os.path.join(base, "jobs"), mode=0o700, exist_ok=True)
    conn = sq.connect(path, timeout=60, isolation_level=None)
    conn.row_factory = sq.Row
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per commit, and still never corrupt
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return conn
    os.makedirs(os.path.join(base, "jobs"), mode=0o700, exist_ok=True)
    with open(os.path.join(base, "db.lock"), "a") as lock:  # serialise first-time creation only
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)").fetchall()]
        if "notice" not in cols:  # a node directory made by an earlier agent
            conn.execute("ALTER TABLE jobs ADD COLUMN notice TEXT")
        if conn.execute("SELECT 1 FROM meta WHERE k='created_at'").fetchone() is None:
            conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (repr(time.time()),))
        conn.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
    return conn


class _txn(object):
    """`with _txn(conn):` one IMMEDIATE transaction (a class, not contextlib: imports cost every call)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        return False


def _get(conn, job_id):
    return conn.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()


def _job_out(row):
    keys = ("job_id", "name", "status", "exit_code", "submitted_at", "started_at", "ended_at", "rank",
            "num_nodes", "reason", "token")
    out = {k: row[k] for k in keys}
    out["held"] = row["held_until"] is not None and row["status"] == PENDING
    out["notice"] = row["notice"]
    return out


# ------------------------------------------------------------------------------------------- processes
def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state, 2 = pgrp, 19 = starttime)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def _has_proc():
    return os.path.isdir("/proc/self")


def _proc_start(pid):
    st = _proc_stat(pid)
    return st[19] if st else None


def _alive(pid, start=None):
    if not pid:
        return False
    if _has_proc():
        st = _proc_stat(pid)
        return bool(st) and st[0] not in "ZXx" and (start is None or st[19] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _group_alive(pgid):
    """True if a non-zombie process is in process group PGID."""
    if not _has_proc():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st and st[2] == str(pgid) and st[0] not in "ZXx":
                return True
    return False


def _kill_group(pgid, grace=CANCEL_GRACE):
    """SIGTERM the group, SIGKILL what is left after GRACE seconds; True when nothing is left."""
    import signal

    steps = ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)) if grace > 0 else ((signal.SIGKILL, 2.0),)
    for sig, wait in steps:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.time() + wait
        while time.time() < deadline:
            if not _group_alive(pgid):
                return True
            time.sleep(0.02)
    return not _group_alive(pgid)


def _mark(job_id, runner_pid):
    """The value of BROKER_JOB_MARK in every process of a job: found again even in descendants that left
    the job's process group (setsid, daemonized), so cancel leaves nothing of the job running."""
    return "%s-%s" % (job_id, runner_pid)


def _marked(mark):
    """Pids of the processes whose environment carries BROKER_JOB_MARK=MARK (also those of the job in the
    node's container: the engine's processes are this machine's)."""
    if not mark or not _has_proc():
        return []
    needle = ("BROKER_JOB_MARK=%s" % mark).encode()
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle + b"\0" in env or env.endswith(needle):
            out.append(int(name))
    return out


def _signal_marked(mark, sig):
    for pid in _marked(mark):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _kill_marked(mark, grace=0):
    """SIGKILL the job's marked processes; with GRACE, first wait that long for them to end by themselves."""
    deadline = time.time() + grace
    while grace and time.time() < deadline and _marked(mark):
        time.sleep(0.05)
    _signal_marked(mark, 9)  # SIGKILL


def _reconcile(conn, rows=None):
    """Mark non-terminal jobs (default: all) whose runner is gone as FAILED and kill their leftovers."""
    boot = _boot_id()
    for row in conn.execute("SELECT * FROM jobs WHERE " + _ACTIVE_SQL).fetchall() if rows is None else rows:
        same_boot = row["boot_id"] == boot
        if same_boot and _alive(row["runner_pid"], row["runner_start"]):
            continue
        reason = ("node rebooted while the job was %s" if not same_boot
                  else "agent runner process died while the job was %s") % row["status"]
        with _txn(conn):
            updated = conn.execute(
                "UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=? AND status=? AND runner_pid=?",
                (FAILED, reason, time.time(), row["job_id"], row["status"], row["runner_pid"])).rowcount
        if updated and same_boot and row["pgid"] and row["status"] != PENDING:
            _kill_group(row["pgid"], grace=0)
        if updated and same_boot:
            _kill_marked(_mark(row["job_id"], row["runner_pid"]))


# ------------------------------------------------------------------------------------------ validation
_ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(obj):
    import re

    if not isinstance(obj, dict):
        raise AgentError("job must be a JSON object")
    known = ("job_id", "name", "rank", "num_nodes", "setup", "run", "env", "secret_env", "workdir", "setup_key",
             "token", "held_seconds", "notice")
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise AgentError("unknown job field(s): %s" % ", ".join(unknown))
    job = {"name": "", "rank": 0, "num_nodes": 1, "setup": None, "run": None, "env": {}, "secret_env": {},
           "workdir": "~/sky_workdir", "setup_key": None, "token": None, "held_seconds": None, "notice": None}
    job.update({k: v for k, v in obj.items() if v is not None or k in ("setup", "run", "setup_key")})
    if "job_id" not in obj or not _is_int(obj["job_id"]) or obj["job_id"] < 0:
        raise AgentError("job_id: required non-negative integer")
    for key in ("rank", "num_nodes"):
        if not _is_int(job[key]) or job[key] < 0:
            raise AgentError("%s: must be a non-negative integer" % key)
    if not job["rank"] < job["num_nodes"]:
        raise AgentError("rank: must be < num_nodes")
    for key in ("name", "workdir"):
        if not isinstance(job[key], str):
            raise AgentError("%s: must be a string" % key)
    for key in ("setup", "run", "setup_key", "token"):
        if job[key] is not None and not isinstance(job[key], str):
            raise AgentError("%s: must be a string or null" % key)
    held = job["held_seconds"]
    if held is not None and (isinstance(held, bool) or not isinstance(held, (int, float)) or held <= 0):
        raise AgentError("held_seconds: must be a positive number or null")
    n = job["notice"]
    if n is not None:
        if not isinstance(n, dict) or n.get("kind") not in NOTICE_KINDS or not isinstance(n.get("url"), str):
            raise AgentError("notice: must be {kind: %s, url, grace, every}" % "|".join(NOTICE_KINDS))
        for k in ("grace", "every"):
            if not isinstance(n.get(k, 1), (int, float)) or isinstance(n.get(k, 1), bool) or n.get(k, 1) <= 0:
                raise AgentError("notice.%s: must be a positive number" % k)
    for key in ("env", "secret_env"):
        if not isinstance(job[key], dict):
            raise AgentError("%s: must be an object" % key)
        for k, v in job[key].items():
            if not re.match(_ENV_KEY, k) or not isinstance(v, str):
                raise AgentError("%s.%s: names must match %s and values be strings" % (key, k, _ENV_KEY))
    return job


# -------------------------------------------------------------------------------------------- commands
def _dumps(obj):
    """JSON for the agent's answers (dicts, lists, strings, numbers, booleans, None) without importing
    the json package; strings are escaped by the C encoder json itself uses."""
    try:
        from _json import encode_basestring_ascii as enc
    except ImportError:  # pragma: no cover - a Python without the C accelerator
        import json

        return json.dumps(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return enc(obj)
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj) if obj == obj and obj not in (float("inf"), float("-inf")) else "null"
    if isinstance(obj, dict):
        return "{" + ", ".join(enc(str(k)) + ": " + _dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(_dumps(v) for v in obj) + "]"
    raise TypeError("cannot encode %r" % type(obj).__name__)


def _out(obj):
    sys.stdout.write(_dumps(obj) + "\n")
    sys.stdout.flush()


def cmd_submit(args):
    job = _read_job()
    conn = _db()
    job_id, status, duplicate, proc = _submit(conn, job)
    _out({"job_id": job_id, "status": status, "duplicate": True} if duplicate else {"job_id": job_id, "status": status})
    return 0


def _read_job():
    import json

    try:
        return json.loads(sys.stdin.read())
    except ValueError as e:
        raise AgentError("stdin is not valid JSON: %s" % e)


def _submit(conn, obj, watch=False):
    """Insert the job and spawn its runner: (job_id, status, duplicate, proc). With `watch`, the runner
    holds the write end of a pipe whose read end is `proc.watch_fd`: it reads EOF once the runner exits."""
    import json
    import subprocess

    job = _validate(obj)
    secrets = job.pop("secret_env")
    token, held = job.pop("token"), job.pop("held_seconds")
    job["secret_env_names"] = sorted(secrets)
    spec = json.dumps(job, sort_keys=True)
    job_id = job["job_id"]
    os.makedirs(_job_dir(job_id), exist_ok=True)
    env = dict(os.environ)
    env.pop("BROKER_RUN_ID", None)  # the runner outlives this call: killing the call's processes spares it
    rfd = wfd = None
    if watch:
        rfd, wfd = os.pipe()
    proc = None
    try:
        with _txn(conn):
            row = _get(conn, job_id)
            if row is not None:
                if row["spec"] != spec and not (token and row["token"] == token):
                    raise AgentError("job %d already exists with a different payload" % job_id)
                return job_id, row["status"], True, None
            with open(os.path.join(_job_dir(job_id), "runner.err"), "ab") as err:
                proc = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "_runner", str(job_id)],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                        cwd=_base(), start_new_session=True, close_fds=True,
                                        pass_fds=(wfd,) if watch else ())
            conn.execute(
                "INSERT INTO jobs (job_id, name, rank, num_nodes, spec, status, submitted_at, runner_pid,"
                " runner_start, boot_id, token, held_until) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, job["name"], job["rank"], job["num_nodes"], spec, PENDING, time.time(), proc.pid,
                 _proc_start(proc.pid), _boot_id(), token, time.time() + held if held else None))
            if token:
                conn.execute("INSERT OR IGNORE INTO tokens VALUES (?, ?)", (token, job_id))
        proc.stdin.write(json.dumps({"secret_env": secrets}).encode())
        proc.stdin.close()
    except BaseException:
        if proc is not None:
            proc.kill()  # the runner never got its secrets: it must not run
            with _txn(conn):
                conn.execute("DELETE FROM jobs WHERE job_id=? AND runner_pid=?", (job_id, proc.pid))
        if rfd is not None:
            os.close(rfd)
        raise
    finally:
        if wfd is not None:
            os.close(wfd)
    proc.watch_fd = rfd
    return job_id, PENDING, False, proc


def cmd_run(args):
    """Allocate the id (by the payload's token, like next-id; ``id_env`` values get it for ``{job_id}``), submit, then follow the job's log: one
    call for a one-node `exec`. Prints, on stdout: ``MARKER {"job_id", "status", "duplicate"}``, the log's
    raw bytes as they come, and once the job is terminal ``MARKER {"job": row}`` on a line of its own
    (after a newline if the log did not end with one). MARKER is the client's nonce: job output cannot
    forge it."""
    import select

    marker = (args.marker or "").encode()
    if len(marker) < 8:
        raise AgentError("run: --marker NONCE (8+ characters) is required")
    obj = _read_job()
    if not isinstance(obj, dict):
        raise AgentError("job must be a JSON object")
    conn = _db()
    templates = obj.pop("id_env", None) or {}  # env values naming the job id: "{job_id}" filled in here
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise AgentError("id_env: must be an object of strings")
    if obj.get("job_id") is None:
        obj = dict(obj, job_id=_next_id(conn, obj.get("token"))[0])
    if templates:
        env = obj.get("env") if isinstance(obj.get("env"), dict) else {}
        obj["env"] = dict(env, **{k: v.replace("{job_id}", str(obj["job_id"])) for k, v in templates.items()})
    job_id, status, duplicate, proc = _submit(conn, obj, watch=True)
    out = sys.stdout.buffer
    out.write(marker + b" " + _dumps({"job_id": job_id, "status": status, "duplicate": duplicate}).encode() + b"\n")
    out.flush()
    path, offset, last = _log_path(job_id), 0, b"\n"
    watch = proc.watch_fd if proc is not None else None
    wait, next_reconcile = 0.01, time.time() + 1.0
    while True:
        row = _get(conn, job_id)
        terminal = row is None or row["status"] in TERMINAL_STATUSES  # checked before reading: no lost tail
        chunk = _read_from(path, offset)
        while chunk:
            out.write(chunk)
            out.flush()
            offset += len(chunk)
            last = chunk[-1:]
            chunk = _read_from(path, offset)
        if terminal:
            break
        if time.time() >= next_reconcile:
            _reconcile(conn, [row])
            next_reconcile = time.time() + 1.0
        if watch is not None:
            if select.select([watch], [], [], wait)[0]:
                os.close(watch)  # the runner exited: the row is terminal now (or reconcile makes it so)
                watch, next_reconcile = None, 0
                proc.wait()
        else:
            time.sleep(wait)
        wait = min(POLL, wait * 1.5)
    if last != b"\n":
        out.write(b"\n")
    out.write(marker + b" " + _dumps({"job": _job_out(row) if row is not None else None}).encode() + b"\n")
    out.flush()
    return 0


def cmd_runner(args):
    import json

    import traceback
    job_id, me = args.job_id, os.getpid()
    try:
        payload = json.loads(sys.stdin.read() or "null")
    except ValueError:
        payload = None
    conn = _db()
    row = _get(conn, job_id)
    if row is None or row["runner_pid"] != me:
        return 0
    if not isinstance(payload, dict):  # submit died before handing over the secrets
        with _txn(conn):
            conn.execute("DELETE FROM jobs WHERE job_id=? AND runner_pid=? AND status=?", (job_id, me, PENDING))
        return 0
    try:
        _run_job(conn, job_id, json.loads(row["spec"]), payload.get("secret_env") or {})
    except Exception as e:  # never leave the job non-terminal; the message carries no secret values
        _finish(conn, job_id, FAILED, None, "agent error: %s: %s" % (type(e).__name__, e))
        traceback.print_exc()  # to jobs/<id>/runner.err; tracebacks show code lines, not variable values
        return 1
    return 0


def _advance(conn, job_id, from_statuses, to_status):
    marks = ",".join("?" * len(from_statuses))
    with _txn(conn):
        return conn.execute(
            "UPDATE jobs SET status=?, started_at=COALESCE(started_at, ?), pid=NULL, pgid=NULL"
            " WHERE job_id=? AND status IN (%s)" % marks,
            (to_status, time.time(), job_id) + tuple(from_statuses)).rowcount == 1


def _finish(conn, job_id, status, exit_code, reason):
    with _txn(conn):
        conn.execute("UPDATE jobs SET status=?, exit_code=?, reason=?, ended_at=? WHERE job_id=? AND " + _ACTIVE_SQL,
                     (status, exit_code, reason, time.time(), job_id))


def _run_job(conn, job_id, spec, secrets):
    while True:  # wait until this job is released (gang submit) and the oldest non-terminal job on the node
        row = _get(conn, job_id)
        if row is None or row["status"] != PENDING:
            return
        if row["held_until"] is not None:
            if time.time() > row["held_until"]:
                with _txn(conn):
                    conn.execute("UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=? AND status=?"
                                 " AND held_until IS NOT NULL",
                                 (CANCELLED, "never released: the client went away before every node had the job",
                                  time.time(), job_id, PENDING))
                return
            time.sleep(2 * POLL)
            continue
        ahead = conn.execute("SELECT * FROM jobs WHERE %s AND seq < ? ORDER BY seq" % _ACTIVE_SQL,
                             (row["seq"],)).fetchall()
        if not ahead:
            break
        _reconcile(conn, ahead[:1])  # only the head can block us; a dead head must not stall the queue
        time.sleep(2 * POLL if len(ahead) == 1 else 10 * POLL)  # next in line polls fast, the rest slowly
    lock = open(os.path.join(_base(), "run.lock"), "a")  # held until this process exits
    fcntl.flock(lock, fcntl.LOCK_EX)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(spec["env"])
    env.update(secrets)
    env["BROKER_JOB_MARK"] = _mark(job_id, os.getpid())
    workdir = os.path.expanduser(spec["workdir"])
    os.makedirs(workdir, exist_ok=True)
    box = _container_state()
    if box is not None:  # the job runs in the node's container: only its own variables go in
        box = dict(box, env_names=sorted(set(spec["env"]) | set(secrets) | {"BROKER_JOB_MARK", "PYTHONUNBUFFERED"}))
        _container().ensure_running(box)
    with open(_log_path(job_id), "ab") as log:
        key = spec["setup_key"]
        if spec["setup"] and not (key and conn.execute("SELECT 1 FROM setup_done WHERE key=?", (key,)).fetchone()):
            if not _advance(conn, job_id, (PENDING,), SETTING_UP):
                return
            rc = _phase(conn, job_id, spec["setup"], workdir, env, log, "setup", box=box)
            if rc is None:
                return
            if rc != 0:
                return _finish(conn, job_id, FAILED_SETUP, rc, "setup exited with code %d" % rc)
            if key:
                with _txn(conn):
                    conn.execute("INSERT OR REPLACE INTO setup_done VALUES (?, ?)", (key, time.time()))
        if not _advance(conn, job_id, (PENDING, SETTING_UP), RUNNING):
            return
        rc = _phase(conn, job_id, spec["run"], workdir, env, log, notice=spec.get("notice"), box=box) \
            if spec["run"] else 0
        if rc is not None:
            noticed = (_get(conn, job_id) or {"notice": None})["notice"]
            # stopped by a notice, whatever its exit code: the work is not done, the instance is going
            if noticed:
                _finish(conn, job_id, FAILED, rc, "stopped by a preemption notice (%s); exit code %d" % (noticed, rc))
            else:
                _finish(conn, job_id, SUCCEEDED if rc == 0 else FAILED, rc,
                        None if rc == 0 else "run exited with code %d" % rc)


def _phase(conn, job_id, command, workdir, env, log, name="run", notice=None, box=None):
    """Run COMMAND in its own session; return its exit code, or None if the job was cancelled meanwhile.
    The script is written to a file and run from there: a command line has a size limit (128 KiB per
    argument on Linux) that a long `run:` would exceed. With BOX (the node's container) it runs there
    through the engine's `exec`, in the same paths (the home is shared)."""
    import shutil
    import subprocess
    script = os.path.join(_job_dir(job_id), name + ".sh")
    with open(script, "w") as f:
        f.write(command)
    argv = [shutil.which("bash") or "/bin/sh", script]
    if box is not None:
        argv = _container().exec_argv(box, box["env_names"], workdir, script)
    proc = subprocess.Popen(argv, cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with _txn(conn):
        recorded = conn.execute("UPDATE jobs SET pid=?, pgid=? WHERE job_id=? AND status IN (?, ?)",
                                (proc.pid, proc.pid, job_id, SETTING_UP, RUNNING)).rowcount
    if not recorded:
        _kill_group(proc.pid)
    rc = _wait_watching(conn, job_id, proc, notice, env.get("BROKER_JOB_MARK")) if notice else proc.wait()
    row = _get(conn, job_id)
    if row is None or row["status"] not in (SETTING_UP, RUNNING):
        _kill_group(proc.pid)  # cancelled: make sure stragglers in the group are gone too
        # in a container the engine's `exec` may end before the job's processes (they were signalled
        # directly): they get the same grace as a group before they are killed
        _kill_marked(env.get("BROKER_JOB_MARK"), grace=CANCEL_GRACE if box is not None else 0)
        return None
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, as a shell reports it


# ------------------------------------------------------------------------------------ preemption notices
# The cloud warns a spot instance before it takes it: AWS two minutes ahead (instance metadata
# spot/instance-action, IMDSv2), GCP ~30 s (metadata instance/preempted = TRUE), Azure Scheduled Events
# (an event of type Preempt). A job submitted with `notice` is watched: on a notice the job's process
# group gets SIGTERM (time to write a checkpoint), SIGKILL after `grace` seconds, and the job's row
# records the notice, so the broker starts the replacement at once instead of discovering the loss.
NOTICE_KINDS = ("aws", "gcp", "azure")


def _http(url, headers=None, method="GET", timeout=2.0):
    """(status, body) of one request; (0, "") when the endpoint does not answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return 0, ""


def _check_notice(n):
    """The notice's text if the cloud has announced the preemption, else None (never raises)."""
    import json

    kind, url = n["kind"], n["url"]
    if kind == "aws":
        root = url.split("/latest/", 1)[0]
        code, token = _http(root + "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT")
        code, body = _http(url, {"X-aws-ec2-metadata-token": token} if code == 200 else {})
        return ("aws spot/instance-action: " + body.strip()) if code == 200 and body.strip() else None
    if kind == "gcp":
        code, body = _http(url, {"Metadata-Flavor": "Google"})
        return "gcp instance/preempted: TRUE" if code == 200 and body.strip().upper() == "TRUE" else None
    code, body = _http(url, {"Metadata": "true"})
    if code != 200:
        return None
    try:
        events = json.loads(body).get("Events") or []
    except (ValueError, AttributeError):
        return None
    pre = [e for e in events if isinstance(e, dict) and e.get("EventType") == "Preempt"]
    return ("azure scheduled event Preempt (NotBefore %s)" % pre[0].get("NotBefore")) if pre else None


def _wait_watching(conn, job_id, proc, n, mark=None):
    """proc.wait(), checking for a preemption notice every `every` seconds meanwhile."""
    import subprocess

    every, grace = float(n.get("every", 5)), float(n.get("grace", 30))
    while True:
        try:
            return proc.wait(timeout=every)
        except subprocess.TimeoutExpired:
            pass
        text = _check_notice(n)
        if text is None:
            continue
        with _txn(conn):
            conn.execute("UPDATE jobs SET notice=? WHERE job_id=?", (text, job_id))
        import signal

        _signal_marked(mark, signal.SIGTERM)  # the job's processes in a container, too
        _kill_group(proc.pid, grace=grace)
        rc = proc.wait()
        _kill_marked(mark, grace=grace)
        return rc


def _next_id(conn, token=None):
    """(id, existing): the id reserved for `token` (the same one every time), or a new one."""
    with _txn(conn):
        if token:
            known = conn.execute("SELECT job_id FROM tokens WHERE token=?", (token,)).fetchone()
            if known is not None:
                return known[0], True
        top = conn.execute("SELECT MAX(job_id) FROM jobs").fetchone()[0]
        issued = conn.execute("SELECT v FROM meta WHERE k='last_issued_id'").fetchone()
        n = max(top if top is not None else 0, int(issued[0]) if issued else 0) + 1
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_issued_id', ?)", (str(n),))
        if token:
            conn.execute("INSERT INTO tokens VALUES (?, ?)", (token, n))
    return n, False


def cmd_next_id(args):
    n, existing = _next_id(_db(), args.token)
    _out({"job_id": n, "existing": existing})
    return 0


def cmd_release(args):
    conn = _db()
    with _txn(conn):
        row = _get(conn, args.job_id)
        if row is None:
            raise AgentError("no such job: %d" % args.job_id, code=3)
        conn.execute("UPDATE jobs SET held_until=NULL WHERE job_id=? AND status=?", (args.job_id, PENDING))
    row = _get(conn, args.job_id)
    _out({"job_id": args.job_id, "status": row["status"]})
    return 0


def cmd_status(args):
    conn = _db()
    _reconcile(conn)
    if args.job is not None:
        rows = conn.execute("SELECT * FROM jobs WHERE job_id=?", (args.job,)).fetchall()
    elif args.token is not None:
        rows = conn.execute("SELECT j.* FROM jobs j JOIN tokens t ON t.job_id = j.job_id WHERE t.token=?",
                            (args.token,)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    _out({"jobs": [_job_out(r) for r in rows]})
    return 0


def _read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except OSError:
        return b""


def cmd_logs(args):
    conn = _db()
    if _get(conn, args.job_id) is None:
        sys.stderr.write("no such job: %d\n" % args.job_id)
        return 3
    if args.b64:
        return _logs_b64(conn, args)
    path, offset, out = _log_path(args.job_id), args.offset, sys.stdout.buffer
    deadline = None if args.wait_seconds is None else time.time() + args.wait_seconds
    next_reconcile = time.time() + 1.0
    while True:
        terminal = _get(conn, args.job_id)["status"] in TERMINAL_STATUSES  # checked before reading: no lost tail
        got = False
        while True:
            chunk = _read_from(path, offset)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            offset += len(chunk)
            got = True
        expired = deadline is None or time.time() >= deadline
        if terminal or (args.follow and deadline is not None and expired) or (
                not args.follow and (got or expired)):
            return 0
        if time.time() >= next_reconcile:
            _reconcile(conn)
            next_reconcile = time.time() + 1.0
        if not got:
            time.sleep(POLL)


def _logs_b64(conn, args):
    """Up to 1 MiB from --offset (waiting up to --wait-seconds for new bytes), as exact bytes, with the
    job's row (after checking that its runner is alive): one call is a whole poll of a job on a node."""
    import base64

    deadline = time.time() + (args.wait_seconds or 0)
    while True:
        row = _get(conn, args.job_id)
        if row["status"] not in TERMINAL_STATUSES:
            _reconcile(conn, [row])
            row = _get(conn, args.job_id)
        status = row["status"]  # read before the data: a terminal status means no more data comes
        chunk = _read_from(_log_path(args.job_id), args.offset)
        if chunk or status in TERMINAL_STATUSES or time.time() >= deadline:
            break
        time.sleep(POLL)
    _out({"data": base64.b64encode(chunk).decode("ascii"), "offset": args.offset,
          "next": args.offset + len(chunk), "status": status, "job": _job_out(row)})
    return 0


def cmd_claim(args):
    """Record paths the broker is about to create (only those that do not exist yet)."""
    conn = _db()
    claimed = []
    with _txn(conn):
        for p in args.paths:
            full = os.path.abspath(os.path.expanduser(p))
            if not os.path.lexists(full) and _removable(full):
                conn.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (full, time.time()))
                claimed.append(full)
    _out({"claimed": claimed})
    return 0


def _removable(path):
    """Only strictly below the home directory, never the home itself, never a client's state dir."""
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(path)
    return real.startswith(home + os.sep) and not _looks_like_client_home(real)


def _looks_like_client_home(path):
    return os.path.exists(os.path.join(path, "state.db"))


def cmd_cleanup(args):
    """Teardown of a node we do not own (an SSH pool host): cancel every job, then remove what the
    broker created there — the claimed paths and the node directory — and nothing else."""
    import shutil
    base = _base()
    if not os.path.isdir(base):
        _out({"removed": []})
        return 0
    if _looks_like_client_home(base):
        raise AgentError("%s holds a client state database; refusing to remove it" % base)
    conn = _db()
    args.all, args.job_ids = True, []
    import contextlib

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        cmd_cancel(args)
    if _container_state() is not None:
        _container_call(lambda m: m.down(base))
    _unmount_buckets(base)
    removed = []
    for (path,) in conn.execute("SELECT path FROM claims ORDER BY length(path) DESC").fetchall():
        if os.path.lexists(path) and _removable(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            removed.append(path)
    conn.close()
    shutil.rmtree(base, ignore_errors=True)
    removed.append(base)
    _out({"removed": removed})
    return 0


def _unmount_buckets(base):
    """Bucket MOUNTs made on this node (storage/mounts.py lists them in <node dir>/mounts): unmounted
    (lazily) before anything is removed, so their rclone processes exit and no removal walks into a bucket."""
    try:
        with open(os.path.join(base, "mounts")) as f:
            paths = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return
    unmount_lazily(paths)


def unmount_lazily(paths):
    """Unmount each path (innermost first) with the first tool that works: fusermount3/fusermount -uz, or
    umount -l. Also used by the local cloud for its sandboxes."""
    import subprocess

    for p in sorted(set(paths), key=len, reverse=True):
        for cmd in (["fusermount3", "-uz", p], ["fusermount", "-uz", p], ["umount", "-l", p]):
            try:
                if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                    break
            except OSError:
                continue


def cmd_wait(args):
    conn = _db()
    deadline = None if args.timeout is None else time.time() + args.timeout
    while True:
        _reconcile(conn)
        row = _get(conn, args.job_id)
        if row is None:
            raise AgentError("no such job: %d" % args.job_id, code=3)
        timed_out = deadline is not None and time.time() >= deadline
        if row["status"] in TERMINAL_STATUSES or timed_out:
            _out({"jobs": [_job_out(row)], "timed_out": row["status"] not in TERMINAL_STATUSES})
            return 0
        time.sleep(0.1)


def _stat(path):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


def cmd_watch(args):
    """The broker's channel to jobs on this node: one line per change of a watched job, {"job": ID, "row": ROW,
    "size": N} when its row changed (the first line of each; ROW null: no such job) or {"job": ID, "size": N}
    when only its log grew, {"also": PATH} when --also moved, {"beat": 1} every --beat seconds. A few stats
    per --every seconds; the rows are read when the database moved and on each beat (after a reconcile).
    Ends when every watched job is terminal or unknown, or when the client is gone (a write fails)."""
    conn, wal = _db(), os.path.join(_base(), "agent.db-wal")
    also = os.path.join(os.path.expanduser("~"), args.also) if args.also else None
    marks, rows, sizes, seen, beat_at = ",".join("?" * len(args.job_ids)), {}, {}, [None, None], 0.0
    while True:
        now, lines = time.time(), []
        if now >= beat_at or _stat(wal) != seen[0]:
            if now >= beat_at:
                _reconcile(conn, conn.execute("SELECT * FROM jobs WHERE %s AND job_id IN (%s)" % (_ACTIVE_SQL, marks),
                                              args.job_ids).fetchall())
            seen[0] = _stat(wal)  # before the read: a change during it is seen next time
            got = dict((r["job_id"], _job_out(r)) for r in conn.execute(
                "SELECT * FROM jobs WHERE job_id IN (%s)" % marks, args.job_ids).fetchall())
            rows_now = dict((j, got.get(j)) for j in args.job_ids)
        else:
            rows_now = rows
        for j in args.job_ids:
            size = (_stat(_log_path(j)) or (0, 0))[1]
            if j not in rows or rows_now[j] != rows[j]:
                lines.append({"job": j, "row": rows_now[j], "size": size})
            elif size != sizes[j]:
                lines.append({"job": j, "size": size})
            sizes[j] = size
        rows = rows_now
        if also and _stat(also) != seen[1]:
            seen[1] = _stat(also)
            lines.append({"also": args.also})
        if now >= beat_at:
            lines.append({"beat": 1})
            beat_at = now + args.beat
        if lines:
            sys.stdout.write("".join(_dumps(o) + "\n" for o in lines))
            sys.stdout.flush()
        if all(r is None or r["status"] in TERMINAL_STATUSES for r in rows.values()):
            return 0
        time.sleep(args.every)


def cmd_cancel(args):
    if not args.all and not args.job_ids:
        raise AgentError("cancel: give job ids or --all")
    conn = _db()
    with _txn(conn):
        rows = conn.execute("SELECT * FROM jobs WHERE " + _ACTIVE_SQL + " ORDER BY seq").fetchall()
        rows = [r for r in rows if args.all or r["job_id"] in args.job_ids]
        for r in rows:
            conn.execute("UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=?",
                         (CANCELLED, "cancelled", time.time(), r["job_id"]))
    boot = _boot_id()
    for r in rows:
        if r["status"] == PENDING or r["boot_id"] != boot:
            continue
        if r["pgid"]:
            import signal

            _signal_marked(_mark(r["job_id"], r["runner_pid"]), signal.SIGTERM)  # also in the container
            _kill_group(r["pgid"])
        deadline = time.time() + CANCEL_GRACE + 3.0  # the runner kills a group it had not recorded yet
        while _alive(r["runner_pid"], r["runner_start"]) and time.time() < deadline:
            time.sleep(0.02)
        _kill_marked(_mark(r["job_id"], r["runner_pid"]))
    _out({"cancelled": [r["job_id"] for r in rows]})
    return 0


def _idle(conn):
    """Seconds this node has been idle (no PENDING/SETTING_UP/RUNNING job); 0 while busy."""
    idle = _idle_for(conn)
    return 0.0 if idle is None else idle


def _idle_for(conn):
    """Like _idle, but None while busy (so that an idle limit of 0 never fires on a busy node)."""
    _reconcile(conn)
    if conn.execute("SELECT COUNT(*) FROM jobs WHERE " + _ACTIVE_SQL).fetchone()[0]:
        return None
    created = float(conn.execute("SELECT v FROM meta WHERE k='created_at'").fetchone()[0])
    armed = conn.execute("SELECT v FROM meta WHERE k='autostop_armed_at'").fetchone()
    ended = conn.execute("SELECT MAX(ended_at) FROM jobs").fetchone()[0]
    return max(0.0, time.time() - max(created, float(armed[0]) if armed else 0.0, ended or 0.0))


def cmd_idle_seconds(args):
    _out({"idle_seconds": _idle(_db())})
    return 0


# ------------------------------------------------------------------------------------ autostop on the node
# Autostop that needs no broker process anywhere: the node itself runs the provider's self-stop command
# (e.g. `sudo shutdown -h now` on an instance whose shutdown behaviour is stop or terminate) once it has
# been idle long enough. One watcher per node (a detached process holding autostop.lock) that rereads its
# settings every round. A worker armed with ``--follow HOST:PORT`` (its head) fires only once it is idle
# *and* the head has not accepted a TCP connection for ``--follow-grace`` seconds: the head decides, the
# workers follow it down, and no node needs credentials for the others. A command that fails (exit != 0)
# is retried with a backoff; the settings are cleared before it runs (it may kill the watcher itself).
# With ``--ssh-busy`` an interactive SSH session (a pty) counts as activity: idle time starts when the
# last one closed (the broker's own calls run without a pty and never count).
_AUTOSTOP_KEYS = ("autostop_idle", "autostop_cmd", "autostop_every", "autostop_armed_at", "autostop_follow",
                  "autostop_follow_grace", "autostop_ssh")


def _meta(conn, key):
    row = conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
    return row[0] if row else None


def cmd_autostop(args):
    conn = _db()
    with _txn(conn):
        conn.execute("DELETE FROM meta WHERE k IN (%s)" % ", ".join("?" * len(_AUTOSTOP_KEYS)), _AUTOSTOP_KEYS)
        if not args.clear:
            if args.idle_seconds is None or args.idle_seconds < 0 or not args.command:
                raise AgentError("autostop: give --idle-seconds S (>= 0) and --command CMD, or --clear")
            if args.follow is not None and not args.follow.rpartition(":")[2].isdigit():
                raise AgentError("autostop: --follow must be HOST:PORT")
            values = [("autostop_idle", args.idle_seconds), ("autostop_cmd", args.command),
                      ("autostop_every", args.every), ("autostop_armed_at", time.time()),
                      ("autostop_follow_grace", args.follow_grace)]
            if args.follow:
                values.append(("autostop_follow", args.follow))
            if args.ssh_busy:
                values.append(("autostop_ssh", "1"))
            for k, v in values:
                conn.execute("INSERT INTO meta VALUES (?, ?)", (k, repr(v) if not isinstance(v, str) else v))
    if not args.clear:
        _spawn_watcher()
    _out({"armed": not args.clear})
    return 0


def _spawn_watcher():
    import subprocess

    lock = os.path.join(_base(), "autostop.lock")
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a watcher holds it: it rereads the settings every round
        fcntl.flock(f, fcntl.LOCK_UN)
    with open(os.path.join(_base(), "autostop.log"), "ab") as log:
        subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "_autostop_watch"], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, cwd=_base(), start_new_session=True, close_fds=True)


def _answers(hostport, timeout=3.0):
    """True if HOST:PORT accepts a TCP connection (the head is up)."""
    import socket

    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _ssh_sessions():
    """Interactive SSH sessions on this node: sshd titles each session's process `sshd: USER@pts/N`
    (`sshd-session: ...` since OpenSSH 9.8)."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    cmd = f.read(256)
            except OSError:
                continue
            if (cmd.startswith(b"sshd: ") or cmd.startswith(b"sshd-session: ")) and b"@pts/" in cmd:
                n += 1
    return n


def _log(msg):
    sys.stdout.write("%s %s\n" % (time.strftime("%F %T"), msg))
    sys.stdout.flush()


def cmd_autostop_watch(args):
    import subprocess

    lock = open(os.path.join(_base(), "autostop.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0
    conn = _db()
    head_gone_since, failures, ssh_seen = None, 0, None
    while True:
        idle_for, command = _meta(conn, "autostop_idle"), _meta(conn, "autostop_cmd")
        if idle_for is None or command is None:
            return 0  # cleared
        every = float(_meta(conn, "autostop_every") or 10)
        follow = _meta(conn, "autostop_follow")
        idle = _idle_for(conn)
        if idle is not None and _meta(conn, "autostop_ssh"):
            if _ssh_sessions():
                ssh_seen, idle = time.time(), None
            elif ssh_seen is not None:
                idle = min(idle, time.time() - ssh_seen)
        due = idle is not None and idle >= float(idle_for)
        if due and follow:
            grace = float(_meta(conn, "autostop_follow_grace") or 60)
            if _answers(follow, timeout=max(0.5, min(3.0, grace))):
                head_gone_since, due = None, False
            else:
                head_gone_since = head_gone_since or time.time()
                due = time.time() - head_gone_since >= grace
        if not due:
            time.sleep(every)
            continue
        with _txn(conn):
            saved = conn.execute("SELECT k, v FROM meta WHERE k IN (%s)" % ", ".join("?" * len(_AUTOSTOP_KEYS)),
                                 _AUTOSTOP_KEYS).fetchall()
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('autostop_fired_at', ?)", (repr(time.time()),))
            conn.execute("DELETE FROM meta WHERE k IN ('autostop_idle', 'autostop_cmd')")
        _log("idle for %ss%s: running %s" % (idle_for, " and the head %s is gone" % follow if follow else "", command))
        rc = subprocess.call(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL)
        if rc == 0:
            return 0
        failures += 1
        _log("self-stop command exited %d; retrying" % rc)
        with _txn(conn):
            if _meta(conn, "autostop_idle") is None:  # not re-armed or cleared meanwhile
                for k, v in saved:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('autostop_error', ?)",
                         ("exit code %d at %s" % (rc, time.strftime("%F %T")),))
        time.sleep(min(600.0, every * 2 ** min(failures, 10)))


def cmd_version(args):
    _out({"version": agent_version()})
    return 0


# ------------------------------------------------------------------------------------------- containers
def _container():
    """The container module: shipped next to this file on a node, part of the package in the source tree."""
    try:
        import skybroker_container as mod
    except ImportError:
        from skybroker.runtime import container as mod
    return mod


def _container_state():
    if not os.path.exists(os.path.join(_base(), "container.json")):
        return None
    return _container().load(_base())


def _container_call(fn):
    mod = _container()
    try:
        return fn(mod)
    except mod.ContainerError as e:
        raise AgentError(str(e), code=e.code)


def cmd_container_up(args):
    """stdin: {"spec": {image, run_options, mounts, username, server}, "password": ...}. The node's
    container is made the one the spec asks for (pulled, started); the password only reaches `login`."""
    import json

    try:
        payload = json.loads(sys.stdin.read() or "{}")
    except ValueError as e:
        raise AgentError("stdin is not valid JSON: %s" % e)
    spec = payload.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("image"), str) or not spec["image"]:
        raise AgentError("container-up: spec.image is required")
    conn = _db()
    _reconcile(conn)
    busy = bool(conn.execute("SELECT 1 FROM jobs WHERE " + _ACTIVE_SQL).fetchone())
    _out(_container_call(lambda m: m.up(_base(), spec, payload.get("password"), busy=busy)))
    return 0


def cmd_container_check(args):
    """The engine the node would use (exit code 4 when there is none)."""
    engine, kind = _container_call(lambda m: m.detect())
    _out({"engine": engine, "kind": kind})
    return 0


def cmd_container_restart(args):
    """After a stop/start of the node: the recorded container runs again (nothing recorded: nothing to do)."""
    state = _container_state()
    if state is None:
        _out({"container": None})
        return 0
    _out({"container": state["name"], "state": _container_call(lambda m: m.ensure_running(state))})
    return 0


def cmd_container_stop(args):
    _out({"stopped": _container_call(lambda m: m.stop(_base()))})
    return 0


def cmd_container_status(args):
    state = _container_state()
    if state is None:
        _out({"container": None})
        return 0
    run = _container_call(lambda m: m.running(state))
    _out({"container": state["name"], "image": state["image"], "engine": state["kind"],
          "running": run, "key": state.get("key")})
    return 0


# ------------------------------------------------------------------------------------------------ main
# command → (handler, positional (name, type, nargs: 1 or "*" or "+"), options {flag: (dest, type or bool, default)})
_COMMANDS = {
    "submit": ("cmd_submit", [], {}),
    "run": ("cmd_run", [], {"--marker": ("marker", str, None)}),
    "next-id": ("cmd_next_id", [], {"--token": ("token", str, None)}),
    "release": ("cmd_release", [("job_id", int, 1)], {}),
    "status": ("cmd_status", [], {"--job": ("job", int, None), "--token": ("token", str, None)}),
    "claim": ("cmd_claim", [("paths", str, "+")], {}),
    "cleanup": ("cmd_cleanup", [], {}),
    "logs": ("cmd_logs", [("job_id", int, 1)], {"--offset": ("offset", int, 0), "--follow": ("follow", bool, False),
                                               "--wait-seconds": ("wait_seconds", float, None),
                                               "--b64": ("b64", bool, False)}),
    "wait": ("cmd_wait", [("job_id", int, 1)], {"--timeout": ("timeout", float, None)}),
    "cancel": ("cmd_cancel", [("job_ids", int, "*")], {"--all": ("all", bool, False)}),
    "watch": ("cmd_watch", [("job_ids", int, "+")], {"--every": ("every", float, 0.3), "--beat": ("beat", float, 2.0),
                                               "--also": ("also", str, None)}),
    "idle-seconds": ("cmd_idle_seconds", [], {}),
    "autostop": ("cmd_autostop", [], {"--idle-seconds": ("idle_seconds", float, None),
                                      "--command": ("command", str, None), "--every": ("every", float, 10.0),
                                      "--follow": ("follow", str, None),
                                      "--follow-grace": ("follow_grace", float, 60.0),
                                      "--ssh-busy": ("ssh_busy", bool, False),
                                      "--clear": ("clear", bool, False)}),
    "_autostop_watch": ("cmd_autostop_watch", [], {}),
    "version": ("cmd_version", [], {}),
    "container-up": ("cmd_container_up", [], {}),
    "container-check": ("cmd_container_check", [], {}),
    "container-restart": ("cmd_container_restart", [], {}),
    "container-stop": ("cmd_container_stop", [], {}),
    "container-status": ("cmd_container_status", [], {}),
    "_runner": ("cmd_runner", [("job_id", int, 1)], {}),
}


class _Args(object):
    pass


def _parse(argv):
    """The agent's command line (its only caller is the broker's agent client): a command, its
    positionals, `--flag` / `--opt VALUE` options. A small parser instead of argparse: every call pays
    for the imports, and the agent is started for every command the broker sends."""
    if not argv or argv[0] not in _COMMANDS:
        raise AgentError("usage: agent.py {%s} ..." % ",".join(sorted(_COMMANDS)))
    handler, positional, options = _COMMANDS[argv[0]]
    args = _Args()
    args.command = argv[0]
    args.func = globals()[handler]
    for dest, typ, default in options.values():
        setattr(args, dest, default)
    rest, i = [], 1
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if a not in options:
                raise AgentError("%s: unknown option %s" % (argv[0], a))
            dest, typ, _ = options[a]
            if typ is bool:
                setattr(args, dest, True)
            else:
                if i + 1 >= len(argv):
                    raise AgentError("%s: %s needs a value" % (argv[0], a))
                setattr(args, dest, _convert(typ, argv[i + 1], a))
                i += 1
        else:
            rest.append(a)
        i += 1
    for name, typ, nargs in positional:
        if nargs == 1:
            if not rest:
                raise AgentError("%s: missing %s" % (argv[0], name))
            setattr(args, name, _convert(typ, rest.pop(0), name))
        else:
            if nargs == "+" and not rest:
                raise AgentError("%s: missing %s" % (argv[0], name))
            setattr(args, name, [_convert(typ, v, name) for v in rest])
            rest = []
    if rest:
        raise AgentError("%s: unexpected argument %s" % (argv[0], rest[0]))
    return args


def _convert(typ, value, what):
    try:
        return typ(value)
    except ValueError:
        raise AgentError("%s: invalid value %r" % (what, value))


def main(argv=None):
    try:
        args = _parse(sys.argv[1:] if argv is None else list(argv))
        if getattr(args, "offset", 0) < 0:
            raise AgentError("--offset must be >= 0")
        return args.func(args)
    except AgentError as e:
        _out({"error": str(e)})
        return e.code
    except BrokenPipeError:  # the client went away while we were streaming
        return 0
    except Exception as e:
        _out({"error": "internal error: %s: %s" % (type(e).__name__, e)})
        return 1


if __name__ == "__main__":
    sys.exit(main())
