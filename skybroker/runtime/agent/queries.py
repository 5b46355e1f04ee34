"""Commands that look at, follow, wait for, cancel or clean up jobs on the node."""
import os
import sys
import time

from . import (ACTIVE_SQL, CANCEL_GRACE, CANCELLED, PENDING, POLL, TERMINAL_STATUSES, AgentError, answer,
               client_gone, dumps)
from . import boxes, procs, store


def cmd_release(args):
    conn = store.db()
    with store.txn(conn):
        row = store.get(conn, args.job_id)
        if row is None:
            raise AgentError("no such job: %d" % args.job_id, code=3)
        conn.execute("UPDATE jobs SET held_until=NULL WHERE job_id=? AND status=?", (args.job_id, PENDING))
    row = store.get(conn, args.job_id)
    answer({"job_id": args.job_id, "status": row["status"]})
    return 0


def cmd_status(args):
    conn = store.db()
    procs.reconcile(conn)
    if args.job is not None:
        rows = conn.execute("SELECT * FROM jobs WHERE job_id=?", (args.job,)).fetchall()
    elif args.token is not None:
        rows = conn.execute("SELECT j.* FROM jobs j JOIN tokens t ON t.job_id = j.job_id WHERE t.token=?",
                            (args.token,)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    answer({"jobs": [store.job_out(r) for r in rows]})
    return 0


def cmd_logs(args):
    conn = store.db()
    if store.get(conn, args.job_id) is None:
        sys.stderr.write("no such job: %d\n" % args.job_id)
        return 3
    if args.b64:
        return _logs_b64(conn, args)
    path, offset, out = store.log_path(args.job_id), args.offset, sys.stdout.buffer
    deadline = None if args.wait_seconds is None else time.time() + args.wait_seconds
    next_reconcile = time.time() + 1.0
    while True:
        terminal = store.get(conn, args.job_id)["status"] in TERMINAL_STATUSES  # checked before reading: no lost tail
        got = False
        while True:
            chunk = store.read_from(path, offset)
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
            if args.follow and client_gone():  # interrupted (Ctrl-C) or lost: nobody reads any more
                return 0
            procs.reconcile(conn)
            next_reconcile = time.time() + 1.0
        if not got:
            time.sleep(POLL)


def _logs_b64(conn, args):
    """Up to 1 MiB from --offset (waiting up to --wait-seconds for new bytes), as exact bytes, with the
    job's row (after checking that its runner is alive): one call is a whole poll of a job on a node."""
    import base64

    deadline = time.time() + (args.wait_seconds or 0)
    while True:
        row = store.get(conn, args.job_id)
        if row["status"] not in TERMINAL_STATUSES:
            procs.reconcile(conn, [row])
            row = store.get(conn, args.job_id)
        status = row["status"]  # read before the data: a terminal status means no more data comes
        chunk = store.read_from(store.log_path(args.job_id), args.offset)
        if chunk or status in TERMINAL_STATUSES or time.time() >= deadline:
            break
        time.sleep(POLL)
    answer({"data": base64.b64encode(chunk).decode("ascii"), "offset": args.offset,
          "next": args.offset + len(chunk), "status": status, "job": store.job_out(row)})
    return 0


def cmd_claim(args):
    """Record paths the broker is about to create (only those that do not exist yet). For a path whose
    parent directories are missing too, the outermost missing one is recorded as its `top`: the cleanup
    removes the path, then those parents only while they are empty (never what else was put there)."""
    conn = store.db()
    claimed = []
    with store.txn(conn):
        for p in args.paths:
            full = os.path.abspath(os.path.expanduser(p))
            top = _outermost_missing(full)
            if not os.path.lexists(full) and _removable(full):
                conn.execute("INSERT OR IGNORE INTO claims (path, claimed_at, top) VALUES (?, ?, ?)",
                             (full, time.time(), top if top != full and _removable(top) else None))
                claimed.append(full)
    answer({"claimed": claimed})
    return 0


def _outermost_missing(path):
    """`path`, or its outermost ancestor strictly below the home directory that does not exist yet."""
    home = os.path.realpath(os.path.expanduser("~"))
    top, parent = path, os.path.dirname(path)
    while parent != top and parent.startswith(home + os.sep) and not os.path.lexists(parent):
        top, parent = parent, os.path.dirname(parent)
    return top


def _mounted_under(path):
    """Whether a file system is mounted at `path` or below it (a bucket MOUNT, a bind mount): such a
    path is never removed (a removal would walk into it)."""
    try:
        with open("/proc/self/mounts") as f:
            points = [ln.split()[1].replace("\\040", " ") for ln in f if len(ln.split()) > 1]
    except OSError:
        return False
    real = os.path.realpath(path)
    return any(p == real or p.startswith(real + os.sep) for p in points)


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
    base = store.base()
    if not os.path.isdir(base):
        answer({"removed": []})
        return 0
    if _looks_like_client_home(base):
        raise AgentError("%s holds a client state database; refusing to remove it" % base)
    conn = store.db()
    args.all, args.job_ids = True, []
    import contextlib

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        cmd_cancel(args)
    if boxes.container_state() is not None:
        boxes.container_call(lambda m: m.down(base))
    _unmount_buckets(base)
    removed = []
    for path, top in conn.execute("SELECT path, top FROM claims ORDER BY length(path) DESC").fetchall():
        if os.path.lexists(path) and _removable(path) and not _mounted_under(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            removed.append(path)
        removed += _prune_empty(path, top)
    conn.close()
    shutil.rmtree(base, ignore_errors=True)
    removed.append(base)
    answer({"removed": removed})
    return 0


def _prune_empty(path, top):
    """The directories the broker made for `path` (up to its claimed `top`), removed while empty: a file
    the user or the job put beside it keeps them."""
    out = []
    parent = os.path.dirname(path)
    while top and (parent == top or parent.startswith(top + os.sep)) and _removable(parent):
        try:
            os.rmdir(parent)  # fails on a non-empty directory, a symlink or a mount point in use
        except OSError:
            break
        out.append(parent)
        parent = os.path.dirname(parent)
    return out


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
    conn = store.db()
    deadline = None if args.timeout is None else time.time() + args.timeout
    while True:
        procs.reconcile(conn)
        row = store.get(conn, args.job_id)
        if row is None:
            raise AgentError("no such job: %d" % args.job_id, code=3)
        timed_out = deadline is not None and time.time() >= deadline
        if row["status"] in TERMINAL_STATUSES or timed_out:
            answer({"jobs": [store.job_out(row)], "timed_out": row["status"] not in TERMINAL_STATUSES})
            return 0
        time.sleep(0.1)


def cmd_watch(args):
    """The broker's channel to jobs on this node: one line per change of a watched job, {"job": ID, "row": ROW,
    "size": N} when its row changed (the first line of each; ROW null: no such job) or {"job": ID, "size": N}
    when only its log grew, {"also": PATH} when --also moved, {"beat": 1} every --beat seconds. A few stats
    per --every seconds; the rows are read when the database moved and on each beat (after a reconcile).
    Ends when every watched job is terminal or unknown, or when the client is gone (a write fails)."""
    conn, wal = store.db(), os.path.join(store.base(), "agent.db-wal")
    also = os.path.join(os.path.expanduser("~"), args.also) if args.also else None
    marks, rows, sizes, seen, beat_at = ",".join("?" * len(args.job_ids)), {}, {}, [None, None], 0.0
    while True:
        now, lines = time.time(), []
        if now >= beat_at or store.stat(wal) != seen[0]:
            if now >= beat_at:
                procs.reconcile(conn, conn.execute("SELECT * FROM jobs WHERE %s AND job_id IN (%s)" % (ACTIVE_SQL, marks),
                                              args.job_ids).fetchall())
            seen[0] = store.stat(wal)  # before the read: a change during it is seen next time
            got = dict((r["job_id"], store.job_out(r)) for r in conn.execute(
                "SELECT * FROM jobs WHERE job_id IN (%s)" % marks, args.job_ids).fetchall())
            rows_now = dict((j, got.get(j)) for j in args.job_ids)
        else:
            rows_now = rows
        for j in args.job_ids:
            size = (store.stat(store.log_path(j)) or (0, 0))[1]
            if j not in rows or rows_now[j] != rows[j]:
                lines.append({"job": j, "row": rows_now[j], "size": size})
            elif size != sizes[j]:
                lines.append({"job": j, "size": size})
            sizes[j] = size
        rows = rows_now
        if also and store.stat(also) != seen[1]:
            seen[1] = store.stat(also)
            lines.append({"also": args.also})
        if now >= beat_at:
            lines.append({"beat": 1})
            beat_at = now + args.beat
        if lines:
            sys.stdout.write("".join(dumps(o) + "\n" for o in lines))
            sys.stdout.flush()
        if all(r is None or r["status"] in TERMINAL_STATUSES for r in rows.values()):
            return 0
        time.sleep(args.every)


def cmd_cancel(args):
    if not args.all and not args.job_ids:
        raise AgentError("cancel: give job ids or --all")
    conn = store.db()
    with store.txn(conn):
        rows = conn.execute("SELECT * FROM jobs WHERE " + ACTIVE_SQL + " ORDER BY seq").fetchall()
        rows = [r for r in rows if args.all or r["job_id"] in args.job_ids]
        for r in rows:
            conn.execute("UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=?",
                         (CANCELLED, "cancelled", time.time(), r["job_id"]))
    boot = procs.boot_id()
    for r in rows:
        if r["status"] == PENDING or r["boot_id"] != boot:
            continue
        if r["pgid"]:
            import signal

            procs.signal_marked(procs.mark(r["job_id"], r["runner_pid"]), signal.SIGTERM)  # also in the container
            procs.kill_group(r["pgid"])
        deadline = time.time() + CANCEL_GRACE + 3.0  # the runner kills a group it had not recorded yet
        while procs.alive(r["runner_pid"], r["runner_start"]) and time.time() < deadline:
            time.sleep(0.02)
        procs.kill_marked(procs.mark(r["job_id"], r["runner_pid"]))
    answer({"cancelled": [r["job_id"] for r in rows]})
    return 0


def _idle(conn):
    """Seconds this node has been idle (no PENDING/SETTING_UP/RUNNING job); 0 while busy."""
    idle = idle_for(conn)
    return 0.0 if idle is None else idle


def idle_for(conn):
    """Like _idle, but None while busy (so that an idle limit of 0 never fires on a busy node)."""
    procs.reconcile(conn)
    if conn.execute("SELECT COUNT(*) FROM jobs WHERE " + ACTIVE_SQL).fetchone()[0]:
        return None
    created = float(conn.execute("SELECT v FROM meta WHERE k='created_at'").fetchone()[0])
    armed = conn.execute("SELECT v FROM meta WHERE k='autostop_armed_at'").fetchone()
    ended = conn.execute("SELECT MAX(ended_at) FROM jobs").fetchone()[0]
    return max(0.0, time.time() - max(created, float(armed[0]) if armed else 0.0, ended or 0.0))


def cmd_idle_seconds(args):
    answer({"idle_seconds": _idle(store.db())})
    return 0
