"""The config file: defaults users want for every launch, layered.

    BROKER_HOME/config.yaml        yours (~/.broker/config.yaml)
    ./.broker.yaml                 the project's (the directory you run `broker` in)
    --config FILE                  one more, for this command (also BROKER_CONFIG)

Later layers override earlier ones key by key (mappings are merged). Keys:

    allowed_clouds: [aws, gcp]            plan only among these (they still need credentials); a task or
                                          --infra naming another (local and ssh too) is refused (plan_places.py)
    allowed_regions: {aws: [us-east-1]}   and only in these regions of those clouds
    autostop: {idle_minutes: 30, down: false}   for new clusters whose task sets none (or: 30)
    image_id: {aws: ami-0abc…}            per cloud, when the task names no image
    ssh_user: {aws: ec2-user}             per cloud, the login user of that image
    jobs: {job_recovery: FAILOVER, max_restarts_on_errors: 1}   managed-job defaults
    settings: {wait_ready: 300}           any setting of `broker settings`, by name (the environment wins)
    allow_suspicious_prices: false        may a plan choose a price the catalog flags as a likely anomaly
    api_server: https://broker.example:46580   client mode: every command goes to this server (README: Teams
                                          and CI); the token comes from `broker login` or BROKER_API_TOKEN

Errors name the file and the key, like task-file errors (exit 2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SpecError

PROJECT_FILE = ".broker.yaml"
_cache: dict = {}


def paths() -> list[Path]:
    from .paths import broker_home

    out = [broker_home() / "config.yaml"]
    try:
        out.append(Path.cwd() / PROJECT_FILE)
    except FileNotFoundError:  # run from a directory that was removed: it has no project config
        pass
    extra = os.environ.get("BROKER_CONFIG")
    if extra:
        out.append(Path(extra).expanduser())
    return out


def load() -> dict:
    """The merged config (cached while the files are unchanged)."""
    explicit = os.environ.get("BROKER_CONFIG")
    key = []
    for p in paths():
        try:
            st = p.stat()
            key.append((str(p), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            if explicit and p == Path(explicit).expanduser():
                raise SpecError("the config file does not exist", "fix --config / BROKER_CONFIG",
                                source=str(p)) from None
            key.append((str(p), None, None))
        except OSError as exc:
            raise SpecError(f"cannot read it: {exc.strerror or exc}", None, source=str(p)) from None
    key = tuple(key)
    if key not in _cache:
        merged: dict = {}
        for p, mtime, _ in key:
            if mtime is not None:
                _merge(merged, _validated(Path(p)))
        _cache.clear()
        _cache[key] = merged
    return _cache[key]


def get(name: str, default: Any = None) -> Any:
    return load().get(name, default)


def where(name: str) -> str:
    """The config file whose `name` is in effect (the last layer that sets it), for messages."""
    for p in reversed(paths()):
        try:
            if p.exists() and name in (_validated(p) or {}):
                return str(p)
        except SpecError:
            continue
    return "the config file"


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _validated(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"malformed YAML{where}", "fix the config file", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read it: {exc}", None, source=str(path)) from None
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of settings", "see README: Config file", source=str(path))
    known = ("allowed_clouds", "allowed_regions", "autostop", "image_id", "ssh_user", "jobs", "settings",
             "allow_suspicious_prices", "api_server")
    for k in data:
        if k not in known:
            from difflib import get_close_matches

            close = get_close_matches(str(k), known, n=1)
            raise SpecError(f"unknown key {k!r}", f"did you mean {close[0]!r}?" if close else
                            f"known keys: {', '.join(known)}", source=str(path), field=str(k))
    _check(path, data)
    return data


def _known_regions(path: Path, field: str, cloud: str, regions: list) -> None:
    """A region the cloud does not have (a typo) would silently leave the cloud out of every plan."""
    from difflib import get_close_matches

    from .clouds import registry

    try:
        known = registry.get(cloud, sdk=False).known_regions() if registry.known(cloud) else None
    except Exception:  # noqa: BLE001 - not checkable now (no catalog): the plan decides
        return
    for i, r in enumerate(regions):
        if known and r not in known:
            close = get_close_matches(r, known, n=3, cutoff=0.6)
            raise _err(path, f"{field}[{i}]", f"no region {r!r} on {cloud}",
                       (f"did you mean {' or '.join(close)}?" if close else f"{cloud} has: {', '.join(sorted(known)[:20])}"))


def _err(path: Path, field: str, msg: str, hint: str | None = None) -> SpecError:
    return SpecError(msg, hint, source=str(path), field=field)


def _cloud(path: Path, field: str, name) -> str:
    from .resources import normalize_cloud

    if not isinstance(name, str):
        raise _err(path, field, f"{name!r} is not a cloud name")
    try:
        return normalize_cloud(name, field)
    except SpecError as exc:
        raise SpecError(exc.message.split(": ", 1)[-1], exc.hint, source=str(path), field=field) from None


def _check(path: Path, d: dict) -> None:
    if "allowed_clouds" in d:
        v = d["allowed_clouds"]
        if not isinstance(v, list) or not v:
            raise _err(path, "allowed_clouds", "must be a non-empty list of clouds", "e.g. [aws, gcp]")
        d["allowed_clouds"] = [_cloud(path, f"allowed_clouds[{i}]", c) for i, c in enumerate(v)]
    for key in ("allowed_regions", "image_id", "ssh_user"):
        if key in d:
            v = d[key]
            if not isinstance(v, dict):
                raise _err(path, key, "must be a mapping of cloud → value", f"e.g. {key}: {{aws: ...}}")
            fixed = {}
            for c, val in v.items():
                cloud = _cloud(path, f"{key}.{c}", c)
                if key == "allowed_regions":
                    if not isinstance(val, list) or not all(isinstance(r, str) and r for r in val):
                        raise _err(path, f"{key}.{c}", "must be a list of region names")
                    _known_regions(path, f"{key}.{c}", cloud, val)
                elif not isinstance(val, str) or not val:
                    raise _err(path, f"{key}.{c}", "must be a non-empty string")
                fixed[cloud] = val
            d[key] = fixed
    if "allow_suspicious_prices" in d and not isinstance(d["allow_suspicious_prices"], bool):
        raise _err(path, "allow_suspicious_prices", "must be true or false")
    if "autostop" in d:
        v = d["autostop"]
        if isinstance(v, bool) or not isinstance(v, (int, dict)):
            raise _err(path, "autostop", "must be minutes or {idle_minutes, down}", "e.g. autostop: 30")
        if isinstance(v, int):
            v = {"idle_minutes": v}
        if set(v) - {"idle_minutes", "down"} or not isinstance(v.get("idle_minutes"), int) or \
                isinstance(v.get("idle_minutes"), bool) or v["idle_minutes"] < 0 or \
                not isinstance(v.get("down", False), bool):
            raise _err(path, "autostop", "must be {idle_minutes: N ≥ 0, down: true|false}")
        d["autostop"] = {"idle_minutes": v["idle_minutes"], "down": bool(v.get("down", False))}
    if "jobs" in d:
        v = d["jobs"]
        if not isinstance(v, dict) or set(v) - {"job_recovery", "max_restarts_on_errors"}:
            raise _err(path, "jobs", "must be {job_recovery: FAILOVER|EAGER_NEXT_REGION, max_restarts_on_errors: N}")
        if "job_recovery" in v and v["job_recovery"] not in ("FAILOVER", "EAGER_NEXT_REGION"):
            raise _err(path, "jobs.job_recovery", f"{v['job_recovery']!r} is not a strategy",
                       "FAILOVER or EAGER_NEXT_REGION")
        n = v.get("max_restarts_on_errors", 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _err(path, "jobs.max_restarts_on_errors", "must be an integer ≥ 0")
    if "api_server" in d:
        v = d["api_server"]
        if not isinstance(v, str) or not v.startswith(("http://", "https://")):
            raise _err(path, "api_server", "must be an http:// or https:// URL", "e.g. https://broker.example:46580")
    if "settings" in d:
        from . import settings

        v = d["settings"]
        if not isinstance(v, dict):
            raise _err(path, "settings", "must be a mapping of setting name → value")
        for k, val in v.items():
            try:
                s = settings.setting(str(k))
            except KeyError:
                raise _err(path, f"settings.{k}", "unknown setting", "see `broker settings`") from None
            if s.name in settings._ENV_ONLY:  # the config file itself is found through them
                raise _err(path, f"settings.{k}", f"is read from the environment only ({s.env})",
                           f"set {s.env} in the environment and drop settings.{k}")
            try:
                settings._parse(s, str(val).lower() if isinstance(val, bool) else str(val))
            except Exception as exc:  # noqa: BLE001 - reported with the file and key
                raise _err(path, f"settings.{k}", getattr(exc, "message", str(exc))) from None
