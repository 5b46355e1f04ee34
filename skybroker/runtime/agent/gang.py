"""The gang watch: a multi-node job whose node is gone cannot complete, so each node stops its part.

A gang job's spec carries ``gang: {"peers": [[host, port], ...], "grace": S, "every": E}`` (the other nodes'
SSH addresses, as the nodes reach each other). While the job's `run` phase runs, a thread of its runner
connects to each peer's port every E seconds; once a peer that had answered has not answered for S seconds
(killed, powered off, cut off — or this node cut off from it), the job's process group gets SIGTERM, SIGKILL
after the cancel grace, and the job ends FAILED saying which node was lost. A peer that never answered (the
nodes cannot reach each other's SSH port on that cloud) is never a reason: the watch only acts on a change.
Without a client connected (a detached job), this is what stops the survivors, as SkyPilot fails the job.
"""
import threading
import time

from . import CANCEL_GRACE, procs


def _answers(host, port, timeout):
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class Watch(object):
    """Started with the job's `run` process; `lost` is the reason once a peer was lost (else None)."""

    def __init__(self, gang, pgid, mark):
        self.peers = [(str(h), int(p)) for h, p in gang.get("peers") or ()]
        self.grace, self.every = float(gang.get("grace", 60.0)), float(gang.get("every", 5.0))
        self.pgid, self.mark, self.lost = pgid, mark, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gang-watch")
        self._thread.daemon = True
        if self.peers and self.grace > 0:
            self._thread.start()

    def _run(self):
        last_ok = {}
        while not self._stop.wait(self.every):
            now = time.monotonic()  # not the wall clock: a clock step (NTP, a resumed VM) is no silence
            for peer in self.peers:
                if _answers(peer[0], peer[1], min(3.0, self.every)):
                    last_ok[peer] = time.monotonic()
                elif peer in last_ok and now - last_ok[peer] >= self.grace:
                    self.lost = ("node %s:%d of the gang stopped answering for %.0fs (lost or cut off): "
                                 "the job cannot complete" % (peer[0], peer[1], now - last_ok[peer]))
                    self._kill()
                    return

    def _kill(self):
        import signal

        procs.signal_marked(self.mark, signal.SIGTERM)  # the job's processes in a container, too
        procs.kill_group(self.pgid, grace=CANCEL_GRACE)
        procs.kill_marked(self.mark, grace=CANCEL_GRACE)

    def stop(self):
        self._stop.set()
