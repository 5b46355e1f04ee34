"""EC2 driver: key pair per region, security group per cluster (22 + the task's ports + intra-cluster),
Ubuntu (or Deep Learning) image per region unless the task names one, spot via InstanceMarketOptions,
tags on every resource, instances found by the cluster tag so a retried launch resumes.

Zones: the catalogs speak AZ IDs (use1-az1), which are the same for every account; EC2 wants the
account's AZ name (us-east-1b), so we map IDs to names with DescribeAvailabilityZones.
"""
from __future__ import annotations

import hashlib
import os
import re
import time

from ... import settings
from ...errors import CapacityError, InvalidRequestError, Place, QuotaError
from ..base import (PENDING, RUNNING, STOPPED, STOPPING, TAG_CLUSTER, TAG_HOME, TAG_USER, TERMINATED, Capabilities,
                    CreateLedger, InstanceInfo, ProvisionRequest, Provider, TaggedResource, ZoneUnresolved, home_tag,
                    http_refusal)
from ..common import call_typed
from . import client as clients
from .errors import classify
from .volumes import EBSVolumes

TAG_RANK = "skybroker-rank"
LIVE_STATES = ("pending", "running", "stopping", "stopped")
UBUNTU_PARAM = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
GPU_PARAM = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
SSH_USER = "ubuntu"
_STATE = {"pending": PENDING, "running": RUNNING, "stopping": STOPPING, "stopped": STOPPED,
          "shutting-down": TERMINATED, "terminated": TERMINATED}


_REGION_OF_ZONE_NAME = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+")  # us-east-1 of us-east-1a


def _name_the_id(region: str) -> str:
    from ... import catalog

    ids = sorted(z for z, r in catalog.zones("aws").items() if r == region)
    return (f"name the AZ ID instead (the same in every account; {region} has {', '.join(ids)}), "
            if ids else "name the AZ ID instead (use1-az1 style), ") + "or set up AWS credentials (`broker check`)"


def _user() -> str:
    return os.environ.get("USER") or "user"


def _tags(cluster: str, extra: dict | None = None) -> list[dict]:
    tags = {"Name": f"skybroker-{cluster}", **(extra or {})}  # a task's labels may name it, never re-tag it:
    tags.update({TAG_CLUSTER: cluster, TAG_USER: _user(), TAG_HOME: home_tag()})  # query, gc find it by these
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def _wait_s() -> float:
    return settings.get("aws_wait")


def _poll() -> float:
    return settings.get("aws_poll")


class AWSCloud(EBSVolumes, Provider):
    name = "aws"
    catalog = "aws"
    capabilities = Capabilities(stop=True, spot=True, firewall=True, gone_reasons=True, self_stop=True, volumes=True,
                                peer_ssh=True)
    sdk_modules = ("boto3",)
    sdk_extra = "aws"
    default_ssh_user = SSH_USER
    notice_kind, notice_url = "aws", "http://169.254.169.254/latest/meta-data/spot/instance-action"

    def __init__(self):
        self._azs: dict[str, dict[str, str]] = {}

    def check(self):
        from ...check import check_aws

        return check_aws()

    def credential_files(self):
        from .. import credfiles

        return credfiles.aws()

    def credential_hint(self) -> str:
        from .. import credfiles

        return credfiles.HINTS["aws"]

    def classify(self, exc, place):
        return classify(exc, place)

    # -- helpers ---------------------------------------------------------------------------------
    def _call(self, place: Place, fn, *args, **kw):
        """Run an SDK call, translating refusals into typed errors (see common.call_typed)."""
        return call_typed(classify, place, fn, *args, **kw)

    def _az_names(self, ec2, region: str) -> dict[str, str]:
        """AZ ID → this account's AZ name, for `region` (asked once)."""
        if region not in self._azs:
            resp = ec2.describe_availability_zones(AllAvailabilityZones=True)
            self._azs[region] = {z["ZoneId"]: z["ZoneName"] for z in resp["AvailabilityZones"]}
        return self._azs[region]

    def zone_alias(self, region, zone):
        """A SkyPilot task's `zone: us-east-1a` is an AZ *name*, which differs per account: mapped to the
        catalog's AZ ID with the account's DescribeAvailabilityZones."""
        m = _REGION_OF_ZONE_NAME.match(zone)
        if not m or m.group(0) == zone or (region and region != m.group(0)):
            return None
        region = m.group(0)
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise ZoneUnresolved(f"AWS zone names such as {zone} differ per account, and boto3 (to look up "
                                 "yours) is not installed", _name_the_id(region)) from None
        try:
            names = self._az_names(clients.ec2(region), region)
        except (BotoCoreError, ClientError) as e:
            raise ZoneUnresolved(f"AWS zone names such as {zone} differ per account, and yours could not be "
                                 f"looked up ({type(e).__name__})", _name_the_id(region)) from None
        ids = [i for i, n in names.items() if n == zone]
        if not ids:
            raise ZoneUnresolved(f"no zone {zone!r} in your account's {region}",
                                 f"{region} has {', '.join(sorted(names.values()))} (or name an AZ ID: "
                                 f"{', '.join(sorted(names))})")
        return region, ids[0]

    def zone_name(self, ec2, region: str, zone: str | None) -> str | None:
        """AZ ID (use1-az1) or name (us-east-1b) → the account's AZ name."""
        if not zone:
            return None
        m = self._az_names(ec2, region)
        if zone in m:
            return m[zone]
        if zone in m.values():
            return zone
        raise InvalidRequestError(f"zone {zone} is not in region {region}", Place("aws", region, zone))

    def _describe(self, ec2, cluster: str, states=LIVE_STATES) -> list[dict]:
        out = []
        paginator = ec2.get_paginator("describe_instances")
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
                   {"Name": "instance-state-name", "Values": list(states)}]
        for page in paginator.paginate(Filters=filters):
            for res in page["Reservations"]:
                out.extend(res["Instances"])
        return out

    def _info(self, inst: dict) -> InstanceInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        rank = tags.get(TAG_RANK)
        return InstanceInfo(
            instance_id=inst["InstanceId"], state=_STATE.get(inst["State"]["Name"], inst["State"]["Name"]),
            public_ip=inst.get("PublicIpAddress"), private_ip=inst.get("PrivateIpAddress"), ssh_user=SSH_USER,
            ssh_port=22, zone=inst.get("Placement", {}).get("AvailabilityZone"),
            spot=inst.get("InstanceLifecycle") == "spot", tags=tags,
            state_reason=(inst.get("StateReason") or {}).get("Code"),
            rank_hint=int(rank) if rank is not None and rank.isdigit() else None)

    # -- protocol --------------------------------------------------------------------------------
    def refused_answer(self, exc: BaseException) -> bool:
        from botocore.exceptions import ClientError

        # EC2 answered with a refusal on the first attempt: after botocore retried (a timed-out or 5xx attempt),
        # an earlier attempt may have launched an instance whose answer was lost, whatever the last one got
        meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc, ClientError) else {}
        return http_refusal(meta.get("HTTPStatusCode")) and not meta.get("RetryAttempts")

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        with CreateLedger(self.refused_answer).guard() as ledger:  # e.g. every call refused our credentials
            return self._run_instances(req, ledger)

    def _run_instances(self, req: ProvisionRequest, ledger: CreateLedger) -> list[str]:
        place = Place("aws", req.region, req.zone, req.instance_type)
        ec2 = self._call(place, clients.ec2, req.region)
        existing = self._call(place, self._describe, ec2, req.cluster)
        ledger.found(existing)
        ids = [i["InstanceId"] for i in existing]
        stopped = [i["InstanceId"] for i in existing if i["State"]["Name"] in ("stopped", "stopping")]
        if stopped:
            self._wait_states(ec2, place, req.cluster, stopped, ("stopped",))
            self._call(place, ec2.start_instances, InstanceIds=stopped)
        missing = req.num_nodes - len(existing)
        if missing > 0:
            zone_name = self._call(place, self.zone_name, ec2, req.region, req.zone)
            key_name = self._call(place, self._ensure_key_pair, ec2, req.public_key)
            sg = self._call(place, self._ensure_security_group, ec2, req.cluster, req.ports)
            subnet = self._call(place, self._subnet, ec2, zone_name)
            if subnet is None and zone_name:  # EC2 would refuse the launch (InvalidInput): this zone is unusable
                raise CapacityError(f"no default subnet in {zone_name} (the default VPC has none there)", place,
                                    code="NoDefaultSubnet",
                                    hint=f"`aws ec2 create-default-subnet --availability-zone {zone_name}`, or "
                                         "leave the zone to other places")
            image = req.image_id or self._call(place, self._default_image, req.region, bool(req.accelerator))
            have = {int(i_tags[TAG_RANK]) for i in existing
                    for i_tags in [{t["Key"]: t["Value"] for t in i.get("Tags", [])}] if i_tags.get(TAG_RANK, "").isdigit()}
            free_ranks = [r for r in range(req.num_nodes) if r not in have][:missing]
            # head first (alone), then the workers in one call: a failure in between is a partial launch
            # that the provisioner rolls back.
            batches = [free_ranks[:1], free_ranks[1:]] if 0 in free_ranks else [free_ranks]
            for ranks in (b for b in batches if b):
                params = self._run_params(req, image, key_name, sg, subnet, zone_name, len(ranks))
                with ledger.create():  # EC2's refusal launched nothing; a lost answer might have
                    resp = self._call(place, ec2.run_instances, **params)
                ids += [inst["InstanceId"] for inst in resp["Instances"]]
                for inst, rank in zip(resp["Instances"], ranks):
                    self._call(place, ec2.create_tags, Resources=[inst["InstanceId"]],
                               Tags=[{"Key": TAG_RANK, "Value": str(rank)}])
        return ids

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        place = Place("aws", req.region, req.zone, req.instance_type)
        ec2 = self._call(place, clients.ec2, req.region)
        return self._wait_running(ec2, place, req.cluster, req.num_nodes)

    def _run_params(self, req, image, key_name, sg, subnet, zone_name, count) -> dict:
        params = {
            "ImageId": image, "InstanceType": req.instance_type, "MinCount": count, "MaxCount": count,
            "KeyName": key_name, "SecurityGroupIds": [sg],
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                     "Ebs": {"VolumeSize": int(req.disk_size), "VolumeType": "gp3",
                                             "DeleteOnTermination": True}}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags(req.cluster, dict(req.labels))},
                                  {"ResourceType": "volume", "Tags": _tags(req.cluster)}],
            "InstanceInitiatedShutdownBehavior": "terminate" if req.use_spot else "stop",
        }
        if subnet:
            params["SubnetId"] = subnet
        if zone_name:
            params["Placement"] = {"AvailabilityZone": zone_name}
        if req.use_spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    def _wait_running(self, ec2, place, cluster, n) -> list[InstanceInfo]:
        """The cluster's n instances once all run with an address. Instances that never get there in
        BROKER_AWS_WAIT, or that vanish meanwhile (a spot instance reclaimed while pending), are the zone's
        failure (CapacityError: the provisioner tears them down and fails over), not a bad request."""
        deadline = time.time() + _wait_s()
        seen: set[str] = set()
        while True:
            insts = self._call(place, self._describe, ec2, cluster)
            infos = [self._info(i) for i in insts]
            if len(infos) >= n and all(i.state == RUNNING and (i.public_ip or i.private_ip) for i in infos):
                return sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))
            gone = seen - {i.instance_id for i in infos}  # seen live once, now shutting down or terminated
            if gone and len(infos) < n:
                raise CapacityError(f"{len(gone)} instance(s) of {cluster} ended while starting (spot capacity "
                                    "reclaimed?)", place, code="PREEMPTED_DURING_PROVISIONING")
            seen |= {i.instance_id for i in infos}
            if time.time() > deadline:
                late = sorted(i.instance_id for i in infos if i.state != RUNNING or not (i.public_ip or i.private_ip))
                raise CapacityError(f"instances of {cluster} not running after {_wait_s():.0f}s "
                                    f"({len(infos)} of {n} found; not ready: {', '.join(late) or '-'})", place,
                                    code="BOOT_TIMEOUT",
                                    hint="BROKER_AWS_WAIT sets how long to wait")
            time.sleep(_poll())

    def _wait_states(self, ec2, place, cluster, ids, states) -> None:
        deadline = time.time() + _wait_s()
        while time.time() < deadline:
            insts = [i for i in self._call(place, self._describe, ec2, cluster, LIVE_STATES) if i["InstanceId"] in ids]
            if all(i["State"]["Name"] in states for i in insts):
                return
            time.sleep(_poll())

    def _ensure_key_pair(self, ec2, public_key: str | None) -> str:
        if not public_key:
            from ...runtime.keys import ensure_user_key
            from ...paths import broker_home

            _, public_key = ensure_user_key(broker_home())
        name = "skybroker-" + hashlib.sha256(public_key.strip().encode()).hexdigest()[:12]
        from botocore.exceptions import ClientError

        try:
            ec2.describe_key_pairs(KeyNames=[name])
            return name
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidKeyPair.NotFound":
                raise
        try:
            ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.strip().encode(),
                                TagSpecifications=[{"ResourceType": "key-pair",
                                                    "Tags": [{"Key": TAG_USER, "Value": _user()}]}])
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidKeyPair.Duplicate":  # a concurrent launch won
                raise
        return name

    def _default_vpc(self, ec2) -> str:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise InvalidRequestError("the region has no default VPC", hint="create one with `aws ec2 create-default-vpc`")
        return vpcs[0]["VpcId"]

    def _sg_name(self, cluster: str) -> str:
        return f"skybroker-{cluster}"

    def _find_sg(self, ec2, cluster: str) -> str | None:
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [self._sg_name(cluster)]}])
        return groups["SecurityGroups"][0]["GroupId"] if groups["SecurityGroups"] else None

    def _ensure_security_group(self, ec2, cluster: str, ports: tuple[str, ...]) -> str:
        sg = self._find_sg(ec2, cluster)
        if sg is None:
            vpc = self._default_vpc(ec2)
            sg = ec2.create_security_group(
                GroupName=self._sg_name(cluster), Description=f"skybroker cluster {cluster}", VpcId=vpc,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(cluster)}])["GroupId"]
            ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg, "Description": "intra-cluster"}]}])
        self._authorize(ec2, sg, ("22",) + tuple(ports))
        return sg

    def _authorize(self, ec2, sg: str, ports) -> None:
        from botocore.exceptions import ClientError

        group = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]
        have = {(p.get("FromPort"), p.get("ToPort")) for p in group.get("IpPermissions", [])
                if p.get("IpProtocol") == "tcp" and any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges", []))}
        perms = []
        for spec in dict.fromkeys(ports):
            lo, _, hi = str(spec).partition("-")
            rng = (int(lo), int(hi or lo))
            if rng not in have:
                perms.append({"IpProtocol": "tcp", "FromPort": rng[0], "ToPort": rng[1],
                              "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "skybroker"}]})
        if perms:
            try:
                ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=perms)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InvalidPermission.Duplicate":
                    raise

    def _subnet(self, ec2, zone_name: str | None) -> str | None:
        filters = [{"Name": "default-for-az", "Values": ["true"]}]
        if zone_name:
            filters.append({"Name": "availability-zone", "Values": [zone_name]})
        subnets = ec2.describe_subnets(Filters=filters)["Subnets"]
        return sorted(subnets, key=lambda s: s["AvailabilityZone"])[0]["SubnetId"] if subnets else None

    def _default_image(self, region: str, gpu: bool) -> str:
        ssm = clients.client("ssm", region)
        name = GPU_PARAM if gpu else UBUNTU_PARAM
        from botocore.exceptions import ClientError

        try:
            return ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ParameterNotFound":
                # region-scoped (like InvalidAMIID.NotFound): another region may publish the image
                raise QuotaError(f"no default {'GPU' if gpu else 'Ubuntu'} image in {region} (SSM parameter {name} "
                                 f"not found); set `image_id` in the task's resources", Place("aws", region),
                                 code="InvalidAMIID.NotFound", hint="set `image_id` in the task's resources") from None
            raise

    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        """Live instances; with include_gone also terminated ones (to see why they went, e.g.
        Server.SpotInstanceTermination)."""
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        states = tuple(_STATE) if include_gone else LIVE_STATES
        return [self._info(i) for i in self._call(place, self._describe, ec2, cluster, states)]

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        ids = [i["InstanceId"] for i in self._call(place, self._describe, ec2, cluster,
                                                   ("pending", "running", "stopping", "stopped", "shutting-down"))]
        if ids:
            self._call(place, ec2.terminate_instances, InstanceIds=ids)
            deadline = time.time() + _wait_s()
            while time.time() < deadline:
                left = self._call(place, self._describe, ec2, cluster, ("pending", "running", "stopping", "stopped",
                                                                        "shutting-down"))
                if not left:
                    break
                time.sleep(_poll())
        return self._delete_sg(ec2, place, cluster) + self._delete_ephemeral(ec2, place, cluster)

    def _delete_sg(self, ec2, place, cluster) -> list[str]:
        from botocore.exceptions import ClientError

        sg = self._call(place, self._find_sg, ec2, cluster)
        if sg is None:
            return []
        deadline = time.time() + 120
        while True:
            try:
                ec2.delete_security_group(GroupId=sg)
                return []
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "InvalidGroup.NotFound":
                    return []
                if code == "DependencyViolation" and time.time() > deadline:
                    return [f"security group {sg} of {cluster} is still in use after 2 min; "
                            "`broker gc` removes it later"]
                if code != "DependencyViolation":
                    raise classify(exc, place) or exc
                time.sleep(_poll())

    def stop(self, cluster: str, region: str | None) -> None:
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        ids = [i["InstanceId"] for i in self._call(place, self._describe, ec2, cluster, ("pending", "running"))]
        if ids:
            self._call(place, ec2.stop_instances, InstanceIds=ids)
            self._wait_states(ec2, place, cluster, ids, ("stopped",))

    def start(self, cluster: str, region: str | None) -> list[InstanceInfo]:
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        insts = self._call(place, self._describe, ec2, cluster)
        ids = [i["InstanceId"] for i in insts if i["State"]["Name"] in ("stopped", "stopping")]
        if ids:
            self._wait_states(ec2, place, cluster, ids, ("stopped",))
            self._call(place, ec2.start_instances, InstanceIds=ids)
        return self._wait_running(ec2, place, cluster, len(insts))

    # -- autostop on the cluster itself ------------------------------------------------------------
    # Each node powers itself off (`sudo shutdown -h now`) and EC2 applies the instance's
    # InstanceInitiatedShutdownBehavior (stop or terminate), set here: no credential on any node. The head
    # decides on its own idleness; the workers follow it (they fire once idle and the head has stopped
    # answering on its SSH port). A one-time spot instance can only terminate.
    SELF_STOP = "sudo -n shutdown -h now"

    def prepare_self_stop(self, cluster: str, region: str | None, action: str) -> str:
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        insts = self._call(place, self._describe, ec2, cluster, ("pending", "running", "stopping", "stopped"))
        real = "down" if action == "down" or any(i.get("InstanceLifecycle") == "spot" for i in insts) else "stop"
        for inst in insts:
            self._call(place, ec2.modify_instance_attribute, InstanceId=inst["InstanceId"],
                       Attribute="instanceInitiatedShutdownBehavior", Value="terminate" if real == "down" else "stop")
        return real

    def release_self_stop(self, cluster: str, region: str | None) -> None:
        self.prepare_self_stop(cluster, region, "stop")  # an OS shutdown stops again (EC2's default)

    def self_stop_command(self, cluster: str, node, head, action: str):
        from ..base import SelfStop

        if node.rank == head.rank:
            return SelfStop(self.SELF_STOP)
        return SelfStop(self.SELF_STOP, follow=f"{head.private_ip or head.ip}:{head.ssh_port or 22}")

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        sg = self._call(place, self._find_sg, ec2, cluster)
        if sg is None:
            raise InvalidRequestError(f"cluster {cluster} has no security group in {region}", place)
        self._call(place, self._authorize, ec2, sg, tuple(ports))

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Every skybroker-tagged live instance and security group in a region (for `broker gc`)."""
        place = Place("aws", region)
        ec2 = self._call(place, clients.ec2, region)
        out: list[TaggedResource] = []
        paginator = ec2.get_paginator("describe_instances")
        filters = [{"Name": "tag-key", "Values": [TAG_CLUSTER]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        for page in self._call(place, lambda: list(paginator.paginate(Filters=filters))):
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    out.append(TaggedResource(self.name, region, tags[TAG_CLUSTER], "instance", inst["InstanceId"],
                                              home=tags.get(TAG_HOME)))
        sgs = ec2.get_paginator("describe_security_groups")
        for page in self._call(place, lambda: list(sgs.paginate(Filters=[{"Name": "tag-key", "Values": [TAG_CLUSTER]}]))):
            for g in page["SecurityGroups"]:
                tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
                out.append(TaggedResource(self.name, region, tags[TAG_CLUSTER], "security-group", g["GroupId"],
                                          live=False, home=tags.get(TAG_HOME)))
        return out + self._call(place, self._tagged_volumes, ec2, region)


PROVIDER = AWSCloud
