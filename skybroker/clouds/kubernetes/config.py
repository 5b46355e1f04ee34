"""Where the Kubernetes provider's settings come from, read without the SDK and without the network.

Kubeconfig: `$KUBECONFIG` (a `:`-separated list, merged as kubectl does: the first file that sets a
context or current-context wins) or `~/.kube/config`. A context is a skybroker "region"
(`infra: k8s/<context>`); `infra: k8s` means the allowed contexts (below) or the current context. When
the broker itself runs in a pod (KUBERNETES_SERVICE_HOST set and a service-account token mounted) and no
kubeconfig exists, the one context is `in-cluster` (the pod's own namespace).

Optional settings: `$BROKER_HOME/kubernetes.yaml` (or the file named by BROKER_K8S_CONFIG):

    allowed_contexts: [gke-ml, on-prem]   # what `infra: k8s` plans across (default: the current context)
    network: port-forward                 # how SSH reaches a pod: port-forward (through the API server,
                                          # default outside a cluster) or pod-ip (default in-cluster)
    ssh_user: root                        # the image's login user (default root)
    image: ubuntu:22.04                   # default image for CPU pods; gpu_image for GPU pods
    gpu_image: nvidia/cuda:12.4.1-runtime-ubuntu22.04
    provision_timeout: 10                 # seconds a pod may stay unschedulable before failover
    ports_service: LoadBalancer           # the Service type that exposes a task's `ports` (or NodePort)
    prices: {cpu: 0.0, memory_gib: 0.0, gpu: {A100: 0.0, default: 0.0}}   # $/h per unit (default: 0)
    contexts:
      gke-ml: {namespace: ml, prices: {gpu: {A100: 1.10}}}

Environment overrides (tests and one-off runs): BROKER_K8S_NAMESPACE, BROKER_K8S_SSH_USER,
BROKER_K8S_NETWORK, BROKER_K8S_PROVISION_TIMEOUT, BROKER_K8S_WAIT (seconds to wait for pods, default
600), BROKER_K8S_POLL (seconds between two looks, default 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IN_CLUSTER = "in-cluster"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_IMAGE = "ubuntu:22.04"
DEFAULT_GPU_IMAGE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"


@dataclass(frozen=True)
class Kubeconfig:
    files: tuple[str, ...]  # the files that exist
    contexts: dict  # name -> {"cluster", "user", "namespace"}
    current: str | None
    error: str | None = None


def kubeconfig_paths() -> list[Path]:
    raw = os.environ.get("KUBECONFIG")
    if raw:
        return [Path(os.path.expanduser(p)) for p in raw.split(os.pathsep) if p]
    return [Path(os.path.expanduser("~/.kube/config"))]


def no_kubeconfig() -> str | None:
    """Where a kubeconfig was looked for, when none exists there (and this is not a pod with a service
    account), else None."""
    paths = kubeconfig_paths()
    if any(p.is_file() for p in paths) or in_cluster():
        return None
    where = ", ".join(str(p) for p in paths)
    if os.environ.get("KUBECONFIG"):
        return f"no kubeconfig found (KUBECONFIG={os.environ['KUBECONFIG']}: {where} does not exist)"
    return f"no kubeconfig found (KUBECONFIG is unset and {where} does not exist)"


SETUP_HINT = ("point KUBECONFIG at your cluster's kubeconfig (or put it at ~/.kube/config), e.g. with "
              "`gcloud container clusters get-credentials` / `aws eks update-kubeconfig` / `az aks get-credentials`"
              ", then run `broker check`")


def load_kubeconfig() -> Kubeconfig:
    import yaml

    contexts: dict = {}
    current = None
    found = []
    for path in kubeconfig_paths():
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            return Kubeconfig(tuple(found), contexts, current, f"cannot read {path}: {exc}")
        if not isinstance(data, dict):
            return Kubeconfig(tuple(found), contexts, current, f"{path} is not a kubeconfig")
        found.append(str(path))
        for c in data.get("contexts") or []:
            if isinstance(c, dict) and c.get("name") and c["name"] not in contexts:
                contexts[c["name"]] = dict(c.get("context") or {})
        if current is None and data.get("current-context"):
            current = data["current-context"]
    return Kubeconfig(tuple(found), contexts, current)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").is_file()


def settings_file() -> Path:
    env = os.environ.get("BROKER_K8S_CONFIG")
    if env:
        return Path(os.path.expanduser(env))
    from ...paths import broker_home

    return broker_home() / "kubernetes.yaml"


def settings() -> dict:
    from ...errors import SpecError

    path = settings_file()
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", "fix the Kubernetes settings file", source=str(path)) from None
    if not isinstance(data, dict):
        raise SpecError("expected a mapping", None, source=str(path))
    return data


def _env_or(name: str, value):
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else value


def known_contexts() -> list[str] | None:
    """The contexts a task may name (`infra: k8s/<context>`): the kubeconfig's, and `in-cluster` inside a pod.
    None when the kubeconfig cannot be read (then the launch finds out)."""
    kc = load_kubeconfig()
    if kc.error:
        return None
    return list(kc.contexts) + ([IN_CLUSTER] if in_cluster() else [])


def contexts_for_plan() -> list[str]:
    """The contexts `infra: k8s` (no context named) plans across: those of them that exist (a current-context
    or an allowed context the kubeconfig does not define could only fail at launch, leaving a launch nothing
    can clean up; `dangling_reason` says why one is left out)."""
    known = known_contexts()
    allowed = settings().get("allowed_contexts")
    if allowed:
        return [str(c) for c in allowed if known is None or str(c) in known]
    kc = load_kubeconfig()
    if kc.current and (known is None or kc.current in known):
        return [kc.current]
    return [IN_CLUSTER] if in_cluster() else []


def dangling_reason() -> str | None:
    """Why the contexts `infra: k8s` would use do not exist (a current-context or allowed_contexts entry that
    names no context of the kubeconfig), or None."""
    known = known_contexts()
    if known is None:
        return None
    allowed = settings().get("allowed_contexts")
    named = [str(c) for c in allowed] if allowed else ([load_kubeconfig().current] if load_kubeconfig().current else [])
    missing = [c for c in named if c not in known]
    if not missing:
        return None
    what = "allowed_contexts names" if allowed else "the kubeconfig's current-context is"
    return (f"{what} {', '.join(repr(c) for c in missing)}, which is not a context of the kubeconfig "
            f"(contexts: {', '.join(known) or 'none'})")


def context_name(region: str | None, zone: str | None = None) -> str | None:
    """The context a (region, zone) names. Contexts may contain one '/' (EKS ARNs:
    `arn:aws:eks:us-west-2:123:cluster/ml`), which the infra syntax splits into region and zone."""
    if region and zone:
        return f"{region}/{zone}"
    if region:
        return region
    ctxs = contexts_for_plan()
    return ctxs[0] if ctxs else None


def namespace(context: str | None) -> str:
    env = os.environ.get("BROKER_K8S_NAMESPACE")
    if env:
        return env
    per = (settings().get("contexts") or {}).get(context) or {}
    if per.get("namespace"):
        return str(per["namespace"])
    if context == IN_CLUSTER:
        try:
            return (SA_DIR / "namespace").read_text().strip() or "default"
        except OSError:
            return "default"
    ctx = load_kubeconfig().contexts.get(context) or {}
    return ctx.get("namespace") or "default"


def network() -> str:
    mode = str(_env_or("BROKER_K8S_NETWORK", settings().get("network") or "")).strip()
    if mode:
        if mode not in ("port-forward", "pod-ip"):
            from ...errors import UsageError

            raise UsageError(f"Kubernetes network {mode!r} is not one of port-forward, pod-ip")
        return mode
    return "pod-ip" if in_cluster() and not load_kubeconfig().files else "port-forward"


def ssh_user() -> str:
    return str(_env_or("BROKER_K8S_SSH_USER", settings().get("ssh_user") or "root"))


def image(gpu: bool) -> str:
    s = settings()
    return str(s.get("gpu_image") or DEFAULT_GPU_IMAGE) if gpu else str(s.get("image") or DEFAULT_IMAGE)


def seconds(name: str, key: str | None, default: float) -> float:
    from ...errors import UsageError

    raw = _env_or(name, settings().get(key) if key else None)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{name}/{key}={raw!r} is not a number of seconds") from None


def ports_service_type() -> str:
    t = str(settings().get("ports_service") or "LoadBalancer")
    return t if t in ("LoadBalancer", "NodePort") else "LoadBalancer"


def price(context: str | None, cpus: float, memory_gib: float, gpu: str | None, gpus: float) -> float:
    """$/h of one pod of this shape, from the configured unit prices (default 0: a cluster you already
    pay for)."""
    s = settings()
    base = dict(s.get("prices") or {})
    per = ((s.get("contexts") or {}).get(context) or {}).get("prices") or {}
    merged = {**base, **{k: v for k, v in per.items() if k != "gpu"}}
    gpu_prices = {**(base.get("gpu") or {}), **(per.get("gpu") or {})}
    p = float(merged.get("cpu") or 0) * cpus + float(merged.get("memory_gib") or 0) * memory_gib
    if gpu and gpus:
        unit = gpu_prices.get(gpu, gpu_prices.get("default", 0))
        p += float(unit or 0) * gpus
    return round(p, 6)


# -- quantities ---------------------------------------------------------------------------------------
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DEC = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(text) -> float:
    """A Kubernetes resource quantity ("500m", "2", "16Gi", "1e3") as a number (bytes, cores, units)."""
    s = str(text).strip()
    for suf, mult in _BIN.items():
        if s.endswith(suf):
            return float(s[:-2]) * mult
    if s and s[-1] in _DEC and not s[-1].isdigit():
        return float(s[:-1]) * _DEC[s[-1]]
    return float(s)


def fmt_cpu(cpus: float) -> str:
    milli = round(cpus * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def fmt_memory(gib: float) -> str:
    mib = round(gib * 1024)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"
