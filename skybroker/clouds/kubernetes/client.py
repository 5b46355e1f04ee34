"""The one place Kubernetes API clients are built (the official `kubernetes` client, imported here and
only when a call is made).

A client per context: `kubernetes.config.new_client_from_config(context=...)` reads the kubeconfig
($KUBECONFIG or ~/.kube/config: certificates, tokens, exec credential plugins such as the EKS and GKE
auth helpers, which the client runs and refreshes itself); the `in-cluster` context uses the pod's
service account. Every call goes through a generated CoreV1Api/AuthorizationV1Api method with
`_preload_content=False` and the response is read as plain JSON, so the driver depends on the API's
documented JSON and not on the client's model classes (which changed between client releases).
"""
from __future__ import annotations

import json
import threading
import time

from .config import IN_CLUSTER

_lock = threading.Lock()
_pf_lock = threading.Lock()
_clients: dict = {}
CLIENT_TTL = 300.0  # rebuild after this many seconds (re-reads the kubeconfig; short-lived tokens)


def api_client(context: str | None, purpose: str = "rest"):
    """An ApiClient for the context (None: the kubeconfig's current context). Port-forwarding gets a
    client of its own: `kubernetes.stream` swaps the ApiClient's `call_api` while it opens a websocket,
    which would send a concurrent REST call on the same client down the websocket path."""
    import os

    key = (context, os.environ.get("KUBECONFIG"), purpose)
    with _lock:
        hit = _clients.get(key)
        if hit is not None and time.monotonic() - hit[1] < CLIENT_TTL:
            return hit[0]
    from kubernetes import client, config

    if context == IN_CLUSTER:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        api = client.ApiClient(cfg)
    else:  # the files named here: the client reads $KUBECONFIG only once, when it is first imported
        from .config import kubeconfig_paths

        files = os.pathsep.join(str(p) for p in kubeconfig_paths())
        api = config.new_client_from_config(config_file=files, context=context)
    with _lock:
        _clients[key] = (api, time.monotonic())
    return api


def core(context: str | None):
    from kubernetes import client

    return client.CoreV1Api(api_client(context))


def authorization(context: str | None):
    from kubernetes import client

    return client.AuthorizationV1Api(api_client(context))


def call(fn, *args, **kw):
    """Call a generated API method and return the response body as JSON (a dict; {} for no body)."""
    resp = fn(*args, _preload_content=False, **kw)
    raw = resp.data if hasattr(resp, "data") else resp.read()
    return json.loads(raw) if raw else {}


def portforward_socket(context: str | None, namespace: str, pod: str, port: int):
    """A socket-like object connected to `port` of the pod, through the API server's portforward
    subresource (a websocket, `v4.channel.k8s.io`)."""
    from kubernetes import client
    from kubernetes.stream import portforward

    api = client.CoreV1Api(api_client(context, "portforward"))
    with _pf_lock:  # one websocket opening at a time on that client (see api_client)
        pf = portforward(api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
    return pf, pf.socket(port)


def reset() -> None:
    with _lock:
        _clients.clear()
