"""The API objects a Kubernetes cluster is made of, as the bodies the driver (driver.py) creates: the labels
every object carries (skybroker-cluster, skybroker-user, and the task's labels made valid label values), the
Secret holding the user's public key, the headless Service that gives the pods DNS names, the ports Service
in front of the head pod, and each node's pod: exact resource requests (GPU limits equal to requests), the
image and its bootstrap (pods.BOOTSTRAP), the mounted key and a memory-backed /dev/shm, and for GPU pods a
node affinity on the GPU-type labels of the nodes that have that GPU plus the usual GPU tolerations. Plain
dicts, built without the SDK or the network; creating them (and reading a 403) stays in the driver.
"""
from __future__ import annotations

import base64

from ...errors import CapacityError
from ..base import TAG_CLUSTER, TAG_HOME, TAG_USER, ProvisionRequest, home_tag
from . import config as cfg
from . import pods as pk
from .pods import BOOTSTRAP, SSH_PORT, TAG_RANK, pod_name, ports_service_name, secret_name, service_name
from .shapes import GPU_LABELS, GPU_TOLERATIONS, node_gpus


def labels(cluster: str, extra=()) -> dict:
    out = {pk.label(k): pk.label(v) for k, v in extra}
    out.update({TAG_CLUSTER: cluster, TAG_USER: pk.label(pk.user()), TAG_HOME: home_tag()})
    return out


def ssh_secret(cluster: str, key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(cluster), "labels": labels(cluster)},
            "data": {"authorized_keys": base64.b64encode(key.encode()).decode()}}


def headless_service(cluster: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(cluster), "labels": labels(cluster)},
            "spec": {"clusterIP": "None", "selector": {TAG_CLUSTER: cluster, TAG_USER: pk.label(pk.user())},
                     "publishNotReadyAddresses": True, "ports": [{"name": "ssh", "port": SSH_PORT}]}}


def port_numbers(ports) -> list[int]:
    """The port numbers of the task's port specs (`8080`, `9000-9010`)."""
    wanted = []
    for p in ports:
        lo, _, hi = str(p).partition("-")
        wanted += list(range(int(lo), int(hi or lo) + 1))
    return wanted


def service_ports(numbers) -> list[dict]:
    return [{"name": f"p{p}", "port": p, "targetPort": p} for p in numbers]


def ports_service(cluster: str, numbers) -> dict:
    selector = {TAG_CLUSTER: cluster, TAG_USER: pk.label(pk.user()), TAG_RANK: "0"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": ports_service_name(cluster),
                                                                "labels": labels(cluster)},
            "spec": {"type": cfg.ports_service_type(), "selector": selector, "ports": service_ports(numbers)}}


def gpu_affinity(nodes: list[dict], gpu: str, ctx, place):
    """(GPU resource name, node affinity) for pods of this GPU type, from the nodes' labels."""
    terms: dict[str, set] = {}
    res = None
    for nd in nodes:
        name, count, rname, label = node_gpus(nd)
        if name and name.lower() == gpu.lower() and label:
            terms.setdefault(label[0], set()).add(label[1])
            res = res or rname
    if res is None:
        raise CapacityError(f"no node of context {ctx} has {gpu} GPUs (by the node labels "
                            f"{', '.join(GPU_LABELS[:3])}, ...)", place, code="NoSuchGPU")
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": k, "operator": "In", "values": sorted(v)}]} for k, v in sorted(terms.items())]}}}
    return res, affinity


def pod(req: ProvisionRequest, rank: int, cpus, mem, gpu_res, n, affinity) -> dict:
    name = pod_name(req.cluster, rank)
    requests = {"cpu": cfg.fmt_cpu(cpus), "memory": cfg.fmt_memory(mem)}
    limits = {}
    if gpu_res:
        requests[gpu_res] = limits[gpu_res] = str(int(n))
    image = (req.image_id or cfg.image(bool(gpu_res))).removeprefix("docker:")
    container = {"name": "node", "image": image, "command": ["/bin/bash", "-c", BOOTSTRAP],
                 "env": [{"name": "SKYBROKER_SSH_USER", "value": cfg.ssh_user()}],
                 "ports": [{"name": "ssh", "containerPort": SSH_PORT}],
                 "resources": {"requests": requests, **({"limits": limits} if limits else {})},
                 "readinessProbe": {"tcpSocket": {"port": SSH_PORT}, "periodSeconds": 2},
                 "volumeMounts": [{"name": "ssh-key", "mountPath": "/etc/skybroker-ssh", "readOnly": True},
                                  {"name": "dshm", "mountPath": "/dev/shm"}]}
    spec = {"restartPolicy": "Never", "hostname": name, "subdomain": service_name(req.cluster),
            "containers": [container], "terminationGracePeriodSeconds": 10,
            "volumes": [{"name": "ssh-key", "secret": {"secretName": secret_name(req.cluster), "defaultMode": 0o644}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    if gpu_res:
        spec["affinity"] = affinity
        spec["tolerations"] = GPU_TOLERATIONS
    lab = labels(req.cluster, req.labels)
    lab[TAG_RANK] = str(rank)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": lab}, "spec": spec}
