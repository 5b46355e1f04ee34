"""What a node runs to use a block volume: wait for the device, format it on first use (only when it
carries no filesystem at all), mount it, and point the task's path at it (or at its sub_path)."""
from __future__ import annotations

import shlex

STORE = "/mnt/.skybroker-volumes"  # where block volumes are really mounted (then bind-mounted at the path)


def block_mount_command(device: str, path: str, sub_path: str | None, candidates: tuple[str, ...] = ()) -> str:
    """`candidates`: the names the device may appear under on the node (first found wins; default: `device`)."""
    p = shlex.quote(path)
    real = shlex.quote(f"{STORE}/{device.strip('/').replace('/', '_')}")
    sub = shlex.quote(sub_path) if sub_path else ""
    names = " ".join(shlex.quote(c) for c in (candidates or (device,)))
    dev = '"$DEV"'
    lines = [
        "set -e", "S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'", "DEV=",
        f"for i in $(seq 1 60); do for d in {names}; do [ -b \"$d\" ] && DEV=$d && break 2; done; sleep 1; done",
        f"[ -n \"$DEV\" ] || {{ echo 'volume device {device} did not appear' >&2; exit 1; }}",
        # first use: blkid exits 2 only when the device carries no filesystem at all; any other failure stops here
        f"rc=0; $S blkid {dev} >/dev/null 2>&1 || rc=$?",
        f"if [ $rc = 2 ]; then $S mkfs.ext4 -q -F {dev}; elif [ $rc != 0 ]; then echo \"blkid {device} failed ($rc)\" >&2; "
        "exit 1; fi",
        f"$S mkdir -p {real} {p}",
        f"mountpoint -q {real} || $S mount {dev} {real}",
    ]
    if sub_path:
        lines += [f"$S mkdir -p {real}/{sub}", f"mountpoint -q {p} || $S mount --bind {real}/{sub} {p}"]
    else:
        lines += [f"mountpoint -q {p} || $S mount --bind {real} {p}"]
    lines += [f"$S chown \"$(id -u):$(id -g)\" {p}"]
    return "\n".join(lines)
