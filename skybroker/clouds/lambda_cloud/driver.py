"""Lambda Cloud driver: on-demand GPU instances (no spot, no stop, no zones) through the REST API.

One instance per node, named `skybroker-<cluster>-<user hash>-<rank>` (Lambda instances carry a name, not
tags), so a cluster's instances are found by name and a retried launch resumes instead of duplicating.
The user's public key is registered once as `skybroker-<key hash>` (or an existing key with the same
public key is reused); every launch names it (Lambda requires exactly one key). Instances boot Lambda's
default image (Ubuntu + the Lambda Stack: CUDA drivers, PyTorch) unless the task names `image_id`
(an image family, or an image id). SSH user `ubuntu`.

Launches are paced (one request per BROKER_LAMBDA_LAUNCH_INTERVAL seconds, 12 by default: Lambda rate-limits
launches to one per 12 s), and a region that the instance-types listing reports without capacity for the
type is refused up front (a CapacityError without spending a launch call).

Firewall: Lambda's inbound rules are account-wide (they apply to every instance, in every region except
us-south-1), so `ports` add rules `tcp <port range> from 0.0.0.0/0` described `skybroker cluster <name>`
(SSH is added the same way if no rule covers port 22); they are removed when the cluster's last instance
is terminated. Rules of the user's own are never touched.
"""
from __future__ import annotations

import hashlib
import os
import re
import time

from ...errors import CapacityError, InvalidRequestError, Place
from ...locks import account_lock
from ..base import (PENDING, RUNNING, TAG_CLUSTER, TAG_USER, TERMINATED, Capabilities, InstanceInfo, ProvisionRequest,
                    CreateLedger, Provider, TaggedResource, http_refusal)
from ..common import call_typed
from . import client as api
from .errors import classify

TAG_RANK = "skybroker-rank"
SSH_USER = "ubuntu"
NAME_PREFIX = "skybroker-"
RULE_PREFIX = "skybroker cluster "
_NAME = re.compile(r"^skybroker-(?P<cluster>[a-z][a-z0-9-]*)-(?P<user>[0-9a-f]{4})-(?P<rank>\d+)$")
_STATE = {"booting": PENDING, "active": RUNNING, "unhealthy": PENDING, "terminating": TERMINATED,
          "terminated": TERMINATED}
_IMAGE_ID = re.compile(r"^[0-9a-f]{32}$|^[0-9a-f-]{36}$")


def _user() -> str:
    return os.environ.get("USER") or "user"


def _user_hash() -> str:
    return hashlib.sha256(_user().encode()).hexdigest()[:4]


def instance_name(cluster: str, rank: int) -> str:
    return f"{NAME_PREFIX}{cluster}-{_user_hash()}-{rank}"


def _home_of(cluster: str) -> str | None:
    """Lambda instances and rules carry a name, not tags: a cluster whose name on the cloud ends with this home's
    suffix is this home's, one that ends with another home's suffix is that home's (`suffix:<hex>`: never
    removed here), any other was made before homes had suffixes (None: untagged, see gc.py)."""
    from ... import state

    m = re.search(r"-([0-9a-f]{%d})$" % state.HOME_SUFFIX_LEN, cluster)
    if m is None:
        return None
    return state.home_id() if m.group(1) == state.home_suffix() else f"suffix:{m.group(1)}"


def _mine(cluster: str, user: str) -> bool:
    """An instance of this home: its cluster's name on the cloud carries this home's suffix (whatever $USER was
    when it was launched: `sudo -E`, cron, a container may have another or none), or, a name from before
    home suffixes, it was launched under this $USER."""
    from ... import state

    return user == _user_hash() or _home_of(cluster) == state.home_id()


def parse_name(name: str | None) -> tuple[str, str, int] | None:
    """(cluster, user hash, rank) of one of our instance names, else None."""
    m = _NAME.match(name or "")
    return (m.group("cluster"), m.group("user"), int(m.group("rank"))) if m else None


def _seconds(name: str, default: float) -> float:
    return api._float_env(name, default)


def _region(inst: dict) -> str | None:
    return (inst.get("region") or {}).get("name")


def _info(inst: dict) -> InstanceInfo:
    parsed = parse_name(inst.get("name"))
    cluster, _, rank = parsed if parsed else (None, None, None)
    return InstanceInfo(instance_id=inst["id"], state=_STATE.get(inst.get("status"), PENDING),
                        public_ip=inst.get("ip") or None, private_ip=inst.get("private_ip") or None,
                        ssh_user=SSH_USER, ssh_port=22, zone=None, spot=False,
                        tags={TAG_CLUSTER: cluster, TAG_USER: _user(), TAG_RANK: str(rank), "region": _region(inst),
                              "status": inst.get("status")},
                        state_reason=inst.get("status") if inst.get("status") in ("terminated", "terminating") else None,
                        rank_hint=rank)


def _ordered(infos: list[InstanceInfo]) -> list[InstanceInfo]:
    return sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))


def _ports(ports) -> list[tuple[int, int]]:
    out = []
    for p in ports:
        lo, _, hi = str(p).partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


class LambdaCloud(Provider):
    name = "lambda"
    catalog = "lambda"
    capabilities = Capabilities(stop=False, spot=False, firewall=False, accelerators=True, priced=True,
                                named_only=False, remote=True, gone_reasons=False, tagged_listing=True,
                                peer_ssh=True)
    sdk_modules = ()  # stdlib only
    sdk_extra = "lambda"
    default_ssh_user = SSH_USER

    def check(self):
        from ...check import CloudCheck

        key, where = api.api_key_source()
        if key:
            return CloudCheck(self.name, True, where, None, credentials=True, sdk=True, extra=self.sdk_extra)
        return CloudCheck(self.name, False, where, "set LAMBDA_API_KEY, or put `api_key = <key>` in "
                          "~/.lambda_cloud/lambda_keys (create a key in the Lambda Cloud dashboard, API keys)",
                          credentials=False, sdk=True, extra=self.sdk_extra)

    def classify(self, exc, place):
        return classify(exc, place)

    def regions(self) -> list:
        return [None]  # one account-wide listing covers every region (list_tagged)

    # -- helpers ---------------------------------------------------------------------------------
    def _call(self, place: Place, fn, *args, **kw):
        return call_typed(classify, place, fn, *args, **kw)

    def _cluster_instances(self, place: Place, cluster: str, region: str | None, live_only: bool = True) -> list[dict]:
        out = []
        for inst in self._call(place, api.list_instances):
            parsed = parse_name(inst.get("name"))
            if not parsed or parsed[0] != cluster or not _mine(cluster, parsed[1]):
                continue
            if region and _region(inst) != region:
                continue
            if live_only and _STATE.get(inst.get("status")) == TERMINATED:
                continue
            out.append(inst)
        return out

    def _ssh_key_name(self, place: Place, public_key: str) -> str:
        body = " ".join(public_key.split()[:2])
        for k in self._call(place, api.list_ssh_keys):
            if " ".join((k.get("public_key") or "").split()[:2]) == body:
                return k["name"]
        name = f"skybroker-{hashlib.sha256(body.encode()).hexdigest()[:10]}"
        self._call(place, api.add_ssh_key, name, public_key.strip())
        return name

    def _capacity_regions(self, place: Place, instance_type: str) -> list[str] | None:
        types = self._call(place, api.instance_types)
        entry = types.get(instance_type)
        if entry is None:
            return None
        return [r.get("name") for r in entry.get("regions_with_capacity_available") or []]

    # -- provisioning ------------------------------------------------------------------------------
    def refused_answer(self, exc: BaseException) -> bool:
        return isinstance(exc, api.LambdaApiError) and http_refusal(exc.status)

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        with CreateLedger(self.refused_answer).guard() as ledger:  # e.g. every call refused our API key
            return self._run_instances(req, ledger)

    def _run_instances(self, req: ProvisionRequest, ledger: CreateLedger) -> list[str]:
        place = Place("lambda", req.region, None, req.instance_type)
        if req.use_spot:
            raise InvalidRequestError("Lambda Cloud has no spot instances", place, code="NoSpot",
                                      hint="drop use_spot, or pick another cloud")
        if not req.region:
            raise InvalidRequestError("Lambda needs a region to launch in", place)
        live = self._cluster_instances(place, req.cluster, None)
        ledger.found(live)
        elsewhere = [i for i in live if _region(i) != req.region]
        if elsewhere:
            raise InvalidRequestError(f"cluster {req.cluster} already has instances in {_region(elsewhere[0])}",
                                      place, hint=f"`broker down {req.cluster}` first")
        missing = req.num_nodes - len(live)
        if missing <= 0:
            return [i["id"] for i in live]
        have = {parse_name(i["name"])[2] for i in live}
        ranks = [r for r in range(req.num_nodes) if r not in have][:missing]
        regions = self._capacity_regions(place, req.instance_type)
        if regions is None:
            raise InvalidRequestError(f"Lambda offers no instance type {req.instance_type}", place,
                                      code="UnknownInstanceType")
        if req.region not in regions:
            raise CapacityError(f"no capacity for {req.instance_type} in {req.region} (regions with capacity: "
                                f"{', '.join(regions) or 'none'})", place,
                                code="instance-operations/launch/insufficient-capacity")
        key_name = self._ssh_key_name(place, req.public_key or _public_key())
        self._call(place, self._ensure_rules, req.cluster, tuple(req.ports))
        ids = [i["id"] for i in live]
        for rank in ranks:
            body = {"region_name": req.region, "instance_type_name": req.instance_type, "ssh_key_names": [key_name],
                    "quantity": 1, "name": instance_name(req.cluster, rank)}
            if req.image_id:
                image = req.image_id.removeprefix("lambda:")
                body["image"] = {"id": image} if _IMAGE_ID.match(image) else {"family": image}
            with ledger.create():
                ids += self._call(place, api.launch, body)
        return ids

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        place = Place("lambda", req.region, None, req.instance_type)
        deadline = time.time() + _seconds("BROKER_LAMBDA_WAIT", 900.0)
        poll = _seconds("BROKER_LAMBDA_POLL", 5.0)
        while True:
            insts = self._cluster_instances(place, req.cluster, req.region, live_only=False)
            gone = [i for i in insts if i["id"] in ids and _STATE.get(i.get("status")) == TERMINATED]
            live = [_info(i) for i in insts if _STATE.get(i.get("status")) != TERMINATED]
            if gone or len(live) < req.num_nodes:
                raise CapacityError(f"{max(len(gone), req.num_nodes - len(live))} instance(s) of {req.cluster} were "
                                    "terminated while starting", place, code="TerminatedDuringProvisioning")
            if all(i.state == RUNNING and i.public_ip for i in live):
                return _ordered(live)
            if time.time() > deadline:
                raise InvalidRequestError(f"instances of {req.cluster} not active after "
                                          f"{_seconds('BROKER_LAMBDA_WAIT', 900.0):.0f}s", place, code="BootTimeout")
            time.sleep(poll)

    # -- the rest of the protocol ------------------------------------------------------------------
    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        place = Place("lambda", region)
        insts = self._cluster_instances(place, cluster, region, live_only=not include_gone)
        return _ordered([_info(i) for i in insts])

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        place = Place("lambda", region)
        insts = [i for i in self._cluster_instances(place, cluster, region) if i.get("status") != "terminating"]
        if insts:
            self._call(place, api.terminate, [i["id"] for i in insts])
            deadline = time.time() + _seconds("BROKER_LAMBDA_WAIT", 900.0)
            while self._cluster_instances(place, cluster, region) and time.time() < deadline:
                time.sleep(_seconds("BROKER_LAMBDA_POLL", 5.0))
        if region is not None and self._cluster_instances(place, cluster, None):
            return []  # instances left in another region: its firewall rules stay
        self._call(place, self._remove_rules, cluster)
        return []

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        self._call(Place("lambda", region), self._ensure_rules, cluster, tuple(ports))

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Our instances (every region, from one listing) and our firewall rules, for `broker gc`."""
        place = Place("lambda", region)
        out = []
        for inst in self._call(place, api.list_instances):
            parsed = parse_name(inst.get("name"))
            if parsed and _mine(parsed[0], parsed[1]) and _STATE.get(inst.get("status")) != TERMINATED:
                if region is None or _region(inst) == region:
                    out.append(TaggedResource(self.name, _region(inst), parsed[0], "instance", inst["id"],
                                              home=_home_of(parsed[0])))
        if region is None:
            for rule in self._call(place, api.list_firewall_rules):
                desc = rule.get("description") or ""
                if desc.startswith(RULE_PREFIX):
                    lo, hi = (rule.get("port_range") or [0, 0])[:2]
                    cluster = desc[len(RULE_PREFIX):].strip()
                    out.append(TaggedResource(self.name, None, cluster, "firewall-rule", home=_home_of(cluster),
                                              id=
                                              f"{rule.get('protocol')}:{lo}-{hi}", live=False))
        return out

    # -- firewall (account-wide rules) -------------------------------------------------------------
    # The account has one list of rules, replaced whole by each PUT: the read-modify-write is done under
    # an account lock, or two launches (e.g. two managed jobs) or a launch and a down lose each other's rules.
    def _ensure_rules(self, cluster: str, ports: tuple[str, ...]) -> None:
        with account_lock("lambda-firewall-rules"):
            self._ensure_rules_locked(cluster, ports)

    def _ensure_rules_locked(self, cluster: str, ports: tuple[str, ...]) -> None:
        rules = list(api.list_firewall_rules())
        mine = f"{RULE_PREFIX}{cluster}"
        # a rule of the user's own or of this cluster counts; another cluster's rule goes away with it
        counts = lambda d: d == mine or not d.startswith(RULE_PREFIX)  # noqa: E731
        tcp = [tuple(r.get("port_range") or (0, 0)) for r in rules
               if r.get("protocol") in ("tcp", "all") and counts(r.get("description") or "")]
        covered = lambda lo, hi: any(a <= lo and hi <= b for a, b in tcp)  # noqa: E731
        add = []
        for lo, hi in [(22, 22), *_ports(ports)]:
            if not covered(lo, hi):
                add.append({"protocol": "tcp", "port_range": [lo, hi], "source_network": "0.0.0.0/0",
                            "description": f"{RULE_PREFIX}{cluster}"})
                tcp.append((lo, hi))
        if add:
            api.set_firewall_rules(rules + add)

    def _remove_rules(self, cluster: str) -> None:
        with account_lock("lambda-firewall-rules"):
            rules = list(api.list_firewall_rules())
            keep = [r for r in rules if (r.get("description") or "") != f"{RULE_PREFIX}{cluster}"]
            if len(keep) != len(rules):
                api.set_firewall_rules(keep)


PROVIDER = LambdaCloud


def _public_key() -> str:
    from ...paths import broker_home
    from ...runtime.keys import ensure_user_key

    return ensure_user_key(broker_home())[1]
