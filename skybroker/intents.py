"""The intents ledger, and reconciling what an interrupted launch left behind.

Before every create call the provisioner records an intent (cluster, cloud, region, zone: "creating"),
then the instance ids the create returned ("created"); a rollback closes it as "cleaned" (or "refused":
the cloud could not be asked, but the driver knows its refused create call made no instance), a finished
bring-up as "adopted" (the cluster is in the state). A new cluster's row is written (status INIT) before
its first intent, by the command that holds the cluster's lock for the whole launch.

A launch whose process died (SIGKILL, a crash, a power cut) holds no lock any more. `reconcile()` —
run at the start of every mutating command and by `broker gc` — finds such launches and asks the cloud
(by tag) what they left:
  - the cluster is UP/STOPPED in the state at that place: its intents are closed as adopted;
  - nothing with a cost is there (no instance): what is left without a cost (a security group, a
    firewall rule, an empty resource group, a node directory) is removed, the intents closed as cleaned,
    and a row left INIT by the dead launch is dropped;
  - instances are there: the cluster is recorded INTERRUPTED with its nodes, so `status` shows it,
    `broker down` removes it, `broker launch -c NAME` resumes it and `broker gc` offers to remove it.
The cost ledger follows (costs/ledger.py): the instances found are billed from their attempt's create call
until `down` (the run marked `interrupted`); instances created and gone since are billed until now.
Clusters owned by an active managed job are left to its controller, which resumes them.
"""
from __future__ import annotations

import time
from typing import Callable

from . import state
from .errors import BrokerError
from .state import INIT, INTERRUPTED, STOPPED, UP

Event = Callable[[str, str], None]


def _noop(*_a) -> None:
    return None


def lock_is_free(cluster: str) -> bool:
    """No broker command holds the cluster's lock (nothing is launching or changing it)."""
    from .locks import ClusterBusy, cluster_lock

    try:
        with cluster_lock(cluster, timeout=0):
            return True
    except ClusterBusy:
        return False


def _owned_by_active_job(rec_or_name) -> bool:
    """A cluster of an active managed job or pool (its owner, or the one its name implies): its controller
    settles it, not a user's command."""
    from .cluster_ops import active_owner, owner_by_name

    name = rec_or_name.name if hasattr(rec_or_name, "name") else rec_or_name
    owner = getattr(rec_or_name, "owner", None) or owner_by_name(name)
    return bool(owner and active_owner(owner))


def stale_clusters() -> set[str]:
    """Clusters with open intents or an INIT row whose launching command is gone."""
    names = {i["cluster"] for i in state.open_intents()}
    names |= {r.name for r in state.list_clusters() if r.status == INIT}
    return {n for n in names if lock_is_free(n)}


def reconcile(on_event: Event = _noop, only: set[str] | None = None) -> list[str]:
    """Settle the intents of launches that died. Returns the clusters now recorded INTERRUPTED."""
    from .locks import ClusterBusy, cluster_lock

    interrupted = []
    candidates = {i["cluster"] for i in state.open_intents()} | {
        r.name for r in state.list_clusters() if r.status == INIT}
    from .cluster_ops import callers

    for name in sorted(candidates if only is None else candidates & only):
        # settled whoever asks, but said only to its user (or an admin): a server's other users are told
        # neither its name nor to `down` what they may not touch
        say = on_event if callers(state.get_cluster(name)) else _noop
        try:
            with cluster_lock(name, timeout=0):
                if _owned_by_active_job(state.get_cluster(name) or name):
                    continue
                if _reconcile_one(name, say):
                    interrupted.append(name)
        except ClusterBusy:
            continue  # a live command holds it: not ours to settle
        except BrokerError as exc:
            say("warning", f"could not reconcile the interrupted launch of {name}: {exc.message}")
    return interrupted


def _reconcile_one(name: str, on_event: Event) -> bool:
    from .clouds import registry
    from .costs import ledger

    rec = state.get_cluster(name)
    intents = state.open_intents(name)
    if rec is not None and rec.status in (UP, STOPPED):
        for it in intents:
            if (it["cloud"], it["region"]) == (rec.cloud, rec.region):
                state.set_intent(it["id"], "adopted")
        intents = [it for it in intents if (it["cloud"], it["region"]) != (rec.cloud, rec.region)]
    found = []  # (intent, instances)
    for it in intents:
        prov = registry.get(it["cloud"])
        found.append((it, prov.query(it["cluster_on_cloud"], it["region"])))
    live = [(it, infos) for it, infos in found if infos]
    for it, infos in found:
        if infos:
            continue
        prov = registry.get(it["cloud"])
        for w in prov.terminate(it["cluster_on_cloud"], it["region"]) or ():  # network leftovers: no instance, no cost
            on_event("warning", w)
        state.set_intent(it["id"], "cleaned")
        ledger.attempt_gone(it["id"], ledger.INTERRUPTED)  # billed until now if its instances had been created
        on_event("reconcile", f"{name}: an interrupted launch left nothing running on "
                 f"{'/'.join(p for p in (it['cloud'], it['region']) if p)}; cleaned up")
    if not live:
        if rec is not None and rec.status in (INIT, INTERRUPTED) and not rec.nodes:
            state.delete_cluster(name)
            state.add_event(name, "reconcile", "the launch was interrupted before anything was created")
        return False
    it, infos = live[-1]
    if rec is None or rec.status in (INIT, INTERRUPTED):
        rec = _interrupted_record(name, it, infos, rec)
        state.save_cluster(rec)
        ledger.mark_interrupted(name, len(infos))  # billed from its create call until `down`
        state.add_event(name, "interrupted", f"the launch was interrupted; {len(infos)} instance(s) exist on "
                        f"{rec.infra}: `broker down {name}` removes them")
        on_event("warning", f"cluster {name}: its launch was interrupted and left {len(infos)} instance(s) on "
                 f"{rec.infra}; `broker down {name}` removes them, `broker launch -c {name} ...` resumes it")
        return True
    return False


def _interrupted_record(name, intent, infos, rec):
    from .state import ClusterRecord, NodeRecord

    ordered = sorted(infos, key=lambda i: (i.rank_hint if i.rank_hint is not None else 10**6, i.instance_id))
    nodes = [NodeRecord(i.instance_id, rank, i.public_ip or i.private_ip or "", i.private_ip, i.ssh_user,
                        i.ssh_port, i.home, i.identity_file) for rank, i in enumerate(ordered)]
    if rec is None:
        rec = ClusterRecord(name=name, cloud=intent["cloud"], region=intent["region"], zone=intent["zone"],
                            instance_type=None, accelerators=None, use_spot=any(i.spot for i in infos),
                            num_nodes=len(nodes), hourly_price=0.0, status=INTERRUPTED, launched_at=time.time(),
                            name_on_cloud=intent["cluster_on_cloud"])
    rec.cloud, rec.region, rec.zone = intent["cloud"], intent["region"], intent["zone"] or rec.zone
    rec.nodes, rec.num_nodes, rec.status = nodes, len(nodes), INTERRUPTED
    return rec


def places(name: str) -> list[tuple[str, str | None, str]]:
    """Every (cloud, region, name on the cloud) where the cluster may have resources: its row and its open
    intents."""
    out = []
    rec = state.get_cluster(name)
    if rec is not None:
        out.append((rec.cloud, rec.region, rec.cloud_name))
    for it in state.open_intents(name):
        if (it["cloud"], it["region"], it["cluster_on_cloud"]) not in out:
            out.append((it["cloud"], it["region"], it["cluster_on_cloud"]))
    return out
