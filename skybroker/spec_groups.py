"""The `resources:` section of a task → its candidate groups (used by spec.py, whose docstring gives the
semantics): CLI overrides (`--infra`, `--gpus`, ...) applied over the section and its `any_of`/`ordered`
entries, then each entry expanded into `Resources` (one per accelerator choice, image ids placed where their
tag exists), with its autostop and job_recovery settings; an option on a cloud skybroker does not run on is
skipped with a warning, and a task whose every option is such is refused.
"""
from __future__ import annotations

from difflib import get_close_matches
from typing import Any, Mapping

from . import resources as R
from .catalog import images as image_tags
from .errors import SpecError
from .resources import Autostop, JobRecovery, Resources

_RECOVERY_STRATEGIES = ("FAILOVER", "EAGER_NEXT_REGION")
_LOCATION_KEYS = ("infra", "cloud", "region", "zone")


def apply_overrides(res: dict, ov: Mapping[str, Any]) -> dict:
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
    if ov.get("ports"):
        set_key("ports", list(ov["ports"]))
    if ov.get("image_id"):
        set_key("image_id", ov["image_id"])
    if ov.get("autostop") is not None:  # `launch -i N --down`
        set_key("autostop", ov["autostop"])
    return res


def _split_infra(res: dict, entries_keys) -> None:
    def split(d):
        if d.get("infra"):
            text = d.pop("infra")
            try:
                c, r, z = R.parse_infra(text, "resources.infra")
            except R.UnsupportedCloud as exc:  # kept, so the option is skipped (or refused) later
                c, r, z = exc.cloud, None, None
            d.setdefault("cloud", c)
            d.setdefault("region", r)
            d.setdefault("zone", z)

    split(res)
    for ek in entries_keys:
        for e in res[ek]:
            split(e)


def expand(res: dict, source: str, warnings: list[str]) -> tuple[tuple[Resources, ...], ...]:
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
    skipped: list[R.UnsupportedCloud] = []
    for raw_group in raw_groups:
        group: list[Resources] = []
        for raw, fp in raw_group:
            try:
                acc = raw.get("accelerators")
                if isinstance(acc, (list, dict)) and not acc:
                    acc = None  # `accelerators: []` / `{}`: none
                if isinstance(acc, list) and len(raw_group) == 1:
                    for i, a in enumerate(acc):  # an accelerator list: ordered groups
                        groups.append(tuple(_build(raw, fp, a, f"{fp}.accelerators[{i}]", source)))
                    continue
                if isinstance(acc, list):
                    for i, a in enumerate(acc):
                        group.extend(_build(raw, fp, a, f"{fp}.accelerators[{i}]", source))
                else:
                    group.extend(_build(raw, fp, acc, f"{fp}.accelerators", source))
            except R.UnsupportedCloud as exc:
                skipped.append(exc)
                warnings.append(f"{fp}: {exc.cloud} is not supported by skybroker; this option is skipped (as "
                                "SkyPilot skips clouds that are not enabled)")
        if group:
            groups.append(tuple(group))
    if not groups:
        first = skipped[0]
        names = ", ".join(sorted({e.cloud for e in skipped}))
        if len(skipped) == 1 and not any(k in res for k in ("any_of", "ordered")):
            raise SpecError(f"{first.cloud} is not supported by skybroker", first.hint, source=source,
                            field=first.field)
        raise SpecError(f"every resources option names a cloud skybroker does not support ({names})",
                        f"{first.hint}: add an option on one of them", source=source, field=first.field)
    return tuple(groups)


def _acc_items(acc: dict) -> list[str]:
    """`{A100: 8, V100: 1}` and the YAML set form `{A100:8, V100:1}` (keys with null values)."""
    return [str(k) if v is None else f"{k}:{v}" for k, v in acc.items()]


def _build(raw: dict, fp: str, acc, acc_fp: str, source: str) -> list[Resources]:
    """One raw resources dict with a single accelerator choice → Resources (a dict of accelerators
    yields one per entry)."""
    if isinstance(acc, dict):
        items = _acc_items(acc)
        if not items:
            acc = None  # `accelerators: {}`: none
        else:
            return [r for a in items for r in _build(raw, fp, a, acc_fp, source)]
    try:
        return image_tags.place(_resources(raw, fp, acc, acc_fp), fp)
    except R.UnsupportedCloud:
        raise
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
    autostop = _autostop(raw.get("autostop"), f"{fp}.autostop")
    image = raw.get("image_id")
    images: tuple[tuple[str, str], ...] = ()
    if isinstance(image, dict):
        images = tuple(sorted((str(k), str(v)) for k, v in image.items()))
    elif image:
        images = (("", str(image)),)
    if images and not cloud and not all(v.startswith(("docker:", "skypilot:")) for _, v in images):
        # docker: runs anywhere; a skypilot: tag plans on the clouds that have it (catalog/images)
        guess = next((c for pre, c in (("ami-", "aws"), ("projects/", "gcp"), ("/subscriptions/", "azure"))
                      if any(v.startswith(pre) for _, v in images)), None)
        raise SpecError("a cloud image needs its cloud (an image id means nothing on the others)",
                        f"add `infra: {guess or '<cloud>'}` beside image_id" +
                        ("" if guess else " (or use image_id: docker:IMAGE, which runs anywhere)"),
                        field=f"{fp}.image_id")
    extra = tuple(sorted((f"tpu_{k}", str(v)) for k, v in (raw.get("accelerator_args") or {}).items()
                         if k in ("runtime_version", "tpu_name", "gcp_queued_resource")))
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
        disk_tier=str(raw["disk_tier"]).lower() if raw.get("disk_tier") else None,
        ports=R.parse_ports(raw.get("ports"), f"{fp}.ports"),
        image_id=images,
        labels=tuple(sorted((str(k), str(v)) for k, v in (raw.get("labels") or {}).items())),
        max_hourly_cost=raw.get("max_hourly_cost"),
        autostop=autostop,
        job_recovery=_job_recovery(raw.get("job_recovery"), f"{fp}.job_recovery"),
        extra=extra,
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
    """A strategy name or {strategy, max_restarts_on_errors, recover_on_exit_codes}; `none` (SkyPilot's
    spelling of "the default") is the default strategy."""
    if v is None:
        return None
    if isinstance(v, str):
        v = {"strategy": v}
    name = str(v.get("strategy") or "").strip()
    if name.lower() == "none":
        if not v.get("max_restarts_on_errors") and v.get("recover_on_exit_codes") is None:
            return None
        name = ""
    strategy = (name or "EAGER_NEXT_REGION").upper()
    if strategy not in _RECOVERY_STRATEGIES:
        close = get_close_matches(strategy, _RECOVERY_STRATEGIES, n=1)
        raise SpecError(f"unknown recovery strategy {R._clip(name)!r}",
                        f"did you mean {close[0]!r}?" if close else f"one of {', '.join(_RECOVERY_STRATEGIES)}",
                        field=f"{fp}.strategy")
    codes = v.get("recover_on_exit_codes")
    codes = () if codes is None else (codes,) if isinstance(codes, int) else codes
    return JobRecovery(strategy, int(v.get("max_restarts_on_errors") or 0), tuple(int(c) for c in codes))
