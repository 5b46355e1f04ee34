"""Task YAML → immutable `Task` with its `Resources` candidates (and a pipeline of them).

Every error is a `SpecError` that names the file, the field path (and its line when known) and what to
do; no message ever contains a secret's value. Structure is validated against schema.py's JSON Schema
(schema_check.py); the small value syntaxes (`A100:8`, `cpus: 4+`, `infra: aws/us-east-1`) are parsed in
resources.py; what SkyPilot fields without a skybroker counterpart mean (warned about, or refused by name)
is in spec_fields.py; the expansion below (and the CLI's resource overrides) is in spec_groups.py. Warnings
are returned on `Task.warnings` for the CLI to print.

Expansion of `resources:` into candidates, as SkyPilot does:
  - `any_of: [...]`        → one group; the optimizer picks the cheapest of the group.
  - `ordered: [...]`       → one group per entry, tried in order (a later group only when every
                             place of the earlier ones is unavailable).
  - `accelerators: [A, B]` → ordered groups, like `ordered`.
  - `accelerators: {A: 1, B: 2}` (a set/dict) → one group, cheapest wins.
  Entry keys override the top-level keys of `resources:`. An option on a cloud skybroker does not run
  on (kubernetes, lambda, ...) is skipped with a warning, as SkyPilot skips clouds that are not enabled;
  a task whose every option is such is refused.

Environment variables: `$VAR`/`${VAR}` from `envs` (after `--env` overrides) are filled into file_mounts
(keys, values, storage name/source/store) and workdir, as SkyPilot does. (SkyPilot also fills secrets in;
skybroker does not, so a secret never lands in a path that is stored or shown.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from . import resources as R
from . import spec_fields as F
from . import spec_jobs
from . import spec_groups as G
from .errors import SpecError
from .task_config import config_options
from .taskfile import _validate, read_yaml_docs
from .resources import Autostop, JobRecovery, Resources
from .volumes.model import VolumeMount, task_volumes


class Secret(str):
    """A string whose repr never shows the value (so it can't leak through logs or tracebacks)."""

    def __repr__(self) -> str:
        return "'<redacted>'"


@dataclass(frozen=True)
class FileMount:
    remote: str
    source: str  # local absolute path, or bucket URI ("" for a named storage whose store is not chosen yet)
    is_bucket: bool = False
    mode: str | None = None  # buckets: COPY, MOUNT or MOUNT_CACHED (skybroker/storage/mounts.py)
    name: str | None = None  # a named storage (bucket created if missing)
    store: str | None = None  # its store kind (s3, gs, az, r2); None: the cluster's cloud decides
    uploads: tuple[str, ...] = ()  # local sources uploaded into the named bucket
    persistent: bool = True  # False: deleted when its last cluster goes down


@dataclass(frozen=True)
class Task:
    name: str | None
    run: str | None
    setup: str | None = None
    workdir: str | None = None  # a local folder, synced to ~/sky_workdir
    git_url: str | None = None  # or a git repository (`workdir: {url, ref}`), cloned there on every node
    git_ref: str | None = None
    num_nodes: int = 1
    num_nodes_explicit: bool = False  # the file or --num-nodes gave it (a reused cluster is checked against it)
    groups: tuple[tuple[Resources, ...], ...] = ((Resources(),),)
    envs: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, Secret], ...] = field(default=(), repr=False)
    file_mounts: tuple[FileMount, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()  # SkyPilot volumes (skybroker/volumes/)
    deadline_hours: float | None = None
    expected_hours: float | None = None
    deadline_policy: str = "mdp"
    restart_overhead_hours: float = 0.2  # d: what a (re)start costs in lost progress
    decision_tick_hours: float = 1 / 60  # how often the deadline policy decides
    budget_max_cost: float | None = None  # skybroker's `budget:` (costs/budget.py)
    budget_hours: float | None = None
    docker_run_options: tuple[str, ...] = ()  # config.docker.run_options, for a `docker:` image_id
    pool_workers: int | None = None  # `pool: {workers: N}`: a pool's task (jobs/pools.py); None otherwise
    # a managed job's placement settings of the config file it was launched with (JSON: allowed_clouds,
    # allowed_regions, allow_suspicious_prices), so the controller plans it as `jobs launch` did
    placement: str | None = None
    source: str | None = None
    warnings: tuple[str, ...] = ()  # fields accepted but not (fully) honoured; the CLI prints them

    @property
    def candidates(self) -> tuple[Resources, ...]:
        return tuple(r for g in self.groups for r in g)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.envs)

    @property
    def secret_dict(self) -> dict[str, str]:
        return dict(self.secrets)


class Pipeline(list):
    """The tasks of a multi-document task file, in order (a list of Task), with the pipeline's name."""

    def __init__(self, tasks, name: str | None = None, source: str | None = None):
        super().__init__(tasks)
        self.name = name
        self.source = source


def load_task(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Task:
    """One task. A file of several tasks (YAML documents separated by ---) is a pipeline: a SpecError
    says so (a `name:`-only header document before a single task is allowed)."""
    docs, shown = read_yaml_docs(path)
    name, docs = _pipeline_header(docs)
    if len(docs) != 1:
        raise SpecError(f"is a pipeline of {len(docs)} tasks (YAML documents separated by ---), not one task",
                        "run it with `broker jobs launch FILE` (each task starts when the previous one succeeds); "
                        "`broker launch` takes a file with one task", source=shown)
    data, node = docs[0]
    task = task_from_dict(data, source=shown, overrides=overrides, node=node)
    return task if task.name or not name else replace(task, name=name)


def load_pipeline(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Pipeline:
    """Every task of a task file, in order (one document = a pipeline of one). As in SkyPilot, a first
    document holding only `name:` names the pipeline; `overrides` apply to every task."""
    docs, shown = read_yaml_docs(path)
    name, docs = _pipeline_header(docs)
    if not docs:
        raise SpecError("is a pipeline without tasks", "add tasks after the `name:` document, separated by ---",
                        source=shown)
    many = len(docs) > 1
    tasks = [task_from_dict(data, source=f"{shown} (task {i + 1})" if many else shown, overrides=overrides,
                            node=node) for i, (data, node) in enumerate(docs)]
    if name is None and not many:
        name = tasks[0].name
    return Pipeline(tasks, name, shown)


def _pipeline_header(docs):
    if len(docs) > 1 and isinstance(docs[0][0], dict) and set(docs[0][0]) == {"name"}:
        return docs[0][0]["name"], docs[1:]
    return None, docs


def task_from_dict(data: dict, *, source: str = "<task>", overrides: Mapping[str, Any] | None = None,
                   node=None) -> Task:
    ov = dict(overrides or {})
    hidden = _secret_values(data, ov)
    try:
        task = _task(data, source, ov, node)
    except SpecError as exc:
        raise _redact_error(exc, hidden) from None
    if hidden and task.warnings:
        task = replace(task, warnings=tuple(_redact(w, hidden) for w in task.warnings))
    return task


def _secret_values(data, ov) -> list[str]:
    vals = []
    raw = data.get("secrets") if isinstance(data, dict) else None
    for m in (raw if isinstance(raw, dict) else {}, ov.get("secrets") or {}):
        for v in m.values():
            if v is not None and not isinstance(v, (dict, list)) and str(v):
                vals.append(str(v))
            elif isinstance(v, (dict, list)):
                vals.extend(str(x) for x in (v.values() if isinstance(v, dict) else v) if str(x))
                vals.append(str(v))
    # a safety net behind messages that never echo a secrets value: values under 4 characters would match
    # everywhere (and guess nothing), so only longer ones are masked
    return sorted({v for v in vals if len(v) >= 4}, key=len, reverse=True)


def _redact(text: str | None, hidden: list[str]) -> str | None:
    if text is None:
        return None
    for v in hidden:
        text = text.replace(v, "<redacted>")
        text = text.replace(repr(v)[1:-1], "<redacted>")
    return text


def _redact_error(exc: SpecError, hidden: list[str]) -> SpecError:
    if not hidden:
        return exc
    out = SpecError(_redact(exc.message, hidden), _redact(exc.hint, hidden))
    out.source, out.field = exc.source, exc.field
    return out


def _task(data, source: str, ov: dict, node) -> Task:
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of task fields, got {type(data).__name__}", None, source=source)
    data = dict(data)
    F.normalise_env_scalars(data)
    _validate(data, source, node)
    warnings: list[str] = []
    F.top_level_policy(data, source, warnings)
    options = config_options(data.get("config"), source, warnings)

    envs = F.env_map(data.get("envs"))
    F.check_overrides(ov.get("envs") or {}, "--env")
    envs.update(ov.get("envs") or {})
    secrets = F.secrets_section(data.get("secrets"), source)
    F.check_overrides(ov.get("secrets") or {}, "--secret")
    secrets.update(ov.get("secrets") or {})
    clash = sorted(set(ov.get("envs") or {}) & set(secrets))
    if clash:  # the node gives the job the secret's value: the --env one was ignored, and stored in clear
        raise SpecError(f"--env {clash[0]}: {clash[0]} is one of the task's secrets; a value given with --env would "
                        "be ignored (the job gets the secret's) and stored and shown in clear",
                        f"pass it with --secret {clash[0]}=VALUE (or --secret {clash[0]} to take it from your "
                        "environment)", source=source, field=f"secrets.{clash[0]}")
    F.require_values(envs, secrets, source)

    resources = F.aliases(dict(data.get("resources") or {}), "resources", source)
    for k in ("any_of", "ordered"):
        if k in resources:
            resources[k] = [F.aliases(dict(e), f"resources.{k}[{i}]", source) for i, e in enumerate(resources[k])]
    F.policies(resources, source, warnings)
    resources = G.apply_overrides(resources, ov)
    groups = G.expand(resources, source, warnings)
    if options:
        groups = tuple(tuple(replace(r, options=options) for r in g) for g in groups)
    if any(r.extra and not (r.accelerator or "").lower().startswith("tpu-") for g in groups for r in g):
        warnings.append("resources.accelerator_args: ignored (it applies to TPUs only)")

    num_nodes = ov.get("num_nodes") or data.get("num_nodes") or 1
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1 or num_nodes > 100000:
        raise SpecError(f"{R._clip(num_nodes)!r} is not a node count", "expected an integer ≥ 1", source=source,
                        field="num_nodes")

    workdir = ov["workdir"] if ov.get("workdir") else F.substitute(data.get("workdir"), envs)  # --workdir wins
    git_url, git_ref = F.git_workdir(workdir if isinstance(workdir, dict) else None, ov, source)
    if git_url:
        workdir = None
    if workdir is not None and not F.local_paths_read():
        workdir = str(workdir)  # taken as written (the dashboard's plan: the server's files are not looked at)
    elif workdir is not None:
        wd = Path(os.path.expanduser(workdir))
        if not wd.is_absolute():
            wd = Path.cwd() / wd
        try:
            ok = wd.is_dir()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise SpecError(f"{R._clip(workdir, 80)!r} is not a directory", "workdir is a local folder, relative to "
                            "where you run broker", source=source, field="--workdir" if ov.get("workdir") else "workdir")
        workdir = str(wd.resolve())
    mounts = F.file_mounts(F.substitute(data.get("file_mounts"), envs), source, FileMount)
    F.check_mount_targets(mounts, workdir is not None or bool(git_url), source)
    volumes = task_volumes(data.get("volumes"), source)

    deadline, expected, dl_extra = spec_jobs.deadline(data, source)
    seen: set[str] = set()
    warnings = [w for w in warnings if not (w in seen or seen.add(w))]
    return Task(
        name=ov.get("name") or data.get("name"),
        run=data.get("run"),
        setup=None if ov.get("no_setup") else data.get("setup"),  # `launch --no-setup`
        workdir=workdir,
        git_url=git_url,
        git_ref=git_ref,
        num_nodes=num_nodes,
        num_nodes_explicit=bool(ov.get("num_nodes") or data.get("num_nodes")),
        groups=groups,
        envs=tuple(sorted((k, str(v)) for k, v in envs.items())),
        secrets=tuple(sorted((k, Secret(v)) for k, v in secrets.items())),
        file_mounts=mounts,
        volumes=volumes,
        deadline_hours=deadline,
        expected_hours=expected,
        **dl_extra,
        **spec_jobs.budget(data, source),
        docker_run_options=F.docker_config(data, source),
        pool_workers=F.pool_workers(data, source),
        source=source,
        warnings=tuple(warnings),
    )


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
        for k in ("ports", "image_id", "labels", "extra", "options"):
            v = r.get(k) or ()
            r[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return Resources(**r)

    d = dict(d)
    d["groups"] = tuple(tuple(res(r) for r in g) for g in d["groups"])
    d["envs"] = tuple(tuple(e) for e in d.get("envs") or ())
    d["file_mounts"] = tuple(FileMount(**{**m, "uploads": tuple(m.get("uploads") or ())})
                             for m in d.get("file_mounts") or ())
    d["volumes"] = tuple(VolumeMount(**{**v, "labels": tuple(tuple(x) for x in v.get("labels") or ())})
                         for v in d.get("volumes") or ())
    d["secrets"] = tuple(sorted((k, Secret(v)) for k, v in (secrets or {}).items()))
    d["warnings"] = tuple(d.get("warnings") or ())
    d["docker_run_options"] = tuple(d.get("docker_run_options") or ())
    return Task(**d)
