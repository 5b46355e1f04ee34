"""Server mode's users: one API token per user, stored hashed (`broker server token create/list/revoke`).

A token is 32 random bytes (`brk_` + URL-safe base64, 256 bits). The database keeps only its SHA-256:
with that much entropy a fast hash cannot be brute-forced and a salt would add nothing (salts defend
guessable secrets such as passwords against precomputed tables), and an unsalted digest can be looked
up by index in one query per request. A stolen database therefore yields no usable token. The token is
printed once, at creation; losing it means revoking and creating another.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from . import state
from .errors import NotFoundError, UsageError

PREFIX = "brk_"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class User:
    name: str
    admin: bool
    created_at: float = 0.0
    revoked_at: float | None = None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(name: str, admin: bool = False) -> str:
    """A new token for `name` (a revoked user gets a fresh one). Returns the token: shown once."""
    if not _NAME.match(name or ""):
        raise UsageError(f"user name {name!r} is not valid", "letters, digits, '.', '_' and '-', starting with a letter")
    token = PREFIX + secrets.token_urlsafe(32)
    db = state.db()
    row = db.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
    if row is not None and row["revoked_at"] is None:
        raise UsageError(f"user {name} already has a token", f"`broker server token revoke {name}` first")
    if row is None:
        db.execute("INSERT INTO users (name, token_hash, admin, created_at) VALUES (?,?,?,?)",
                   (name, digest(token), int(admin), time.time()))
    else:
        db.execute("UPDATE users SET token_hash = ?, admin = ?, created_at = ?, revoked_at = NULL WHERE name = ?",
                   (digest(token), int(admin), time.time(), name))
    return token


def _user(r) -> User:
    return User(r["name"], bool(r["admin"]), r["created_at"], r["revoked_at"])


def list_users() -> list[User]:
    return [_user(r) for r in state.db().execute("SELECT * FROM users ORDER BY name")]


def revoke(name: str) -> None:
    cur = state.db().execute("UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             (time.time(), name))
    if not cur.rowcount:
        raise NotFoundError(f"no active token for user {name!r}", "see `broker server token list`")


def authenticate(token: str | None) -> User | None:
    """The user a token belongs to, or None (unknown, revoked, malformed). One indexed query."""
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        return None
    r = state.db().execute("SELECT * FROM users WHERE token_hash = ? AND revoked_at IS NULL",
                           (digest(token),)).fetchone()
    return _user(r) if r else None
