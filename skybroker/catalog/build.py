"""Build the compact price catalogs (package data: `skybroker/catalog/data/`) from the upstream CSVs.

    python -m skybroker.catalog.build [--upstream PATH] [--out PATH] [--date YYYY-MM-DD]
    broker catalog build                  (the CLI calls `main`)

This module drives the build: the inputs and their provenance (`INPUTS`, `SOURCES`), `build_cloud` (the one
normaliser, also behind `broker catalog refresh`: normalise.py reads a cloud's rows, writer.py writes its
files), meta.json and the generated `data/README.md`. Every rule applied is written out in rules.py's
`README_RULES` and the format in writer.py's `README_FORMAT`, both part of that README, so the documentation
cannot drift from the code. Output is deterministic: the same inputs and `--date` give the same bytes.
Stdlib only.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile

from skybroker.catalog import META_FILE
from skybroker.catalog.index import FORMAT_VERSION, INDEX_MAGIC
from skybroker.catalog.model import CLOUDS
from skybroker.catalog.normalise import (COLUMNS, READERS, SUSPICIOUS_RATIO, Acc, CsvRows, flag_suspicious,
                                         input_error)
from skybroker.catalog.rules import GCP_ARM_FAMILIES, README_RULES
from skybroker.catalog.writer import README_FORMAT, write_atomic, write_cloud
from skybroker.errors import BrokerError

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_UPSTREAM = REPO.parent / "shared" / "catalogs-upstream"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "data"  # the package data the loader reads

INPUTS = {"aws": "aws/vms_subset.csv", "gcp": "gcp/vms.csv", "azure": "azure/vms.csv",
          "lambda": "lambda/vms.csv"}
# Provenance, copied from the upstream README (update together with the upstream files). snapshot_date: the
# date of the upstream commit that last changed the file (when its prices were fetched; None = not stated).
SOURCES = {
    "aws": {"repo": "skypilot-org/skypilot-catalog", "path": "catalogs/v9/aws/vms.csv",
            "commit": "2c3d7ea7d76bf84cf80d382e946c1609571485fd",
            "note": "partial: 128 complete instance-type blocks, 21 families", "snapshot_date": None},
    "gcp": {"repo": "anycloud-sh/catalog", "path": "gcp/vms.csv",
            "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29", "note": "complete, byte-identical",
            "snapshot_date": "2026-05-20"},
    "azure": {"repo": "anycloud-sh/catalog", "path": "azure/vms.csv",
              "commit": "62ff0a987e0c257a89235415d2877812fb1aaf29",
              "note": "complete; the shared copy re-quotes Generation `V1,V2`", "snapshot_date": "2026-05-20"},
    "lambda": {"repo": "anycloud-sh/catalog", "path": "lambda/vms.csv",
               "commit": "4c0610266db3c729e55a84d8e0ffe1c96cd903ec", "note": "complete, byte-identical",
               "snapshot_date": "2026-05-07"},
}


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(upstream: pathlib.Path, out: pathlib.Path, date: str, warn=None, extras=None) -> dict:
    """Build all clouds; returns the metadata written to meta.json. Everything is built (and its offsets
    re-read) in a staging folder inside `out`, and moved into `out` only once all of it is complete: a bad
    input or a crash leaves the catalogs in `out` as they were. `extras`: SkyPilot's images.csv files
    (images.py), built into the same staging folder."""
    upstream, out = pathlib.Path(upstream), pathlib.Path(out)
    missing = [str(upstream / INPUTS[c]) for c in CLOUDS if not (upstream / INPUTS[c]).is_file()]
    if missing:
        raise BrokerError(f"upstream catalog files not found: {', '.join(missing)}",
                          hint="pass --upstream PATH (the folder holding aws/, gcp/, azure/)", exit_code=2)
    created = not out.exists()
    stage = _staging(out)
    try:
        meta = _build_into(upstream, stage, date, warn, extras)
        install(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)  # nothing but the staging folder was in it
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return meta


def _staging(out: pathlib.Path) -> pathlib.Path:
    """A fresh folder inside `out` (created if need be): same file system, so the files move in by rename."""
    if out.exists() and not out.is_dir():
        raise BrokerError(f"--out {out} is not a folder", hint="give a folder to write the catalogs into",
                          exit_code=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    except OSError as e:
        raise BrokerError(f"cannot write the catalogs into {out}: {e.strerror or e}",
                          hint="give a writable folder with --out", exit_code=2) from None


def install(stage: pathlib.Path, out: pathlib.Path) -> None:
    """Move the complete build in `stage` into `out`, one rename per file (each atomic; files `out` has that the
    build does not make stay), meta.json last. The loader's cache is dropped."""
    names = sorted(p.name for p in stage.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    for name in sorted(names, key=lambda n: n == META_FILE):
        os.replace(stage / name, out / name)
    from skybroker import catalog

    catalog.clear_cache()


def _build_into(upstream: pathlib.Path, out: pathlib.Path, date: str, warn, extras) -> dict:
    readme = upstream / "README.md"
    expected = {}
    if readme.is_file():
        for rel, sha in re.findall(r"`([a-z]+/[a-z_]+\.csv)` ([0-9a-f]{64})", readme.read_text(errors="replace")):
            expected[rel] = sha
    meta = {"format_version": FORMAT_VERSION, "build_date": date,
            "suspicious_rule": f"on-demand < {SUSPICIOUS_RATIO} x median per-region on-demand of the spec",
            "clouds": {}}
    for cloud in CLOUDS:
        path = upstream / INPUTS[cloud]
        sha = _sha256(path)
        if expected.get(INPUTS[cloud], sha) != sha and warn:
            warn(f"warning: {INPUTS[cloud]} sha256 differs from the upstream README; check SOURCES in build.py")
        stats = build_cloud(cloud, path, out)
        meta["clouds"][cloud] = {**SOURCES[cloud], "input": INPUTS[cloud], "sha256": sha, "counts": stats}
    if extras is not None:
        from skybroker.catalog import images

        images.build(extras, out / pathlib.Path(images.DATA).name)
    write_atomic(out / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(out / "README.md", render_readme(meta).encode())
    return meta


def build_cloud(cloud: str, rows, out: pathlib.Path, carry=()) -> dict:
    """The one normaliser: rows in the upstream `vms.csv` schema of `cloud` (a CSV path or an iterable of
    dicts) → the compact catalog files of that cloud in `out`; returns the counts. The bundled build (from the
    public CSVs) and `broker catalog refresh` (rows made from the clouds' own APIs) both come through here.
    `carry`: offers already normalised (`Acc.add` arguments) kept from the catalog in use, for the regions a
    refresh did not fetch; a fetched row for the same place wins."""
    acc = Acc(cloud)
    if isinstance(rows, (str, os.PathLike)):
        _read_csv(cloud, pathlib.Path(rows), acc)
    else:
        READERS[cloud](rows, acc)
    if not any(s["offers"] for s in acc.specs.values()):
        raise BrokerError(f"catalog build: {rows if isinstance(rows, (str, os.PathLike)) else cloud}: "
                          "no instance type with a price", exit_code=2)
    for args in carry:
        acc.carry(*args)
    flag_suspicious(acc)
    return write_cloud(acc, pathlib.Path(out))


def _read_csv(cloud: str, path: pathlib.Path, acc: Acc) -> None:
    """READERS[cloud] on an upstream CSV file; a bad file is an error naming it and the line (exit 2)."""
    src = CsvRows(path, COLUMNS[cloud])
    try:
        READERS[cloud](src, acc)
    except BrokerError as e:
        if e.exit_code == 2:  # CsvRows' own
            raise
        raise input_error(path, e.message, src.line) from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise input_error(path, f"bad value ({type(e).__name__}: {e})", src.line) from None


def _default_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    utc = _dt.timezone.utc
    now = _dt.datetime.fromtimestamp(int(epoch), utc) if epoch else _dt.datetime.now(utc)
    return now.date().isoformat()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="broker catalog build", description="Build the price catalogs from upstream CSVs.")
    ap.add_argument("--upstream", type=pathlib.Path, default=DEFAULT_UPSTREAM)
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="output folder (default: $BROKER_CATALOG_DIR or the package's skybroker/catalog/data)")
    ap.add_argument("--date", default=None,
                    help="build date to record (default: $SOURCE_DATE_EPOCH or today, UTC)")
    args = ap.parse_args(argv)
    out = args.out or pathlib.Path(os.environ.get("BROKER_CATALOG_DIR") or DEFAULT_OUT)
    date = args.date or _default_date()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise BrokerError(f"bad --date {date!r}", hint="use YYYY-MM-DD", exit_code=2)
    extras = args.upstream.parent / "skypilot-baseline" / "catalog-extras"  # SkyPilot's image tags (images.py)
    meta = build(args.upstream, out, date, warn=lambda m: print(m, file=sys.stderr),
                 extras=extras if extras.is_dir() else None)
    for cloud, m in meta["clouds"].items():
        c = m["counts"]
        print(f"{cloud}: {c['specs']} specs, {c['offers']} offers, {c['suspicious_offers']} suspicious")
    print(f"wrote {out}")
    return 0


def render_readme(meta: dict) -> str:
    out = ["# catalogs: compact price catalogs (generated)\n",
           "Generated by `python -m skybroker.catalog.build` (or `broker catalog build`) from "
           "`shared/catalogs-upstream/`. Do not edit by hand: change the build script and rebuild.\n",
           f"Build date: **{meta['build_date']}**.\n",
           "## Sources\n",
           "| cloud | input | upstream | commit | sha256 of input | rows | specs | offers | suspicious |",
           "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for cloud, m in meta["clouds"].items():
        c = m["counts"]
        out.append(f"| {cloud} | `{m['input']}` | `{m['repo']}` `{m['path']}` ({m['note']}) | `{m['commit']}` "
                   f"| `{m['sha256']}` | {c['input_rows']} | {c['specs']} | {c['offers']} "
                   f"| {c['suspicious_offers']} |")
    out.append("\nThe upstream repositories carry no LICENSE; the data are price and spec facts from the "
               "clouds' public pricing APIs, fetched by SkyPilot's fetchers (SkyPilot is Apache-2.0) and by "
               "anycloud-sh's bot. Credit: skypilot-org/skypilot-catalog, anycloud-sh/catalog.\n")
    out.append("Other counts per cloud (skipped rows etc.) are in `meta.json`.\n")
    out.append(README_RULES.format(ratio=SUSPICIOUS_RATIO, arm=", ".join(f"`{a}-*`" for a in GCP_ARM_FAMILIES)))
    out.append(README_FORMAT.format(version=FORMAT_VERSION, magic=INDEX_MAGIC))
    return "\n".join(out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokerError as e:
        print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        sys.exit(e.exit_code)
