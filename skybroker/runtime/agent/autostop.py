"""Autostop on the node itself (see the comment below)."""
import fcntl
import os
import sys
import time

from . import AgentError, answer, spawn_argv
from . import queries, store


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


def cmd_autostop(args):
    conn = store.db()
    with store.txn(conn):
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
    answer({"armed": not args.clear})
    return 0


def _spawn_watcher():
    import subprocess

    lock = os.path.join(store.base(), "autostop.lock")
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a watcher holds it: it rereads the settings every round
        fcntl.flock(f, fcntl.LOCK_UN)
    with open(os.path.join(store.base(), "autostop.log"), "ab") as log:
        subprocess.Popen(spawn_argv("_autostop_watch"), stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, cwd=store.base(), start_new_session=True, close_fds=True)


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

    lock = open(os.path.join(store.base(), "autostop.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0
    conn = store.db()
    head_gone_since, failures, ssh_seen = None, 0, None
    while True:
        idle_for, command = store.meta(conn, "autostop_idle"), store.meta(conn, "autostop_cmd")
        if idle_for is None or command is None:
            return 0  # cleared
        every = float(store.meta(conn, "autostop_every") or 10)
        follow = store.meta(conn, "autostop_follow")
        idle = queries.idle_for(conn)
        if idle is not None and store.meta(conn, "autostop_ssh"):
            if _ssh_sessions():
                ssh_seen, idle = time.time(), None
            elif ssh_seen is not None:
                idle = min(idle, time.time() - ssh_seen)
        due = idle is not None and idle >= float(idle_for)
        if due and follow:
            grace = float(store.meta(conn, "autostop_follow_grace") or 60)
            if _answers(follow, timeout=max(0.5, min(3.0, grace))):
                head_gone_since, due = None, False
            else:
                head_gone_since = head_gone_since or time.time()
                due = time.time() - head_gone_since >= grace
        if not due:
            time.sleep(every)
            continue
        with store.txn(conn):
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
        with store.txn(conn):
            if store.meta(conn, "autostop_idle") is None:  # not re-armed or cleared meanwhile
                for k, v in saved:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('autostop_error', ?)",
                         ("exit code %d at %s" % (rc, time.strftime("%F %T")),))
        time.sleep(min(600.0, every * 2 ** min(failures, 10)))
