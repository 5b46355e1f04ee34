"""Jobs in: validation of a payload, submit (insert + a detached runner), `run` (submit + follow in one call),
the runner (wait for the turn, setup, run) and job ids."""
import fcntl
import os
import sys
import time

from . import (ACTIVE_SQL, AgentError, CANCELLED, CANCEL_GRACE, FAILED, FAILED_SETUP, PENDING, POLL, RUNNING,
                SETTING_UP, SUCCEEDED, TERMINAL_STATUSES, answer, client_gone, dumps, spawn_argv)
from . import boxes, notices, procs, store


_ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(obj):
    import re

    if not isinstance(obj, dict):
        raise AgentError("job must be a JSON object")
    known = ("job_id", "name", "rank", "num_nodes", "setup", "run", "env", "secret_env", "workdir", "setup_key",
             "token", "held_seconds", "notice", "gang")
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
    g = job.get("gang")
    if g is not None:
        peers = g.get("peers") if isinstance(g, dict) else None
        if not isinstance(peers, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                  and _is_int(p[1]) for p in peers) or not all(
                isinstance(g.get(k, 1), (int, float)) and not isinstance(g.get(k, 1), bool) and g.get(k, 1) > 0
                for k in ("grace", "every")):
            raise AgentError("gang: must be {peers: [[host, port], ...], grace, every}")
    n = job["notice"]
    if n is not None:
        if not isinstance(n, dict) or n.get("kind") not in notices.NOTICE_KINDS or not isinstance(n.get("url"), str):
            raise AgentError("notice: must be {kind: %s, url, grace, every}" % "|".join(notices.NOTICE_KINDS))
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


def cmd_submit(args):
    job = _read_job()
    conn = store.db()
    job_id, status, duplicate, proc = _submit(conn, job)
    out = {"job_id": job_id, "status": status}
    if duplicate:
        out["duplicate"] = True
    key = job.get("setup_key") if job.get("setup") else None  # `job` is a valid payload (_submit checked)
    if key:  # the job's setup succeeded here before: its runner will skip it (the client says so)
        out["setup_done"] = conn.execute("SELECT 1 FROM setup_done WHERE key=?", (key,)).fetchone() is not None
    answer(out)
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
    os.makedirs(store.job_dir(job_id), exist_ok=True)
    env = dict(os.environ)
    env.pop("BROKER_RUN_ID", None)  # the runner outlives this call: killing the call's processes spares it
    rfd = wfd = None
    if watch:
        rfd, wfd = os.pipe()
    proc = None
    try:
        with store.txn(conn):
            row = store.get(conn, job_id)
            if row is not None:
                if row["spec"] != spec and not (token and row["token"] == token):
                    raise AgentError("job %d already exists with a different payload" % job_id)
                return job_id, row["status"], True, None
            with open(os.path.join(store.job_dir(job_id), "runner.err"), "ab") as err:
                proc = subprocess.Popen(spawn_argv("_runner", job_id),
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                        cwd=store.base(), start_new_session=True, close_fds=True,
                                        pass_fds=(wfd,) if watch else ())
            conn.execute(
                "INSERT INTO jobs (job_id, name, rank, num_nodes, spec, status, submitted_at, runner_pid,"
                " runner_start, boot_id, token, held_until) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, job["name"], job["rank"], job["num_nodes"], spec, PENDING, time.time(), proc.pid,
                 procs.proc_start(proc.pid), procs.boot_id(), token, time.time() + held if held else None))
            if token:
                conn.execute("INSERT OR IGNORE INTO tokens VALUES (?, ?)", (token, job_id))
        proc.stdin.write(json.dumps({"secret_env": secrets}).encode())
        proc.stdin.close()
    except BaseException:
        if proc is not None:
            proc.kill()  # the runner never got its secrets: it must not run
            with store.txn(conn):
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
    conn = store.db()
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
    out.write(marker + b" " + dumps({"job_id": job_id, "status": status, "duplicate": duplicate}).encode() + b"\n")
    out.flush()
    path, offset, last = store.log_path(job_id), 0, b"\n"
    watch = proc.watch_fd if proc is not None else None
    wait, next_reconcile = 0.01, time.time() + 1.0
    while True:
        row = store.get(conn, job_id)
        terminal = row is None or row["status"] in TERMINAL_STATUSES  # checked before reading: no lost tail
        chunk = store.read_from(path, offset)
        while chunk:
            out.write(chunk)
            out.flush()
            offset += len(chunk)
            last = chunk[-1:]
            chunk = store.read_from(path, offset)
        if terminal:
            break
        if time.time() >= next_reconcile:
            if client_gone():  # interrupted (Ctrl-C) or lost: the job keeps running, nobody reads it any more
                return 0
            procs.reconcile(conn, [row])
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
    out.write(marker + b" " + dumps({"job": store.job_out(row) if row is not None else None}).encode() + b"\n")
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
    conn = store.db()
    row = store.get(conn, job_id)
    if row is None or row["runner_pid"] != me:
        return 0
    if not isinstance(payload, dict):  # submit died before handing over the secrets
        with store.txn(conn):
            conn.execute("DELETE FROM jobs WHERE job_id=? AND runner_pid=? AND status=?", (job_id, me, PENDING))
        return 0
    spec, secrets = json.loads(row["spec"]), payload.get("secret_env") or {}
    try:
        _run_job(conn, job_id, spec, secrets)
    except Exception as e:  # never leave the job non-terminal; the client shows this reason (queue, logs -f)
        _finish(conn, job_id, FAILED, None, crash_reason(e, list((spec.get("env") or {}).values()) +
                                                        list(secrets.values())))
        traceback.print_exc()  # to jobs/<id>/runner.err; tracebacks show code lines, not variable values
        return 1
    return 0


def crash_reason(exc, values):
    """The job's reason when its runner crashed: one line, at most 300 characters, and no env or secret value
    in it (an exception's text may quote what it was given: each value of 4+ characters becomes ***)."""
    text = "agent error: %s: %s" % (type(exc).__name__, exc)
    for v in sorted((v for v in values if isinstance(v, str) and len(v) >= 4), key=len, reverse=True):
        text = text.replace(v, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _advance(conn, job_id, from_statuses, to_status):
    marks = ",".join("?" * len(from_statuses))
    with store.txn(conn):
        return conn.execute(
            "UPDATE jobs SET status=?, started_at=COALESCE(started_at, ?), pid=NULL, pgid=NULL"
            " WHERE job_id=? AND status IN (%s)" % marks,
            (to_status, time.time(), job_id) + tuple(from_statuses)).rowcount == 1


def _finish(conn, job_id, status, exit_code, reason):
    with store.txn(conn):
        conn.execute("UPDATE jobs SET status=?, exit_code=?, reason=?, ended_at=? WHERE job_id=? AND " + ACTIVE_SQL,
                     (status, exit_code, reason, time.time(), job_id))


def _run_job(conn, job_id, spec, secrets):
    while True:  # wait until this job is released (gang submit) and the oldest non-terminal job on the node
        row = store.get(conn, job_id)
        if row is None or row["status"] != PENDING:
            return
        if row["held_until"] is not None:
            if time.time() > row["held_until"]:
                with store.txn(conn):
                    conn.execute("UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=? AND status=?"
                                 " AND held_until IS NOT NULL",
                                 (CANCELLED, "never released: the client went away before every node had the job",
                                  time.time(), job_id, PENDING))
                return
            time.sleep(2 * POLL)
            continue
        ahead = conn.execute("SELECT * FROM jobs WHERE %s AND seq < ? ORDER BY seq" % ACTIVE_SQL,
                             (row["seq"],)).fetchall()
        if not ahead:
            break
        procs.reconcile(conn, ahead[:1])  # only the head can block us; a dead head must not stall the queue
        time.sleep(2 * POLL if len(ahead) == 1 else 10 * POLL)  # next in line polls fast, the rest slowly
    lock = open(os.path.join(store.base(), "run.lock"), "a")  # held until this process exits
    fcntl.flock(lock, fcntl.LOCK_EX)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(spec["env"])
    env.update(secrets)
    env["BROKER_JOB_MARK"] = procs.mark(job_id, os.getpid())
    workdir = os.path.expanduser(spec["workdir"])
    os.makedirs(workdir, exist_ok=True)
    box = boxes.container_state()
    if box is not None:  # the job runs in the node's container: only its own variables go in
        box = dict(box, env_names=sorted(set(spec["env"]) | set(secrets) | {"BROKER_JOB_MARK", "PYTHONUNBUFFERED"}))
        boxes.container().ensure_running(box)
    with open(store.log_path(job_id), "ab") as log:
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
                with store.txn(conn):
                    conn.execute("INSERT OR REPLACE INTO setup_done VALUES (?, ?)", (key, time.time()))
        if not _advance(conn, job_id, (PENDING, SETTING_UP), RUNNING):
            return
        gang = spec.get("gang") or {}  # the gang watch (gang.py) says here why it stopped the job
        rc = _phase(conn, job_id, spec["run"], workdir, env, log, notice=spec.get("notice"), box=box, gang=gang) \
            if spec["run"] else 0
        if rc is not None:
            noticed = (store.get(conn, job_id) or {"notice": None})["notice"]
            # stopped by a notice, whatever its exit code: the work is not done, the instance is going
            if noticed:
                _finish(conn, job_id, FAILED, rc, "stopped by a preemption notice (%s); exit code %d" % (noticed, rc))
            elif gang.get("lost"):
                _finish(conn, job_id, FAILED, rc, "stopped: %s; exit code %d" % (gang["lost"], rc))
            else:
                _finish(conn, job_id, SUCCEEDED if rc == 0 else FAILED, rc,
                        None if rc == 0 else "run exited with code %d" % rc)


def prologue(workdir):
    """The lines before a phase's script, as SkyPilot's (sky/skylet/log_lib.py make_task_bash_script, run with
    `/bin/bash -i`): ~/.bashrc sourced in an interactive shell, so what `setup` appends there (PATH, `conda
    activate`, a venv) holds in `run`, and conda's shell functions loaded; then the workdir. Unlike
    SkyPilot's, history expansion is off (`!x` in a script is text), SIGTERM ends the shell (an interactive
    bash ignores it: a cancelled job would run on to its next line) and job control is off (`set +m`: else
    every `cmd &` gets a process group of its own and `setsid` forks). POSIX sh (no bash) skips the bash parts."""
    import shlex

    return ("exec 2>&1\n"
            "if [ -n \"$BASH_VERSION\" ]; then\n"
            "  set +m +H; set +o history; trap 'exit 143' TERM\n"
            "  [ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n"
            "  [ -f ~/.bashrc ] && . ~/.bashrc\n"
            "  set -a; . \"$(conda info --base 2>/dev/null)/etc/profile.d/conda.sh\" >/dev/null 2>&1; set +a\n"
            "  set +m\n"
            "fi\n"
            "cd %s || exit 1\n" % shlex.quote(workdir))


def _phase(conn, job_id, command, workdir, env, log, name="run", notice=None, box=None, gang=None):
    """Run COMMAND in its own session; return its exit code, or None if the job was cancelled meanwhile.
    The script is written to a file and run from there: a command line has a size limit (128 KiB per
    argument on Linux) that a long `run:` would exceed. With BOX (the node's container) it runs there
    through the engine's `exec`, in the same paths (the home is shared). With GANG (a gang job's
    peers) the gang watch runs meanwhile and sets gang["lost"] when it stopped the job."""
    import shutil
    import subprocess
    script = os.path.join(store.job_dir(job_id), name + ".sh")
    with open(script, "w") as f:
        f.write(prologue(workdir) + command)
    bash = shutil.which("bash")
    argv = [bash, "--norc", "-i", script] if bash else ["/bin/sh", script]
    if box is not None:
        argv = boxes.container().exec_argv(box, box["env_names"], workdir, script)
    # an interactive bash with no terminal says "cannot set terminal process group" and "no job control" on
    # stderr before it reads the script: that goes nowhere, the script's first line sends stderr to the log
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.DEVNULL if box is None and bash else subprocess.STDOUT,
                            start_new_session=True)
    with store.txn(conn):
        recorded = conn.execute("UPDATE jobs SET pid=?, pgid=? WHERE job_id=? AND status IN (?, ?)",
                                (proc.pid, proc.pid, job_id, SETTING_UP, RUNNING)).rowcount
    if not recorded:
        procs.kill_group(proc.pid)
    watch = None
    if gang and gang.get("peers") and recorded:
        from .gang import Watch

        watch = Watch(gang, proc.pid, env.get("BROKER_JOB_MARK"))
    try:
        rc = notices.wait_watching(conn, job_id, proc, notice, env.get("BROKER_JOB_MARK")) if notice else proc.wait()
    finally:
        if watch is not None:
            watch.stop()
            if watch.lost:
                gang["lost"] = watch.lost
    row = store.get(conn, job_id)
    if row is None or row["status"] not in (SETTING_UP, RUNNING):
        procs.kill_group(proc.pid)  # cancelled: make sure stragglers in the group are gone too
        # in a container the engine's `exec` may end before the job's processes (they were signalled
        # directly): they get the same grace as a group before they are killed
        procs.kill_marked(env.get("BROKER_JOB_MARK"), grace=CANCEL_GRACE if box is not None else 0)
        return None
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, as a shell reports it


def _next_id(conn, token=None):
    """(id, existing): the id reserved for `token` (the same one every time), or a new one."""
    with store.txn(conn):
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
    n, existing = _next_id(store.db(), args.token)
    answer({"job_id": n, "existing": existing})
    return 0
