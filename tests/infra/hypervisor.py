"""The hypervisor's part of an OS-initiated shutdown, linking moto EC2 instances to the netns sshd nodes
(tests/infra/netns.py) that play them.

On EC2, when an instance's OS powers off (`sudo shutdown -h now`), EC2 stops or terminates the instance
according to its InstanceInitiatedShutdownBehavior attribute ("stop" | "terminate"). moto has no guest OS
and the test nodes have no hypervisor, so this shim joins the two:

- `bin_dir()`: a directory to put first on the nodes' PATH (`NodePool(path_prefix=bin_dir())`) with
    `sudo`      runs its command as the login user (the test nodes have no sudo; EC2's `ubuntu` user has
                passwordless sudo). `-n` is accepted.
    `shutdown`  records the power-off request in the node's own /tmp and exits 0 as shutdown(8) does;
                it never touches the host.
- `Hypervisor(pool, nodes, backend_of)`: a thread that notices a node's power-off request, reads that
  instance's InstanceInitiatedShutdownBehavior from moto's backend (what DescribeInstanceAttribute
  returns), applies it there (stop or terminate, state reason Client.InstanceInitiatedShutdown, as EC2
  reports it) and powers the node off: every process in it dies and its address stops answering.

What it reproduces: the instance's fate is decided by the attribute the broker set (a broker that did not
set it gets EC2's default behaviour, "stop"); nothing outside the node asks for it (no API call from a
client); the machine is gone afterwards. What it does not: shutdown's own delay and EC2's ~1 min to stop
(here ~0.1 s); a stopped instance's disk surviving for a later start (the node is gone; a start would need
a new node); the OS's ACPI path (a plain `poweroff`/`halt` is not watched, only `shutdown`).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

REQUEST = "hypervisor-poweroff-request"  # in the node's /tmp

_SUDO = """#!/bin/sh
# test shim: EC2's ubuntu user has passwordless sudo; here the command simply runs as the login user
while [ $# -gt 0 ]; do case "$1" in -n|-E|-H) shift ;; --) shift; break ;; *) break ;; esac; done
exec "$@"
"""
_SHUTDOWN = f"""#!/bin/sh
# test shim: the guest asks its hypervisor to power it off (tests/infra/hypervisor.py acts on it)
echo "shutdown $*" > /tmp/{REQUEST}.tmp && mv /tmp/{REQUEST}.tmp /tmp/{REQUEST}
exit 0
"""


def bin_dir() -> str:
    """A new directory (under /var/tmp: the nodes shadow /tmp) holding the `sudo` and `shutdown` shims,
    readable by the nodes' login user. Remove it with shutil.rmtree when done."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="skybroker-hypervisor-", dir="/var/tmp"))
    for name, text in (("sudo", _SUDO), ("shutdown", _SHUTDOWN)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    d.chmod(0o755)
    return str(d)


class Hypervisor:
    """`nodes`: instance id → netns Node (the dict the RunInstances hook fills); `backend_of(instance_id)`:
    moto's EC2 backend holding the instance. `fired`: [(instance id, behaviour)] in order."""

    def __init__(self, pool, nodes: dict, backend_of: Callable[[str], object], lock: threading.Lock,
                 poll: float = 0.1):
        self.pool, self.nodes, self.backend_of, self.lock, self.poll = pool, nodes, backend_of, lock, poll
        self.fired: list[tuple[str, str]] = []
        self.fired_at: list[float] = []  # time.monotonic() of each power-off
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hypervisor")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            with self.lock:
                items = list(self.nodes.items())
            for instance_id, node in items:
                if node.alive and node.tmp is not None and (node.tmp / REQUEST).exists():
                    self._power_off(instance_id, node)

    def _power_off(self, instance_id: str, node) -> None:
        from moto.ec2.models.instances import StateReason

        backend = self.backend_of(instance_id)
        inst = backend.get_instance(instance_id)
        behaviour = inst.instance_initiated_shutdown_behavior or "stop"
        self.pool.kill(node)  # the OS is gone first: nothing runs on it any more
        if behaviour == "terminate":
            backend.terminate_instances([instance_id])
        else:
            backend.stop_instances([instance_id])
        inst.state_reason = StateReason(message="Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                                        code="Client.InstanceInitiatedShutdown")
        with self.lock:
            self.nodes.pop(instance_id, None)
        self.fired.append((instance_id, behaviour))
        self.fired_at.append(time.monotonic())
