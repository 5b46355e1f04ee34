"""A pool of real SSH "VMs" on this machine: OpenSSH servers in network namespaces.

Each node is a network namespace wired to a per-pool bridge by a veth pair (fixed MAC per node slot), with
sshd running as PID 1 of its own PID/mount/UTS namespace. Inside that mount namespace a per-node
directory is bind-mounted over the user's home and over /tmp, so every node has its own disk. Node state
lives under /var/tmp (never under /tmp, which the nodes shadow).

    pool = NodePool()                      # picks a free 10.213.<k>.0/24 and bridge sbr<k>
    nodes = pool.start(4, pubkey)          # Node(name, ip, port=22, user, home, netns, ...)
    pool.kill(nodes[0])                    # preemption: every process dies, the node is gone
    pool.cut_network(nodes[1])             # partition: packets dropped, connections hang
    node = pool.add_node(pubkey)           # relaunch: lowest free slot (same IP), new host key
    pool.close()                           # everything removed; idempotent; also run at exit
    NodePool(env={"K": "V"})               # variables every SSH session gets (sshd SetEnv); a path under /tmp
                                           # is per node (e.g. a container engine's config, tests/infra/containers.py)
    NodePool(user="root")                  # root logs in (key only), its home /root per node like any other
    NodePool(cgroups=True)                 # the host's cgroup hierarchies mounted in each node (`ip netns exec`
                                           # mounts a fresh /sys, which hides them; a container engine needs them)
    NodePool(path_prefix="/some/bin")      # commands over SSH find /some/bin first (e.g. the hypervisor shim's
                                           # `sudo` and `shutdown`, tests/infra/hypervisor.py)

Needs root, iproute2 (`ip`), util-linux (`unshare`), `ssh-keygen` and `/usr/sbin/sshd`.
Only addresses inside namespaces created here are ever used. Several pools can live side by side (each
holds an flock on its subnet index k); leftovers of a crashed run are removed when their index is
reused or when a new pool notices them unlocked.
"""
from __future__ import annotations

import atexit
import fcntl
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STATE_ROOT = Path("/var/tmp/skybroker-netns")
SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.213"


class NodePoolError(RuntimeError):
    pass


def _cgroup_mounts() -> str:
    """Shell commands mounting the host's cgroup hierarchies again (same types and options) under /sys."""
    cmds = []
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, path, fstype, opts = line.split()[:4]
            if path == "/sys/fs/cgroup" and fstype == "tmpfs":
                cmds.insert(0, "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup")
            elif fstype in ("cgroup", "cgroup2") and path.startswith("/sys/fs/cgroup"):
                cmds.append(f"mkdir -p {path} && mount -t {fstype} -o {opts} {dev} {path}")
    return "".join(c + "; " for c in cmds)


def missing_requirements() -> str | None:
    """Why a NodePool cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, sshd)"
    for tool in ("ip", "unshare", "ssh-keygen", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    if not os.path.exists(SSHD):
        return f"{SSHD} not found (apt-get install -y openssh-server)"
    return None


@dataclass
class Node:
    name: str
    ip: str
    port: int
    user: str
    home: Path  # the node's home directory as seen from the host
    netns: str
    slot: int = 0
    instance_id: str = ""
    host_key: str = ""  # "ssh-ed25519 AAAA..." (public host key)
    host_key_file: Path | None = None  # its private half (a VM restarted keeps it: add_node(host_key=...))
    tmp: Path | None = None  # the node's /tmp as seen from the host
    log_path: Path | None = None  # sshd's log (-e)
    veth: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    alive: bool = True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NodePoolError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def _ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Several ip commands in one process (node start-up is dominated by process spawns)."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    r = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if r.returncode != 0:
        raise NodePoolError(f"ip -batch failed: {r.stderr.strip()}")


def _netns_pids(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split() if p.strip().isdigit()]


def _kill_netns(ns: str, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        pids = _netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > end:
            return
        time.sleep(0.01)


_SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey {hostkey}
PidFile none
UsePAM no
PermitRootLogin {root_login}
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
UseDNS no
MaxStartups 200:30:400
MaxSessions 100
PrintMotd no
Subsystem sftp internal-sftp
LogLevel INFO
"""


class NodePool:
    """Bridge + per-node netns + sshd. See the module docstring."""

    def __init__(self, base_dir: str | os.PathLike | None = None, subnet: str | None = None,
                 user: str = "broker", path_prefix: str | None = None, env: dict | None = None,
                 cgroups: bool = False):
        why = missing_requirements()
        if why:
            raise NodePoolError(why)
        self.user = user
        self.path_prefix = path_prefix  # directories searched first by commands run over SSH (sshd SetEnv PATH)
        self.env = dict(env or {})
        self.cgroups = cgroups
        self._lock = threading.RLock()
        self._closed = False
        self._nodes: dict[int, Node] = {}
        self._lock_fd: int | None = None
        (STATE_ROOT / "locks").mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        if subnet is None:
            self.k = self._allocate_index()
        else:
            net = ipaddress.ip_network(subnet)
            if net.prefixlen != 24 or not str(net).startswith(SUBNET_PREFIX + "."):
                raise NodePoolError(f"subnet must be {SUBNET_PREFIX}.<k>.0/24, got {subnet}")
            self.k = int(str(net.network_address).split(".")[2])
            if not self._try_lock(self.k):
                raise NodePoolError(f"subnet {subnet} is in use by another live NodePool")
            self._cleanup_index(self.k)
            if self._subnet_taken(self.k):
                raise NodePoolError(f"subnet {subnet} is already routed on this host")
        self.subnet = f"{SUBNET_PREFIX}.{self.k}.0/24"
        self.gateway = f"{SUBNET_PREFIX}.{self.k}.1"
        self.bridge = f"sbr{self.k}"
        if base_dir is None:
            base_dir = STATE_ROOT / f"pool-{self.k}"
        self.base_dir = Path(base_dir).resolve()
        if self.base_dir == Path("/tmp") or Path("/tmp") in self.base_dir.parents:
            raise NodePoolError("base_dir must not be under /tmp (nodes bind-mount their own /tmp)")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_user()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise
        atexit.register(self.close)

    # ---------------------------------------------------------------- index allocation / stale state
    def _lock_path(self, k: int) -> Path:
        return STATE_ROOT / "locks" / f"{k}.lock"

    def _try_lock(self, k: int) -> bool:
        fd = os.open(self._lock_path(k), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _allocate_index(self) -> int:
        for k in range(1, 255):
            if self._subnet_taken(k, ours_ok=True):
                continue
            if self._try_lock(k):
                self._cleanup_index(k)
                if not self._subnet_taken(k):
                    return k
                self._release_lock()
        raise NodePoolError("no free 10.213.<k>.0/24 subnet for a NodePool")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    @staticmethod
    def _subnet_taken(k: int, ours_ok: bool = False) -> bool:
        """True if 10.213.k.* is routed via an interface that is not (or, with ours_ok, is) a pool bridge."""
        r = _ip("-4", "-o", "addr", "show", check=False)
        for line in r.stdout.splitlines():
            m = re.search(r"^\d+:\s+(\S+)\s+inet\s+(\S+)", line)
            if not m:
                continue
            dev, addr = m.group(1), m.group(2)
            if ipaddress.ip_interface(addr).network.overlaps(
                    ipaddress.ip_network(f"{SUBNET_PREFIX}.{k}.0/24")):
                if ours_ok and dev == f"sbr{k}":
                    continue  # stale bridge of a dead pool: cleaned up once we hold the lock
                return True
        return False

    @staticmethod
    def _cleanup_index(k: int) -> None:
        """Remove every namespace/link named after pool index k (we hold its lock)."""
        for ns in _ip("netns", "list", check=False).stdout.split("\n"):
            name = ns.split(" ")[0].strip()
            if re.fullmatch(rf"sbn{k}x\d+", name):
                _kill_netns(name)
                _ip("netns", "del", name, check=False)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            m = re.match(r"^\d+:\s+([^:@\s]+)", line)
            if m and re.fullmatch(rf"sbv{k}x\d+", m.group(1)):
                _ip("link", "del", m.group(1), check=False)
        _ip("link", "del", f"sbr{k}", check=False)

    def _sweep_stale(self) -> None:
        """Clean up pools left by crashed runs: bridges sbr<k> whose lock nobody holds."""
        for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
            m = re.match(r"^\d+:\s+sbr(\d+)[:@]", line)
            if not m:
                continue
            k = int(m.group(1))
            fd = os.open(self._lock_path(k), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                self._cleanup_index(k)
                shutil.rmtree(STATE_ROOT / f"pool-{k}", ignore_errors=True)
            finally:
                os.close(fd)

    def _ensure_user(self) -> None:
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            r = subprocess.run(["useradd", "-M", "-d", f"/home/{self.user}", "-s", "/bin/bash",
                                self.user], capture_output=True, text=True)
            if r.returncode != 0 and "already exists" not in r.stderr:
                raise NodePoolError(f"useradd {self.user}: {r.stderr.strip()}") from None
            pw = pwd.getpwnam(self.user)
        # `useradd` leaves the account locked ('!'), which sshd refuses with UsePAM no. usermod can fail
        # while another pool holds the passwd lock, so check the result and retry.
        for _ in range(50):  # (root's account is never touched: key login works for it as it is)
            if self.user == "root" or not self._password_field().startswith("!"):
                break
            subprocess.run(["usermod", "-p", "*", self.user], capture_output=True)
            time.sleep(0.05)
        else:
            raise NodePoolError(f"cannot unlock account {self.user} (usermod -p '*')")
        self.uid, self.gid, self.home_mountpoint = pw.pw_uid, pw.pw_gid, pw.pw_dir
        Path(self.home_mountpoint).mkdir(parents=True, exist_ok=True)

    def _password_field(self) -> str:
        try:
            with open("/etc/shadow") as f:
                for line in f:
                    parts = line.split(":")
                    if parts[0] == self.user:
                        return parts[1]
        except OSError:
            pass
        return ""

    # ---------------------------------------------------------------- nodes
    def start(self, n: int, pubkey: str) -> list[Node]:
        """Start n new nodes (in parallel) whose user accepts `pubkey`; return when all accept SSH."""
        with ThreadPoolExecutor(max_workers=min(16, max(1, n))) as ex:
            return list(ex.map(lambda _: self.add_node(pubkey), range(n)))

    def add_node(self, pubkey: str, *, wait: bool = True, host_key: bytes | None = None) -> Node:
        """A fresh node in the lowest free slot (a freed slot means the same IP and MAC, as a cloud
        reusing an address), with a new instance id and a new host key, or the given one (the private key
        file's bytes: a stopped VM started again keeps its disk, hence its host key)."""
        with self._lock:
            if self._closed:
                raise NodePoolError("pool is closed")
            slot = next(i for i in range(0, 253) if i not in self._nodes)
            node = Node(name=f"node{slot}", ip=f"{SUBNET_PREFIX}.{self.k}.{slot + 2}", port=22,
                        user=self.user, home=Path(), netns=f"sbn{self.k}x{slot}", slot=slot,
                        instance_id=f"i-{uuid.uuid4().hex[:12]}", veth=f"sbv{self.k}x{slot}")
            self._nodes[slot] = node
        try:
            self._boot(node, pubkey, host_key)
            if wait:
                self._wait_ssh(node)
        except Exception:
            self._destroy(node)
            raise
        return node

    def _boot(self, node: Node, pubkey: str, host_key: bytes | None = None) -> None:
        d = self.base_dir / f"{node.name}-{node.instance_id}"
        home, tmp = d / "home", d / "tmp"
        (home / ".ssh").mkdir(parents=True)
        tmp.mkdir()
        os.chmod(tmp, 0o1777)
        (home / ".ssh" / "authorized_keys").write_text(pubkey.strip() + "\n")
        os.chmod(home / ".ssh", 0o700)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        for p in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(p, self.uid, self.gid)
        os.chmod(home, 0o755)
        hostkey = d / "ssh_host_ed25519_key"
        if host_key is None:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.instance_id,
                            "-f", str(hostkey)], check=True, capture_output=True)
        else:
            hostkey.write_bytes(host_key)
            os.chmod(hostkey, 0o600)
            pub_line = subprocess.run(["ssh-keygen", "-y", "-f", str(hostkey)], check=True, capture_output=True,
                                      text=True).stdout
            (d / "ssh_host_ed25519_key.pub").write_text(pub_line)
        node.host_key_file = hostkey
        pub = (d / "ssh_host_ed25519_key.pub").read_text().split()
        node.host_key = f"{pub[0]} {pub[1]}"
        cfg = d / "sshd_config"
        env = dict(self.env)
        if self.path_prefix:
            env["PATH"] = f"{self.path_prefix}:/usr/local/bin:/usr/bin:/bin"
        root = "prohibit-password" if self.user == "root" else "no"
        cfg.write_text(_SSHD_CONFIG.format(hostkey=hostkey, user=self.user, root_login=root) + (
            "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()) + "\n" if env else ""))
        node.home, node.tmp, node.log_path = home, tmp, d / "sshd.log"

        mac = f"02:5b:{self.k:02x}:00:{node.slot >> 8:02x}:{node.slot & 0xff:02x}"
        _ip("link", "del", node.veth, check=False)  # a leftover would make the add fail
        _ip_batch([
            f"netns add {node.netns}",
            f"link add {node.veth} type veth peer name eth0 netns {node.netns} address {mac}",
            f"link set {node.veth} master {self.bridge}",
            f"link set {node.veth} up",
            # the relaunched node may reuse an IP whose old MAC is still cached
            f"neigh flush to {node.ip}",
        ])
        _ip_batch([
            f"addr add {node.ip}/24 dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {self.gateway}",
        ], netns=node.netns)

        inner = (f"set -e; mount --bind {home} {self.home_mountpoint}; mount --bind {tmp} /tmp; "
                 f"{_cgroup_mounts() if self.cgroups else ''}hostname {node.name}; exec {SSHD} -D -e -f {cfg}")
        log = open(node.log_path, "ab")
        try:
            node.proc = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, "unshare", "--uts", "--pid", "--fork",
                 "--mount-proc", "--kill-child", "sh", "-c", inner],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()

    def _wait_ssh(self, node: Node, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                raise NodePoolError(f"sshd on {node.name} exited: {self._log_tail(node)}")
            try:
                with socket.create_connection((node.ip, node.port), timeout=1.0) as s:
                    s.settimeout(1.0)
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > end:
                raise NodePoolError(f"sshd on {node.name} not reachable after {timeout}s: "
                                    f"{self._log_tail(node)}")
            time.sleep(0.01)

    @staticmethod
    def _log_tail(node: Node) -> str:
        try:
            return node.log_path.read_text(errors="replace")[-500:] if node.log_path else ""
        except OSError:
            return ""

    @property
    def nodes(self) -> list[Node]:
        with self._lock:
            return [n for n in self._nodes.values() if n.alive]

    def kill(self, node: Node) -> None:
        """Preemption: kill every process in the node's namespace, then delete the node (its slot, so
        its IP, becomes free). Open SSH channels see the connection close."""
        self._destroy(node)

    def cut_network(self, node: Node) -> None:
        """Partition: the host-side veth goes down; packets are silently dropped (no RST), so open
        connections hang until the client's own timeouts notice."""
        _ip("link", "set", node.veth, "down")

    def restore_network(self, node: Node) -> None:
        _ip("link", "set", node.veth, "up")
        _ip("neigh", "flush", "to", node.ip, check=False)  # forget the FAILED entry of the cut

    def _destroy(self, node: Node) -> None:
        with self._lock:
            if not node.alive:
                return
            node.alive = False
        _kill_netns(node.netns)
        if node.proc is not None:
            try:
                node.proc.kill()
            except ProcessLookupError:
                pass
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _ip("link", "del", node.veth, check=False)
        _ip("netns", "del", node.netns, check=False)
        with self._lock:
            if self._nodes.get(node.slot) is node:
                del self._nodes[node.slot]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            nodes = list(self._nodes.values())
        for node in nodes:
            self._destroy(node)
        self._cleanup_index(self.k)
        if hasattr(self, "base_dir"):
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self._release_lock()
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    def __enter__(self) -> "NodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
