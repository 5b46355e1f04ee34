"""Feasibility for the optimizer: whether an instance spec (shape, accelerator, architecture), a catalog shape
group or an offer's place can hold a `Resources` request, with SkyPilot's defaults (a CPU-only task gets
`memory: 4x`, and `cpus: 8+` when it names neither; an accelerator task its provider's default host shape),
and the machines used only when named (burstable, confidential-computing, Arm; Local Zones). No place is
priced here and no cloud is named: a provider's default shape comes from the registry.
"""
from __future__ import annotations

from .catalog.model import InstanceSpec, Offer
from .resources import DEFAULT_CPUS, DEFAULT_MEMORY_PER_CPU, Amount, Resources


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
