"""The network of an Azure cluster, inside its resource group (driver.py): one vnet `skybroker-vnet` whose
subnet `default` every NIC joins, and one network security group `skybroker-nsg` on every NIC allowing tcp 22
and the task's ports from anywhere, plus anything from inside the vnet. Made on the first launch; a later
launch or `open_ports` only adds the rules for ports not yet open (never removes one, priorities from 1000
up, skipping taken ones); it all goes with the group. The functions take the driver for its typed calls.
"""
from __future__ import annotations

from ..base import TAG_CLUSTER, TAG_HOME, TAG_USER, home_tag
from .errors import classify

VNET, SUBNET, NSG = "skybroker-vnet", "default", "skybroker-nsg"
VNET_PREFIX, SUBNET_PREFIX = "10.0.0.0/16", "10.0.0.0/24"


def ensure(drv, c, place, req) -> tuple[str, str]:
    """The cluster's subnet id and NSG id: the NSG created or given the task's ports, the vnet created."""
    from azure.mgmt.network.models import AddressSpace, NetworkSecurityGroup, Subnet, VirtualNetwork

    from .driver import _not_found, _user, group_name

    rg = group_name(req.cluster)
    tags = {TAG_CLUSTER: req.cluster, TAG_USER: _user(), TAG_HOME: home_tag()}
    try:
        nsg = c.network.network_security_groups.get(rg, NSG)
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise classify(exc, place) or exc from None
        nsg = drv._call(place, c.network.network_security_groups.begin_create_or_update, rg, NSG,
                        NetworkSecurityGroup(location=req.region, tags=tags,
                                             security_rules=rules((), ("22",) + tuple(req.ports))))
        nsg = drv._call(place, nsg.result)
    else:
        add_rules(drv, c, place, rg, nsg, ("22",) + tuple(req.ports))
    try:
        vnet = c.network.virtual_networks.get(rg, VNET)
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise classify(exc, place) or exc from None
        vnet = drv._call(place, c.network.virtual_networks.begin_create_or_update, rg, VNET, VirtualNetwork(
            location=req.region, tags=tags, address_space=AddressSpace(address_prefixes=[VNET_PREFIX]),
            subnets=[Subnet(name=SUBNET, address_prefix=SUBNET_PREFIX)]))
        vnet = drv._call(place, vnet.result)
    subnet = next(s for s in vnet.subnets if s.name == SUBNET)
    return subnet.id, nsg.id


def port_range(spec) -> str:
    lo, _, hi = str(spec).partition("-")
    return f"{int(lo)}-{int(hi)}" if hi and int(hi) != int(lo) else str(int(lo))


def rules(current, ports) -> list:
    """SecurityRule models for the ports not yet open (tcp from anywhere), plus intra-vnet traffic
    (also allowed by Azure's default AllowVnetInBound rule; explicit so a reader sees it)."""
    from azure.mgmt.network.models import SecurityRule

    from .driver import _s

    names = {r.name for r in current}
    have = {r.destination_port_range for r in current if _s(r.protocol).lower() == "tcp"}
    used = {r.priority for r in current}
    out = []
    if "intra-vnet" not in names:
        out.append(SecurityRule(name="intra-vnet", protocol="*", source_address_prefix="VirtualNetwork",
                                source_port_range="*", destination_address_prefix="VirtualNetwork",
                                destination_port_range="*", access="Allow", direction="Inbound", priority=900))
    prio = 1000
    for rng in dict.fromkeys(port_range(p) for p in ports):
        if rng in have:
            continue
        while prio in used:
            prio += 1
        used.add(prio)
        out.append(SecurityRule(name=f"tcp-{rng}", protocol="Tcp", source_address_prefix="*",
                                source_port_range="*", destination_address_prefix="*",
                                destination_port_range=rng, access="Allow", direction="Inbound", priority=prio))
    return out


def add_rules(drv, c, place, rg, nsg, ports) -> None:
    new = rules(nsg.security_rules or [], ports)
    drv._wait([drv._call(place, c.network.security_rules.begin_create_or_update, rg, NSG, r.name, r)
               for r in new], place)
