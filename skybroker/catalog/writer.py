"""Writing the compact catalog format: one cloud's specs and offers as its index, offers, regions and names
files, each block's offsets checked by reading it back.

`write_cloud` takes the `Acc` of normalise.py (suspicious offers already flagged) and writes
`<cloud>.index.tsv`, `<cloud>.offers.tsv`, `<cloud>.regions.tsv` and `<cloud>.names.tsv` atomically, with
the classification columns of rules.py (generation, burstable, confidential); `README_FORMAT` is the prose
of that format (part of the generated data/README.md) and index.py its reader. Stdlib only.
"""
from __future__ import annotations

import os
import pathlib
from collections import defaultdict

from skybroker.catalog import index_name, names_name, offers_name, parse_offer_line, regions_name
from skybroker.catalog.index import FORMAT_VERSION, G_FIELDS, INDEX_MAGIC, S_FIELDS
from skybroker.catalog.normalise import Acc
from skybroker.catalog.rules import generation, is_burstable, is_confidential
from skybroker.errors import BrokerError


def fmt(v: float | None) -> str:
    if v is None:
        return ""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def _offer_sort(item):
    (region, zone), o = item
    return (o[0] if o[0] is not None else float("inf"), region, zone or "")


def _bound_key(v: float | None, gen: int, itype: str) -> tuple:
    return (v if v is not None else float("inf"), -gen, itype)


def write_cloud(acc: Acc, out: pathlib.Path) -> dict:
    """Write <cloud>.index.tsv and <cloud>.offers.tsv (format in README_FORMAT), then re-read every block to
    verify the offsets."""
    cloud = acc.cloud
    specs = {k: v for k, v in acc.specs.items() if v["offers"]}
    acc.stats["specs_dropped_no_price"] = len(acc.specs) - len(specs)
    regions: set[str] = set()
    zones: dict[str, str] = {}
    body = bytearray()
    s_fields: dict[tuple, list[str]] = {}
    n_offers = 0
    for key in sorted(specs):  # offers blocks in (instance type, accelerator, count) order
        itype, gpu, count = key
        s = specs[key]
        offers = sorted(s["offers"].items(), key=_offer_sort)
        block = [f"{itype}\t{gpu}\t{fmt(count)}\n"]
        for (region, zone), (price, spot, local, susp) in offers:
            regions.add(region)
            if zone is not None:
                zones[zone] = region
            flags = ("L" if local else "") + ("S" if susp else "")
            block.append(f"\t{region}\t{zone or ''}\t{fmt(price)}\t{fmt(spot)}\t{flags}\n")
        data = "".join(block).encode()
        prices = [o[0] for _, o in offers if o[0] is not None]
        spots = [o[1] for _, o in offers if o[1] is not None]
        s["min"] = min(prices) if prices else None
        s["min_spot"] = min(spots) if spots else None
        clean = [o for _, o in offers if not o[2] and not o[3]]  # neither Local Zone nor suspicious
        s["cmin"] = min((o[0] for o in clean if o[0] is not None), default=None)
        s["cmin_spot"] = min((o[1] for o in clean if o[1] is not None), default=None)
        s["gen"] = generation(cloud, itype, gpu or None)
        s["flags"] = ("B" if is_burstable(cloud, itype) else "") + ("C" if is_confidential(cloud, itype) else "")
        s_fields[key] = ["S", itype, fmt(s["vcpus"]), fmt(s["mem"]), gpu, fmt(count), s["arch"], s["flags"],
                         str(s["gen"]), fmt(s["min"]), fmt(s["min_spot"]), str(len(body)), str(len(data)),
                         str(len(offers)), fmt(s["cmin"]), fmt(s["cmin_spot"])]
        assert len(s_fields[key]) == S_FIELDS
        body += data
        n_offers += len(offers)
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key, s in specs.items():
        groups[(key[1], key[2], s["vcpus"], s["mem"], s["arch"], s["flags"])].append(key)
    g_lines, s_lines, pos = [], [], 0
    by_region: dict[str, list[tuple[int, list[tuple]]]] = defaultdict(list)  # region -> [(group, entries)]
    where: dict[tuple, tuple[int, int]] = {}  # spec key -> (group, position)
    for gi, gk in enumerate(sorted(groups)):
        gpu, count, vcpus, mem, arch, flags = gk
        members = sorted(groups[gk], key=lambda k: _bound_key(specs[k]["cmin"], specs[k]["gen"], k[0]))
        where.update((k, (gi, i)) for i, k in enumerate(members))
        regional: dict[str, list[tuple]] = defaultdict(list)
        for i, k in enumerate(members):
            per: dict[str, list] = {}
            for (region, _zone), o in specs[k]["offers"].items():
                r = per.setdefault(region, [None, None])
                for j in (0, 1):
                    if o[j] is not None and (r[j] is None or o[j] < r[j]):
                        r[j] = o[j]
            for region, (od, sp) in per.items():
                regional[region].append((i, od, sp, specs[k]["gen"], k[0]))
        for region, entries in regional.items():
            by_region[region].append((gi, entries))
        spot_order = sorted(range(len(members)), key=lambda i: _bound_key(
            specs[members[i]]["cmin_spot"], specs[members[i]]["gen"], members[i][0]))
        text = "".join("\t".join(s_fields[k]) + "\n" for k in members)
        mins = [specs[k]["cmin"] for k in members if specs[k]["cmin"] is not None]
        spot_mins = [specs[k]["cmin_spot"] for k in members if specs[k]["cmin_spot"] is not None]
        g = ["G", fmt(vcpus), fmt(mem), gpu, fmt(count), arch, flags, fmt(min(mins) if mins else None),
             fmt(min(spot_mins) if spot_mins else None), str(len(members)), str(pos), str(len(text)),
             ",".join(map(str, spot_order)),
             ",".join(str(i) for i, k in enumerate(members) if any(o[3] for o in specs[k]["offers"].values()))]
        assert len(g) == G_FIELDS
        g_lines.append("\t".join(g) + "\n")
        s_lines.append(text)
        pos += len(text)
    regions_text, r_lines = _region_blocks(by_region)
    names_text = "".join(sorted(f"{k[0]}\t{gi}\t{pos}\n" for k, (gi, pos) in where.items())).encode()
    header = [f"{INDEX_MAGIC}\t{FORMAT_VERSION}\t{cloud}\t{offers_name(cloud)}\t{len(body)}\t{len(specs)}"
              f"\t{len(g_lines)}\t{regions_name(cloud)}\t{len(regions_text)}\t{names_name(cloud)}"
              f"\t{len(names_text)}\n",
              "# G\tvcpus\tmemory_gib\taccelerator\tcount\tarch\tflags\tmin_price\tmin_spot\tn_specs\tstart"
              "\tlength\tspot_order\tsuspects\n",
              "# S\tinstance_type\tvcpus\tmemory_gib\taccelerator\tcount\tarch\tflags\tgeneration\tmin_price"
              "\tmin_spot\toffset\tlength\tn_offers\n"]
    header += r_lines
    acc_dir: dict[str, list[int]] = {}
    for gi, gk in enumerate(sorted(groups)):  # G lines are sorted by accelerator: one range per name
        acc_dir.setdefault(gk[0], [gi, 0])[1] += 1
    header += [f"A\t{a}\t{first}\t{n}\n" for a, (first, n) in sorted(acc_dir.items(), key=lambda x: x[1][0])]
    header += [f"Z\t{z}\t{zones[z]}\n" for z in sorted(zones)]
    head = "".join(header[1:] + g_lines)
    first = header[0].rstrip("\n")
    s_at = next(n for n in (len(first) + len(head) + 2 + d for d in range(1, 13))
                if len(str(n)) == n - len(first) - len(head) - 2)  # line 1 holds its own length
    line1 = f"{first}\t{s_at}\n"
    assert len(line1) + len(head) == s_at
    index_text = line1 + head + "".join(s_lines)
    write_atomic(out / offers_name(cloud), bytes(body))
    write_atomic(out / regions_name(cloud), regions_text)
    write_atomic(out / names_name(cloud), names_text)
    write_atomic(out / index_name(cloud), index_text.encode())
    _verify(out, cloud, list(s_fields.values()))
    acc.stats["specs"] = len(specs)
    acc.stats["groups"] = len(g_lines)
    acc.stats["burstable_specs"] = sum(1 for s in specs.values() if "B" in s["flags"])
    acc.stats["confidential_specs"] = sum(1 for s in specs.values() if "C" in s["flags"])
    acc.stats["offers"] = n_offers
    acc.stats["regions"] = len(regions)
    acc.stats["zones"] = len(zones)
    return dict(sorted(acc.stats.items()))


def _region_blocks(by_region: dict) -> tuple[bytes, list[str]]:
    """<cloud>.regions.tsv: per region, the specs offered there, group by group, sorted by their lowest price
    in that region (the exact lower bound a region-bound search needs); and the index's R lines."""
    body = bytearray()
    r_lines = []
    for region in sorted(by_region):
        heads, rows, n = [], [], 0
        for gi, entries in by_region[region]:
            od = sorted(entries, key=lambda e: _bound_key(e[1], e[3], e[4]))
            spot_pos = sorted(range(len(od)), key=lambda j: _bound_key(od[j][2], od[j][3], od[j][4]))
            heads.append(f"{gi}\t{n}\t{len(od)}\t{','.join(map(str, spot_pos))}\n")
            rows.extend(f"{e[0]}\t{fmt(e[1])}\t{fmt(e[2])}\n" for e in od)
            n += len(od)
        block = f"{region}\t{len(heads)}\n{''.join(heads)}{''.join(rows)}".encode()
        r_lines.append(f"R\t{region}\t{len(body)}\t{len(block)}\n")
        body += block
    return bytes(body), r_lines


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _verify(out: pathlib.Path, cloud: str, lines: list[list[str]]) -> None:
    with open(out / offers_name(cloud), "rb") as f:
        for p in lines:
            off, length, n = int(p[11]), int(p[12]), int(p[13])
            f.seek(off)
            block = f.read(length).decode().split("\n")
            if block[0] != f"{p[1]}\t{p[4]}\t{p[5]}" or block[-1] != "" or len(block) != n + 2:
                raise BrokerError(f"catalog build: offset check failed for {cloud} {p[1]}")
            for ol in block[1:-1]:
                parse_offer_line(ol)



README_FORMAT = """\
## Format (version {version})

Per cloud two UTF-8 text files; `meta.json` holds the build metadata (`skybroker.catalog.info()`).

`<cloud>.index.tsv` — read by the loader (`skybroker/catalog/index.py`), lazily. Line 1: `{magic}<TAB>version
<TAB>cloud<TAB>offers file<TAB>offers file size<TAB>number of specs<TAB>number of groups<TAB>regions file
<TAB>regions file size<TAB>names file<TAB>names file size<TAB>offset of the first S line`. Then `#` comments, `R<TAB>region<TAB>offset<TAB>length` lines (sorted), `A<TAB>accelerator<TAB>first
group<TAB>number of groups` lines (the G lines of each accelerator name, "" = CPU-only), `Z<TAB>zone<TAB>region` lines (sorted; none on Azure), then one `G` line per
shape group (specs with the same accelerator, count, vCPUs, memory, arch and flags; sorted by those):
`G vcpus memory_gib accelerator count arch flags min_price min_spot n_specs start length spot_order
suspects` (`suspects`: the specs, 0-based, with a suspicious offer), and
last the `S` lines, group after group:
`S instance_type vcpus memory_gib accelerator count arch flags generation min_price min_spot offset length
n_offers clean_min clean_min_spot` (empty field = None; flags: `B` = burstable, `C` = confidential computing; `clean_*` = minima over the
offers that are neither in a Local Zone nor suspicious, the bounds of a search that may not choose those). In
a group the S lines are sorted by `clean_min` (None last), then generation (newest first), then instance
type; `spot_order` lists the group's specs (0-based) in the same order by `clean_min_spot`; the G line's
minima are the clean ones. `start`/`length` locate the group's S lines (characters after the
first S line's start); `offset`/`length` locate a spec's block in the offers file.

`<cloud>.regions.tsv` — read by seek, one block per region (the index's `R<TAB>region<TAB>offset<TAB>length`
lines locate them): a line `region<TAB>n_groups`, one line per shape group offered there
`group<TAB>start<TAB>n<TAB>spot_order` (group = 0-based G line), then the entries, group by group:
`position in group<TAB>lowest on-demand price there<TAB>lowest spot price there`, sorted by that on-demand
price (None last; newest generation, then name, on ties); `spot_order` sorts them by the spot price. A
search bound to a region walks these instead of the catalog-wide bounds.

`<cloud>.names.tsv` — `instance_type<TAB>group<TAB>position` per spec, sorted: a named instance type is found
by binary search (seeks), without reading the S lines.

`<cloud>.offers.tsv` — read by seek, one block per spec, in (instance type, accelerator, count) order. A
block starts with a header line `instance_type<TAB>accelerator<TAB>count` (starts with a letter, so
`git diff` hunk headers name the spec) followed by one line per offer:
`<TAB>region<TAB>zone<TAB>price<TAB>spot_price<TAB>flags` (`L` = AWS Local Zone, `S` = suspicious), sorted
by (price, with None last; region; zone). The build re-reads every block to check the offsets.
"""
