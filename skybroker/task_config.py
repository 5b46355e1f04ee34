"""A task's `config:` section (SkyPilot's per-task overrides of its config file), key by key.

  config.kubernetes, config.jobs       ignored with a warning (they have no meaning here)
  config.docker                        `run_options` for a `docker:` image (spec_fields.docker_config)
  config.gcp.managed_instance_group    honoured as far as the GCP driver can without a MIG: skybroker
      .run_duration (seconds)          creates the instances directly; each gets GCE
                                       `scheduling.maxRunDuration` with `instanceTerminationAction: DELETE`
                                       (what SkyPilot's MIG sets on its template), so GCE deletes it after
                                       that long
      .provision_timeout (seconds)     how long the driver waits for the instances to run in a zone before
                                       it gives up there (a zone capacity error: failover moves on)
  config.{aws,gcp,azure}.remote_identity
      NO_UPLOAD                        accepted: skybroker's default (nodes get no cloud credential of yours)
      LOCAL_CREDENTIALS                on that cloud, its credential files (Provider.credential_files,
                                       clouds/credfiles.py) are copied onto every node before setup, mode
                                       0600 (runtime/identity.py); the plan warns; missing files: exit 2
      SERVICE_ACCOUNT                  azure: the VMs get a system-assigned managed identity (no role until
                                       the user grants one); aws, gcp: refused (skybroker creates no roles)
      a named identity                 azure: a user-assigned identity's resource id, attached to the VMs;
                                       aws, gcp: refused
  anything else                        refused by name (skybroker has no equivalent setting)

The honoured values travel on every Resources of the task as `options` (("gcp.run_duration", "3600"),
...), to the provider's ProvisionRequest; providers other than the one named ignore them.
"""
from __future__ import annotations

import re

from .errors import SpecError

_IGNORED = {
    "kubernetes": "it applies only where SkyPilot runs the task on Kubernetes",
    "jobs": "managed jobs are run by skybroker's local controller, which has no settings here",
}
_MIG_KEYS = ("run_duration", "provision_timeout")
_IDENTITY_CLOUDS = ("aws", "gcp", "azure")
_AZURE_UAI = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/"
                        r"userAssignedIdentities/[^/]+$", re.IGNORECASE)


def config_options(cfg, source: str, warnings: list[str]) -> tuple[tuple[str, str], ...]:
    """The `options` a task's config gives its Resources; refusals name the field."""
    def refuse(field, what, hint):
        raise SpecError(what, hint, source=source, field=field)

    if not cfg:
        return ()
    if not isinstance(cfg, dict):
        refuse("config", "expected a mapping of config sections", "e.g. `config: {gcp: {...}}`")
    out: list[tuple[str, str]] = []
    for key, section in cfg.items():
        key = str(key)
        if key == "docker":
            continue  # config.docker.run_options: spec_fields.docker_config (containers)
        why = _IGNORED.get(key)
        if why is not None:
            warnings.append(f"config.{key}: ignored ({why})")
            continue
        if key not in _IDENTITY_CLOUDS or not isinstance(section, dict):
            refuse(f"config.{key}", "per-task config overrides are not supported",
                   f"remove `config.{key}` (skybroker has no equivalent setting)")
        for sub, value in section.items():
            sub = str(sub)
            fp = f"config.{key}.{sub}"
            if sub == "remote_identity":
                out += _identity(value, key, fp, refuse, warnings)
            elif key == "gcp" and sub == "managed_instance_group":
                out += _mig(value, fp, refuse)
                warnings.append(f"{fp}: skybroker creates the instances directly, not through a managed "
                                "instance group; run_duration becomes each instance's GCE maxRunDuration, "
                                "provision_timeout the wait for them in a zone")
            else:
                refuse(fp, f"config.{key}.{sub} is not supported", f"remove `{fp}` (skybroker has no equivalent "
                       "setting)")
    return tuple(out)


def _identity(value, cloud: str, fp: str, refuse, warnings: list[str]) -> list[tuple[str, str]]:
    v = str(value).strip()
    key = f"{cloud}.remote_identity"
    if v.upper() == "NO_UPLOAD":
        return []  # skybroker's default: the nodes get no credential of the user's
    if v.upper() == "LOCAL_CREDENTIALS":
        warnings.append(f"{fp}: LOCAL_CREDENTIALS: on {cloud}, this task copies your {cloud} credentials "
                        "onto every node (mode 0600; set NO_UPLOAD to keep them on this machine)")
        return [(key, "LOCAL_CREDENTIALS")]
    if cloud == "azure":
        if v.upper() == "SERVICE_ACCOUNT":
            warnings.append(f"{fp}: SERVICE_ACCOUNT: on azure, the VMs get a system-assigned managed identity, "
                            "which has no role until you grant it one")
            return [(key, "SERVICE_ACCOUNT")]
        if _AZURE_UAI.match(v):
            return [(key, v)]
        refuse(fp, f"remote_identity {v[:60]!r} is not a user-assigned managed identity's resource id",
               "name one as /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/"
               "userAssignedIdentities/NAME, or use SERVICE_ACCOUNT, LOCAL_CREDENTIALS or NO_UPLOAD")
    what = "a service account / managed identity" if v.upper() == "SERVICE_ACCOUNT" else f"the identity {v[:60]!r}"
    refuse(fp, f"remote_identity {v[:60]}: skybroker does not attach {what} to the {cloud} nodes",
           "use LOCAL_CREDENTIALS or NO_UPLOAD; or give the job the credential it needs with --secret NAME")
    return []


def _mig(value, fp: str, refuse) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        refuse(fp, "expected `{run_duration: SECONDS, provision_timeout: SECONDS}`", None)
    out = []
    for k, v in value.items():
        if k not in _MIG_KEYS:
            refuse(f"{fp}.{k}", f"managed_instance_group.{k} is not supported",
                   f"skybroker honours {', '.join(_MIG_KEYS)} (it creates the instances without a MIG)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            refuse(f"{fp}.{k}", f"{str(v)[:40]!r} is not a number of seconds", "e.g. 3600")
        if k == "run_duration" and not 30 <= v <= 120 * 86400:
            refuse(f"{fp}.{k}", f"run_duration {v:g} s is outside what GCE allows (30 s to 120 days)", None)
        out.append((f"gcp.{k}", str(int(v))))
    return out


def option(res_or_req, key: str) -> str | None:
    """One option's value on a Resources or ProvisionRequest (None when absent)."""
    return dict(getattr(res_or_req, "options", ()) or ()).get(key)
