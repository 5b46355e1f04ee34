"""Preemption notices (see the comment below)."""
from . import procs, store


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


def wait_watching(conn, job_id, proc, n, mark=None):
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
        with store.txn(conn):
            conn.execute("UPDATE jobs SET notice=? WHERE job_id=?", (text, job_id))
        import signal

        procs.signal_marked(mark, signal.SIGTERM)  # the job's processes in a container, too
        procs.kill_group(proc.pid, grace=grace)
        rc = proc.wait()
        procs.kill_marked(mark, grace=grace)
        return rc
