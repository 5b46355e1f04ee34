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
- `Hypervisor.ec2(pool, nodes, backend_of, lock)`: a thread that notices a node's power-off request,
  reads that instance's InstanceInitiatedShutdownBehavior from moto's backend (what DescribeInstanceAttribute
  returns), applies it there (stop or terminate, state reason Client.InstanceInitiatedShutdown, as EC2
  reports it) and powers the node off: every process in it dies and its address stops answering.
- `Hypervisor.gce(fake)`: the same for the GCE fake: a guest shutdown stops the VM (TERMINATED), as on GCE.

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
    """A thread that powers a node off once its guest asked to (`shutdown`). `machines()` lists
    (instance key, netns Node) of the running machines; `power_off(key, node)` is the cloud's reaction
    and returns what it did ("stop" or "terminate"). `fired`: [(key, what)] in order, `fired_at` their
    time.monotonic(). `ec2(...)` and `gce(...)` build the two clouds' reactions."""

    def __init__(self, machines: Callable[[], list], power_off: Callable[[object, object], str], poll: float = 0.1):
        self.machines, self.power_off, self.poll = machines, power_off, poll
        self.fired: list[tuple[object, str]] = []
        self.fired_at: list[float] = []
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
            for key, node in self.machines():
                if node.alive and node.tmp is not None and (node.tmp / REQUEST).exists():
                    what = self.power_off(key, node)
                    self.fired.append((key, what))
                    self.fired_at.append(time.monotonic())

    @classmethod
    def ec2(cls, pool, nodes: dict, backend_of: Callable[[str], object], lock: threading.Lock) -> "Hypervisor":
        """EC2: `nodes` is instance id → Node (filled by the RunInstances hook), `backend_of(id)` moto's
        backend holding the instance. The instance stops or terminates as its InstanceInitiatedShutdownBehavior
        says (moto's value, what DescribeInstanceAttribute returns), state reason Client.InstanceInitiatedShutdown."""
        def machines():
            with lock:
                return list(nodes.items())

        def power_off(instance_id, node):
            from moto.ec2.models.instances import StateReason

            backend = backend_of(instance_id)
            inst = backend.get_instance(instance_id)
            behaviour = inst.instance_initiated_shutdown_behavior or "stop"
            pool.kill(node)  # the OS is gone first: nothing runs on it any more
            if behaviour == "terminate":
                backend.terminate_instances([instance_id])
            else:
                backend.stop_instances([instance_id])
            inst.state_reason = StateReason(message="Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                                            code="Client.InstanceInitiatedShutdown")
            with lock:
                nodes.pop(instance_id, None)
            return behaviour

        return cls(machines, power_off)

    @classmethod
    def gce(cls, fake) -> "Hypervisor":
        """Compute Engine (tests/infra/gce_fake.py with a node pool): a guest shutdown stops the VM, as GCE
        does (STOPPING → TERMINATED, disks kept); deleting needs an API call, never a guest shutdown."""
        def machines():
            with fake.lock:
                return [(name, inst["_node"]) for (_, name), inst in fake._instances.items() if inst.get("_node")]

        def power_off(name, node):
            fake.guest_shutdown(name)
            return "stop"

        return cls(machines, power_off)
