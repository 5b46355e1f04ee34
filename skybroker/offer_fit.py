"""Feasibility for the optimizer: whether an instance spec (shape, accelerator, architecture), a catalog shape
group or an offer's place can hold a `Resources` request, with SkyPilot's defaults (a CPU-only task gets
`memory: 4x`, and `cpus: 8+` when it names neither; an accelerator task its provider's default host shape),
and the machines used only when named (burstable, confidential-computing, Arm; Local Zones). No place is
priced here and no cloud is named: a provider's default shape comes from the registry.
"""
from __future__ import annotations

from .catalog.model import InstanceSpec, Offer
from .errors import SpecError
from .resources import DEFAULT_CPUS, DEFAULT_MEMORY_PER_CPU, Amount, Resources, parse_accelerator


def spec_admits(res: Resources, spec: InstanceSpec, *, burstable: bool = False) -> bool:
    """Shape-level feasibility (no place, no price). `burstable=True` lifts only the burstable rule (to
    find what that rule skipped)."""
    if res.instance_type:
        if spec.instance_type != res.instance_type:
            return False
    elif (spec.burstable and not burstable) or spec.confidential:
        return False  # burstable and confidential-computing machines only when named
    if res.accelerator:
        if (spec.accelerator_name or "").lower() != res.accelerator.lower():
            return False
        if abs(spec.accelerator_count - res.accelerator_count) > 1e-6:
            return False
    elif not res.instance_type and spec.accelerator_name:
        return False  # a CPU task never lands on a GPU machine unless it names the type
    if spec.arch != "x86_64" and not res.instance_type:
        return False  # Arm only when asked for by instance type (setup scripts assume x86)
    if not spec.shape_known:
        return True  # TPU VMs: the catalog does not give the host's vCPUs/memory
    cpus, memory = _effective_amounts(res, spec)
    if cpus and not cpus.admits(spec.vcpus):
        return False
    if memory and not memory.admits(spec.memory_gib, spec.vcpus):
        return False
    return True


def _effective_amounts(res: Resources, spec: InstanceSpec | None) -> tuple[Amount | None, Amount | None]:
    """cpus/memory with SkyPilot's defaults: a CPU-only task gets `memory: 4x` whenever memory is not given,
    and `cpus: 8+` when neither is; an accelerator task gets its provider's default host shape when it names
    neither (spec None: that default is not known yet)."""
    cpus, memory = res.cpus, res.memory
    if res.instance_type:
        return cpus, memory
    if not res.accelerator:
        if cpus is None and memory is None:
            cpus = Amount(DEFAULT_CPUS, at_least=True)
        return cpus, memory if memory is not None else Amount(DEFAULT_MEMORY_PER_CPU, per_cpu=True)
    if cpus is None and memory is None and spec is not None:
        from .clouds import registry

        if registry.known(spec.cloud):
            shape = registry.get(spec.cloud, sdk=False).default_shape(res, spec)
            if shape is not None:
                return shape
    return cpus, memory


def _groups_for(res: Resources, view, burstable: bool) -> list:
    """Shape groups that can hold an admissible spec (a necessary condition; spec_admits decides)."""
    if res.accelerator:
        pool = [g for g in view.accelerator_groups(res.accelerator)
                if abs(g.count - res.accelerator_count) <= 1e-6 and not g.confidential]
        cpus, memory = (res.cpus, res.memory)  # provider defaults depend on the spec: checked per spec
    else:
        pool = [g for g in view.accelerator_groups("") if g.burstable == burstable and not g.confidential]
        cpus, memory = _effective_amounts(res, None)
    out = []
    for g in pool:
        if g.arch != "x86_64":
            continue  # Arm only when named (a named type does not search groups)
        if g.vcpus <= 0:
            out.append(g)  # TPU VMs: host shape unknown, cpus/memory not checked
            continue
        if cpus and not cpus.admits(g.vcpus):
            continue
        if memory and not memory.admits(g.memory_gib, g.vcpus):
            continue
        out.append(g)
    return out


def _zone_ok(res: Resources, offer: Offer) -> bool:
    if res.region and offer.region != res.region:
        return False
    if res.zone:
        return offer.zone == res.zone
    return not offer.local_zone  # Local Zones need an opt-in: only when named


# ----------------------------------------------------------------------------------------------
# Reusing a cluster: whether a task can run on the resources an existing cluster was launched with

def cluster_desc(rec) -> str:
    """What a cluster record was launched with, for messages: `2× local (on-demand) on local`."""
    what = ", ".join(p for p in (rec.instance_type, rec.accelerators) if p) or "unknown instance type"
    return f"{rec.num_nodes}× {what} ({'spot' if rec.use_spot else 'on-demand'}) on {rec.infra or rec.cloud or '?'}"


def cluster_misfit(task, rec, spec: InstanceSpec | None = None, *, managed: bool = False) -> str | None:
    """Why `task` cannot run on the existing cluster `rec` (a state.ClusterRecord), or None when it can
    (SkyPilot's check_resources_fit_cluster). Pure: `spec` is the cluster's catalog InstanceSpec when known
    (None: cpus/memory are not checked, e.g. the local machine or a Kubernetes pod).

    The task fits when it needs no more nodes than the cluster has and ONE of its candidate resource sets
    is satisfied by the cluster: the same cloud/region/zone and instance type where given, its accelerator
    with at most the cluster's count per node, spot or on-demand where given, and cpus/memory that the
    cluster's machine admits (spec_admits, without the optimizer's defaults: a task that names no cpus runs
    on any machine). A task that explicitly asks for fewer nodes than the cluster has is a misfit too (a job
    runs on every node of its cluster here; a task that does not set num_nodes runs on all of them).

    `managed`: the cluster of a managed job or a pool worker, which its controller launched for the task (or
    the pool scheduler matched the job to, jobs/pool_sched.misfit): only "more nodes than the cluster has"
    is checked, as before (the deadline policy's market or zone pin must not fail a job on its own cluster)."""
    bad = []
    if task.num_nodes > rec.num_nodes:
        bad.append(f"the task needs {task.num_nodes} node(s), the cluster has {rec.num_nodes}")
    if managed:
        return bad[0] if bad else None
    if task.num_nodes < rec.num_nodes and getattr(task, "num_nodes_explicit", False):
        bad.append(f"the task asks for {task.num_nodes} node(s), the cluster has {rec.num_nodes} (a job runs on "
                   "every node of its cluster: a smaller task on a bigger cluster is not supported)")
    why = [_resources_misfit(r, rec, spec) for r in task.candidates]
    if not any(w is None for w in why):
        if len(why) == 1:
            bad.append(why[0])
        else:
            bad.append("none of the task's resource options fits: " + "; ".join(
                f"[{r.describe()}] {w}" for r, w in zip(task.candidates, why)))
    return "; ".join(bad) or None


def _resources_misfit(res: Resources, rec, spec: InstanceSpec | None) -> str | None:
    from dataclasses import replace

    bad = []
    if ((res.cloud and res.cloud != rec.cloud) or (res.region and res.region != rec.region)
            or (res.zone and res.zone != rec.zone)):
        bad.append(f"infra {res.infra} (the cluster is on {rec.infra or rec.cloud})")
    if res.instance_type and res.instance_type != rec.instance_type:
        bad.append(f"instance_type {res.instance_type} (the cluster's is {rec.instance_type or 'unknown'})")
    have_acc, have_count = _accelerator_of(rec.accelerators)
    acc_ok = not res.accelerator or (have_acc is not None and have_acc.lower() == res.accelerator.lower()
                                     and res.accelerator_count <= have_count + 1e-6)
    if not acc_ok:
        bad.append(f"accelerators {res.accelerator_str()} (the cluster has {rec.accelerators or 'none'})")
    if res.use_spot_explicit and res.use_spot != rec.use_spot:
        bad.append(f"{'spot' if res.use_spot else 'on-demand'} (the cluster is {'spot' if rec.use_spot else 'on-demand'})")
    if (res.cpus or res.memory) and spec is not None and spec.shape_known and acc_ok:
        # the cluster's machine, named: spec_admits then checks only what the task gives (no defaults)
        fit = replace(res, instance_type=spec.instance_type,
                      accelerator=spec.accelerator_name if res.accelerator else None,
                      accelerator_count=spec.accelerator_count if res.accelerator else 0.0)
        if not spec_admits(fit, spec):
            asked = ", ".join(f"{k} {v}" for k, v in (("cpus", res.cpus), ("memory", res.memory)) if v)
            bad.append(f"{asked} (the cluster's {spec.instance_type} has {spec.vcpus:g} vCPUs, "
                       f"{spec.memory_gib:g} GiB)")
    return "; ".join(bad) or None


def _accelerator_of(text: str | None) -> tuple[str | None, float]:
    """`A100:8` -> ("A100", 8.0); None -> (None, 0)."""
    if not text:
        return None, 0.0
    try:
        return parse_accelerator(text, "accelerators")
    except SpecError:  # a record written by hand or by an older version: the name, no count
        return text.partition(":")[0], 0.0
