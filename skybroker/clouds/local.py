"""The `local` provider: nodes are sandboxes on this machine — one directory (used as $HOME) and one
process group per command each, and a command runner without SSH. No account, no root, zero price
(unless BROKER_LOCAL_PRICES pretends otherwise, see `local_prices`).

Node i of cluster C lives in BROKER_HOME/local/C/node-i and answers at 127.0.0.(i+1) (every 127/8
address is this machine), so rank/IP plumbing is exercised as on a real cluster.

Spot is simulated, like a cloud's mock provider with fault switches: spot nodes are marked spot, and
while the file BROKER_HOME/local/NO_SPOT_CAPACITY exists a spot launch fails with a zone CapacityError.
A "preemption" is deleting a node (see `preempt`).

Autostop on the cluster (capabilities.self_stop): the head node's agent runs

    <the broker's python> -m skybroker.clouds.local self-stop --home BROKER_HOME --cluster C --action stop|down

once idle: this "cloud's" API (node.json files) stopped or terminated by the cluster itself, with no
client process involved, the way a VM calls its cloud with a credential scoped to its own cluster. The
client learns of it like of any cloud change: `broker status --refresh` (or any command on the cluster).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from ..errors import BrokerError, CapacityError, InvalidRequestError, Place
from ..paths import broker_home, private_dir
from ..runtime.local_runner import LocalRunner
from ..runtime.runner import NodeUnreachable
from .local_volumes import LocalVolumes
from .base import RUNNING, STOPPED, Capabilities, InstanceInfo, ProvisionRequest, Provider, TaggedResource

_META = "node.json"
MAX_NODES = 250


def machine_shape() -> tuple[float, float]:
    """(vCPUs, GiB of memory) of this machine: what every local node has (its offer, a local pool's workers)."""
    return float(os.cpu_count() or 1), _mem_gib()


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


_HOME = ".home"  # in a cluster's directory: the id of the home that made it (clouds.base.TAG_HOME)


def settings_root() -> str | None:
    """BROKER_LOCAL_ROOT when set (a directory several homes may share), else None (BROKER_HOME/local)."""
    from .. import settings

    return settings.get("local_root") or None


class LocalCloud(LocalVolumes, Provider):
    name = "local"
    capabilities = Capabilities(stop=True, spot=True, firewall=False, accelerators=False, priced=False,
                                named_only=True, remote=False, gone_reasons=False, tagged_listing=True,
                                self_stop=True, volumes=True, max_nodes=MAX_NODES)

    # -- offers ------------------------------------------------------------------------------------
    def virtual_offers(self, res) -> list:
        """This machine, free. Its shape is the machine's: a task asking for more vCPUs or memory than it
        has (`cpus`/`memory` as given, at least or exactly: every node is a sandbox on this machine, so
        asking for less is fine) gets no offer; SkyPilot's CPU defaults (`cpus: 8+`, `memory: 4x`) are not
        applied, as nothing else could be chosen. `use_spot` is honoured (free either way) so spot logic can
        be exercised without a cloud."""
        from ..optimizer import Candidate

        if res.accelerator:
            return []
        vcpus, mem = machine_shape()
        if res.cpus is not None and res.cpus.value > vcpus + 1e-9:
            return []
        if res.memory is not None and mem > 0:  # `4x` (per vCPU) is checked against the vCPUs asked for
            want = res.memory.value if not res.memory.per_cpu else \
                res.memory.value * res.cpus.value if res.cpus is not None else 0.0
            if want > mem + 1e-9:
                return []
        prices = local_prices()
        price = prices["spot"] if res.use_spot else prices["od"]
        return [Candidate(res, 0, self.name, None, None, "local", vcpus, mem, None, 0.0, res.use_spot, price, 1)]

    def _root(self) -> Path:
        root = settings_root()
        return Path(root).expanduser() if root else broker_home() / "local"

    def _cluster_dir(self, cluster: str) -> Path:
        return self._root() / cluster

    def _info(self, d: Path) -> InstanceInfo | None:
        try:
            meta = json.loads((d / _META).read_text())
        except (OSError, ValueError):
            return None
        return InstanceInfo(meta["instance_id"], meta.get("state", RUNNING), meta["ip"], meta["ip"],
                            os.environ.get("USER", "local"), 0, None, bool(meta.get("spot")),
                            {"skybroker-cluster": meta["cluster"]}, None, str(d), None, meta["rank"])

    # -- provisioning ------------------------------------------------------------------------------
    def run_instances(self, req: ProvisionRequest) -> list[str]:
        if req.accelerator:
            raise InvalidRequestError("the local cloud has no accelerators")
        if req.use_spot and (self._root() / "NO_SPOT_CAPACITY").exists():
            raise CapacityError("no spot capacity on this machine (NO_SPOT_CAPACITY switch)",
                                Place("local", None, None, "local"), code="NoSpotCapacity")
        if req.num_nodes > MAX_NODES:  # the plan refuses it first (capabilities.max_nodes)
            raise InvalidRequestError(f"the local cloud supports at most {MAX_NODES} nodes")
        try:
            return self._make_nodes(req)
        except OSError as e:  # the caller rolls back (terminate): nothing of the cluster is left
            if e.errno != errno.ENOSPC:
                raise
            raise LocalDiskFull(self._root(), e) from None

    def _make_nodes(self, req: ProvisionRequest) -> list[str]:
        root = self._cluster_dir(req.cluster)
        private_dir(self._root())
        root.mkdir(parents=True, exist_ok=True)
        if not (root / _HOME).exists():  # whose it is, when BROKER_LOCAL_ROOT is shared by several homes
            from .base import home_tag

            (root / _HOME).write_text(home_tag() + "\n")
        ids = []
        for i in range(req.num_nodes):
            d = root / f"node-{i}"
            info = self._info(d)
            if info is None:
                d.mkdir(parents=True, exist_ok=True)
                meta = {"instance_id": f"local-{req.cluster}-{i}-{int(time.time() * 1000) % 10**8}",
                        "cluster": req.cluster, "rank": i, "ip": f"127.0.0.{i + 1}", "state": RUNNING,
                        "created_at": time.time(), "spot": req.use_spot}
                _write_json(d / _META, meta)
                info = self._info(d)
            elif info.state != RUNNING:
                self._set_state(d, RUNNING)
                info = self._info(d)
            ids.append(info.instance_id)
        return ids

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        infos = self.query(req.cluster, req.region)
        if len(infos) < req.num_nodes:  # a node was deleted ("preempted") between run and wait
            raise CapacityError(f"{req.num_nodes - len(infos)} node(s) of {req.cluster} disappeared while starting",
                                Place("local"), code="PreemptedDuringProvisioning")
        return infos

    def query(self, cluster: str, region: str | None = None, include_gone: bool = False) -> list[InstanceInfo]:
        root = self._cluster_dir(cluster)
        if not root.is_dir():
            return []
        infos = [self._info(d) for d in sorted(root.iterdir()) if d.is_dir()]
        return sorted((i for i in infos if i is not None), key=lambda i: i.rank_hint or 0)

    def terminate(self, cluster: str, region: str | None = None) -> list[str]:
        root = self._cluster_dir(cluster)
        if not root.exists():
            return []
        homes = [d for d in sorted(root.iterdir()) if d.is_dir()]
        for home in homes:  # first: the node is gone for new commands (its runner refuses them)
            try:
                (home / _META).unlink()
            except OSError:
                pass
        for home in homes:
            _container_down(home)
        for _ in range(2):  # twice: a command that was being spawned during the first pass may recreate files
            for home in homes:
                _kill_node_processes(home)
            _unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
        return []

    def stop(self, cluster: str, region: str | None = None) -> None:
        for info in self.query(cluster):
            _container_stop(Path(info.home))
            _kill_node_processes(Path(info.home))
            self._set_state(Path(info.home), STOPPED)

    def start(self, cluster: str, region: str | None = None) -> list[InstanceInfo]:
        for info in self.query(cluster):
            self._set_state(Path(info.home), RUNNING)
        return self.query(cluster)

    def list_tagged(self, region: str | None = None) -> list[TaggedResource]:
        root = self._root()
        if not root.is_dir():
            return []
        from .base import home_tag

        own_root = not settings_root()  # BROKER_HOME/local: only this home's clusters are there
        out = []
        for d in sorted(root.iterdir()):
            if d.is_dir():
                try:
                    home = (d / _HOME).read_text().strip() or None
                except OSError:
                    home = None
                home = home_tag() if own_root else home
                out.append(TaggedResource(self.name, None, d.name, "node-dir", str(d), live=False, home=home))
                out += [TaggedResource(self.name, None, d.name, "instance", i.instance_id, home=home)
                        for i in self.query(d.name)]
        return out

    def preempt(self, cluster: str, rank: int = 0) -> None:
        """Simulate a spot preemption of one node: its processes die and the node is gone."""
        d = self._cluster_dir(cluster) / f"node-{rank}"
        if d.is_dir():
            from ..runtime import agent
            from ..runtime.agent import container

            box = container.load(str(d / agent.NODE_DIR))
            _kill_node_processes(d)
            shutil.rmtree(d, ignore_errors=True)
            container.remove(box)  # a preempted VM takes its containers along (once the node is gone)

    def runner(self, cluster: str, node):
        return _NodeRunner(f"{cluster}-node-{node.rank}", node.home)

    def preemption_notice(self) -> dict | None:
        """Simulated spot gets simulated notices: when BROKER_NOTICE_ENDPOINT names a fake metadata server
        (AWS-style), local spot nodes watch it like EC2 spot instances watch theirs."""
        from .. import settings

        if not settings.get("notice_endpoint"):
            return None
        self.notice_kind, self.notice_url = "aws", "http://169.254.169.254/latest/meta-data/spot/instance-action"
        return super().preemption_notice()

    def prepare_self_stop(self, cluster: str, region: str | None, action: str) -> str:
        return action  # simulated spot can be stopped too (as `broker stop` does here)

    def self_stop_command(self, cluster: str, node, head, action: str):
        """The head stops (or terminates) the whole cluster through this provider; workers need nothing."""
        import shlex

        from .base import SelfStop

        if node.rank != head.rank:
            return None
        src = str(Path(__file__).resolve().parents[2])  # the broker's own code, whatever HOME/PATH the node has
        argv = ["env", f"PYTHONPATH={src}", sys.executable, "-m", "skybroker.clouds.local", "self-stop",
                "--home", str(broker_home()), "--cluster", cluster, "--action", action]
        return SelfStop(" ".join(shlex.quote(a) for a in argv))

    def agent_python(self) -> str:
        import shlex

        return f"{shlex.quote(sys.executable)} -S"  # the broker's own interpreter, not a PATH lookup

    def _set_state(self, d: Path, state: str) -> None:
        meta = json.loads((d / _META).read_text())
        meta["state"] = state
        _write_json(d / _META, meta)


PROVIDER = LocalCloud


class LocalDiskFull(BrokerError):
    """The local cloud's root (BROKER_LOCAL_ROOT, else BROKER_HOME/local) has no space for a node: said once,
    with the path, the free space and what to do, never a bare "[Errno 28] No space left on device". Exit 4,
    like a cloud refusing capacity; not a ProvisionError, so failover does not carry the launch to a paid cloud."""

    exit_code = 4

    def __init__(self, root: Path, err: OSError):
        where = Path(err.filename) if err.filename else root
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            st = os.statvfs(probe)
            free = f"{st.f_bavail * st.f_frsize // 1024} KiB free"
        except OSError:
            free = "free space unknown"
        self.root, self.path = root, where
        super().__init__(f"the local cloud's disk is full: {where} cannot be written ({free} on the disk of {root}; "
                         f"[Errno {err.errno}] {err.strerror})",
                         "free space on that disk (`broker down` of old local clusters frees theirs), or point "
                         "BROKER_LOCAL_ROOT at a directory on a disk with room (`broker settings` shows it)")


def local_prices() -> dict[str, float]:
    """What the local cloud pretends to cost (BROKER_LOCAL_PRICES `od=1,spot=0.3,disk=0.1`: $/h per node
    on demand and on spot, $/GB-month of disk), so cost accounting can be exercised without a cloud.
    Free by default."""
    from .. import settings
    from ..errors import UsageError

    out = {"od": 0.0, "spot": 0.0, "disk": 0.0}
    raw = settings.get("local_prices")
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = part.partition("=")
        try:
            if key.strip() not in out:
                raise ValueError
            out[key.strip()] = float(value)
            if out[key.strip()] < 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"BROKER_LOCAL_PRICES={raw!r}: {part!r} is not `od=`, `spot=` or `disk=` a price ≥ 0",
                             "e.g. BROKER_LOCAL_PRICES=od=1.0,spot=0.3,disk=0.1") from None
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever is mounted inside the cluster's sandboxes (bucket MOUNTs: FUSE), so the
    removal never walks into a bucket or trips over a dead mount."""
    prefix = str(root.resolve()) + os.sep
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
    except OSError:
        return
    from ..runtime.agent.queries import unmount_lazily

    unmount_lazily(p for p in points if p.startswith(prefix))


def _container_down(home: Path) -> None:
    """A node's task container (runtime/agent/container.py) goes with the node; the host's engine keeps nothing."""
    from ..runtime import agent
    from ..runtime.agent import container

    container.down(str(home / agent.NODE_DIR))


def _container_stop(home: Path) -> None:
    from ..runtime import agent
    from ..runtime.agent import container

    container.stop(str(home / agent.NODE_DIR))


def _kill_node_processes(home: Path) -> None:
    """Kill every process whose HOME is this node's sandbox (the agent's runners and the jobs)."""
    target = f"HOME={home}".encode()
    me = os.getpid()
    victims = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
            continue
        try:
            env = (pid_dir / "environ").read_bytes()
        except OSError:
            continue
        if target + b"\x00" in env or env.endswith(target):
            victims.append(int(pid_dir.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGTERM and victims:
            deadline = time.time() + 1.0
            while time.time() < deadline and any(_alive(p) for p in victims):
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class _NodeRunner(LocalRunner):
    """A local node's runner. Like a deleted or stopped VM, a terminated (no node.json) or stopped node is
    unreachable, and a client that still holds a runner for it never recreates its directory."""

    def __init__(self, node_id: str, home: str):
        super().__init__(node_id, home, create=False)

    def _check(self) -> None:
        try:
            state = json.loads((self.home / _META).read_text()).get("state", RUNNING)
        except (OSError, ValueError):
            raise NodeUnreachable(self.node_id, "the node was terminated") from None
        if state != RUNNING:
            raise NodeUnreachable(self.node_id, f"the node is {state.lower()}")

    def run(self, cmd, **kw):
        self._check()
        try:
            return super().run(cmd, **kw)
        except FileNotFoundError:  # terminated while the command was starting
            raise NodeUnreachable(self.node_id, "the node was terminated") from None

    def put_file(self, data, remote_path, mode=0o644):
        self._check()
        return super().put_file(data, remote_path, mode)

    def sync_up(self, local_dir, remote_dir, **kw):
        self._check()
        return super().sync_up(local_dir, remote_dir, **kw)

    def sync_down(self, remote_dir, local_dir, **kw):
        self._check()
        return super().sync_down(remote_dir, local_dir, **kw)

    def alive(self, timeout: float = 5.0) -> bool:
        try:
            self._check()
        except NodeUnreachable:
            return False
        return True

    def local_home(self):
        self._check()
        return super().local_home()


def main(argv=None) -> int:
    """`self-stop`: what a local cluster's head runs once idle (see the module docstring)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m skybroker.clouds.local")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("self-stop", help="stop or terminate a local cluster from one of its nodes")
    p.add_argument("--home", required=True, help="the BROKER_HOME whose local cloud the cluster is in")
    p.add_argument("--cluster", required=True)
    p.add_argument("--action", choices=("stop", "down"), default="stop")
    args = ap.parse_args(argv)
    os.environ["BROKER_HOME"] = args.home
    cloud = LocalCloud()
    if not cloud.query(args.cluster):
        print(f"no local cluster {args.cluster}", file=sys.stderr)
        return 1
    if args.action == "down":
        cloud.terminate(args.cluster)
    else:
        cloud.stop(args.cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
