"""A node as a GCE instance, both ways, for the GCP driver (driver.py) and its persistent disks (volumes.py).
Going in: the deterministic name `<cluster>-<user hash>-<rank>`, the labels (skybroker-cluster / -user /
-rank, the task's labels made valid GCE label keys and values), and the insert body: the machine type, GPUs
attached to N1 hosts (a2/a3/a4/g2/g4 bring theirs), the scheduling (spot: SPOT with DELETE on preemption;
GPU hosts TERMINATE on host maintenance; a run_duration makes GCE delete the VM), the Ubuntu 22.04 boot disk
(with NVIDIA drivers on GPU hosts) unless the task names an image, an external NAT address on the default
network, the cluster's network tag (firewall.py) and the user's key in the `ssh-keys` metadata. Coming
back: a listed instance's state, rank and InstanceInfo. No SDK at import: compute_v1 is imported in the call.
"""
from __future__ import annotations

import hashlib
import os
import re

from ...errors import InvalidRequestError, Place
from ...task_config import option
from ..base import (PENDING, RUNNING, STOPPED, STOPPING, TAG_CLUSTER, TAG_HOME, TAG_USER, TERMINATED, InstanceInfo,
                    ProvisionRequest, home_tag)
from .firewall import NETWORK, fw_name

TAG_RANK = "skybroker-rank"
SSH_USER = "broker"
UBUNTU_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
# Canonical's accelerator images ship the NVIDIA driver (K80 needs a ≤470 driver: pass image_id for it).
GPU_IMAGE = "projects/ubuntu-os-accelerator-images/global/images/family/ubuntu-accelerator-2204-amd64-with-nvidia-570"
DISK_TYPE = "pd-balanced"
# Our accelerator names → GCE accelerator types, for GPUs attached to N1 hosts.
GPU_TYPES = {"V100": "nvidia-tesla-v100", "T4": "nvidia-tesla-t4", "P100": "nvidia-tesla-p100",
             "P4": "nvidia-tesla-p4", "K80": "nvidia-tesla-k80", "L4": "nvidia-l4", "A100": "nvidia-tesla-a100"}
# Machine families that bring their GPUs (A100 on a2, H100 on a3, L4 on g2): nothing to attach.
BUNDLED_GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")
_STATE = {"PROVISIONING": PENDING, "STAGING": PENDING, "PENDING": PENDING, "REPAIRING": PENDING,
          "RUNNING": RUNNING, "STOPPING": STOPPING, "SUSPENDING": STOPPING, "PENDING_STOP": STOPPING,
          "TERMINATED": STOPPED, "STOPPED": STOPPED, "SUSPENDED": STOPPED, "DEPROVISIONING": TERMINATED}


def _user() -> str:
    return os.environ.get("USER") or "user"


def _label(value) -> str:
    """A valid GCE label value: lowercase letters, digits, `-`, `_`; at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def _label_key(key) -> str:
    k = _label(key)
    return k if k[:1].isalpha() else ("x-" + k)[:63]


def instance_name(cluster: str, rank: int) -> str:
    h = hashlib.sha256(_user().encode()).hexdigest()[:4]
    return f"{cluster}-{h}-{rank}"


def _last(url: str) -> str:
    return url.rsplit("/", 1)[-1] if url else url


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _state(inst) -> str:
    return _STATE.get(inst.status, PENDING)


def _rank(inst) -> int | None:
    r = inst.labels.get(TAG_RANK)
    return int(r) if r is not None and r.isdigit() else None


def _info(inst) -> InstanceInfo:
    nic = inst.network_interfaces[0] if inst.network_interfaces else None
    public = nic.access_configs[0].nat_i_p if nic and nic.access_configs else None
    sched = inst.scheduling
    return InstanceInfo(
        instance_id=inst.name, state=_state(inst), public_ip=public or None,
        private_ip=(nic.network_i_p if nic else None) or None, ssh_user=SSH_USER, ssh_port=22,
        zone=_last(inst.zone), spot=sched.provisioning_model == "SPOT" or bool(sched.preemptible),
        tags=dict(inst.labels), rank_hint=_rank(inst))


def _ordered(infos: list[InstanceInfo]) -> list[InstanceInfo]:
    return sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))


def instance_body(req: ProvisionRequest, project: str, zone: str, rank: int, public_key: str):
    """The Instance to insert for one node (the module docstring says what goes in it)."""
    from google.cloud import compute_v1 as c

    bundled = req.instance_type.startswith(BUNDLED_GPU_FAMILIES)
    accels = []
    if req.accelerator and not bundled:
        gpu = GPU_TYPES.get(req.accelerator)
        if gpu is None or gpu in ("nvidia-l4", "nvidia-tesla-a100"):
            raise InvalidRequestError(f"{req.accelerator} cannot be attached to {req.instance_type} on GCP",
                                      Place("gcp", req.region, zone, req.instance_type))
        accels = [c.AcceleratorConfig(accelerator_type=f"projects/{project}/zones/{zone}/acceleratorTypes/{gpu}",
                                      accelerator_count=max(1, int(req.accelerator_count)))]
    has_gpu = bool(req.accelerator)
    if req.use_spot:
        # DELETE on preemption (driver.py's docstring says why); spot VMs cannot restart or live-migrate.
        sched = c.Scheduling(provisioning_model="SPOT", instance_termination_action="DELETE",
                             automatic_restart=False, on_host_maintenance="TERMINATE")
    else:
        # GPU VMs cannot live-migrate: GCE requires TERMINATE on host maintenance for them.
        sched = c.Scheduling(provisioning_model="STANDARD", automatic_restart=True,
                             on_host_maintenance="TERMINATE" if has_gpu else "MIGRATE")
    run_for = option(req, "gcp.run_duration")  # config.gcp.managed_instance_group.run_duration
    if run_for:  # GCE deletes the instance after this long (what SkyPilot's MIG template sets)
        sched.max_run_duration = c.Duration(seconds=int(run_for))
        sched.instance_termination_action = "DELETE"
    labels = {_label_key(k): _label(v) for k, v in req.labels}
    labels.update({TAG_CLUSTER: _label(req.cluster), TAG_USER: _label(_user()), TAG_HOME: home_tag(),
                   TAG_RANK: str(rank)})
    image = req.image_id or (GPU_IMAGE if has_gpu else UBUNTU_IMAGE)
    disk = c.AttachedDisk(boot=True, auto_delete=True, type_="PERSISTENT", initialize_params=c.AttachedDiskInitializeParams(
        source_image=image, disk_size_gb=int(req.disk_size), disk_type=f"zones/{zone}/diskTypes/{DISK_TYPE}",
        labels={TAG_CLUSTER: _label(req.cluster), TAG_HOME: home_tag()}))
    nic = c.NetworkInterface(network=NETWORK, access_configs=[c.AccessConfig(name="External NAT",
                                                                             type_="ONE_TO_ONE_NAT")])
    return c.Instance(
        name=instance_name(req.cluster, rank), machine_type=f"zones/{zone}/machineTypes/{req.instance_type}",
        labels=labels, tags=c.Tags(items=[fw_name(req.cluster)]), disks=[disk], network_interfaces=[nic],
        metadata=c.Metadata(items=[c.Items(key="ssh-keys", value=f"{req.user}:{public_key.strip()}")]),
        scheduling=sched, guest_accelerators=accels)
