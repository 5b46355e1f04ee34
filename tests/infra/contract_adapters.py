"""Contract-test adapters for the clouds whose tests run against local REST fakes (GCP, Azure, Lambda,
Kubernetes).
tests/integration/test_contract.py imports EXTRA_ADAPTERS from here."""
from __future__ import annotations

import pytest

from skybroker.clouds.base import ProvisionRequest


class _FakeAdapter:
    def _fault(self, inject):
        """A fault maker: switch the fake's fault on, then return the request that will hit it."""
        def make():
            inject()
            return self.request("faulty", 1)
        return make


class GCPAdapter(_FakeAdapter):
    name = "gcp"
    spot = True
    firewall = True
    region, zone = "us-central1", "us-central1-a"

    def setup(self, monkeypatch, tmp_path):
        pytest.importorskip("google.cloud.compute_v1")
        from skybroker.clouds.gcp import GCPCloud, client
        from tests.infra.gce_fake import GCEFake

        self.fake = GCEFake(project="test-project").start()
        for k, v in self.fake.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("BROKER_GCP_POLL", "0.01")
        client.reset()
        self.cloud = GCPCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, self.region, self.zone, "n1-standard-4", n, use_spot=spot, ports=ports,
                                public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcontract contract@test")

    def faults(self):
        make = self._fault
        return {"capacity": make(lambda: self.fake.exhaust(self.zone)),
                "quota": make(lambda: self.fake.set_quota(self.region, "CPUS")),
                "credentials": make(lambda: self.fake.fail_auth(403))}

    def open_ports(self, cluster):
        out = set()
        for rule in self.fake.firewalls[f"skybroker-{cluster}"]["allowed"]:
            if rule["IPProtocol"] == "tcp":
                for p in rule.get("ports", []):
                    lo, _, hi = p.partition("-")
                    out.add((int(lo), int(hi or lo)))
        return sorted(out)

    def teardown(self):
        from skybroker.clouds.gcp import client

        self.fake.close()
        client.reset()



class AzureAdapter(_FakeAdapter):
    name = "azure"
    spot = True
    firewall = True
    region, zone = "eastus", None

    def setup(self, monkeypatch, tmp_path):
        pytest.importorskip("azure.mgmt.compute")
        from skybroker.clouds.azure import AzureCloud, client
        from tests.infra.arm_fake import ArmFake

        self.fake = ArmFake()
        for k, v in self.fake.env().items():
            monkeypatch.setenv(k, v)
        client.reset()
        self.cloud = AzureCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, self.region, self.zone, "Standard_D2s_v5", n, use_spot=spot, ports=ports,
                                public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcontract contract@test")

    def faults(self):
        make = self._fault
        return {"capacity": make(lambda: self.fake.capacity(self.region, "AllocationFailed")),
                "quota": make(lambda: self.fake.quota(self.region)),
                "credentials": make(lambda: self.fake.auth("AuthorizationFailed"))}

    def open_ports(self, cluster):
        out = set()
        for nsg in self.fake.find("networkSecurityGroups", f"skybroker-{cluster}"):
            for rule in nsg["properties"]["securityRules"]:
                p = rule["properties"]
                if p["protocol"] == "Tcp" and p["access"] == "Allow" and p["direction"] == "Inbound":
                    lo, _, hi = p["destinationPortRange"].partition("-")
                    out.add((int(lo), int(hi or lo)))
        return sorted(out)

    def teardown(self):
        from skybroker.clouds.azure import client

        self.fake.close()
        client.reset()


class LambdaAdapter(_FakeAdapter):
    """Lambda Cloud (tests/infra/lambda_fake.py). No spot market; its firewall is account-wide, not a
    per-cluster one (capabilities.firewall False: ports are tested in test_lambda.py); its quota is per
    account, so the injectable quota refusal is cloud-scoped (AccountQuotaError, test_lambda.py) and the
    contract's regional-quota case does not apply."""

    name = "lambda"
    spot = False
    firewall = False
    region = "us-east-1"

    def setup(self, monkeypatch, tmp_path):
        from skybroker.clouds.lambda_cloud import LambdaCloud
        from tests.infra.lambda_fake import LambdaFake

        self.fake = LambdaFake().start()
        for k, v in self.fake.env().items():
            monkeypatch.setenv(k, v)
        self.cloud = LambdaCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, self.region, None, "gpu_1x_a10", n, use_spot=spot, ports=ports,
                                accelerator="A10", accelerator_count=1,
                                public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcontract contract@test")

    def faults(self):
        make = self._fault
        return {"capacity": make(lambda: self.fake.no_capacity(self.region)),
                "credentials": make(lambda: self.fake.fail_auth())}

    def teardown(self):
        self.fake.close()


class KubernetesAdapter(_FakeAdapter):
    """Kubernetes (tests/infra/k8s_fake.py, the official client). No spot market and no firewall of ours
    (a task's ports are a Service: test_kubernetes.py)."""

    name = "kubernetes"
    spot = False
    firewall = False
    region = "fake"

    def setup(self, monkeypatch, tmp_path):
        pytest.importorskip("kubernetes")
        from skybroker.clouds.kubernetes import KubernetesCloud, client, driver
        from tests.infra.k8s_fake import K8sFake, node

        self.fake = K8sFake(nodes=[node("n1", cpu="16", memory="64Gi"), node("n2", cpu="16", memory="64Gi")]).start()
        monkeypatch.setenv("KUBECONFIG", self.fake.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setenv("BROKER_K8S_POLL", "0.02")
        monkeypatch.setenv("BROKER_K8S_PROVISION_TIMEOUT", "0.2")
        client.reset()
        driver._nodes_cache.clear()
        self.cloud = KubernetesCloud()

    def request(self, cluster, n=2, spot=False, ports=()):
        return ProvisionRequest(cluster, self.region, None, "2CPU--4GB", n, use_spot=spot, ports=ports,
                                public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcontract contract@test")

    def faults(self):
        def big():
            return ProvisionRequest("faulty", self.region, None, "64CPU--64GB", 1,
                                    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcontract contract@test")

        make = self._fault
        return {"capacity": big,  # Unschedulable: no node has 64 CPUs
                "quota": make(lambda: self.fake.quota("pods", {"pods": "0"})),
                "credentials": make(lambda: self.fake.fail_auth())}

    def teardown(self):
        from skybroker.clouds.kubernetes import client

        self.fake.close()
        client.reset()


EXTRA_ADAPTERS = [GCPAdapter, AzureAdapter, LambdaAdapter, KubernetesAdapter]
