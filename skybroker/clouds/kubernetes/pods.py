"""The pods of a cluster: their names, the bootstrap command that starts sshd in them, and a pod's state as
the provider protocol sees it (or, for a pod that will not become ready, as the typed error that says why).
Their bodies: objects.py."""
from __future__ import annotations

import hashlib
import os
import re
import time

from ...errors import CapacityError, InvalidRequestError, Place
from ..base import PENDING, RUNNING, TERMINATED, UNREACHABLE, InstanceInfo
from . import config as cfg

SSH_PORT = 22
TAG_RANK = "skybroker-rank"
# The pod's command: install sshd/rsync/python3 when the image lacks them (apt, dnf/yum or apk), authorize
# the key from the mounted Secret, pass the container's environment (CUDA paths, NVIDIA_* variables) to SSH
# sessions, and run sshd in the foreground. An image with all three preinstalled starts in about a second.
BOOTSTRAP = r"""set -u
need=""
{ command -v sshd || [ -x /usr/sbin/sshd ]; } >/dev/null 2>&1 || need="$need openssh-server"
command -v rsync >/dev/null 2>&1 || need="$need rsync"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if [ -n "$need" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends $need
  elif command -v dnf >/dev/null 2>&1; then dnf install -y -q openssh-server rsync python3
  elif command -v yum >/dev/null 2>&1; then yum install -y -q openssh-server rsync python3
  elif command -v apk >/dev/null 2>&1; then apk add --no-cache openssh-server rsync python3 bash
  else echo "skybroker: no sshd in the image and no package manager to install it" >&2; exit 1; fi
fi
user="${SKYBROKER_SSH_USER:-root}"
home="$(getent passwd "$user" | cut -d: -f6)"; home="${home:-/root}"
mkdir -p "$home/.ssh" /run/sshd && chmod 700 "$home/.ssh"
cp /etc/skybroker-ssh/authorized_keys "$home/.ssh/authorized_keys" && chmod 600 "$home/.ssh/authorized_keys"
env | grep -E '^(PATH|LD_LIBRARY_PATH|CUDA_[A-Z_]*|NVIDIA_[A-Z_]*|KUBERNETES_[A-Z_]*|LANG|LC_ALL)=' > "$home/.ssh/environment" || true
chown -R "$user" "$home/.ssh" 2>/dev/null || true
ssh-keygen -A >/dev/null 2>&1
exec /usr/sbin/sshd -D -e -p 22 -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no \
  -o PermitUserEnvironment=yes -o UsePAM=no -o AllowTcpForwarding=yes
"""


def user() -> str:
    return os.environ.get("USER") or "user"


def label(value) -> str:
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63].strip("-_.")
    return v or "x"


def user_hash() -> str:
    return hashlib.sha256(user().encode()).hexdigest()[:4]


def pod_name(cluster: str, rank: int) -> str:
    return f"{cluster}-{user_hash()}-{rank}"


def service_name(cluster: str) -> str:
    return f"skybroker-{cluster}"


def ports_service_name(cluster: str) -> str:
    return f"skybroker-{cluster}-ports"


def secret_name(cluster: str) -> str:
    return f"skybroker-{cluster}-ssh"


def phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def deleting(pod: dict) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def rank_of(pod: dict) -> int | None:
    r = ((pod.get("metadata") or {}).get("labels") or {}).get(TAG_RANK)
    return int(r) if r is not None and str(r).isdigit() else None


def info(pod: dict) -> InstanceInfo:
    st = pod.get("status") or {}
    ph = phase(pod)
    reason = None
    if deleting(pod):
        state, reason = TERMINATED, "Deleting"
    elif ph in ("Failed", "Succeeded"):
        state, reason = TERMINATED, st.get("reason") or ph
    elif ph == "Running":
        state = RUNNING if ready(pod) else UNREACHABLE  # Running but not Ready: its node is lost, or sshd died
        reason = None if state == RUNNING else "NotReady"
    else:
        state = PENDING
    ip = st.get("podIP") or None
    return InstanceInfo(instance_id=pod["metadata"]["uid"], state=state, public_ip=ip, private_ip=ip,
                        ssh_user=cfg.ssh_user(), ssh_port=SSH_PORT, zone=None, spot=False,
                        tags=dict(pod["metadata"].get("labels") or {}), state_reason=reason, rank_hint=rank_of(pod))


def ordered(infos: list[InstanceInfo]) -> list[InstanceInfo]:
    return sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))


def public_key() -> str:
    from ...paths import broker_home
    from ...runtime.keys import ensure_user_key

    return ensure_user_key(broker_home())[1]


_IMAGE_REASONS = ("ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_IMAGE_HINT = ("check the image name and tag (`image_id: docker:IMAGE`); a private registry's image needs an "
               "imagePullSecret the namespace's default service account uses")


def raise_if_stuck(pod: dict, place: Place, started: float, unsched_for: float) -> None:
    """Raise the typed error for a pod that will not become ready: left Unschedulable for `unsched_for`
    seconds, preempted, its image unpullable, its container failing or exited, or the pod ended."""
    st = pod.get("status") or {}
    name = pod["metadata"]["name"]
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            if time.time() - started >= unsched_for:
                raise CapacityError(f"pod {name} cannot be scheduled: {c.get('message', '')}", place,
                                    code="Unschedulable")
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            raise CapacityError(f"pod {name} was preempted while starting ({c.get('reason')})", place,
                                code=c.get("reason") or "DisruptionTarget")
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _IMAGE_REASONS:  # the task's image: bad input, as on VMs (README: Containers)
            err = InvalidRequestError(f"resources.image_id: pod {name} cannot pull its image {cs.get('image') or ''}: "
                                      f"{waiting['reason']}: {waiting.get('message', '')}", place,
                                      code=waiting["reason"], hint=_IMAGE_HINT)
            err.exit_code = 2
            raise err
        if waiting.get("reason") in ("CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff"):
            raise InvalidRequestError(f"pod {name}: {waiting.get('reason')}: {waiting.get('message', '')}",
                                      place, code=waiting["reason"])
        term = (cs.get("state") or {}).get("terminated")
        if term:
            raise InvalidRequestError(f"pod {name}: its bootstrap exited ({term.get('reason')}, code "
                                      f"{term.get('exitCode')}); `kubectl logs {name}` says why", place,
                                      code=term.get("reason") or "ContainerTerminated")
    if phase(pod) in ("Failed", "Succeeded"):
        raise CapacityError(f"pod {name} ended while starting ({st.get('reason') or phase(pod)})", place,
                            code=st.get("reason") or phase(pod))
