"""skybroker node agent: the per-node FIFO job queue.

Self-contained, stdlib only, Python >= 3.8. Copied to every node as the package
``~/.skybroker-node/skybroker_agent/`` (these files) with a small launcher
``~/.skybroker-node/agent.py``, and driven only by the client in skybroker/runtime/agent_client.py (the one
place that speaks this protocol) as ``python3 -S ~/.skybroker-node/agent.py <command> ...``; every command
prints one JSON document on stdout (except ``logs`` without ``--b64``, which streams raw bytes). Exit codes: 0
ok, 1 internal error, 2 bad input, 3 no such job.

The node's own files live in ``~/.skybroker-node`` (never ``~/.broker``, which is the client's default
state directory: an SSH pool host may be the user's own machine).  ``claim PATH`` records in the manifest
a path the broker is about to create (the workdir, the checkpoint directory) if it does not exist yet;
``cleanup`` (teardown of an SSH pool host) cancels every job, removes the claimed paths and the node
directory, and nothing else.

Design
------
* State: ``~/.skybroker-node/agent.db`` (SQLite, WAL).  Every read-modify-write is a ``BEGIN IMMEDIATE``
  transaction, so concurrent agent invocations serialise on SQLite's lock.  Logs: ``~/.skybroker-node/jobs/<id>/run.log``.
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
* Setup is skipped when ``setup_key`` is recorded in ``setup_done`` (written after a successful setup on
  this node, so a failed or interrupted setup runs again). The client always sends the task's setup with
  its key; this record is the only judge. ``submit`` answers ``setup_done`` (whether the key is recorded
  at submit time) for a job with setup and key, so the client can say the setup will be skipped.
* ``next-id`` reserves the id it returns (max of known and previously issued ids, + 1).  With ``--token T``
  it is idempotent: the same token always gets the same id, so a client that restarts (the managed-jobs
  controller) finds the job it already submitted (``status --token T``) instead of running it twice.
* Gang submit is two-phase: the client submits with ``held`` to every node, then ``release``s it on every
  node once all have it; a held job does not start.  A job never released within ``held_seconds`` (the
  client died mid-submit) cancels itself, so a node that missed the submit never leaves the others running
  or PENDING forever.

* Containers (``image_id: docker:...``): ``container-up`` (spec and registry password on stdin),
  ``container-check``, ``container-restart``, ``container-stop``, ``container-status``; the work is in
  ``container.py`` of this package (commands in ``boxes.py``). While the node has a container,
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
(queries.cmd_watch), until every job is terminal or the client is gone. ``logs --follow`` and ``run`` also
end, within a second, once their client is gone (``client_gone``: the channel closed), even while the job
prints nothing.
Jobs get PYTHONUNBUFFERED=1 unless their env sets it.
"""
import os
import sys

# Imported where used, because the agent starts for every command the broker sends and its start-up is
# paid on every poll: sqlite3 (see store._sqlite), json (it imports and compiles `re`; answers are encoded by
# dumps below), re, signal (it imports enum), contextlib, base64, hashlib, shutil, subprocess, traceback.
# For the same reason a command imports only the modules of this package it needs (see _COMMANDS).

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
ACTIVE_SQL = "status IN ('PENDING', 'SETTING_UP', 'RUNNING')"
PACKAGE = "skybroker_agent"  # the package's name on a node (~/.skybroker-node/skybroker_agent/)
FILES = ("__init__.py", "store.py", "procs.py", "jobs.py", "notices.py", "queries.py", "autostop.py", "boxes.py",
         "container.py", "gang.py")


def sources():
    """[(file name, bytes)] of this package, so the client can upload it to nodes."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for name in FILES:
        with open(os.path.join(here, name), "rb") as f:
            out.append((name, f.read()))
    return out


def spawn_argv(*args):
    """The command line that starts this agent again with ARGS (a job's runner, the autostop watcher):
    this package imported from where it is (on a node, its parent is ~/.skybroker-node)."""
    parent = os.path.dirname(os.path.abspath(__file__))
    for _ in range(__name__.count(".") + 1):
        parent = os.path.dirname(parent)
    code = "import sys; sys.path.insert(0, %r); import %s as a; sys.exit(a.main())" % (parent, __name__)
    return [sys.executable, "-S", "-c", code] + [str(a) for a in args]


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
    """A hash of every file of the package: a node whose agent differs in any of them gets the new one."""
    try:
        h = _sha256(b"")
        for name, data in sources():
            h.update(name.encode() + b"\0" + data + b"\0")
        return "1+" + h.hexdigest()[:12]
    except OSError:  # pragma: no cover - running without a source file
        return "1+unknown"


class AgentError(Exception):
    def __init__(self, message, code=2):
        Exception.__init__(self, message)
        self.code = code


def dumps(obj):
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
        return "{" + ", ".join(enc(str(k)) + ": " + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    raise TypeError("cannot encode %r" % type(obj).__name__)


def answer(obj):
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def client_gone(fd=1):
    """Whether the reader of our stdout is gone (the SSH channel closed: the client was interrupted or
    lost), without writing to it: a pipe or socket whose other end closed polls POLLERR/POLLHUP. A follow
    of a job that prints nothing would otherwise only notice at its next write (EPIPE)."""
    import select

    try:
        p = select.poll()
        p.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no poll() here
        return False


def cmd_version(args):
    answer({"version": agent_version()})
    return 0


# command → (handler, positional (name, type, nargs: 1 or "*" or "+"), options {flag: (dest, type or bool, default)})
_COMMANDS = {
    "submit": ("jobs.cmd_submit", [], {}),
    "run": ("jobs.cmd_run", [], {"--marker": ("marker", str, None)}),
    "next-id": ("jobs.cmd_next_id", [], {"--token": ("token", str, None)}),
    "release": ("queries.cmd_release", [("job_id", int, 1)], {}),
    "status": ("queries.cmd_status", [], {"--job": ("job", int, None), "--token": ("token", str, None)}),
    "claim": ("queries.cmd_claim", [("paths", str, "+")], {}),
    "cleanup": ("queries.cmd_cleanup", [], {}),
    "logs": ("queries.cmd_logs", [("job_id", int, 1)], {"--offset": ("offset", int, 0), "--follow": ("follow", bool, False),
                                               "--wait-seconds": ("wait_seconds", float, None),
                                               "--b64": ("b64", bool, False)}),
    "wait": ("queries.cmd_wait", [("job_id", int, 1)], {"--timeout": ("timeout", float, None)}),
    "cancel": ("queries.cmd_cancel", [("job_ids", int, "*")], {"--all": ("all", bool, False)}),
    "watch": ("queries.cmd_watch", [("job_ids", int, "+")], {"--every": ("every", float, 0.3), "--beat": ("beat", float, 2.0),
                                               "--also": ("also", str, None)}),
    "idle-seconds": ("queries.cmd_idle_seconds", [], {}),
    "autostop": ("autostop.cmd_autostop", [], {"--idle-seconds": ("idle_seconds", float, None),
                                      "--command": ("command", str, None), "--every": ("every", float, 10.0),
                                      "--follow": ("follow", str, None),
                                      "--follow-grace": ("follow_grace", float, 60.0),
                                      "--ssh-busy": ("ssh_busy", bool, False),
                                      "--clear": ("clear", bool, False)}),
    "_autostop_watch": ("autostop.cmd_autostop_watch", [], {}),
    "version": ("cmd_version", [], {}),
    "container-up": ("boxes.cmd_container_up", [], {}),
    "container-check": ("boxes.cmd_container_check", [], {}),
    "container-restart": ("boxes.cmd_container_restart", [], {}),
    "container-stop": ("boxes.cmd_container_stop", [], {}),
    "container-status": ("boxes.cmd_container_status", [], {}),
    "_runner": ("jobs.cmd_runner", [("job_id", int, 1)], {}),
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
    module, _, func = handler.rpartition(".")
    args.func = getattr(__import__(__name__ + "." + module, fromlist=[func]), func) if module else globals()[func]
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
        answer({"error": str(e)})
        return e.code
    except BrokenPipeError:  # the client went away while we were streaming
        return 0
    except Exception as e:
        if _stale_bytecode(e):
            answer({"error": "a truncated bytecode file of the agent (written while the node's disk was full) was "
                             "removed; the command did not run: run it again"})
            return 1
        full = disk_full(e)
        if full:  # one line naming the disk, not an "internal error" (the client adds the node's name)
            answer({"error": full, "disk_full": True})
            return 1
        answer({"error": "internal error: %s: %s" % (type(e).__name__, e)})
        return 1


def _stale_bytecode(exc):
    """True (after removing the package's bytecode) if `exc` comes from Python loading a truncated .pyc of
    this package (an old launcher wrote it while the disk was full): the next call compiles afresh."""
    if not isinstance(exc, (EOFError, ValueError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<frozen importlib._bootstrap_external>":
        tb = tb.tb_next
    if tb is None:
        return False
    import shutil

    shutil.rmtree(os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"), ignore_errors=True)
    return True


def disk_full(exc):
    """The answer for an error that comes from the node's disk being full, else None: ENOSPC, SQLite's
    "database or disk is full", or SQLite's "disk I/O error" (a WAL that cannot grow) while the disk has
    (almost) no space left."""
    text = str(exc)
    home = os.path.join(os.path.expanduser("~"), NODE_DIR)
    try:
        st = os.statvfs(home if os.path.isdir(home) else os.path.expanduser("~"))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    full = getattr(exc, "errno", None) == 28 or "database or disk is full" in text  # 28: ENOSPC
    if not full and not ("disk I/O error" in text and free is not None and free < (1 << 20)):
        return None
    return "its disk is full: %s cannot be written (%s%s)" % (
        os.path.join(home, "agent.db"), text, "" if free is None else "; %d KiB free" % (free // 1024))

