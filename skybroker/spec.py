"""Task YAML → immutable `Task` with its `Resources` candidates.

Every error is a `SpecError` that names the file, the field path (and its line when known) and what to
do. Structure is validated with a JSON Schema (compiled with fastjsonschema: ~10 ms to import); the small
value syntaxes (`A100:8`, `cpus: 4+`, `infra: aws/us-east-1`) are parsed in resources.py.

Expansion of `resources:` into candidates, as SkyPilot does:
  - `any_of: [...]`        → one group; the optimizer picks the cheapest of the group.
  - `ordered: [...]`       → one group per entry, tried in order (a later group only when every
                             place of the earlier ones is unavailable).
  - `accelerators: [A, B]` → ordered groups, like `ordered`.
  - `accelerators: {A: 1, B: 2}` (a set/dict) → one group, cheapest wins.
  Entry keys override the top-level keys of `resources:`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Mapping

from . import resources as R
from .errors import SpecError
from .taskfile import _validate, read_yaml
from .resources import Autostop, JobRecovery, Resources

_BUCKET_PREFIXES = ("s3://", "gs://", "gcs://", "r2://", "cos://", "https://", "http://", "az://", "oci://")
_RECOVERY_STRATEGIES = ("FAILOVER", "EAGER_NEXT_REGION")


class Secret(str):
    """A string whose repr never shows the value (so it can't leak through logs or tracebacks)."""

    def __repr__(self) -> str:
        return "'<redacted>'"


@dataclass(frozen=True)
class FileMount:
    remote: str
    source: str  # local absolute path or bucket URI
    is_bucket: bool = False
    mode: str | None = None


@dataclass(frozen=True)
class Task:
    name: str | None
    run: str | None
    setup: str | None = None
    workdir: str | None = None
    num_nodes: int = 1
    groups: tuple[tuple[Resources, ...], ...] = ((Resources(),),)
    envs: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, Secret], ...] = field(default=(), repr=False)
    file_mounts: tuple[FileMount, ...] = ()
    deadline_hours: float | None = None
    expected_hours: float | None = None
    deadline_policy: str = "slack_aware"
    restart_overhead_hours: float = 0.2  # d: what a (re)start costs in lost progress
    decision_tick_hours: float = 1 / 60  # how often the deadline policy decides
    source: str | None = None

    @property
    def candidates(self) -> tuple[Resources, ...]:
        return tuple(r for g in self.groups for r in g)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.envs)

    @property
    def secret_dict(self) -> dict[str, str]:
        return dict(self.secrets)


def load_task(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Task:
    data, node, shown = read_yaml(path)
    return task_from_dict(data, source=shown, overrides=overrides, node=node)


def task_from_dict(data: dict, *, source: str = "<task>", overrides: Mapping[str, Any] | None = None,
                   node=None) -> Task:
    _validate(data, source, node)
    data = dict(data)
    ov = dict(overrides or {})
    resources = dict(data.get("resources") or {})
    resources = _apply_resource_overrides(resources, ov)

    groups = _expand(resources, source)
    num_nodes = ov.get("num_nodes") or data.get("num_nodes") or 1
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise SpecError(f"{num_nodes!r} is not a node count", "expected an integer ≥ 1", source=source,
                        field="num_nodes")

    envs = _env_map(data.get("envs"), "envs", source)
    envs.update(ov.get("envs") or {})
    secrets = _env_map(data.get("secrets"), "secrets", source)
    secrets.update(ov.get("secrets") or {})
    for kind, mapping in (("envs", envs), ("secrets", secrets)):
        missing = [k for k, v in mapping.items() if v is None]
        if missing:
            flag = "--env" if kind == "envs" else "--secret"
            raise SpecError(f"{missing[0]} has no value", f"pass it on the command line: {flag} {missing[0]}=VALUE",
                            source=source, field=f"{kind}.{missing[0]}")

    workdir = data.get("workdir")
    if isinstance(workdir, dict):
        raise SpecError("a git workdir ({url, ref}) is not supported yet", "use a local directory path",
                        source=source, field="workdir")
    if workdir is not None:
        wd = Path(os.path.expanduser(workdir))
        if not wd.is_absolute():
            wd = Path.cwd() / wd
        if not wd.is_dir():
            raise SpecError(f"{workdir!r} is not a directory", "workdir is a local folder, relative to where "
                            "you run broker", source=source, field="workdir")
        workdir = str(wd.resolve())

    deadline = expected = None
    dl_extra: dict = {}
    raw_dl = data.get("deadline")
    if isinstance(raw_dl, dict):
        deadline = R.parse_hours(raw_dl["by"], "deadline.by")
        if raw_dl.get("compute") is not None:
            expected = R.parse_hours(raw_dl["compute"], "deadline.compute")
        if raw_dl.get("policy"):
            dl_extra["deadline_policy"] = _policy_name(raw_dl["policy"], source)
        if raw_dl.get("overhead") is not None:
            dl_extra["restart_overhead_hours"] = R.parse_hours(raw_dl["overhead"], "deadline.overhead")
        if raw_dl.get("tick") is not None:
            dl_extra["decision_tick_hours"] = R.parse_hours(raw_dl["tick"], "deadline.tick")
    elif raw_dl is not None:
        deadline = R.parse_hours(raw_dl, "deadline")
    if data.get("expected_hours") is not None:
        expected = float(data["expected_hours"])
    if deadline is not None and expected is None:
        raise SpecError("a deadline needs the expected compute time", "add `expected_hours: 48` (or "
                        "`deadline: {by: 60h, compute: 48h}`)", source=source, field="deadline")
    if deadline is not None and expected is not None and expected > deadline:
        raise SpecError(f"the expected compute time ({expected:g} h) exceeds the deadline ({deadline:g} h)",
                        "no schedule can meet it: move the deadline or shorten the job", source=source,
                        field="deadline")

    return Task(
        name=ov.get("name") or data.get("name"),
        run=data.get("run"),
        setup=data.get("setup"),
        workdir=workdir,
        num_nodes=num_nodes,
        groups=groups,
        envs=tuple(sorted((k, str(v)) for k, v in envs.items())),
        secrets=tuple(sorted((k, Secret(v)) for k, v in secrets.items())),
        file_mounts=_file_mounts(data.get("file_mounts"), source),
        deadline_hours=deadline,
        expected_hours=expected,
        **dl_extra,
        source=source,
    )


def _policy_name(name: str, source: str) -> str:
    known = ("slack_aware", "uniform_progress", "greedy", "on_demand")
    if name not in known:
        close = get_close_matches(name, known, n=1)
        raise SpecError(f"unknown deadline policy {name!r}", f"did you mean {close[0]!r}?" if close else
                        f"one of {', '.join(known)}", source=source, field="deadline.policy")
    return name


def _env_map(m, kind: str, source: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for k, v in (m or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out[str(k)] = None if v is None else str(v)
    return out


def _file_mounts(m, source: str) -> tuple[FileMount, ...]:
    out = []
    for remote, spec in (m or {}).items():
        fp = f"file_mounts.{remote}"
        mode = None
        if isinstance(spec, dict):
            src = spec.get("source") or spec.get("name")
            mode = spec.get("mode")
            if not src:
                raise SpecError("a storage mount needs `source` (or `name`)", None, source=source, field=fp)
            if spec.get("name") and not spec.get("source"):
                src = f"{spec.get('store', 's3')}://{spec['name']}"
        else:
            src = str(spec)
        if src.startswith(_BUCKET_PREFIXES):
            out.append(FileMount(remote, src, is_bucket=True, mode=mode))
            continue
        local = Path(os.path.expanduser(src))
        if not local.is_absolute():
            local = Path.cwd() / local
        if not local.exists():
            raise SpecError(f"local path {src!r} does not exist", "file_mounts map a remote path to a local "
                            "file or folder (or a bucket URI)", source=source, field=fp)
        out.append(FileMount(remote, str(local.resolve()), mode=mode))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# resources: overrides and expansion

_LOCATION_KEYS = ("infra", "cloud", "region", "zone")


def _apply_resource_overrides(res: dict, ov: Mapping[str, Any]) -> dict:
    res = dict(res)
    entries_keys = [k for k in ("any_of", "ordered") if k in res]

    def set_key(key, value, clear=()):
        for k in (key, *clear):
            res.pop(k, None)
            for ek in entries_keys:
                res[ek] = [{kk: vv for kk, vv in e.items() if kk != k} for e in res[ek]]
        res[key] = value

    if ov.get("infra"):
        set_key("infra", ov["infra"], clear=_LOCATION_KEYS)
    for k in ("cloud", "region", "zone"):
        if ov.get(k):
            if "infra" in res or any("infra" in e for ek in entries_keys for e in res[ek]):
                # fold an existing infra into explicit fields so one of them can be overridden
                _split_infra(res, entries_keys)
            set_key(k, ov[k])
    mapping = {"gpus": "accelerators", "cpus": "cpus", "memory": "memory", "instance_type": "instance_type",
               "disk_size": "disk_size"}
    for ok, rk in mapping.items():
        if ov.get(ok) is not None:
            set_key(rk, ov[ok])
    if ov.get("use_spot") is not None:
        set_key("use_spot", bool(ov["use_spot"]))
    return res


def _split_infra(res: dict, entries_keys) -> None:
    def split(d):
        if d.get("infra"):
            c, r, z = R.parse_infra(d.pop("infra"), "resources.infra")
            d.setdefault("cloud", c)
            d.setdefault("region", r)
            d.setdefault("zone", z)

    split(res)
    for ek in entries_keys:
        for e in res[ek]:
            split(e)


def _expand(res: dict, source: str) -> tuple[tuple[Resources, ...], ...]:
    if "any_of" in res and "ordered" in res:
        raise SpecError("use either any_of or ordered, not both", None, source=source, field="resources")
    base = {k: v for k, v in res.items() if k not in ("any_of", "ordered")}
    if "any_of" in res:
        raw_groups = [[({**base, **e}, f"resources.any_of[{i}]") for i, e in enumerate(res["any_of"])]]
    elif "ordered" in res:
        raw_groups = [[({**base, **e}, f"resources.ordered[{i}]")] for i, e in enumerate(res["ordered"])]
    else:
        raw_groups = [[(base, "resources")]]

    groups: list[tuple[Resources, ...]] = []
    for raw_group in raw_groups:
        accel_lists = [(raw, fp) for raw, fp in raw_group if isinstance(raw.get("accelerators"), list)]
        if len(raw_group) == 1 and accel_lists:
            raw, fp = raw_group[0]
            for i, acc in enumerate(raw["accelerators"]):
                groups.append(tuple(_build(raw, fp, acc, f"{fp}.accelerators[{i}]", source)))
            continue
        group: list[Resources] = []
        for raw, fp in raw_group:
            acc = raw.get("accelerators")
            if isinstance(acc, (list, dict)):
                items = acc if isinstance(acc, list) else _acc_items(acc)
                for i, a in enumerate(items):
                    group.extend(_build(raw, fp, a, f"{fp}.accelerators", source))
            else:
                group.extend(_build(raw, fp, acc, f"{fp}.accelerators", source))
        groups.append(tuple(group))
    return tuple(groups)


def _acc_items(acc: dict) -> list[str]:
    """`{A100: 8, V100: 1}` and the YAML set form `{A100:8, V100:1}` (keys with null values)."""
    return [str(k) if v is None else f"{k}:{v}" for k, v in acc.items()]


def _build(raw: dict, fp: str, acc, acc_fp: str, source: str) -> list[Resources]:
    """One raw resources dict with a single accelerator choice → Resources (a dict of accelerators
    yields one per entry)."""
    if isinstance(acc, dict):
        return [r for a in _acc_items(acc) for r in _build(raw, fp, a, acc_fp, source)]
    try:
        return [_resources(raw, fp, acc, acc_fp)]
    except SpecError as exc:
        if exc.source is None:
            raise SpecError(exc.message, exc.hint, source=source) from None
        raise


def _resources(raw: dict, fp: str, acc, acc_fp: str) -> Resources:
    cloud = region = zone = None
    if raw.get("infra"):
        if any(raw.get(k) for k in ("cloud", "region", "zone")):
            raise SpecError("give either infra or cloud/region/zone, not both", None, field=f"{fp}.infra")
        cloud, region, zone = R.parse_infra(raw["infra"], f"{fp}.infra")
    else:
        cloud = R.normalize_cloud(raw["cloud"], f"{fp}.cloud") if raw.get("cloud") else None
        region, zone = raw.get("region"), raw.get("zone")
    accel, count = (None, 0.0)
    if acc not in (None, ""):
        accel, count = R.parse_accelerator(acc, acc_fp)
    use_spot = raw.get("use_spot")
    jr = raw.get("job_recovery", raw.get("spot_recovery"))
    autostop = _autostop(raw.get("autostop"), f"{fp}.autostop")
    image = raw.get("image_id")
    images: tuple[tuple[str, str], ...] = ()
    if isinstance(image, dict):
        images = tuple(sorted((str(k), str(v)) for k, v in image.items()))
    elif image:
        images = (("", str(image)),)
    return Resources(
        cloud=cloud,
        region=str(region) if region else None,
        zone=str(zone) if zone else None,
        accelerator=accel,
        accelerator_count=count,
        cpus=R.parse_amount(raw.get("cpus"), f"{fp}.cpus"),
        memory=R.parse_amount(raw.get("memory"), f"{fp}.memory", allow_ratio=True),
        instance_type=raw.get("instance_type"),
        use_spot=bool(use_spot),
        use_spot_explicit=use_spot is not None,
        disk_size=R.parse_disk_size(raw.get("disk_size"), f"{fp}.disk_size"),
        disk_tier=raw.get("disk_tier"),
        ports=R.parse_ports(raw.get("ports"), f"{fp}.ports"),
        image_id=images,
        labels=tuple(sorted((str(k), str(v)) for k, v in (raw.get("labels") or {}).items())),
        max_hourly_cost=raw.get("max_hourly_cost"),
        autostop=autostop,
        job_recovery=_job_recovery(jr, f"{fp}.job_recovery"),
    )


def _autostop(v, fp: str) -> Autostop | None:
    if v is None or v is False:
        return None
    if v is True:
        return Autostop(5)
    if isinstance(v, dict):
        return Autostop(R.parse_duration_minutes(v.get("idle_minutes", 5), f"{fp}.idle_minutes"),
                        bool(v.get("down", False)))
    return Autostop(R.parse_duration_minutes(v, fp))


def _job_recovery(v, fp: str) -> JobRecovery | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = {"strategy": v}
    strategy = (v.get("strategy") or "EAGER_NEXT_REGION").upper()
    if strategy not in _RECOVERY_STRATEGIES:
        close = get_close_matches(strategy, _RECOVERY_STRATEGIES, n=1)
        raise SpecError(f"unknown recovery strategy {v.get('strategy')!r}",
                        f"did you mean {close[0]!r}?" if close else f"one of {', '.join(_RECOVERY_STRATEGIES)}",
                        field=f"{fp}.strategy")
    codes = v.get("recover_on_exit_codes") or ()
    if isinstance(codes, int):
        codes = (codes,)
    return JobRecovery(strategy, int(v.get("max_restarts_on_errors") or 0), tuple(int(c) for c in codes))


def replace_groups(task: Task, groups) -> Task:
    return replace(task, groups=tuple(tuple(g) for g in groups))


# ----------------------------------------------------------------------------------------------
# Storage form (managed jobs keep the task so a separate controller process can relaunch it).
# Secrets are not part of it: they are stored encrypted, separately.

def task_to_dict(task: Task) -> dict:
    from dataclasses import asdict

    d = asdict(task)
    d.pop("secrets", None)
    return d


def task_from_stored(d: dict, secrets: Mapping[str, str] | None = None) -> Task:
    from .resources import Amount

    def res(r: dict) -> Resources:
        r = dict(r)
        for k in ("cpus", "memory"):
            if r.get(k) is not None:
                r[k] = Amount(**r[k])
        if r.get("autostop") is not None:
            r["autostop"] = Autostop(**r["autostop"])
        if r.get("job_recovery") is not None:
            jr = dict(r["job_recovery"])
            jr["recover_on_exit_codes"] = tuple(jr.get("recover_on_exit_codes") or ())
            r["job_recovery"] = JobRecovery(**jr)
        for k in ("ports", "image_id", "labels", "extra"):
            v = r.get(k) or ()
            r[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return Resources(**r)

    d = dict(d)
    d["groups"] = tuple(tuple(res(r) for r in g) for g in d["groups"])
    d["envs"] = tuple(tuple(e) for e in d.get("envs") or ())
    d["file_mounts"] = tuple(FileMount(**m) for m in d.get("file_mounts") or ())
    d["secrets"] = tuple(sorted((k, Secret(v)) for k, v in (secrets or {}).items()))
    return Task(**d)
