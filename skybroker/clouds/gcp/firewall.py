"""The per-cluster firewall rules of GCE (and of TPU VMs, which carry the same network tag): `skybroker-<cluster>`
(tcp 22 + the task's ports from anywhere) and `skybroker-<cluster>-internal` (everything between the cluster's
instances), both targeting the network tag `skybroker-<cluster>`. Global resources: created once, ports
merged in when a later task opens more, deleted with the cluster's last instance (driver.py)."""
from __future__ import annotations

from ..base import home_tag
from . import client as clients

NETWORK = "global/networks/default"


def fw_name(cluster: str) -> str:
    return f"skybroker-{cluster}"


def wait_global(project: str, op) -> None:
    from .driver import wait_op

    wait_op(project, op)


def get(project: str, name: str):
    from google.api_core.exceptions import NotFound

    try:
        return clients.firewalls().get(project=project, firewall=name)
    except NotFound:
        return None


def ensure(project: str, cluster: str, ports: tuple[str, ...]) -> None:
    from google.api_core.exceptions import Conflict
    from google.cloud import compute_v1 as c

    tag = fw_name(cluster)
    wanted = list(dict.fromkeys(["22", *(str(p) for p in ports)]))
    home = f"; home {home_tag()}"  # firewall rules have no labels: the description says whose it is
    rules = {tag: c.Firewall(name=tag, network=NETWORK, direction="INGRESS",
                             description=f"skybroker cluster {cluster}{home}",
                             allowed=[c.Allowed(I_p_protocol="tcp", ports=wanted)],
                             source_ranges=["0.0.0.0/0"], target_tags=[tag]),
             tag + "-internal": c.Firewall(name=tag + "-internal", network=NETWORK, direction="INGRESS",
                                           description=f"skybroker cluster {cluster}: intra-cluster{home}",
                                           allowed=[c.Allowed(I_p_protocol="all")], source_tags=[tag],
                                           target_tags=[tag])}
    for name, body in rules.items():
        have = get(project, name)
        if have is None:
            try:
                wait_global(project, clients.firewalls().insert_unary(project=project, firewall_resource=body))
            except Conflict:  # a concurrent launch created it
                have = get(project, name)
        if have is not None and name == tag:
            _add_ports(project, have, wanted)


def _add_ports(project: str, fw, ports: list[str]) -> None:
    from google.cloud import compute_v1 as c

    tcp = [a for a in fw.allowed if a.I_p_protocol == "tcp"]
    have = {p for a in tcp for p in a.ports}
    if not tcp or not all(p in have for p in ports):
        merged = list(dict.fromkeys([*(p for a in tcp for p in a.ports), *ports]))
        others = [a for a in fw.allowed if a.I_p_protocol != "tcp"]
        patch = c.Firewall(allowed=[*others, c.Allowed(I_p_protocol="tcp", ports=merged)])
        wait_global(project, clients.firewalls().patch_unary(project=project, firewall=fw.name,
                                                               firewall_resource=patch))


def delete(project: str, cluster: str) -> None:
    from google.api_core.exceptions import NotFound

    for name in (fw_name(cluster), fw_name(cluster) + "-internal"):
        try:
            wait_global(project, clients.firewalls().delete_unary(project=project, firewall=name))
        except NotFound:
            pass
