"""SkyPilot image tags (`image_id: skypilot:TAG`): what each tag names on each cloud, and where.

SkyPilot resolves a tag such as `skypilot:cpu-debian-10` through its catalog's `<cloud>/images.csv`
(columns Tag, Region, OS, OSVersion, ImageId, ...): on GCP and Azure one image for every region (empty
Region), on AWS one AMI per region. skybroker ships the same table as package data
(`data/images.tsv`: `cloud<TAB>tag<TAB>region<TAB>image`, "" = every region), built by

    python -m skybroker.catalog.images [--upstream DIR]

from the copy in `shared/skypilot-baseline/catalog-extras/` (skypilot-org/skypilot-catalog `catalogs/v9`,
image ids only; the file's header records the inputs' sha256). A task naming a tag gets that image where
the table has it and is planned only there (`place`, called by spec.py), as in SkyPilot; a tag the table does not have for a
cloud the task names is refused, naming `resources.image_id`. The images are used as they are: SkyPilot's
own images (conda, Ray preinstalled) are what those tags name, and skybroker's bootstrap needs only python3.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import pathlib

DATA = pathlib.Path(__file__).resolve().parent / "data" / "images.tsv"
CLOUDS = ("aws", "gcp", "azure")
PREFIX = "skypilot:"


def is_tag(image) -> bool:
    return isinstance(image, str) and image.strip().lower().startswith(PREFIX)


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, dict[str, str]]]:
    """tag → cloud → region ("" = every region) → image id."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    if not DATA.exists():
        return out
    for line in DATA.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        cloud, tag, region, image = line.split("\t")
        out.setdefault(tag.lower(), {}).setdefault(cloud, {})[region] = image
    return out


def places(tag: str) -> dict[str, tuple[str, ...]]:
    """cloud → the regions the tag has there (() = every region); {} when no cloud has it."""
    by_cloud = _table().get(tag.strip().lower(), {})
    return {c: (() if "" in regions else tuple(sorted(regions))) for c, regions in by_cloud.items()}


def resolve(cloud: str, region: str | None, tag: str) -> str | None:
    """The image a tag names on `cloud` in `region`, or None."""
    regions = _table().get(tag.strip().lower(), {}).get(cloud, {})
    return regions.get("") or (regions.get(region) if region else None)


def _few(items, n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def place(res, fp: str) -> list:
    """Where the task's image exists, as SkyPilot plans it: `image_id: {region: image}` confines the
    entry to those regions, and a SkyPilot tag (`skypilot:cpu-debian-10`, catalog/images.py) to the clouds
    and regions whose table has it. One Resources per place; the optimizer picks the cheapest of them."""
    from dataclasses import replace

    from ..errors import SpecError

    if not res.image_id:
        return [res]
    pairs = res.image_id
    if all(reg for reg, _ in pairs):  # per-region images
        if res.region:
            pairs = tuple(p for p in pairs if p[0] == res.region)
            if not pairs:
                raise SpecError(f"image_id names no image for region {res.region}",
                                f"add `{res.region}: IMAGE` to image_id, or choose one of its regions",
                                field=f"{fp}.image_id")
        out = [replace(res, region=reg, image_id=((reg, img),)) for reg, img in pairs]
    else:
        out = [res]
    placed: list = []
    for r in out:
        img = r.image_id[0][1]
        if not is_tag(img):
            placed.append(r)
            continue
        for cloud, regions in places(img).items():
            if r.cloud and cloud != r.cloud:
                continue
            if not regions:
                placed.append(replace(r, cloud=cloud))
            elif r.region:
                if r.region in regions:
                    placed.append(replace(r, cloud=cloud))
            else:
                placed += [replace(r, cloud=cloud, region=reg) for reg in regions]
    if not placed:
        tag = next(img for _, img in res.image_id if is_tag(img))
        where = " ".join(x for x in (res.cloud, res.region) if x)
        have = ", ".join(f"{c} ({'every region' if not rs else _few(rs)})"
                         for c, rs in places(tag).items())
        raise SpecError(f"SkyPilot image tag {tag!r} does not exist on {where}",
                        f"the tag exists on {have}; use the cloud's own image id there, or drop image_id",
                        field=f"{fp}.image_id")
    return placed


def known_tags(cloud: str | None = None) -> list[str]:
    return sorted(t for t, by in _table().items() if cloud is None or cloud in by)


def build(upstream: pathlib.Path, out: pathlib.Path = DATA) -> int:
    rows, sums = [], []
    for cloud in CLOUDS:
        src = upstream / cloud / "images.csv"
        data = src.read_bytes()
        sums.append(f"# {cloud}/images.csv sha256 {hashlib.sha256(data).hexdigest()}")
        for r in csv.DictReader(data.decode().splitlines()):
            tag, image = (r.get("Tag") or "").strip(), (r.get("ImageId") or "").strip()
            if tag.startswith(PREFIX) and image:
                rows.append((cloud, tag, (r.get("Region") or "").strip(), image))
    rows.sort()
    head = ["# SkyPilot image tags: cloud, tag, region ('' = every region), image id. Generated by",
            "# `python -m skybroker.catalog.images` from shared/skypilot-baseline/catalog-extras/<cloud>/images.csv",
            "# (skypilot-org/skypilot-catalog catalogs/v9; SkyPilot is Apache-2.0). Do not edit by hand."] + sums
    out.write_text("\n".join(head + ["\t".join(r) for r in rows]) + "\n")
    _table.cache_clear()
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    default = pathlib.Path(__file__).resolve().parents[3] / "shared" / "skypilot-baseline" / "catalog-extras"
    ap = argparse.ArgumentParser(prog="python -m skybroker.catalog.images")
    ap.add_argument("--upstream", type=pathlib.Path, default=default)
    ap.add_argument("--out", type=pathlib.Path, default=DATA)
    args = ap.parse_args(argv)
    n = build(args.upstream, args.out)
    print(f"wrote {n} image rows to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
