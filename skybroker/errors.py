"""One error type for everything a user can get wrong or the world can refuse.

`BrokerError` carries a message, an optional hint (what to do about it) and the process exit code.
The CLI renders it in one place; nothing below the CLI prints.

Exit codes (stable, documented in the README):
  1  generic failure (a job failed is reported with the job's own exit code instead; 1 when it has none: its
     runner crashed); a declined confirmation
  2  bad input: task file, flags, names
  3  nothing fits: no feasible offer for the request
  4  cloud refused: capacity/quota/credentials, after failover was exhausted; the local cloud's disk is full
  5  not found: cluster/job does not exist
  6  over budget (costs/budget.py)
  7  not allowed (server mode): a missing, unknown or revoked token, or another user's cluster/job
  130 interrupted (Ctrl-C, SIGTERM, SIGHUP)
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BrokerError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class SpecError(BrokerError):
    """The task file or a flag is wrong. Names the file and the field path."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, source: str | None = None,
                 field: str | None = None):
        self.source = source
        self.field = field
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message, hint)


class UsageError(BrokerError):
    exit_code = 2


def names_or_all(names, all_: bool, what: str = "names") -> None:
    """Commands (and API calls) that act on named targets or on everything with --all: both at once is a
    mistake (exit 2), never "everything"."""
    if all_ and names:
        raise UsageError(f"give {what} or --all, not both",
                         f"drop --all to act on {' '.join(map(str, names))} only")


class NoFeasibleError(BrokerError):
    """No offer in the catalogs satisfies the request."""

    exit_code = 3


class MissingCredentialsError(NoFeasibleError):
    """Nothing can be offered because the one cloud the task names has no credentials at all (e.g. Kubernetes
    with no kubeconfig): exit 4, the code of a cloud refusing our credentials (the README's table)."""

    exit_code = 4


class BudgetError(BrokerError):
    """A launch (or a managed job going on) would cost more than the task's `budget.max_cost`."""

    exit_code = 6

    def __init__(self, message: str, hint: str | None = None, *, source: str | None = None,
                 field: str = "budget.max_cost"):
        self.source, self.field = source, field
        super().__init__(f"{source + ': ' if source else ''}{field}: {message}", hint)


class NotFoundError(BrokerError):
    exit_code = 5


class ForbiddenError(BrokerError):
    """Server mode: the caller may not do this (HTTP 403): another user's cluster or job, or an admin's
    command."""

    exit_code = 7


class AuthError(ForbiddenError):
    """Server mode: no token, or one the server does not know or has revoked (HTTP 401)."""


def not_yours(what: str, owner: str | None) -> ForbiddenError:
    """Server mode: `what` (a cluster, a managed job, a pool) is another user's (or no user's)."""
    who = f"user {owner}" if owner else "no user (made in local mode)"
    return ForbiddenError(f"{what} belongs to {who}", "only its user or an admin may do this; "
                          "`broker status --all-users` shows whose is what")


class Scope(str, Enum):
    """How much of the world a provisioning failure rules out."""

    ZONE = "zone"
    REGION = "region"
    CLOUD = "cloud"
    REQUEST = "request"  # the request itself is wrong: no failover
    RETRY = "retry"  # throttled: back off and retry the same place (it rules nothing out)


@dataclass
class Place:
    cloud: str
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None

    def __str__(self) -> str:
        parts = [self.cloud, self.region, self.zone]
        s = "/".join(p for p in parts if p)
        return f"{s} ({self.instance_type})" if self.instance_type else s


class ProvisionError(BrokerError):
    """A cloud refused to create instances. Drivers raise the typed subclasses below; failover
    decides from the class (its scope), never from the message text."""

    exit_code = 4
    scope: Scope = Scope.REQUEST
    # Set by a driver that knows the failed create call created no instance (it was refused before any was
    # launched): a rollback that cannot reach the cloud then has nothing with a cost to remove.
    created_nothing: bool = False

    def __init__(self, message: str, place: Place | None = None, code: str | None = None,
                 hint: str | None = None):
        super().__init__(message, hint)
        self.place = place
        self.code = code  # the cloud's own error code, for the failover report


class CapacityError(ProvisionError):
    scope = Scope.ZONE


class QuotaError(ProvisionError):
    scope = Scope.REGION


class CredentialsError(ProvisionError):
    scope = Scope.CLOUD


class InvalidRequestError(ProvisionError):
    scope = Scope.REQUEST


class ThrottledError(ProvisionError):
    """The cloud's API rate limit (RequestLimitExceeded, HTTP 429): not a verdict on the place."""

    scope = Scope.RETRY


class LeftBehind(BrokerError):
    """A cluster was torn down but something of it with a cost is still in the cloud (e.g. an EBS volume
    EC2 kept in use): `broker gc` removes it later. The cluster's record is gone, so `down` again cannot."""

    exit_code = 1


class Interrupted(BrokerError):
    exit_code = 130


class Declined(BrokerError):
    """The user answered no to a confirmation: nothing was done (exit 1; an interruption is 130)."""
    exit_code = 1

    def __init__(self, message: str = "not confirmed: nothing was done", hint: str | None = None):
        super().__init__(message, hint)
