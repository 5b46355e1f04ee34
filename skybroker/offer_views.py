"""Where the optimizer's specs come from: the catalog's lazily read index (catalog/index.py), or, for a
plain `specs(cloud)` function (tests, other tools), the same shape-group interface built in memory."""
from __future__ import annotations

from typing import Sequence

from . import catalog as _catalog
from .catalog.model import InstanceSpec


class _ListGroup:
    """A shape group built in memory from a list of specs (same interface as catalog.index.Group)."""

    def __init__(self, specs: list[InstanceSpec]):
        s0 = specs[0]
        self.vcpus, self.memory_gib, self.arch, self.burstable = s0.vcpus, s0.memory_gib, s0.arch, s0.burstable
        self.confidential = s0.confidential
        self.accelerator, self.count = s0.accelerator_name, s0.accelerator_count
        inf = float("inf")
        self._od = sorted(specs, key=lambda s: (inf if s.min_price is None else s.min_price, -s.generation,
                                                 s.instance_type))
        self._spot = sorted(specs, key=lambda s: (inf if s.min_spot_price is None else s.min_spot_price,
                                                   -s.generation, s.instance_type))
        self.min_price, self.min_spot = self._od[0].min_price, self._spot[0].min_spot_price

    @property
    def tpu(self) -> bool:
        return bool(self.accelerator) and self.accelerator.lower().startswith("tpu-")

    def bounded(self, spot: bool):
        for s in (self._spot if spot else self._od):
            yield (s.min_spot_price if spot else s.min_price), s

    def suspect_specs(self) -> list:
        return []  # the bounds above are full minima: nothing is hidden


class _ListView:
    def __init__(self, specs: Sequence[InstanceSpec]):
        shapes: dict[tuple, list[InstanceSpec]] = {}
        self._named: dict[str, list[InstanceSpec]] = {}
        for s in specs:
            shapes.setdefault((s.accelerator_name, s.accelerator_count, s.vcpus, s.memory_gib, s.arch,
                               s.burstable, s.confidential), []).append(s)
            self._named.setdefault(s.instance_type, []).append(s)
        self.groups = [_ListGroup(v) for v in shapes.values()]
        self._by_acc: dict[str, list] = {}
        for i, g in enumerate(self.groups):
            g.i = i
            self._by_acc.setdefault((g.accelerator or "").lower(), []).append(g)

    def accelerator_groups(self, name: str) -> list:
        return self._by_acc.get(name.lower(), [])

    def named(self, instance_type: str) -> list[InstanceSpec]:
        return list(self._named.get(instance_type, ()))


def _view(cloud: str, specs, cache: dict):
    if specs is None or specs is _catalog.specs:
        return _catalog.load_index(cloud)
    v = cache.get(cloud)
    if v is None:
        v = cache[cloud] = _ListView(specs(cloud))
    return v
