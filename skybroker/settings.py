"""Every tunable of skybroker in one place: name, environment variable, type, default, meaning.

Settings are read here and nowhere else (`settings.get("wait_ready")`), at the moment they are used, so a
process that changes its environment (the tests, the managed-jobs controller) sees the new value. A bad
value is a clear error naming the variable, never a traceback. `broker settings` (README "Settings")
prints the table below with the values in effect.

Cloud endpoint overrides (`AWS_ENDPOINT_URL_EC2`, `BROKER_GCP_ENDPOINT`, `BROKER_AZURE_ENDPOINT`, ...) are
read by each cloud's client factory, the same way its SDK reads them; they are listed here for the
documentation only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    type: type
    default: object
    doc: str
    minimum: float = 0  # numbers below it are refused


_S = Setting
SETTINGS: tuple[Setting, ...] = (
    # -- where things live
    _S("home", "BROKER_HOME", str, "~/.broker", "state database, keys, logs, locks (0700)"),
    _S("config", "BROKER_CONFIG", str, "", "one more config file for this command (also --config; see config.py)"),
    _S("catalog_dir", "BROKER_CATALOG_DIR", str, "", "price catalogs to plan with (default: the bundled ones)"),
    _S("catalog_max_age_days", "BROKER_CATALOG_MAX_AGE_DAYS", float, 30.0,
       "a plan warns when the prices behind it are older than this many days (0: never); `broker catalog refresh`"),
    _S("spot_traces", "BROKER_SPOT_TRACES", str, "", "spot traces for `broker simulate` (default: ../shared/spot-traces)"),
    _S("debug", "BROKER_DEBUG", bool, False, "show a traceback with every error (same as --debug)"),
    # -- bring-up
    _S("wait_ready", "BROKER_WAIT_READY", float, 600.0, "seconds to wait for every node to accept commands"),
    _S("ssh_connect_timeout", "BROKER_SSH_CONNECT_TIMEOUT", float, 10.0, "seconds for one SSH connect attempt"),
    _S("ssh_auth_grace", "BROKER_SSH_AUTH_GRACE", float, 60.0,
       "seconds a fresh cloud node may refuse our SSH key (until cloud-init installs it) before the launch fails "
       "with an authentication error (SSH node pools: 3 refusals in a row)"),
    _S("throttle_retries", "BROKER_THROTTLE_RETRIES", int, 5,
       "retries of the same place after the cloud throttles us (RequestLimitExceeded, HTTP 429), with backoff"),
    _S("throttle_backoff", "BROKER_THROTTLE_BACKOFF", float, 2.0, "first backoff after throttling, seconds (doubles)"),
    _S("held_job_timeout", "BROKER_HELD_JOB_TIMEOUT", float, 600.0,
       "a gang job submitted to some nodes but never released is cancelled by the node agent after this"),
    _S("gang_peer_grace", "BROKER_GANG_PEER_GRACE", float, 60.0,
       "seconds each node of a running multi-node job waits once another node of it stopped answering on its "
       "SSH port before it stops its part, failing the job (0: never)"),
    _S("failpoints", "BROKER_FAILPOINTS", str, "",
       "fault injection for tests: `point=sleep(S)`, `point=raise` or `point=exit`, comma separated (failpoints.py)"),
    _S("ssh_config", "BROKER_SSH_CONFIG", bool, True,
       "add one Include line to ~/.ssh/config so `ssh <cluster>` works (sshconfig.py)"),
    # -- git workdir (`workdir: {url, ref}`, runtime/gitclone.py)
    _S("git_ssh_key", "BROKER_GIT_SSH_KEY", str, "",
       "private key for git workdirs over SSH (GIT_SSH_KEY_PATH in the task's envs/secrets wins); copied to "
       "each node 0600 for the clone only"),
    _S("git_preflight_timeout", "BROKER_GIT_PREFLIGHT_TIMEOUT", float, 20.0,
       "seconds to list a git workdir's repository from this machine before launching, to refuse a ref "
       "that does not exist before anything is created (0: skip; an unreachable repository never blocks)"),
    _S("git_known_hosts", "BROKER_GIT_KNOWN_HOSTS", str, "",
       "known_hosts file for the git server (strict checking); empty: each node accepts the server's key on first use"),
    # -- managed jobs
    _S("jobs_poll", "BROKER_JOBS_POLL", float, 2.0, "seconds between two looks at a running managed job"),
    _S("checkpoint_interval", "BROKER_CHECKPOINT_INTERVAL", float, 30.0,
       "seconds between two checkpoint copies from a managed job's head node"),
    _S("controller_exit_grace", "BROKER_CONTROLLER_EXIT_GRACE", float, 10.0,
       "seconds the controller lingers with no active job before it exits"),
    _S("controller_workers", "BROKER_CONTROLLER_WORKERS", int, 8, "controller threads stepping jobs", 1),
    _S("controller_ssh_timeout", "BROKER_CONTROLLER_SSH_TIMEOUT", float, 4.0,
       "SSH connect timeout the controller uses for liveness polls (a dead node is noticed faster)"),
    _S("notice_grace", "BROKER_NOTICE_GRACE", float, 30.0,
       "seconds a spot job has after SIGTERM on a preemption notice before SIGKILL"),
    _S("notice_every", "BROKER_NOTICE_EVERY", float, 5.0, "seconds between two looks at the preemption notice"),
    _S("notice_endpoint", "BROKER_NOTICE_ENDPOINT", str, "",
       "replaces the metadata server (scheme://host:port) of the notice URL: tests and simulated spot"),
    # -- costs
    _S("ledger_clock", "BROKER_LEDGER_CLOCK", str, "",
       "tests: a file holding the time (epoch seconds) the cost ledger uses instead of the system clock"),
    _S("local_root", "BROKER_LOCAL_ROOT", str, "",
       "where the local cloud keeps its nodes (default BROKER_HOME/local; server replicas on one machine share one)"),
    _S("local_prices", "BROKER_LOCAL_PRICES", str, "",
       "what the local cloud pretends to cost: `od=1.0,spot=0.3,disk=0.1` ($/h per node, $/GB-month); free by default"),
    # -- buckets (skybroker/storage/)
    _S("storage_forward_credentials", "BROKER_STORAGE_FORWARD_CREDENTIALS", bool, False,
       "MOUNT buckets with this machine's own credentials (in the mount process's environment only) where no "
       "bucket-scoped token can be made; off: such mounts are refused"),
    _S("storage_sas_hours", "BROKER_STORAGE_SAS_HOURS", float, 24.0,
       "lifetime of the container SAS an Azure Blob MOUNT gets on the nodes"),
    _S("storage_write_back", "BROKER_STORAGE_WRITE_BACK", float, 5.0,
       "seconds after a file in a bucket MOUNT is closed before rclone uploads it"),
    _S("storage_cache", "BROKER_STORAGE_CACHE", str, "",
       "where COPY buckets are staged on this machine before rsync (default: BROKER_HOME/storage-cache)"),
    _S("storage_cache_max_age_days", "BROKER_STORAGE_CACHE_MAX_AGE_DAYS", float, 7.0,
       "a COPY cache entry no recorded cluster copied from and unused this many days is pruned (0: never by age)"),
    _S("storage_cache_max_gb", "BROKER_STORAGE_CACHE_MAX_GB", float, 20.0,
       "over this many GB, the COPY cache's least recently used entries no recorded cluster copied from are "
       "pruned (0: no cap)"),
    # -- autostop
    _S("autostop_poll", "BROKER_AUTOSTOP_POLL", float, 20.0,
       "seconds between two idleness checks of an autostop watcher (on this machine or on a node)"),
    _S("autostop_unit", "BROKER_AUTOSTOP_UNIT", float, 60.0,
       "seconds in one autostop 'minute' (tests shorten it; leave it at 60)"),
    _S("autostop_follow_grace", "BROKER_AUTOSTOP_FOLLOW_GRACE", float, 60.0,
       "seconds a worker's own autostop waits after its head stopped answering before it stops itself too"),
    # -- clouds
    _S("aws_wait", "BROKER_AWS_WAIT", float, 600.0, "seconds to wait for EC2 instances to run or terminate"),
    _S("aws_poll", "BROKER_AWS_POLL", float, 2.0, "seconds between two EC2 describe calls while waiting"),
    _S("aws_volume_wait", "BROKER_AWS_VOLUME_WAIT", float, 120.0,
       "seconds `down` retries deleting an ephemeral EBS volume that EC2 still reports in use (detaching)"),
    _S("aws_max_attempts", "BROKER_AWS_MAX_ATTEMPTS", int, 5, "botocore retry attempts (standard mode)"),
    _S("gcp_wait", "BROKER_GCP_WAIT", float, 600.0, "seconds to wait for GCE operations"),
    _S("gcp_poll", "BROKER_GCP_POLL", float, 2.0, "seconds between two GCE polls"),
    _S("azure_wait", "BROKER_AZURE_WAIT", float, 900.0, "seconds to wait for Azure VMs"),
    _S("azure_poll", "BROKER_AZURE_POLL", float, 5.0, "Azure long-running-operation polling interval"),
    _S("azure_retries", "BROKER_AZURE_RETRIES", int, 5, "Azure SDK retries"),
    _S("azure_max_retry_after", "BROKER_AZURE_MAX_RETRY_AFTER", float, 60.0,
       "longest Retry-After (s) of a throttled Azure create/action the SDK waits out silently; longer: the broker "
       "reports it and backs off or fails over (reads and deletes always wait)"),
    _S("azure_imds", "BROKER_AZURE_IMDS", str, "http://169.254.169.254",
       "the instance metadata service an Azure node gets its managed identity's token from (tests: a fake)"),
    _S("lambda_launch_interval", "BROKER_LAMBDA_LAUNCH_INTERVAL", float, 12.0,
       "seconds between two Lambda launch calls (its rate limit)"),
    _S("lambda_retries", "BROKER_LAMBDA_RETRIES", float, 5.0, "retries of a Lambda request answered 429"),
    _S("lambda_backoff", "BROKER_LAMBDA_BACKOFF", float, 2.0, "first backoff after a Lambda 429, seconds"),
    _S("lambda_wait", "BROKER_LAMBDA_WAIT", float, 900.0, "seconds to wait for Lambda instances"),
    _S("lambda_poll", "BROKER_LAMBDA_POLL", float, 5.0, "seconds between two Lambda polls"),
    _S("k8s_wait", "BROKER_K8S_WAIT", float, 600.0, "seconds to wait for pods to run"),
    _S("k8s_poll", "BROKER_K8S_POLL", float, 1.0, "seconds between two pod polls"),
    _S("k8s_provision_timeout", "BROKER_K8S_PROVISION_TIMEOUT", float, 10.0,
       "seconds a pod may stay Unschedulable before it counts as no capacity (also kubernetes.yaml)"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def get_env(env: str, default=None):
    """A setting by its environment variable (for drivers that name it), or `default` if unknown."""
    for s in SETTINGS:
        if s.env == env:
            return get(s.name)
    return default


def get(name: str):
    """The value in effect for a setting: the environment, else the config file's `settings:` (config.py),
    else the default. (BROKER_HOME and BROKER_CONFIG come from the environment only: the config lives there.)"""
    s = _BY_NAME[name]
    raw = os.environ.get(s.env)
    if raw is None or raw == "":
        if name in _ENV_ONLY:
            return s.default
        from . import config

        value = config.load().get("settings", {}).get(name)
        if value is None:
            return s.default
        raw = str(value).lower() if isinstance(value, bool) else str(value)
    return _parse(s, raw)


_ENV_ONLY = frozenset({"home", "debug", "config"})


def _parse(s: Setting, raw: str):
    from .errors import UsageError

    if s.type is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UsageError(f"{s.env}={raw!r} is not a boolean", "use 1/0, true/false, yes/no")
    if s.type in (int, float):
        try:
            v = s.type(raw)
        except ValueError:
            raise UsageError(f"{s.env}={raw!r} is not a{'n integer' if s.type is int else ' number'}",
                             f"{s.doc}; default {s.default}") from None
        if v < s.minimum or v != v:
            raise UsageError(f"{s.env}={raw!r} must be >= {s.minimum:g}", f"{s.doc}; default {s.default}")
        return v
    return raw


def check_all() -> None:
    """Every setting parses (UsageError naming the first bad variable): called before anything is created, so
    a bad value is not found only when a cluster already exists."""
    for s in SETTINGS:
        get(s.name)


def table() -> list[tuple[str, str, str, str]]:
    """(environment variable, value in effect, default, meaning) for every setting."""
    out = []
    for s in SETTINGS:
        try:
            value = get(s.name)
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            value = f"invalid: {exc}"
        out.append((s.env, str(value), str(s.default), s.doc))
    return out
