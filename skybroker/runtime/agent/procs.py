"""The agent's view of processes: liveness through /proc (pid + start time + boot id), process groups, the
job mark that finds a job's processes even outside its group, and reconcile (a job whose runner is gone fails)."""
import os
import time

from . import ACTIVE_SQL, CANCEL_GRACE, FAILED, PENDING
from . import store


def boot_id():
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


def proc_start(pid):
    st = _proc_stat(pid)
    return st[19] if st else None


def alive(pid, start=None):
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


def kill_group(pgid, grace=CANCEL_GRACE):
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


def mark(job_id, runner_pid):
    """The value of BROKER_JOB_MARK in every process of a job: found again even in descendants that left
    the job's process group (setsid, daemonized), so cancel leaves nothing of the job running."""
    return "%s-%s" % (job_id, runner_pid)


def _marked(tag):
    """Pids of the processes whose environment carries BROKER_JOB_MARK=MARK (also those of the job in the
    node's container: the engine's processes are this machine's)."""
    if not tag or not _has_proc():
        return []
    needle = ("BROKER_JOB_MARK=%s" % tag).encode()
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


def signal_marked(tag, sig):
    for pid in _marked(tag):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_marked(tag, grace=0):
    """SIGKILL the job's marked processes; with GRACE, first wait that long for them to end by themselves."""
    deadline = time.time() + grace
    while grace and time.time() < deadline and _marked(tag):
        time.sleep(0.05)
    signal_marked(tag, 9)  # SIGKILL


def reconcile(conn, rows=None):
    """Mark non-terminal jobs (default: all) whose runner is gone as FAILED and kill their leftovers."""
    boot = boot_id()
    for row in conn.execute("SELECT * FROM jobs WHERE " + ACTIVE_SQL).fetchall() if rows is None else rows:
        same_boot = row["boot_id"] == boot
        if same_boot and alive(row["runner_pid"], row["runner_start"]):
            continue
        reason = ("node rebooted while the job was %s" if not same_boot
                  else "agent runner process died while the job was %s") % row["status"]
        with store.txn(conn):
            updated = conn.execute(
                "UPDATE jobs SET status=?, reason=?, ended_at=? WHERE job_id=? AND status=? AND runner_pid=?",
                (FAILED, reason, time.time(), row["job_id"], row["status"], row["runner_pid"])).rowcount
        if updated and same_boot and row["pgid"] and row["status"] != PENDING:
            kill_group(row["pgid"], grace=0)
        if updated and same_boot:
            kill_marked(mark(row["job_id"], row["runner_pid"]))
