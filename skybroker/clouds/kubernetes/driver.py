"""Kubernetes driver: a cluster is one pod per node, in a kubeconfig context (the "region") and namespace.

Per cluster, all labelled `skybroker-cluster=<name>`, `skybroker-user=<user>`:
  - bare pods `<cluster>-<user hash>-<rank>` (restartPolicy Never, label `skybroker-rank`). Not a
    StatefulSet on purpose: a pod that dies must stay dead, so that the managed-jobs controller sees a
    preemption and relaunches from the checkpoint; a StatefulSet would quietly recreate it with an empty
    disk, a new host key and no node agent. Resources are requested exactly (cpu, memory, and
    `nvidia.com/gpu` / `amd.com/gpu` with limits equal to requests); GPU pods get a node affinity on
    the GPU-type label of the nodes that have that GPU, and tolerate the usual GPU taints;
  - a headless Service `skybroker-<cluster>` (rank/IP discovery: `<pod>.skybroker-<cluster>` DNS names;
    SKYPILOT_NODE_IPS are the pod IPs);
  - a Secret `skybroker-<cluster>-ssh` with the user's public key, mounted into every pod;
  - with `ports`, a Service `skybroker-<cluster>-ports` (LoadBalancer, or NodePort) in front of the head.
Their bodies are built in objects.py; a pod that will not start is told apart in pods.py.

Commands and sync go over SSH into the pod (sshd started by the pod's bootstrap, pods.BOOTSTRAP), through
the API server's port-forward (forward.py) or straight to the pod IP (in-cluster): the same runner as
every other cloud, rsync included. Chosen over `exec`: the runner protocol, rsync's ignore rules, the
node agent and the managed-jobs liveness checks are reused unchanged, and the API needs no
exec/attach permission; the cost is an sshd in the image (installed at start when missing).

Offers come from the cluster (capabilities.priced False): a pod of the requested shape is offered in a
context when some node's allocatable CPU, memory and GPUs (type from the node labels) hold it; priced 0
unless prices are configured (config.py). Shapes and GPU labels: shapes.py. Only used when the task names it (named_only): reading the
offers needs the network, and a free offer would otherwise win every plan.
"""
from __future__ import annotations

import threading
import time

from ...errors import CapacityError, CredentialsError, InvalidRequestError, Place, QuotaError
from ..base import (TAG_CLUSTER, TAG_HOME, TAG_USER, TERMINATED, Capabilities, CreateLedger, InstanceInfo,
                    ProvisionRequest, Provider, TaggedResource, http_refusal)
from ..common import call_typed
from . import client as kc
from . import config as cfg
from . import objects
from . import pods as pk
from .errors import HINT_CREDS, NAMESPACE_NOT_FOUND, classify, status_of
from .pods import SSH_PORT, pod_name, service_name, ports_service_name, secret_name
from .shapes import instance_type, parse_instance_type, default_shape, node_gpus, node_fits

NODES_TTL = 30.0


_nodes_cache: dict = {}
_nodes_lock = threading.Lock()


class KubernetesCloud(Provider):
    name = "kubernetes"
    catalog = None
    capabilities = Capabilities(stop=False, spot=False, firewall=False, accelerators=True, priced=False,
                                container_images=True,
                                named_only=True, remote=True, gone_reasons=True, tagged_listing=True)
    sdk_modules = ("kubernetes",)
    sdk_extra = "kubernetes"
    default_ssh_user = "root"

    # -- credentials (no network, no SDK import) ---------------------------------------------------
    def endpoint_host(self, rec):
        """A pod's ports are reached through the cluster's Service (LoadBalancer or NodePort), not its IP."""
        return None

    def check(self):
        from ...check import CloudCheck
        from ..registry import missing_sdk

        kcfg = cfg.load_kubeconfig()
        sdk = missing_sdk(self) is None
        hint_sdk = "pip install 'skybroker[kubernetes]'"
        if kcfg.error:
            return CloudCheck(self.name, False, kcfg.error, "fix the kubeconfig", credentials=False, sdk=sdk,
                              extra=self.sdk_extra)
        if kcfg.files and kcfg.contexts:
            ctxs = cfg.contexts_for_plan()
            current = kcfg.current or "(none)"
            detail = (f"kubeconfig {', '.join(kcfg.files)}: {len(kcfg.contexts)} context(s), current {current}"
                      f" (namespace {cfg.namespace(kcfg.current)})")
            if ctxs and ctxs != [kcfg.current]:
                detail += f"; planned: {', '.join(ctxs)}"
            ok = bool(ctxs)
            hint = None if ok else "set a current context (`kubectl config use-context CTX`) or allowed_contexts"
            dangling = cfg.dangling_reason()
            if dangling:
                detail += f"; {dangling}"
        elif cfg.in_cluster():
            ok, detail, hint = True, f"in-cluster service account (namespace {cfg.namespace(cfg.IN_CLUSTER)})", None
        else:
            return CloudCheck(self.name, False, cfg.no_kubeconfig() or "no kubeconfig",
                              cfg.SETUP_HINT + ("" if sdk else f"; and {hint_sdk}"),
                              credentials=False, sdk=sdk, extra=self.sdk_extra)
        if ok and not sdk:
            return CloudCheck(self.name, False, f"{detail}, but the kubernetes client is not installed", hint_sdk,
                              credentials=True, sdk=False, extra=self.sdk_extra)
        return CloudCheck(self.name, ok, detail + "; used when named (`--infra k8s`)", hint, credentials=ok, sdk=sdk,
                          extra=self.sdk_extra)

    def classify(self, exc, place):
        return classify(exc, place)

    def regions(self) -> list:
        return cfg.contexts_for_plan()

    region_word = "context"

    def known_regions(self) -> list[str] | None:
        """The kubeconfig's contexts (an EKS ARN `.../ml` splits into region and zone, as `infra:` does): a
        task naming another is refused when planning, before a launch records anything it could not clean up."""
        known = cfg.known_contexts()
        return None if known is None else sorted({c.split("/", 1)[0] for c in known})

    def known_zones(self, region: str | None) -> list[str] | None:
        known = cfg.known_contexts()
        if known is None:
            return None
        return sorted(c.split("/", 1)[1] for c in known if "/" in c and region in (None, c.split("/", 1)[0]))

    def default_shape(self, res, spec):
        return None

    # -- offers ------------------------------------------------------------------------------------
    def virtual_offers(self, res) -> list:
        """A pod of the task's shape in each context where some node holds it. A context whose nodes
        cannot be read (unreachable, no permission to list nodes) is still offered, unverified: the
        launch then fails there with a typed error and failover moves on."""
        from ..registry import missing_sdk
        from ...optimizer import Candidate

        if res.use_spot:
            return []  # no spot market (a cluster's spot node pools are not modelled)
        if res.instance_type:
            shape = parse_instance_type(res.instance_type)
            if shape is None:
                return []
            cpus, mem, gpu, n = shape
            if res.accelerator and (gpu or "").lower() != res.accelerator.lower():
                return []
        else:
            cpus, mem = default_shape(res)
            gpu, n = res.accelerator, res.accelerator_count
        if gpu and n != int(n):
            return []  # whole GPUs only
        ctxs = [cfg.context_name(res.region, res.zone)] if res.region else cfg.contexts_for_plan()
        out = []
        for ctx in ctxs:
            if ctx is None:
                continue
            nodes = None if missing_sdk(self) else self._nodes_or_none(ctx)
            if nodes is not None and not any(node_fits(nd, cpus, mem, gpu, n) for nd in nodes):
                continue
            region, zone = (ctx.split("/", 1) + [None])[:2] if "/" in ctx else (ctx, None)
            out.append(Candidate(res, 0, self.name, region, zone, instance_type(cpus, mem, gpu, n), cpus, mem,
                                 gpu, float(n or 0), False, cfg.price(ctx, cpus, mem, gpu, n), 1))
        return out

    def unavailable_reason(self):
        if cfg.contexts_for_plan():
            return None
        missing = cfg.no_kubeconfig()
        if missing:
            return missing, cfg.SETUP_HINT, True
        dangling = cfg.dangling_reason()
        if dangling:
            return (dangling, "pick an existing context (`kubectl config use-context CTX`, or `infra: k8s/CTX`), "
                    "then run `broker check`")
        return ("no Kubernetes context is configured (no current context in the kubeconfig, not in a cluster)",
                "point KUBECONFIG at your cluster's kubeconfig (or set a current context), then run "
                "`broker check`")

    def accelerator_inventory(self, region: str | None = None) -> list:
        """Per context, the GPUs its nodes have (the largest count one node holds), priced as configured."""
        out = {}
        for ctx in ([region] if region else cfg.contexts_for_plan()):
            if ctx is None:
                continue
            for nd in self._nodes_or_none(ctx) or []:
                name, n, _, _ = node_gpus(nd)
                if name and n >= 1:
                    key = (name, ctx)
                    if n > out.get(key, 0):
                        out[key] = n
        return [(name, float(n), ctx, instance_type(0, 0, name, n), cfg.price(ctx, 0, 0, name, n))
                for (name, ctx), n in sorted(out.items())]

    def _nodes(self, ctx: str) -> list[dict]:
        with _nodes_lock:
            hit = _nodes_cache.get(ctx)
            if hit and time.monotonic() - hit[1] < NODES_TTL:
                return hit[0]
        items = self._call(Place(self.name, ctx), lambda: kc.call(kc.core(ctx).list_node)).get("items") or []
        with _nodes_lock:
            _nodes_cache[ctx] = (items, time.monotonic())
        return items

    def _nodes_or_none(self, ctx: str):
        from ...errors import BrokerError

        try:
            return self._nodes(ctx)
        except BrokerError:
            return None

    # -- helpers -----------------------------------------------------------------------------------
    def _call(self, place: Place, fn, *args, **kw):
        return call_typed(classify, place, fn, *args, **kw)

    def _core(self, place: Place, ctx):
        """The context's CoreV1Api (a bad kubeconfig or context is a typed error too)."""
        return self._call(place, kc.core, ctx)

    def _where(self, region: str | None, zone: str | None = None) -> tuple[str | None, str, Place]:
        ctx = cfg.context_name(region, zone)
        return ctx, cfg.namespace(ctx), Place(self.name, region, zone)

    def _pods(self, ctx, ns, place, selector: str) -> list[dict]:
        try:
            return self._call(place, lambda: kc.call(kc.core(ctx).list_namespaced_pod, ns,
                                                     label_selector=selector)).get("items") or []
        except InvalidRequestError as exc:
            if exc.code == NAMESPACE_NOT_FOUND:
                return []  # no namespace, no pods (so a launch into a missing namespace rolls back cleanly)
            raise

    def _selector(self, cluster: str | None) -> str:
        base = f"{TAG_USER}={pk.label(pk.user())}"
        return f"{TAG_CLUSTER}={cluster},{base}" if cluster else f"{TAG_CLUSTER},{base}"

    def _create(self, ctx, ns, place, kind: str, body: dict, resource: str, shape=None) -> dict | None:
        """Create an object; None if it exists already. A 403 is told apart with structured answers:
        RBAC (SelfSubjectAccessReview) → CredentialsError; a full ResourceQuota → QuotaError; anything
        else an admission policy refused → InvalidRequestError."""
        from kubernetes.client.exceptions import ApiException

        fn = getattr(self._core(place, ctx), f"create_namespaced_{kind}")
        try:
            return self._call_raw(place, lambda: kc.call(fn, ns, body))
        except ApiException as exc:
            status, reason, message = status_of(exc)
            if status == 409 and reason == "AlreadyExists":
                return None
            if status == 403:
                raise self._forbidden(ctx, ns, place, resource, message, shape) from None
            raise classify(exc, place) or exc from None

    def _call_raw(self, place, fn):
        """Like _call, but an ApiException is left to the caller (to read 409/403 itself)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return call_typed(lambda e, p: None if isinstance(e, ApiException) else classify(e, p), place, fn)
        except ApiException:
            raise

    def _forbidden(self, ctx, ns, place, resource: str, message: str, shape):
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": ns, "verb": "create", "resource": resource}}}
        try:
            allowed = kc.call(kc.authorization(ctx).create_self_subject_access_review, review).get(
                "status", {}).get("allowed")
        except Exception:  # noqa: BLE001 - cannot tell: the conservative reading is "not allowed"
            allowed = False
        if not allowed:
            return CredentialsError(message, place, code="Forbidden", hint=HINT_CREDS)
        full = self._full_quota(ctx, ns, shape) if shape else None
        if full:
            return QuotaError(message, place, code=f"ExceededQuota:{full}",
                              hint=f"the namespace {ns} quota is used up; free it or raise the ResourceQuota")
        return InvalidRequestError(message, place, code="AdmissionForbidden",
                                   hint="an admission policy of the cluster refused the pod (PodSecurity?)")

    def _full_quota(self, ctx, ns, shape) -> str | None:
        """The first ResourceQuota resource this pod would exceed (hard < used + requested), or None."""
        cpus, mem, gpu_res, n = shape
        want = {"cpu": cpus, "requests.cpu": cpus, "memory": mem * 2**30, "requests.memory": mem * 2**30,
                "pods": 1, "count/pods": 1}
        if gpu_res:
            want[f"requests.{gpu_res}"] = n
            want[f"limits.{gpu_res}"] = n
        try:
            quotas = kc.call(kc.core(ctx).list_namespaced_resource_quota, ns).get("items") or []
        except Exception:  # noqa: BLE001
            return None
        for q in quotas:
            hard = (q.get("status") or {}).get("hard") or (q.get("spec") or {}).get("hard") or {}
            used = (q.get("status") or {}).get("used") or {}
            for key, amount in want.items():
                if key in hard and cfg.quantity(used.get(key, 0)) + amount > cfg.quantity(hard[key]) + 1e-9:
                    return f"{q['metadata']['name']}/{key}"
        return None

    # -- provisioning ------------------------------------------------------------------------------
    def refused_answer(self, exc: BaseException) -> bool:
        from kubernetes.client.exceptions import ApiException

        return isinstance(exc, ApiException) and http_refusal(status_of(exc)[0])

    def run_instances(self, req: ProvisionRequest) -> list[str]:
        with CreateLedger(self.refused_answer).guard() as ledger:  # e.g. every call refused our credentials
            return self._run_instances(req, ledger)

    def _run_instances(self, req: ProvisionRequest, ledger: CreateLedger) -> list[str]:
        ctx, ns, place = self._where(req.region, req.zone)
        place.instance_type = req.instance_type
        if ctx is None:
            raise CredentialsError("no Kubernetes context (no kubeconfig, not in a cluster)", place,
                                   code="NoContext", hint=HINT_CREDS)
        if req.use_spot:
            raise InvalidRequestError("Kubernetes has no spot market here", place, code="NoSpot")
        shape = parse_instance_type(req.instance_type)
        if shape is None:
            raise InvalidRequestError(f"{req.instance_type!r} is not a pod shape (e.g. 4CPU--16GB--A100:1)", place)
        cpus, mem, gpu, n = shape
        gpu_res, affinity = None, None
        if gpu:
            gpu_res, affinity = objects.gpu_affinity(self._nodes(ctx), gpu, ctx, place)
        pods = self._pods(ctx, ns, place, self._selector(req.cluster))
        ledger.found(pods)
        dead = [p for p in pods if pk.phase(p) in ("Failed", "Succeeded") and not pk.deleting(p)]
        for p in dead:  # a rank whose pod died is replaced
            self._delete(ctx, ns, place, "pod", p["metadata"]["name"])
        live = [p for p in pods if p not in dead and not pk.deleting(p)]
        self._ensure_common(ctx, ns, place, req)
        have = {pk.rank_of(p) for p in live}
        ids = [p["metadata"]["uid"] for p in live]
        for rank in range(req.num_nodes):
            if rank in have:
                continue
            body = objects.pod(req, rank, cpus, mem, gpu_res, n, affinity)
            with ledger.create():
                made = self._create(ctx, ns, place, "pod", body, "pods", (cpus, mem, gpu_res, n))
            if made is None:  # created meanwhile by a retried or concurrent launch
                made = self._call(place, lambda: kc.call(kc.core(ctx).read_namespaced_pod, body["metadata"]["name"], ns))
            ids.append(made["metadata"]["uid"])
        return ids

    def _ensure_common(self, ctx, ns, place, req: ProvisionRequest) -> None:
        key = (req.public_key or pk.public_key()).strip() + "\n"
        self._create(ctx, ns, place, "secret", objects.ssh_secret(req.cluster, key), "secrets")
        self._create(ctx, ns, place, "service", objects.headless_service(req.cluster), "services")
        if req.ports:
            self._ensure_ports(ctx, ns, place, req.cluster, tuple(req.ports))

    def wait_instances(self, req: ProvisionRequest, ids) -> list[InstanceInfo]:
        ctx, ns, place = self._where(req.region, req.zone)
        place.instance_type = req.instance_type
        started = time.time()
        deadline = started + cfg.seconds("BROKER_K8S_WAIT", None, 600.0)
        unsched_for = cfg.seconds("BROKER_K8S_PROVISION_TIMEOUT", "provision_timeout", 10.0)
        poll = cfg.seconds("BROKER_K8S_POLL", None, 1.0)
        while True:
            pods = [p for p in self._pods(ctx, ns, place, self._selector(req.cluster)) if not pk.deleting(p)]
            mine = [p for p in pods if p["metadata"]["uid"] in ids]
            if len(mine) < len(ids):
                raise CapacityError(f"{len(ids) - len(mine)} pod(s) of {req.cluster} were deleted while starting",
                                    place, code="PodDeleted")
            for p in mine:
                pk.raise_if_stuck(p, place, started, unsched_for)
            if all(pk.phase(p) == "Running" and pk.ready(p) and (p.get("status") or {}).get("podIP") for p in mine) \
                    and len(mine) >= req.num_nodes:
                return pk.ordered([pk.info(p) for p in mine])
            if time.time() > deadline:
                raise InvalidRequestError(f"pods of {req.cluster} not ready after {deadline - started:.0f}s", place,
                                          code="PodTimeout", hint=f"kubectl --context {ctx} -n {ns} describe pod "
                                          f"{pod_name(req.cluster, 0)}")
            time.sleep(poll)

    # -- the rest of the protocol ------------------------------------------------------------------
    def query(self, cluster: str, region: str | None, include_gone: bool = False) -> list[InstanceInfo]:
        ctx, ns, place = self._where(region)
        if ctx is None:
            return []
        infos = [pk.info(p) for p in self._pods(ctx, ns, place, self._selector(cluster))]
        if not include_gone:
            infos = [i for i in infos if i.state != TERMINATED]
        return pk.ordered(infos)

    def terminate(self, cluster: str, region: str | None) -> list[str]:
        ctx, ns, place = self._where(region)
        if ctx is None:
            return []
        pods = self._pods(ctx, ns, place, self._selector(cluster))
        for p in pods:
            if not pk.deleting(p):
                self._delete(ctx, ns, place, "pod", p["metadata"]["name"], grace=0)
        deadline = time.time() + cfg.seconds("BROKER_K8S_WAIT", None, 600.0)
        while pods and time.time() < deadline:
            pods = self._pods(ctx, ns, place, self._selector(cluster))
            if pods:
                time.sleep(cfg.seconds("BROKER_K8S_POLL", None, 1.0))
        warnings = []
        if pods:
            warnings.append(f"{len(pods)} pod(s) of {cluster} still terminating in {ctx}/{ns}")
        for kind, name in (("service", ports_service_name(cluster)), ("service", service_name(cluster)),
                           ("secret", secret_name(cluster))):
            self._delete(ctx, ns, place, kind, name)
        return warnings

    def _delete(self, ctx, ns, place, kind: str, name: str, grace: int | None = None) -> None:
        from kubernetes.client.exceptions import ApiException

        fn = getattr(self._core(place, ctx), f"delete_namespaced_{kind}")
        kw = {"grace_period_seconds": grace} if grace is not None else {}
        try:
            self._call_raw(place, lambda: kc.call(fn, name, ns, **kw))
        except ApiException as exc:
            if exc.status != 404:
                raise classify(exc, place) or exc from None

    def open_ports(self, cluster: str, region: str | None, ports: tuple[str, ...]) -> None:
        ctx, ns, place = self._where(region)
        self._ensure_ports(ctx, ns, place, cluster, tuple(ports))

    def _ensure_ports(self, ctx, ns, place, cluster: str, ports: tuple[str, ...]) -> None:
        """The head pod's ports behind one Service (LoadBalancer or NodePort), extended, never shrunk."""
        from kubernetes.client.exceptions import ApiException

        wanted = objects.port_numbers(ports)
        if len(wanted) > 100:
            raise InvalidRequestError(f"{len(wanted)} ports: a Service holds at most 100 here", place)
        name = ports_service_name(cluster)
        core = self._core(place, ctx)
        try:
            have = self._call_raw(place, lambda: kc.call(core.read_namespaced_service, name, ns))
        except ApiException as exc:
            if exc.status != 404:
                raise classify(exc, place) or exc from None
            have = None
        if have is None:
            body = objects.ports_service(cluster, sorted(set(wanted)))
            self._create(ctx, ns, place, "service", body, "services")
            return
        cur = {p["port"] for p in have["spec"].get("ports") or []}
        missing = sorted(set(wanted) - cur)
        if missing:
            have["spec"]["ports"] = (have["spec"].get("ports") or []) + objects.service_ports(missing)
            self._call(place, lambda: kc.call(core.replace_namespaced_service, name, ns, have))

    def list_tagged(self, region: str | None) -> list[TaggedResource]:
        """Labelled pods, services and secrets of this user in the context's namespace (for `broker gc`)."""
        ctx, ns, place = self._where(region)
        if ctx is None:
            return []
        core = self._core(place, ctx)
        sel = self._selector(None)
        out = []
        for kind, fn in (("instance", core.list_namespaced_pod), ("service", core.list_namespaced_service),
                         ("secret", core.list_namespaced_secret)):
            for item in self._call(place, lambda f=fn: kc.call(f, ns, label_selector=sel)).get("items") or []:
                md = item["metadata"]
                live = kind == "instance" and pk.phase(item) not in ("Failed", "Succeeded")
                rid = md["uid"] if kind == "instance" else md["name"]  # pods: the instance id query reports
                out.append(TaggedResource(self.name, region, md["labels"][TAG_CLUSTER], kind, rid, live=live,
                                          home=md["labels"].get(TAG_HOME)))
        return out

    # -- runners -----------------------------------------------------------------------------------
    def runner(self, cluster: str, node):
        from ..common import ssh_runner

        if cfg.network() == "pod-ip":
            return ssh_runner(cluster, node, default_user=cfg.ssh_user())
        from ... import state

        rec = state.get_cluster_on_cloud(cluster)
        region, zone = (rec.region, rec.zone) if rec is not None else (None, None)
        ctx = cfg.context_name(region, zone if region and zone and "/" not in (region or "") else None)
        return _forwarded_runner(cluster, node, ctx, cfg.namespace(ctx), pod_name(cluster, node.rank))


PROVIDER = KubernetesCloud


def _forwarded_runner(cluster: str, node, ctx, ns: str, pod: str):
    from ... import settings
    from ...runtime.ssh_runner import SSHRunner
    from ..common import host_keys, user_key_path
    from .forward import Forwarder

    fwd = Forwarder(lambda: kc.portforward_socket(ctx, ns, pod, SSH_PORT), name=f"k8s-forward-{pod}")

    class ForwardedRunner(SSHRunner):
        def close(self) -> None:
            super().close()
            fwd.close()

    return ForwardedRunner(f"{cluster}-node-{node.rank}", "127.0.0.1", fwd.port, node.ssh_user or cfg.ssh_user(),
                           node.identity_file or user_key_path(), host_keys(),
                           connect_timeout=settings.get("ssh_connect_timeout"), instance_id=node.instance_id)


