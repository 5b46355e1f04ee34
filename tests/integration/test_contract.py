"""One contract, every cloud driver: the protocol's promises checked against each implementation.

  - provision is idempotent by cluster (a retried launch resumes, never duplicates);
  - query after provision finds the instances, tagged with the cluster; after terminate it is empty;
  - terminate twice is fine;
  - spot instances are marked spot (providers declaring `capabilities.spot`);
  - ports are opened only as asked (providers declaring `capabilities.firewall`);
  - typed errors carry the right scope (zone / region / cloud);
  - run_instances/wait_instances: the ids run returns are the instances wait returns, and a second run
    returns the same ids (nothing duplicated);
  - `capabilities.stop`: stop/start work when declared, and are refused (InvalidRequestError) when not;
  - `capabilities.self_stop`: prepare_self_stop accepts a running cluster (answering the action that
    will really happen) and every node gets a command or None, the head a command; refused when not declared;
  - `capabilities.tagged_listing`: list_tagged finds the cluster's resources (and nothing after terminate).
What a provider can do is read from its declared capabilities, never from the adapter or hasattr.

Each cloud plugs in through a small adapter (how to make a valid request, inject a fault, read the
firewall). GCP and Azure adapters live beside their fakes and are added to CLOUDS when present.
"""
from __future__ import annotations

import time

import pytest

from skybroker import state
from skybroker.clouds.base import TAG_CLUSTER, ProvisionRequest
from skybroker.errors import CapacityError, CredentialsError, QuotaError, Scope


class LocalAdapter:
    name = "local"
    spot = False
    firewall = False

    def setup(self, monkeypatch, tmp_path):
        from skybroker.clouds.local import LocalCloud

        self.cloud = LocalCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, None, None, "local", n, use_spot=spot, ports=ports)

    def faults(self):
        return {}

    def teardown(self):
        pass


class SSHAdapter:
    name = "ssh"
    spot = False
    firewall = False

    def setup(self, monkeypatch, tmp_path):
        import socket

        from skybroker.clouds.ssh import SSHCloud

        # three "hosts": TCP listeners on loopback (query probes the SSH port; nothing leaves this machine)
        self.listeners = []
        for _ in range(3):
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(16)
            self.listeners.append(srv)
        hosts = ", ".join(f"{{ip: 127.0.0.1, port: {srv.getsockname()[1]}}}" for srv in self.listeners)
        home = state.db_path().parent
        (home / "ssh_node_pools.yaml").write_text(f"lab:\n  user: broker\n  hosts: [{hosts}]\n")
        self.cloud = SSHCloud()
        # the hosts above do not exist: skip terminate's remote clean-up step (tested on real nodes in
        # test_ssh_cluster.py); allocation and release are what the contract covers here
        monkeypatch.setattr(self.cloud, "terminate", lambda cluster, region: None)

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, "lab", None, "ssh-node", n, use_spot=spot, ports=ports)

    def faults(self):
        return {"capacity": lambda: ProvisionRequest("big", "lab", None, "ssh-node", 10)}

    def teardown(self):
        for srv in self.listeners:
            srv.close()


class AWSAdapter:
    name = "aws"
    spot = True
    firewall = True
    region, zone = "us-east-1", "use1-az1"

    def setup(self, monkeypatch, tmp_path):
        moto = pytest.importorskip("moto")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        monkeypatch.setenv("BROKER_AWS_POLL", "0.02")
        from skybroker.clouds.aws import client as c
        from skybroker.clouds.aws.driver import AWSCloud

        self.mock = moto.mock_aws()
        self.mock.start()
        c.reset()
        self.session = c._session()
        self.cloud = AWSCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        from skybroker.runtime.keys import ensure_user_key

        _, pub = ensure_user_key(state.db_path().parent)
        return ProvisionRequest(cluster, self.region, self.zone, "m5.large", n, use_spot=spot, ports=ports,
                                image_id="ami-12345678", public_key=pub)

    def faults(self):
        def inject(code):
            def make():
                from botocore.exceptions import ClientError
                from skybroker.clouds.aws import client as c

                sess = c._session()

                def hook(params, **kw):
                    raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances")

                sess.events.register("before-parameter-build.ec2.RunInstances", hook, unique_id="contract-fault")
                return self.request("faulty", 1)
            return make

        return {"capacity": inject("InsufficientInstanceCapacity"), "quota": inject("VcpuLimitExceeded"),
                "credentials": inject("AuthFailure")}

    def open_ports(self, cluster):
        import boto3

        ec2 = boto3.client("ec2", region_name=self.region)
        sg = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"skybroker-{cluster}"]}])
        perms = sg["SecurityGroups"][0]["IpPermissions"]
        return sorted({(p["FromPort"], p["ToPort"]) for p in perms if p.get("IpProtocol") == "tcp"})

    def teardown(self):
        from skybroker.clouds.aws import client as c

        self.mock.stop()
        c.reset()


ADAPTERS = [LocalAdapter, SSHAdapter, AWSAdapter]
try:  # the GCP/Azure adapters ship with their fakes
    from tests.infra.contract_adapters import EXTRA_ADAPTERS  # type: ignore

    ADAPTERS += EXTRA_ADAPTERS
except ImportError:
    pass


@pytest.fixture(params=ADAPTERS, ids=lambda a: a.name)
def adapter(request, monkeypatch, tmp_path):
    from skybroker.clouds import registry

    registry._instances.clear()
    a = request.param()
    a.setup(monkeypatch, tmp_path)
    yield a
    a.teardown()
    registry._instances.clear()


def _save(cluster, infos, cloud, region):
    """What clusters.launch does after provision: the state that ssh pools allocate from."""
    from skybroker.state import ClusterRecord, NodeRecord

    state.save_cluster(ClusterRecord(cluster, cloud, region, None, "x", None, False, len(infos), 0.0, "UP",
                                     time.time(), nodes=[NodeRecord(i.instance_id, r, i.public_ip or "", i.private_ip,
                                                                    i.ssh_user, i.ssh_port)
                                                         for r, i in enumerate(infos)]))


def test_provision_is_idempotent_and_query_finds_tagged_instances(adapter):
    req = adapter.request("ct-a", 2)
    first = adapter.cloud.provision(req)
    _save("ct-a", first, adapter.name, req.region)
    again = adapter.cloud.provision(req)
    assert len(first) == 2
    assert sorted(i.instance_id for i in again) == sorted(i.instance_id for i in first)
    found = adapter.cloud.query("ct-a", req.region)
    assert sorted(i.instance_id for i in found) == sorted(i.instance_id for i in first)
    assert all(i.tags.get(TAG_CLUSTER) == "ct-a" for i in found)
    assert all(i.state == "running" for i in found)


def test_terminate_twice_and_query_after_is_empty(adapter):
    req = adapter.request("ct-b", 1)
    infos = adapter.cloud.provision(req)
    _save("ct-b", infos, adapter.name, req.region)
    adapter.cloud.terminate("ct-b", req.region)
    state.delete_cluster("ct-b")
    adapter.cloud.terminate("ct-b", req.region)
    assert adapter.cloud.query("ct-b", req.region) == []


def test_spot_instances_are_marked_spot(adapter):
    if not adapter.cloud.capabilities.spot:
        pytest.skip(f"{adapter.name} has no spot market")
    spot = adapter.cloud.provision(adapter.request("ct-spot", 1, spot=True))
    od = adapter.cloud.provision(adapter.request("ct-od", 1, spot=False))
    assert [i.spot for i in spot] == [True] and [i.spot for i in od] == [False]


def test_ports_opened_only_as_asked(adapter):
    if not adapter.cloud.capabilities.firewall:
        pytest.skip(f"{adapter.name} has no firewall of ours")
    adapter.cloud.provision(adapter.request("ct-ports", 1, ports=("8080", "9000-9010")))
    assert adapter.open_ports("ct-ports") == [(22, 22), (8080, 8080), (9000, 9010)]
    adapter.cloud.open_ports("ct-ports", adapter.request("ct-ports").region, ("7000",))
    assert adapter.open_ports("ct-ports") == [(22, 22), (7000, 7000), (8080, 8080), (9000, 9010)]


@pytest.mark.parametrize("fault, err, scope", [
    ("capacity", CapacityError, Scope.ZONE),
    ("quota", QuotaError, Scope.REGION),
    ("credentials", CredentialsError, Scope.CLOUD),
])
def test_typed_errors_carry_their_scope(adapter, fault, err, scope):
    make = adapter.faults().get(fault)
    if make is None:
        pytest.skip(f"{adapter.name} has no {fault} failure to inject")
    req = make()
    with pytest.raises(err) as ei:
        adapter.cloud.provision(req)
    assert ei.value.scope == scope
    assert ei.value.code  # the cloud's own code, for the failover report


def test_the_provider_is_registered_and_declares_its_capabilities(adapter):
    from skybroker.clouds import registry
    from skybroker.clouds.base import Capabilities, Provider

    prov = adapter.cloud
    assert isinstance(prov, Provider) and prov.name == adapter.name
    assert type(registry.get(adapter.name, sdk=False)) is type(prov)
    assert isinstance(prov.capabilities, Capabilities)
    assert prov.capabilities.priced == bool(prov.catalog)  # priced offers come from a catalog it names
    assert prov.check().cloud == adapter.name


def test_run_then_wait_returns_the_recorded_instances(adapter):
    req = adapter.request("ct-rw", 2)
    ids = adapter.cloud.run_instances(req)
    assert len(ids) == 2
    infos = adapter.cloud.wait_instances(req, ids)
    _save("ct-rw", infos, adapter.name, req.region)
    assert sorted(i.instance_id for i in infos) == sorted(ids)
    assert sorted(adapter.cloud.run_instances(req)) == sorted(ids)  # resumes: same instances, none new
    assert all(i.state == "running" for i in adapter.cloud.wait_instances(req, ids))


def test_stop_and_start_as_declared(adapter):
    from skybroker.clouds.base import RUNNING, STOPPED
    from skybroker.errors import InvalidRequestError

    req = adapter.request("ct-stop", 1)
    infos = adapter.cloud.provision(req)
    _save("ct-stop", infos, adapter.name, req.region)
    if not adapter.cloud.capabilities.stop:
        with pytest.raises(InvalidRequestError):
            adapter.cloud.stop("ct-stop", req.region)
        return
    adapter.cloud.stop("ct-stop", req.region)
    assert {i.state for i in adapter.cloud.query("ct-stop", req.region)} == {STOPPED}
    started = adapter.cloud.start("ct-stop", req.region)
    assert [i.state for i in started] == [RUNNING]
    assert [i.instance_id for i in started] == [i.instance_id for i in infos]


def test_self_stop_as_declared(adapter):
    from skybroker.clouds.base import SelfStop
    from skybroker.errors import InvalidRequestError
    from skybroker.state import NodeRecord

    req = adapter.request("ct-self", 2)
    infos = adapter.cloud.provision(req)
    nodes = [NodeRecord(i.instance_id, r, i.public_ip or i.private_ip or "", i.private_ip) for r, i in enumerate(infos)]
    if not adapter.cloud.capabilities.self_stop:
        with pytest.raises(InvalidRequestError):
            adapter.cloud.prepare_self_stop("ct-self", req.region, "stop")
        return
    assert adapter.cloud.prepare_self_stop("ct-self", req.region, "stop") in ("stop", "down")
    plans = [adapter.cloud.self_stop_command("ct-self", n, nodes[0], "stop") for n in nodes]
    assert isinstance(plans[0], SelfStop) and plans[0].command and plans[0].follow is None
    assert all(p is None or (isinstance(p, SelfStop) and p.command) for p in plans[1:])
    adapter.cloud.terminate("ct-self", req.region)


def test_list_tagged_finds_the_clusters_resources(adapter):
    if not adapter.cloud.capabilities.tagged_listing:
        pytest.skip(f"{adapter.name} keeps no resources of its own (declared: tagged_listing=False)")
    req = adapter.request("ct-tag", 1)
    infos = adapter.cloud.provision(req)
    regions = [r for r in adapter.cloud.regions() if r in (req.region, None)] or [req.region]

    def mine():
        return [t for r in regions for t in adapter.cloud.list_tagged(r) if t.cluster == "ct-tag"]

    found = mine()
    assert {t.id for t in found if t.kind == "instance"} == {i.instance_id for i in infos}
    assert all(t.cloud == adapter.name for t in found)
    adapter.cloud.terminate("ct-tag", req.region)
    assert mine() == []
