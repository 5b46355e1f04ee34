"""`broker catalog refresh`: rebuild a cloud's catalog from the cloud's own APIs, with the user's credentials.

    refresh("aws", regions=None, progress=event)   -> summary dict

Each provider package has a `prices` module (skybroker/clouds/<cloud>/prices.py) that talks to its cloud's
APIs and returns rows in the upstream `vms.csv` schema of that cloud; those rows go through the same
normaliser as the bundled build (`build.build_cloud`), so the refreshed catalog has the same compact format,
rules and flags. Nothing here imports a cloud SDK: the prices module does, and only when a refresh runs.

Safety: the new catalog is written to a fresh folder next to the current one and made current by replacing
one symlink (`$BROKER_HOME/catalogs/<cloud>` → `.<cloud>-<stamp>`, an atomic rename), after the build has
re-read every offset. Any failure (credentials, throttling past the retries, an HTTP 500 in the middle of
pagination) raises before that, so the previous catalog — refreshed or bundled — stays in use untouched.

`--region` refreshes only those regions: the other regions' offers are carried over from the catalog in use
(so are GCP's TPU slices, whose prices are not fetched), and meta.json says which regions came from where.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import random
import shutil
import time

from skybroker import settings
from skybroker.catalog import META_FILE, clear_cache, cloud_dir, refreshed_dir
from skybroker.catalog.index import FORMAT_VERSION
from skybroker.errors import BrokerError, ThrottledError

FETCHERS = {"aws": "skybroker.clouds.aws.prices", "gcp": "skybroker.clouds.gcp.prices",
            "azure": "skybroker.clouds.azure.prices"}
REFRESHABLE = tuple(FETCHERS)


class RefreshError(BrokerError):
    """A refresh that could not complete; the catalog in use is unchanged."""

    exit_code = 4


class Retry:
    """Calls a cloud API with backoff on throttling (BROKER_THROTTLE_RETRIES, BROKER_THROTTLE_BACKOFF, the
    same knobs provisioning uses). `classify(exc)` maps an SDK/HTTP error to a typed BrokerError (the
    provider's own classifier) or None."""

    def __init__(self, classify, progress=None, sleep=time.sleep):
        self.classify, self.progress, self.sleep = classify, progress, sleep
        self.calls = 0
        self.throttled = 0

    def __call__(self, what: str, fn):
        retries = int(settings.get("throttle_retries"))
        delay = float(settings.get("throttle_backoff"))
        for attempt in range(retries + 1):
            self.calls += 1
            try:
                return fn()
            except BrokerError:
                raise
            except Exception as exc:  # classified below, re-raised if unknown
                err = self.classify(exc)
                if err is None:
                    raise
                if isinstance(err, ThrottledError) and attempt < retries:
                    self.throttled += 1
                    if self.progress:
                        self.progress("retry", f"{what}: throttled ({err.code or 'rate limit'}), "
                                               f"retrying in {delay:.1f}s ({attempt + 1}/{retries})")
                    self.sleep(delay * (1 + 0.1 * random.random()))
                    delay *= 2
                    continue
                raise err from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _carried(cloud: str, done: set, types: tuple) -> tuple[list[tuple], str | None]:
    """Offers of the catalog in use outside the fetched regions `done`, and every offer of the instance types
    `types` (not fetched at all), as `normalise.Acc.add` arguments."""
    from skybroker import catalog

    try:
        specs = catalog.specs(cloud)
        source = catalog.price_age(cloud)["source"]
        every_region = set(catalog.regions(cloud)) <= done
    except BrokerError:
        return [], None
    out = []
    for s in specs:
        whole = s.instance_type in types
        if every_region and not whole:
            continue
        for o in catalog.offers(s):
            if whole or o.region not in done:
                out.append((s.instance_type, s.vcpus, s.memory_gib, s.accelerator_name, s.accelerator_count,
                            s.arch, o.region, o.zone, o.price, o.spot_price))
    return out, source


def _require_credentials(cloud: str, mod) -> None:
    """The provider's own credential check (what `broker check` says), unless the fetcher runs without."""
    if mod.credentials_bypassed():
        return
    from skybroker.clouds import registry
    from skybroker.errors import CredentialsError, Place

    c = registry.get(cloud, sdk=False).check()
    if not c.ok:
        name = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}.get(cloud, cloud)
        raise CredentialsError(f"cannot refresh the {name} catalog: {c.detail}", Place(cloud), code="NoCredentials",
                               hint=c.hint)


def refresh(cloud: str, regions: list[str] | None = None, progress=None) -> dict:
    """Fetch, normalise, write, swap. Returns a summary (counts, regions, dir, refreshed_at, api calls).
    The SDK and the credentials are checked first (nothing is written when either is missing); then one
    refresh per cloud at a time (a file lock beside the catalog): a second one is refused, not queued."""
    import fcntl

    from skybroker.check import install_hint, sdk_missing
    from skybroker.paths import private_dir

    if cloud not in FETCHERS:
        raise BrokerError(f"cannot refresh {cloud!r} from its APIs", f"one of: {', '.join(REFRESHABLE)}",
                          exit_code=2)
    missing = sdk_missing(cloud)
    if missing:
        raise BrokerError(f"the {cloud} SDK is not installed (missing {', '.join(missing)}); "
                          "the catalog in use is unchanged", install_hint(cloud), exit_code=2)
    mod = importlib.import_module(FETCHERS[cloud])
    _require_credentials(cloud, mod)  # CredentialsError (exit 4) before any network call
    with open(private_dir(refreshed_dir(cloud).parent) / f".{cloud}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BrokerError(f"another `broker catalog refresh` of {cloud} is running",
                              "wait for it to finish; the catalog in use is unchanged") from None
        return _refresh(cloud, mod, regions, progress or (lambda kind, message: None))


def _refresh(cloud: str, mod, regions, say) -> dict:
    from skybroker.catalog import build

    retry = Retry(mod.classify, say)
    started = time.process_time()
    try:
        fetched = mod.fetch(regions, retry, say)
    except BrokerError as e:
        raise RefreshError(f"{cloud} catalog refresh failed: {e.message}; the catalog in use is unchanged",
                           e.hint, exit_code=e.exit_code) from e
    rows = fetched["rows"]
    done = set(fetched["regions"])
    if not rows:
        raise RefreshError(f"{cloud} catalog refresh got no priced offers from the APIs"
                           f"{' in ' + ', '.join(sorted(done)) if done else ''}; the catalog in use is unchanged",
                           "check --region, and that the account may call the price APIs")
    carry, carried_from = _carried(cloud, done, tuple(fetched.get("carry_types", ())))
    say("build", f"building the {cloud} catalog from {len(rows)} rows"
                 + (f" (+{len(carry)} offers carried over)" if carry else ""))
    base = refreshed_dir(cloud)
    base.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    new = base.parent / f".{cloud}-{stamp}"
    try:
        new.mkdir(parents=True)
        counts = build.build_cloud(cloud, rows, new, carry=carry)
        at = _now_iso()
        meta = {"format_version": FORMAT_VERSION, "build_date": at[:10],
                "suspicious_rule": f"on-demand < {build.SUSPICIOUS_RATIO} x median per-region on-demand of the spec",
                "clouds": {cloud: {"source": "api", "refreshed_at": at, "apis": fetched["apis"],
                                   "regions": sorted(done), "carried_from": carried_from if carry else None,
                                   "carried_offers": len(carry), "counts": counts}}}
        (new / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _swap(base, new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    clear_cache()
    return {"cloud": cloud, "dir": str(cloud_dir(cloud)), "refreshed_at": at, "regions": sorted(done),
            "rows": len(rows), "carried_offers": len(carry), "api_calls": retry.calls, "throttled": retry.throttled,
            "cpu_seconds": round(time.process_time() - started, 2), **{k: counts[k] for k in ("specs", "offers")}}


def _swap(link, new) -> None:
    """Point `link` at `new` atomically; keep the previous version (a process may still read it), drop older."""
    old = os.path.realpath(link) if os.path.islink(link) else None
    if os.path.exists(link) and not os.path.islink(link):  # a plain folder (copied by hand): move it aside
        os.replace(link, f"{link}.previous-{int(time.time())}")
    tmp = f"{link}.link-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(new), tmp)
    os.replace(tmp, link)
    keep = {os.path.basename(str(new)), os.path.basename(old) if old else None}
    prefix = f".{os.path.basename(str(link))}-"
    for entry in os.listdir(os.path.dirname(str(link))):
        if entry.startswith(prefix) and entry not in keep:
            shutil.rmtree(os.path.join(os.path.dirname(str(link)), entry), ignore_errors=True)
