"""Kubernetes: the driver through the official client against a local fake of the API server
(tests/infra/k8s_fake.py): offers from the nodes, pod/Service/Secret shapes, typed errors (Unschedulable,
ResourceQuota, RBAC, 401, 429, unreachable, bad image), failover to another cloud, gc listing; and, as
root, launch → exec → logs → down and a managed job that survives its pod being deleted, with pods that
are real sshd nodes reached through the API server's port-forward (or the pod IP)."""
from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from skybroker import api, provision, state  # noqa: E402
from skybroker.clouds.base import TAG_CLUSTER, ProvisionRequest  # noqa: E402
from skybroker.errors import (CapacityError, CredentialsError, InvalidRequestError, NoFeasibleError,  # noqa: E402
                              QuotaError, Scope, ThrottledError)
from skybroker.spec import task_from_dict  # noqa: E402
from tests.infra.k8s_fake import K8sFake, node  # noqa: E402

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIk8stestkey test@k8s"
NODES = [node("gpu-1", cpu="32", memory="128Gi", gpus=2, gpu_label="NVIDIA-A100-SXM4-40GB"),
         node("gke-l4", cpu="16", memory="64Gi", gpus=1, gpu_key="cloud.google.com/gke-accelerator",
              gpu_label="nvidia-l4", taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]),
         node("cpu-1", cpu="8", memory="32Gi")]


def _reset():
    from skybroker.clouds import registry
    from skybroker.clouds.kubernetes import client, driver

    registry._instances.clear()
    client.reset()
    driver._nodes_cache.clear()


def _start(monkeypatch, tmp_path, nodes=NODES, **kw):
    f = K8sFake(nodes=copy.deepcopy(nodes), **kw).start()
    monkeypatch.setenv("KUBECONFIG", f.write_kubeconfig(tmp_path / "kubeconfig"))
    monkeypatch.setenv("BROKER_K8S_POLL", "0.02")
    monkeypatch.setenv("BROKER_K8S_PROVISION_TIMEOUT", "0.3")
    for k in ("KUBERNETES_SERVICE_HOST", "BROKER_K8S_NETWORK", "BROKER_K8S_NAMESPACE"):
        monkeypatch.delenv(k, raising=False)
    _reset()
    return f


@pytest.fixture
def fake(monkeypatch, tmp_path):
    f = _start(monkeypatch, tmp_path)
    yield f
    f.close()
    _reset()


@pytest.fixture
def cloud(fake):
    from skybroker.clouds.kubernetes import KubernetesCloud

    return KubernetesCloud()


def req(cluster="kc", n=1, itype="2CPU--4GB", accel=None, count=0, **kw):
    kw.setdefault("public_key", PUB)
    return ProvisionRequest(cluster, "fake", None, itype, n, accelerator=accel, accelerator_count=count, **kw)


def pod_posts(fake) -> list[dict]:
    return [b for m, p, b in fake.requests if m == "POST" and p == "/api/v1/namespaces/default/pods"]


# -- credentials and import hygiene ---------------------------------------------------------------------
def test_check_reads_the_kubeconfig_without_the_sdk_or_the_network(fake, tmp_path, monkeypatch):
    code = ("import sys; from skybroker.clouds.kubernetes import KubernetesCloud as K; c = K().check(); "
            "print(c.ok, 'kubernetes' in sys.modules); print(c.detail)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         cwd=Path(__file__).resolve().parents[2])
    first, detail = out.stdout.splitlines()[:2]
    assert first == "True False", out.stderr
    assert "current fake (namespace default)" in detail and fake.token not in out.stdout
    assert fake.requests == []
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    from skybroker.clouds.kubernetes import KubernetesCloud

    c = KubernetesCloud().check()
    assert not c.ok and "no kubeconfig" in c.detail and "get-credentials" in c.hint


def test_in_cluster_config_is_the_one_context(monkeypatch, tmp_path):
    from skybroker.clouds.kubernetes import KubernetesCloud
    from skybroker.clouds.kubernetes import config as cfg

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    (sa / "namespace").write_text("jobs\n")
    monkeypatch.setattr(cfg, "SA_DIR", sa)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert cfg.contexts_for_plan() == ["in-cluster"] and cfg.namespace("in-cluster") == "jobs"
    assert cfg.network() == "pod-ip"
    assert KubernetesCloud().check().ok


def test_plans_without_k8s_make_no_call_and_import_nothing(fake):
    code = ("import sys; from skybroker import api, spec; t = spec.task_from_dict({'resources': {'cpus': 4}, "
            "'run': 'x'}); p = api.plan(t); print(p.chosen.cloud, 'kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split()[1:] == ["False"], out.stdout + out.stderr
    assert fake.requests == []
    r = subprocess.run([sys.executable, "-m", "skybroker.cli", "--help"], capture_output=True, text=True,
                       env=dict(os.environ), cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and fake.requests == []


# -- offers -------------------------------------------------------------------------------------------
def test_offers_come_from_the_nodes(fake, monkeypatch):
    t = task_from_dict({"resources": {"infra": "k8s", "accelerators": "A100:1"}, "run": "x"})
    plan = api.plan(t)
    c = plan.chosen
    assert (c.cloud, c.region, c.instance_type, c.price, c.vcpus, c.memory_gib) == (
        "kubernetes", "fake", "4CPU--16GB--A100:1", 0.0, 4.0, 16.0)
    assert api.plan(task_from_dict({"resources": {"infra": "k8s/fake", "accelerators": "L4"}, "run": "x"})).chosen.region == "fake"
    with pytest.raises(NoFeasibleError):
        api.plan(task_from_dict({"resources": {"infra": "k8s", "accelerators": "A100:4"}, "run": "x"}))
    with pytest.raises(NoFeasibleError):
        api.plan(task_from_dict({"resources": {"infra": "k8s", "cpus": 64}, "run": "x"}))
    cpu = api.plan(task_from_dict({"resources": {"infra": "kubernetes", "cpus": "6+", "memory": "2x"}, "run": "x"}))
    assert cpu.chosen.instance_type == "6CPU--12GB"
    assert api.plan(task_from_dict({"resources": {"infra": "k8s"}, "run": "x"})).chosen.instance_type == "2CPU--4GB"
    gets = [p for m, p, _ in fake.requests if p.startswith("/api/v1/nodes")]
    assert len(gets) == 1  # cached across plans
    (Path(os.environ["BROKER_HOME"])).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["BROKER_HOME"]) / "kubernetes.yaml").write_text(
        "prices: {cpu: 0.01, memory_gib: 0.001}\ncontexts:\n  fake: {prices: {gpu: {A100: 1.5}}}\n")
    assert api.plan(t).chosen.price == pytest.approx(4 * 0.01 + 16 * 0.001 + 1.5)


def test_an_unreadable_context_is_offered_unverified_and_fails_typed(monkeypatch, tmp_path):
    f = _start(monkeypatch, tmp_path)
    f.close()  # the API server is gone
    t = task_from_dict({"resources": {"infra": "k8s", "cpus": 2}, "run": "x"})
    plan = api.plan(t)
    assert plan.chosen.cloud == "kubernetes"
    from skybroker.clouds.kubernetes import KubernetesCloud
    from skybroker.clouds.kubernetes.errors import UnreachableError

    with pytest.raises(UnreachableError) as ei:
        KubernetesCloud().provision(req())
    assert ei.value.scope == Scope.REGION
    _reset()


# -- pods, services, secrets --------------------------------------------------------------------------
def test_pod_shapes_and_idempotent_provision(cloud, fake):
    first = cloud.provision(req(n=2, itype="4CPU--16GB--A100:1", accel="A100", count=1, labels=(("team", "ml"),)))
    again = cloud.provision(req(n=2, itype="4CPU--16GB--A100:1", accel="A100", count=1))
    assert [i.instance_id for i in first] == [i.instance_id for i in again] and len(pod_posts(fake)) == 2
    body = pod_posts(fake)[0]
    c = body["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}}
    assert c["image"] == "nvidia/cuda:12.4.1-runtime-ubuntu22.04" and c["command"][:2] == ["/bin/bash", "-c"]
    assert body["spec"]["restartPolicy"] == "Never" and body["spec"]["subdomain"] == "skybroker-kc"
    terms = body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In",
                                            "values": ["NVIDIA-A100-SXM4-40GB"]}]}]
    labels = body["metadata"]["labels"]
    assert labels[TAG_CLUSTER] == "kc" and labels["skybroker-rank"] == "0" and labels["team"] == "ml"
    assert {p["spec"]["nodeName"] for p in fake.pods()} == {"gpu-1"}
    svc = fake.get("services", "skybroker-kc")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"][TAG_CLUSTER] == "kc"
    key = base64.b64decode(fake.get("secrets", "skybroker-kc-ssh")["data"]["authorized_keys"]).decode()
    assert key.strip() == PUB
    assert [i.rank_hint for i in first] == [0, 1] and all(i.private_ip for i in first)


def test_tainted_gke_gpu_node_and_docker_image(cloud, fake):
    cloud.provision(req("l4", itype="4CPU--16GB--L4:1", accel="L4", count=1, image_id="docker:myrepo/train:1"))
    body = pod_posts(fake)[0]
    assert body["spec"]["containers"][0]["image"] == "myrepo/train:1"
    assert {t["key"] for t in body["spec"]["tolerations"]} >= {"nvidia.com/gpu"}
    assert fake.pods()[0]["spec"]["nodeName"] == "gke-l4"


def test_terminate_twice_query_after_is_empty(cloud, fake):
    cloud.provision(req(n=2, ports=("8080",)))
    assert fake.get("services", "skybroker-kc-ports")["spec"]["type"] == "LoadBalancer"
    cloud.terminate("kc", "fake")
    cloud.terminate("kc", "fake")
    assert cloud.query("kc", "fake") == [] and fake.pods() == []
    assert fake.objects["services"] == {} and fake.objects["secrets"] == {}


def test_ports_are_a_service_extended_not_shrunk(cloud, fake):
    cloud.provision(req(ports=("8080", "9000-9002")))
    ports = lambda: sorted(p["port"] for p in fake.get("services", "skybroker-kc-ports")["spec"]["ports"])  # noqa: E731
    assert ports() == [8080, 9000, 9001, 9002]
    cloud.open_ports("kc", "fake", ("7000",))
    assert ports() == [7000, 8080, 9000, 9001, 9002]
    sel = fake.get("services", "skybroker-kc-ports")["spec"]["selector"]
    assert sel["skybroker-rank"] == "0"


def test_list_tagged_for_gc(cloud, fake):
    cloud.provision(req("g1"))
    cloud.provision(req("g2", n=2))
    tagged = cloud.list_tagged("fake")
    assert {(t.cluster, t.kind) for t in tagged} == {("g1", "instance"), ("g1", "service"), ("g1", "secret"),
                                                     ("g2", "instance"), ("g2", "service"), ("g2", "secret")}
    assert all(t.live == (t.kind == "instance") for t in tagged)
    assert cloud.regions() == ["fake"]


def test_preemptions_are_visible_with_reasons(cloud, fake, monkeypatch):
    cloud.provision(req("pe", n=3))
    by_rank = {p["metadata"]["labels"]["skybroker-rank"]: p for p in fake.pods()}
    fake.delete_pod(by_rank["0"]["metadata"]["name"])  # `kubectl delete pod`, or the scheduler preempted it
    fake.evict(by_rank["1"]["metadata"]["name"])  # kubelet eviction: the pod stays, Failed
    q = cloud.query("pe", "fake", include_gone=True)
    assert [(i.rank_hint, i.state, i.state_reason) for i in q] == [(1, "terminated", "Evicted"), (2, "running", None)]
    assert [i.rank_hint for i in cloud.query("pe", "fake")] == [2]
    fake.eviction_delay = 30
    fake.lose_node(by_rank["2"]["spec"]["nodeName"])  # NotReady: Ready=False long before the pod is deleted
    q = cloud.query("pe", "fake", include_gone=True)
    assert 2 in [i.rank_hint for i in q if i.state == "terminated" and i.state_reason == "Deleting"]
    assert cloud.query("pe", "fake") == []


# -- typed errors -------------------------------------------------------------------------------------
def test_unschedulable_is_capacity(cloud, fake):
    cloud.provision(req("big", itype="30CPU--100GB--A100:2", accel="A100", count=2))
    with pytest.raises(CapacityError) as ei:
        cloud.provision(req("more", itype="4CPU--16GB--A100:1", accel="A100", count=1))
    assert ei.value.scope == Scope.ZONE and ei.value.code == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in ei.value.message


def test_quota_rbac_auth_throttle_and_bad_image_are_typed(cloud, fake):
    fake.quota("gpus", {"requests.nvidia.com/gpu": "1"})
    cloud.provision(req("q1", itype="4CPU--16GB--A100:1", accel="A100", count=1))
    with pytest.raises(QuotaError) as ei:
        cloud.provision(req("q2", itype="4CPU--16GB--A100:1", accel="A100", count=1))
    assert ei.value.scope == Scope.REGION and ei.value.code == "ExceededQuota:gpus/requests.nvidia.com/gpu"
    fake.deny("create", "pods")
    with pytest.raises(CredentialsError) as ei:
        cloud.provision(req("r1"))
    assert ei.value.scope == Scope.CLOUD and ei.value.code == "Forbidden"
    fake.denied.clear()
    with pytest.raises(InvalidRequestError) as ei:
        cloud.provision(req("img", image_id="does-not-exist:latest"))
    assert ei.value.code == "ImagePullBackOff" and ei.value.scope == Scope.REQUEST
    assert ei.value.exit_code == 2 and "resources.image_id" in ei.value.message and "image name" in ei.value.hint
    fake.throttle = 1
    with pytest.raises(ThrottledError):
        cloud.query("q1", "fake")
    fake.fail_auth()
    with pytest.raises(CredentialsError) as ei:
        cloud.provision(req("a1"))
    assert ei.value.code == "Unauthorized"


def test_unknown_context_is_a_credentials_error(cloud, fake):
    with pytest.raises(CredentialsError) as ei:
        cloud.provision(ProvisionRequest("x", "nope", None, "2CPU--4GB", 1, public_key=PUB))
    assert ei.value.code == "KubeconfigError"


def test_a_context_the_kubeconfig_lacks_is_refused_when_planning_and_leaves_nothing(fake, monkeypatch, tmp_path):
    """`infra: k8s/nope` (a typo) or a kubeconfig whose current-context names no context: refused when
    planning (exit 2 naming the field and the contexts there are; `infra: k8s` says why it has none), never
    launched. It was planned, then failed at launch; its rollback could not reach the context either, so the
    cluster stayed INTERRUPTED and `broker down` failed (exit 4) for as long as the kubeconfig lacked it."""
    import yaml

    from skybroker.clouds.kubernetes import KubernetesCloud
    from skybroker.errors import SpecError
    from tests.integration.local_helpers import broker

    with pytest.raises(SpecError) as ei:
        api.plan(task_from_dict({"resources": {"infra": "k8s/nope", "cpus": 2}, "run": "x"}))
    assert ei.value.exit_code == 2 and "no context 'nope' on kubernetes" in ei.value.message
    assert ei.value.field.startswith("resources.infra") and "fake" in ei.value.hint
    (tmp_path / "t.yaml").write_text("resources: {infra: k8s/nope, cpus: 2}\nrun: echo hi\n")
    r = broker("launch", "-y", tmp_path / "t.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "no context 'nope'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert broker("status", "--json").stdout.strip() == "[]"
    assert fake.pods() == [] and not [q for m, q, _ in fake.requests if m == "POST"]

    kc = yaml.safe_load(open(os.environ["KUBECONFIG"]))
    kc["current-context"] = "typo"
    (tmp_path / "typo").write_text(yaml.safe_dump(kc))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "typo"))
    with pytest.raises(NoFeasibleError) as ei:
        api.plan(task_from_dict({"resources": {"infra": "k8s", "cpus": 2}, "run": "x"}))
    assert "current-context is 'typo', which is not a context of the kubeconfig (contexts: fake)" in str(ei.value)
    assert "broker check`" in ei.value.hint and "broker check kubernetes" not in ei.value.hint
    c = KubernetesCloud().check()
    assert not c.ok and "'typo'" in c.detail
    assert api.plan(task_from_dict({"resources": {"infra": "k8s/fake", "cpus": 2}, "run": "x"})).chosen.region == "fake"


def test_no_kubeconfig_at_all_is_a_credentials_error_when_named(monkeypatch, tmp_path):
    """No kubeconfig anywhere (KUBECONFIG unset, no ~/.kube/config, not in a pod): a task naming k8s is told
    so (where it looked, how to set one up), exit 4 like another cloud's missing credentials; it was exit 3
    "no offer fits". A task naming no cloud plans as before, k8s skipped like any unconfigured cloud."""
    from skybroker.errors import MissingCredentialsError
    from tests.integration.local_helpers import broker

    for k in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(k, raising=False)
    _reset()
    kube = Path(os.environ["HOME"]) / ".kube" / "config"
    assert not kube.exists()
    for infra in ("k8s", "kubernetes/ctx"):
        with pytest.raises(MissingCredentialsError) as ei:
            api.plan(task_from_dict({"resources": {"infra": infra, "cpus": 2}, "run": "x"}))
        assert ei.value.exit_code == 4, infra
        assert "no kubeconfig found (KUBECONFIG is unset and %s does not exist)" % kube in ei.value.message
        assert "KUBECONFIG" in ei.value.hint and "get-credentials" in ei.value.hint
    (tmp_path / "t.yaml").write_text("resources: {infra: k8s, cpus: 2}\nrun: echo hi\n")
    r = broker("launch", "-y", tmp_path / "t.yaml", cwd=tmp_path)
    assert r.returncode == 4 and "no kubeconfig found" in r.stderr and "Hint:" in r.stderr, r.stderr
    assert "no offer fits" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert broker("status", "--json").stdout.strip() == "[]"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    r = broker("launch", "-y", tmp_path / "t.yaml", cwd=tmp_path)
    assert r.returncode == 4 and f"KUBECONFIG={tmp_path / 'nope'}" in r.stderr, r.stderr
    assert api.plan(task_from_dict({"resources": {"cpus": 2}, "run": "x"})).chosen.cloud != "kubernetes"


def test_a_bad_image_or_a_missing_namespace_is_bad_input_and_leaves_nothing(fake, monkeypatch, tmp_path):
    """Both were exit 4 with "retry later, use --retry-until-up" (the generic hint of a capacity failure); an
    unpullable image is exit 2 naming resources.image_id (README: Containers), a missing namespace exit 2 saying
    how to create or name one. The launch into a missing namespace could not roll back either (listing its pods
    failed), so the cluster stayed INTERRUPTED and `broker down` failed until the namespace existed."""
    from tests.integration.local_helpers import broker

    t = tmp_path / "t.yaml"
    t.write_text("resources: {infra: k8s, cpus: 2, image_id: 'docker:does-not-exist:1'}\nrun: echo hi\n")
    r = broker("launch", "-y", "-c", "img", t, cwd=tmp_path)
    assert r.returncode == 2 and "resources.image_id" in r.stderr and "check the image name" in r.stderr, r.stderr
    assert "--retry-until-up" not in r.stderr and "Traceback" not in r.stderr
    assert fake.pods() == [] and broker("status", "--json").stdout.strip() == "[]"

    t.write_text("resources: {infra: k8s, cpus: 2}\nrun: echo hi\n")
    r = broker("launch", "-y", "-c", "nsx", t, cwd=tmp_path, env={"BROKER_K8S_NAMESPACE": "nope"})
    assert r.returncode == 2 and "kubectl create namespace nope" in r.stderr, r.stderr
    assert "could not roll back" not in r.stderr and "--retry-until-up" not in r.stderr, r.stderr
    assert broker("status", "--json", env={"BROKER_K8S_NAMESPACE": "nope"}).stdout.strip() == "[]"
    monkeypatch.setenv("BROKER_K8S_NAMESPACE", "nope")
    from skybroker.clouds.kubernetes import KubernetesCloud

    assert KubernetesCloud().terminate("nsx", "fake") == [] and KubernetesCloud().query("nsx", "fake") == []


# -- failover -----------------------------------------------------------------------------------------
def test_unschedulable_fails_over_to_another_cloud(monkeypatch, tmp_path):
    from skybroker.clouds.kubernetes import KubernetesCloud
    from skybroker.clouds.local import LocalCloud
    from skybroker.runtime.keys import ensure_user_key

    f = _start(monkeypatch, tmp_path, nodes=[node("cpu-1", cpu="8", memory="32Gi")])
    try:
        KubernetesCloud().provision(req("hog", itype="8CPU--30GB"))  # the only node is full now
        t = task_from_dict({"resources": {"ordered": [{"infra": "k8s", "cpus": 8, "memory": 16},
                                                      {"infra": "local"}]}, "run": "true"})
        assert api.plan(t).chosen.cloud == "kubernetes"  # allocatable fits: the offer stands
        _, pub = ensure_user_key(state.db_path().parent)
        cand, infos, attempts = provision.provision("fo", lambda b: api.plan(t, b), public_key=pub)
        assert [(a.cloud, a.error, a.code) for a in attempts] == [("kubernetes", "CapacityError", "Unschedulable")]
        assert cand.cloud == "local" and len(infos) == 1
        assert [p["metadata"]["labels"][TAG_CLUSTER] for p in f.pods()] == ["hog"]  # the attempt was rolled back
        assert f.get("services", "skybroker-fo") is None and f.get("secrets", "skybroker-fo-ssh") is None
        LocalCloud().terminate("fo")
    finally:
        f.close()
        _reset()


# -- end to end on sshd nodes (root) ------------------------------------------------------------------
@pytest.fixture
def sshd_fake(node_pool, monkeypatch, tmp_path):
    f = _start(monkeypatch, tmp_path, node_pool=node_pool)
    monkeypatch.setenv("BROKER_K8S_SSH_USER", node_pool.user)
    yield f
    f.close()
    _reset()


@pytest.mark.parametrize("network", ["port-forward", "pod-ip"])
def test_launch_exec_logs_down_on_sshd_pods(sshd_fake, node_pool, monkeypatch, network, tmp_path):
    monkeypatch.setenv("BROKER_K8S_NETWORK", network)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.txt").write_text("hello from the workdir\n")
    (wd / ".gitignore").write_text("ignored.txt\n")
    (wd / "ignored.txt").write_text("x")
    task = task_from_dict({"name": "k8s", "num_nodes": 2, "workdir": str(wd),
                           "resources": {"infra": "k8s", "cpus": 2, "memory": 4},
                           "run": 'echo "rank $SKYPILOT_NODE_RANK/$SKYPILOT_NUM_NODES $(cat data.txt) '
                                  '$(ls ignored.txt 2>/dev/null | wc -l) $(echo $SKYPILOT_NODE_IPS)"'})
    lines = []
    t0 = time.time()
    result = api.launch(task, cluster="kube", plan=api.plan(task), on_line=lambda r, l: lines.append((r, l)))
    first_line = time.time() - t0
    assert result.status is not None and result.status.exit_code == 0, result
    ips = [p["status"]["podIP"] for p in sorted(sshd_fake.pods(), key=lambda p: p["metadata"]["name"])]
    assert sorted(lines) == [(r, f"rank {r}/2 hello from the workdir 0 {ips[0]} {ips[1]}") for r in (0, 1)]
    assert (sshd_fake.forwarded > 0) == (network == "port-forward")
    out = []
    res = api.exec_("kube", api.exec_task(["echo", "again-$SKYPILOT_NODE_RANK"]), on_line=lambda r, l: out.append((r, l)))
    assert res.status.exit_code == 0 and sorted(out) == [(0, "again-0"), (1, "again-1")]
    logs = []
    api.logs("kube", 1, follow=False, on_line=lambda r, l: logs.append(l))
    assert any("rank 0/2" in line for line in logs)
    assert [(r.cloud, r.region, r.status) for r in api.status(refresh=True)] == [("kubernetes", "fake", "UP")]
    api.down(["kube"])
    assert sshd_fake.pods() == [] and not set(ips) & {n.ip for n in node_pool.nodes}
    print(f"k8s {network}: launch → job done {first_line:.2f}s (2 pods)")


def test_managed_job_survives_its_pod_being_deleted(sshd_fake, tmp_path, monkeypatch):
    from tests.integration import test_managed_jobs as M
    from tests.integration.local_helpers import wait_for, write_task

    monkeypatch.setenv("BROKER_CONTROLLER_SSH_TIMEOUT", "2")
    task = write_task(tmp_path / "t.yaml", name="kjob", resources={"infra": "k8s", "cpus": 2, "memory": 4},
                      run=M.COUNTER_RUN.replace("{n}", "25").replace('>> "$LEDGER"', ">/dev/null"))
    jid = M._submit_inprocess(task)
    ctl, t = M._inprocess_controller(monkeypatch)
    t.start()
    try:
        M.wait_status(jid, "RUNNING", 90)
        wait_for(lambda: M.synced_counter(jid) >= 3, 30, 0.05, "checkpoint synced")
        before = M.synced_counter(jid)
        [pod] = sshd_fake.pods()
        t_kill = time.time()
        sshd_fake.delete_pod(pod["metadata"]["name"])
        M.wait_status(jid, "RECOVERING", 30)
        detected = time.time() - t_kill
        M.wait_status(jid, "RUNNING", 60)
        running_again = time.time() - t_kill
        j = M.wait_status(jid, M.TERMINAL, 120)
        assert j.status == "SUCCEEDED", (j.status, j.failure, M.events(jid))
        assert j.recoveries == 1
        print(f"k8s: pod deleted → detected {detected:.1f}s, running again {running_again:.1f}s")
    finally:
        t.join(30)
        ctl.pool.shutdown(wait=True)
    import re

    log = (M.broker_home() / "managed" / str(jid) / "run.log").read_text()
    starts = [int(x) for x in re.findall(r"^start at (\d+)$", log, re.MULTILINE)]
    assert starts[0] == 0 and starts[-1] >= before and "final 25" in log
    assert sshd_fake.pods() == []


def test_gc_finds_and_removes_an_orphan(cloud, fake):
    from skybroker import gc

    cloud.provision(req("orphan", n=2))  # created, never recorded in the state
    scan = gc.scan(clouds=("kubernetes",))
    assert [(o.cluster, o.region, len(o.resources)) for o in scan.orphans] == [("orphan", "fake", 4)]
    assert scan.scanned == {"kubernetes": 1} and scan.skipped == []
    gc.remove(scan.orphans)
    assert fake.pods() == [] and fake.objects["services"] == {} and fake.objects["secrets"] == {}


def test_show_gpus_lists_what_the_cluster_nodes_have(fake):
    from skybroker import api

    rows = api.show_gpus(cloud="k8s")
    got = {(r.name, r.count, r.cloud) for r in rows}
    assert ("A100", 2.0, "kubernetes") in got and ("L4", 1.0, "kubernetes") in got, got
    assert [r.name for r in api.show_gpus("L4", cloud="kubernetes")] == ["L4"]


def test_a_launch_refused_credentials_everywhere_leaves_no_record(fake, tmp_path):
    """Every API call answers 401 Unauthorized: no pod was created, so no INTERRUPTED record is left that
    only working credentials could remove (`down` failed with exit 4)."""
    from tests.integration.refused_launch import assert_refused_launch_leaves_no_record

    fake.fail_auth()
    assert_refused_launch_leaves_no_record(tmp_path, "resources:\n  infra: kubernetes\n  cpus: 2\nrun: echo hi\n",
                                           "kubernetes/fake")
    fake.fail_auth(False)
    assert fake.pods() == []
