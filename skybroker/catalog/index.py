"""The catalog index (format 2), read lazily: what a search needs and nothing more.

An index file (`<cloud>.index.tsv`, written by `skybroker.catalog.writer`) has, after its header line,
`R` (region) and `Z` (zone) lines, then one `G` line per *shape group* (specs with the same vCPUs, memory,
accelerator and count, arch and flags), then the `S` (spec) lines, group by group. Within a group the S
lines are sorted by on-demand lower bound (`min_price`; None last), newer generation first on ties, then
name; the G line carries the permutation that sorts the group by spot lower bound.

Opening an index reads the part before the S lines (header, regions, accelerator directory, G lines).
A group's S lines are read (by seek, or from the whole S section once many groups are needed) and split
when the group is first used, and each spec is built when the search first reaches it, so a search parses
only the groups whose shape fits (an accelerator's groups are found through the A lines) and, in them, only
the specs cheaper than what it has found. Named instance types are found by binary search in the sorted
names file.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

from skybroker.catalog.model import InstanceSpec
from skybroker.errors import BrokerError

FORMAT_VERSION = 2
INDEX_MAGIC = "skybroker-catalog"
HINT = "run `broker catalog build` (or `python -m skybroker.catalog.build`) to rebuild the catalogs"
G_FIELDS = 14  # G vcpus mem acc count arch flags min_price min_spot n start length spot_order suspects
S_FIELDS = 16  # S type vcpus mem acc count arch flags generation min_price min_spot offset length n_offers
#               clean_min clean_min_spot (minima over offers neither in a Local Zone nor suspicious)


def err(msg: str) -> BrokerError:
    return BrokerError(f"price catalog: {msg}", hint=HINT)


def _fast_constructor(cls):
    """cls(*values) for a frozen slots dataclass without the frozen __init__ overhead (about 2x faster).
    The object is equal to, and hashes like, cls(*values). All fields must be passed, in order."""
    names = list(cls.__dataclass_fields__)
    env = {"_new": object.__new__, "_cls": cls}
    env.update({f"_s{i}": cls.__dict__[n].__set__ for i, n in enumerate(names)})
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f" _s{i}(o, v{i});" for i in range(len(names)))
    exec(f"def make({args}):\n o = _new(_cls);{body} return o\n", env)  # noqa: S102 (fixed text)
    return env["make"]


_new_spec = _fast_constructor(InstanceSpec)


def _opt(text: str) -> float | None:
    return float(text) if text else None


class Group:
    """Specs of one shape, in bound order (on-demand, or spot through `spot_order`)."""

    __slots__ = (
        "_length",
        "_lines",
        "_specs",
        "_spot_order",
        "_spot_text",
        "_start",
        "_suspects",
        "accelerator",
        "arch",
        "burstable",
        "confidential",
        "count",
        "i",
        "index",
        "memory_gib",
        "min_price",
        "min_spot",
        "n",
        "vcpus",
    )

    def __init__(self, index: Index, i: int, p: list[str]):
        if len(p) != G_FIELDS or p[0] != "G":
            _bad(p, "G")
        self.index, self.i = index, i
        self.vcpus, self.memory_gib = float(p[1]), float(p[2])
        self.accelerator, self.count, self.arch = p[3] or None, float(p[4]), p[5]
        self.burstable, self.confidential = "B" in p[6], "C" in p[6]
        self.min_price, self.min_spot = _opt(p[7]), _opt(p[8])
        self.n, self._start, self._length = int(p[9]), int(p[10]), int(p[11])
        self._spot_text = p[12]
        self._suspects = p[13]
        self._spot_order: list[int] | None = None
        self._lines: list[str] | None = None
        self._specs: list[InstanceSpec | None] | None = None

    @property
    def tpu(self) -> bool:
        return bool(self.accelerator) and self.accelerator.lower().startswith("tpu-")

    def _spec(self, i: int) -> InstanceSpec:
        specs = self._specs
        if specs is None:
            self._lines = self.index.s_lines(self._start, self._length).split("\n")[:-1]
            if len(self._lines) != self.n:
                raise ValueError(f"group of {self.n} specs has {len(self._lines)} lines")
            specs = self._specs = [None] * self.n
        s = specs[i]
        if s is None:
            s = specs[i] = self.index.parse_spec(self._lines[i])
        return s

    def ordered(self, spot: bool) -> Iterator[InstanceSpec]:
        """Specs in order of their lower bound for the market (specs without a price there come last)."""
        if not spot:
            for i in range(self.n):
                yield self._spec(i)
            return
        if self._spot_order is None:
            order = [int(x) for x in self._spot_text.split(",")] if self._spot_text else []
            if sorted(order) != list(range(self.n)):
                raise ValueError("bad spot order")
            self._spot_order = order
        for i in self._spot_order:
            yield self._spec(i)

    def bounded(self, spot: bool) -> Iterator[tuple[float | None, InstanceSpec]]:
        """(clean lower bound, spec) in bound order: the bound covers offers outside Local Zones that are not
        flagged suspicious (a search that may choose those walks `specs_by_bound`)."""
        clean = self.index.clean
        for s in self.ordered(spot):
            yield clean[s.key][1 if spot else 0], s

    def suspect_specs(self) -> list[InstanceSpec]:
        """The specs with a suspicious offer (their clean bound hides it: searched apart)."""
        return [self._spec(int(i)) for i in self._suspects.split(",")] if self._suspects else []

    def all_specs(self) -> list[InstanceSpec]:
        return [self._spec(i) for i in range(self.n)]


class Index:
    """One cloud's index text, with lazily built views."""

    def __init__(self, cloud: str, d: pathlib.Path, name: str, text: str, size: int | None = None):
        """`text`: the index up to its S lines (the whole file is fine too); `size`: the file's size."""
        self.cloud = cloud
        self.path = d / name
        head = text.split("\n", 1)[0].split("\t")
        if len(head) != 12 or head[0] != INDEX_MAGIC or head[2] != cloud:
            raise err(f"{self.path} is not a {cloud} catalog index")
        if head[1] != str(FORMAT_VERSION):
            raise err(f"{self.path} has format version {head[1]}, this broker reads {FORMAT_VERSION}")
        self.offers_path = d / head[3]
        try:
            osize = self.offers_path.stat().st_size
        except OSError:
            raise err(f"offers file {self.offers_path} is missing") from None
        if osize != int(head[4]):
            raise err(f"{self.offers_path} has {osize} bytes, the index expects {head[4]}")
        self.regions_path, self._regions_size = d / head[7], int(head[8])
        self._region_groups: dict[str, dict[int, RegionGroup]] = {}
        self.n_specs, n_groups = int(head[5]), int(head[6])
        self.names_path, self._names_size = d / head[9], int(head[10])
        self.s_start = int(head[11])  # where the S lines start (bytes = characters: the index is ASCII)
        self.text = text[:self.s_start]
        self._s_text: str | None = text[self.s_start:] if len(text) > self.s_start else None
        self._s_reads = 0
        g0 = self.text.find("\nG\t")
        if g0 < 0 or not self.text.endswith("\n"):
            raise err(f"{self.path} lists no instance types")
        self._head_end = g0 + 1
        self._glines = self.text[g0 + 1:-1].split("\n")
        if len(self._glines) != n_groups:
            raise ValueError(f"{len(self._glines)} groups, the header says {n_groups}")
        self._groups: list[Group | None] = [None] * n_groups
        last = self.group(n_groups - 1)  # its S lines end the file: a truncated index is caught here
        total = self.s_start + last._start + last._length
        if (size if size is not None else len(text)) != total:
            raise ValueError("the spec lines do not end where the groups say (truncated?)")
        self._acc_dir: dict[str, tuple[int, int]] | None = None
        self._by_acc: dict[str, list[Group]] = {}
        self._named: dict[str, list[InstanceSpec]] = {}
        self.blocks: dict[tuple, tuple[list[str], InstanceSpec]] = {}  # spec.key -> (S fields, spec)
        self.clean: dict[tuple, tuple[float | None, float | None]] = {}  # spec.key -> clean bounds
        self.offer_cache: dict = {}
        self._regions: list[str] | None = None
        self._zones: dict[str, str] | None = None
        self._all: list[InstanceSpec] | None = None

    # -- the S lines, read on demand --------------------------------------------------------------------
    def s_lines(self, start: int, length: int) -> str:
        """S lines [start, start+length) (characters after the first S line): a seek and read for the first
        few groups, the whole section once a search needs more."""
        if self._s_text is None and self._s_reads >= 48:
            self._s_text = self._read(self.s_start, None)
        if self._s_text is not None:
            return self._s_text[start:start + length]
        self._s_reads += 1
        return self._read(self.s_start + start, length)

    def _read(self, offset: int, length: int | None) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                raw = f.read() if length is None else f.read(length)
        except OSError as e:
            raise err(f"cannot read {self.path}: {e.strerror or e}") from None
        if length is not None and len(raw) != length:
            raise ValueError("shorter than the groups say")
        return raw.decode("utf-8")

    # -- groups --------------------------------------------------------------------------------------
    def group(self, i: int) -> Group:
        g = self._groups[i]
        if g is None:
            g = self._groups[i] = Group(self, i, self._glines[i].split("\t"))
        return g

    @property
    def groups(self) -> list[Group]:
        return [self.group(i) for i in range(len(self._groups))]

    def accelerator_groups(self, name: str) -> list[Group]:
        """The groups of one accelerator name (case-insensitive; "" = CPU-only), parsing only those."""
        key = name.lower()
        got = self._by_acc.get(key)
        if got is None:
            if self._acc_dir is None:
                self._places()
            got = []
            for acc, (first, n) in self._acc_dir.items():
                if acc.lower() == key:
                    got.extend(self.group(i) for i in range(first, first + n))
            self._by_acc[key] = got
        return got

    # -- specs ---------------------------------------------------------------------------------------
    def parse_spec(self, line: str) -> InstanceSpec:
        p = line.split("\t")
        if len(p) != S_FIELDS or p[0] != "S":
            raise ValueError("bad spec line")
        s = _new_spec(self.cloud, p[1], float(p[2]), float(p[3]), p[4] or None, float(p[5]), p[6],
                      _opt(p[9]), _opt(p[10]), "B" in p[7], int(p[8]), "C" in p[7])
        self.blocks[s.key] = (p, s)
        self.clean[s.key] = (_opt(p[14]), _opt(p[15]))
        return s

    def all_specs(self) -> list[InstanceSpec]:
        if self._all is None:
            self._all = [s for g in self.groups for s in g.all_specs()]
        return self._all

    def named(self, instance_type: str) -> list[InstanceSpec]:
        """Every spec of that instance type (several on GCP: one per attachable GPU count)."""
        got = self._named.get(instance_type)
        if got is None:
            got = self._named[instance_type] = self._find_named(instance_type)
        return list(got)

    def _find_named(self, instance_type: str) -> list[InstanceSpec]:
        """Binary search of the sorted names file (a few seeks), then the specs from their groups."""
        key = instance_type.encode()
        try:
            with open(self.names_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != self._names_size:
                    raise err(f"{self.names_path} has {size} bytes, the index expects {self._names_size}")
                lo, hi = 0, size  # lo: a line start; every line starting before lo has a name < key
                while hi - lo > 4096:
                    mid = _line_after(f, (lo + hi) // 2)
                    if mid >= hi:
                        break
                    f.seek(mid)
                    if f.readline().split(b"\t", 1)[0] < key:
                        lo = mid
                    else:
                        hi = mid
                f.seek(lo)
                rows = []
                for line in f:
                    name = line.split(b"\t", 1)[0]
                    if name > key:
                        break
                    if name == key:
                        rows.append(line.decode().split("\t"))
        except OSError as e:
            raise err(f"cannot read {self.names_path}: {e.strerror or e}") from None
        return [self.group(int(g))._spec(int(p)) for _, g, p in rows]

    def lookup(self, key: tuple) -> tuple[list[str], InstanceSpec] | None:
        hit = self.blocks.get(key)
        if hit is None:
            for s in self.named(key[0]):
                if s.key == key:
                    return self.blocks[key]
        return hit

    # -- places ----------------------------------------------------------------------------------------
    def _places(self) -> None:
        regions: list[str] = []
        zones: dict[str, str] = {}
        self._region_blocks: dict[str, tuple[int, int]] = {}
        acc_dir: dict[str, tuple[int, int]] = {}
        for line in self.text[:self._head_end].split("\n")[1:]:
            if line and line[0] != "#":
                p = line.split("\t")
                if p[0] == "R":
                    regions.append(p[1])
                    self._region_blocks[p[1]] = (int(p[2]), int(p[3]))
                elif p[0] == "A":
                    acc_dir[p[1]] = (int(p[2]), int(p[3]))
                elif p[0] == "Z":
                    zones[p[1]] = p[2]
                elif p[0] != "G":
                    raise ValueError(f"unknown line type {p[0][:20]!r}")
        self._regions, self._zones, self._acc_dir = regions, zones, acc_dir

    def region_groups(self, region: str) -> dict[int, RegionGroup]:
        """group index -> the group's specs offered in `region`, ordered by their lowest price there."""
        got = self._region_groups.get(region)
        if got is not None:
            return got
        if self._regions is None:
            self._places()
        loc = self._region_blocks.get(region)
        got = {}
        if loc is not None:
            off, length = loc
            try:
                if self.regions_path.stat().st_size != self._regions_size:
                    raise err(f"{self.regions_path} has the wrong size (the index expects {self._regions_size})")
                with open(self.regions_path, "rb") as f:
                    f.seek(off)
                    raw = f.read(length).decode("utf-8")
            except OSError as e:
                raise err(f"cannot read {self.regions_path}: {e.strerror or e}") from None
            lines = raw.split("\n")
            head = lines[0].split("\t")
            if head[0] != region or len(lines) < int(head[1]) + 1:
                raise ValueError(f"region block for {region} does not match the index")
            n_groups = int(head[1])
            rows = lines[1 + n_groups:]
            for line in lines[1:1 + n_groups]:
                gi, start, n, spot = line.split("\t")
                got[int(gi)] = RegionGroup(self.group(int(gi)), rows, int(start), int(n), spot)
        self._region_groups[region] = got
        return got

    @property
    def regions(self) -> list[str]:
        if self._regions is None:
            self._places()
        return self._regions

    @property
    def zones(self) -> dict[str, str]:
        if self._zones is None:
            self._places()
        return self._zones


class RegionGroup:
    """A group's specs offered in one region, ordered by their lowest price there (exact bounds for a
    search bound to that region): `ordered(spot)` yields (bound, spec)."""

    __slots__ = ("_rows", "_spot_text", "_start", "group", "min_price", "min_spot", "n")

    def __init__(self, group: Group, rows: list[str], start: int, n: int, spot_text: str):
        self.group, self._rows, self._start, self.n, self._spot_text = group, rows, start, n, spot_text
        first = rows[start].split("\t")
        spot_first = rows[start + int(spot_text.split(",", 1)[0])].split("\t")
        self.min_price, self.min_spot = _opt(first[1]), _opt(spot_first[2])

    def ordered(self, spot: bool) -> Iterator[tuple[float | None, InstanceSpec]]:
        order = [int(x) for x in self._spot_text.split(",")] if spot else range(self.n)
        col = 2 if spot else 1
        for j in order:
            p = self._rows[self._start + j].split("\t")
            yield _opt(p[col]), self.group._spec(int(p[0]))


def _line_after(f, pos: int) -> int:
    """The start of the first line at or after byte `pos`."""
    if pos == 0:
        return 0
    f.seek(pos - 1)
    f.readline()
    return f.tell()


def _bad(p: list[str], kind: str) -> bool:
    raise ValueError(f"bad {kind} line {chr(9).join(p)[:60]!r}")
