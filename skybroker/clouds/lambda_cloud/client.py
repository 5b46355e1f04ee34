"""The one place Lambda Cloud API calls are made (stdlib urllib; Lambda publishes no Python SDK).

Credentials, as Lambda's own tooling keeps them: the environment variable LAMBDA_API_KEY, else the file
~/.lambda_cloud/lambda_keys with a line `api_key = <key>`. The key is sent as `Authorization: Bearer`;
it is never logged, put in an exception message or printed.

Environment:
  BROKER_LAMBDA_ENDPOINT         API base URL (default https://cloud.lambdalabs.com/api/v1); the tests point
                                 it at a local fake of the API
  BROKER_LAMBDA_LAUNCH_INTERVAL  seconds between two launch calls (default 12: Lambda allows one launch
                                 request per 12 s; other requests about one per second)
  BROKER_LAMBDA_RETRIES          retries of a request answered 429 (rate limited), with backoff (default 5)
  BROKER_LAMBDA_BACKOFF          first backoff after a 429, seconds (default 2; doubles)

Responses are `{"data": ...}`; failures `{"error": {"code", "message", "suggestion"}, "field_errors": {...}}`
with an HTTP status, raised here as LambdaApiError (classified by errors.py from the code and status).
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_ENDPOINT = "https://cloud.lambdalabs.com/api/v1"
ENV_ENDPOINT = "BROKER_LAMBDA_ENDPOINT"
ENV_KEY = "LAMBDA_API_KEY"
KEYS_FILE = Path("~/.lambda_cloud/lambda_keys")
TIMEOUT = 30.0

_launch_lock = threading.Lock()
_last_launch = [0.0]


def _float_env(name: str, default: float) -> float:
    from ... import settings
    from ...errors import UsageError

    value = settings.get_env(name)  # the registered settings (environment, then the config file)
    if value is not None:
        return float(value)
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None


def endpoint() -> str:
    return (os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")


def keys_file() -> Path:
    return Path(os.path.expanduser(str(KEYS_FILE)))


def read_keys_file(path: Path | None = None) -> dict[str, str]:
    """`key = value` lines of ~/.lambda_cloud/lambda_keys (comments and other lines ignored)."""
    path = path or keys_file()
    out = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[k.strip()] = v.strip()
    return out


def api_key_source() -> tuple[str | None, str]:
    """(the API key or None, where it came from / what is missing). No network."""
    env = os.environ.get(ENV_KEY, "").strip()
    if env:
        return env, f"API key from environment ({ENV_KEY})"
    path = keys_file()
    if path.is_file():
        key = read_keys_file(path).get("api_key", "")
        if key:
            return key, f"API key in {path}"
        return None, f"{path} has no `api_key = ...` line"
    return None, f"no API key ({ENV_KEY} unset, no {path})"


class LambdaApiError(Exception):
    """A refused API call: HTTP status, Lambda's error code and message (never the request's key)."""

    def __init__(self, status: int, code: str | None, message: str, suggestion: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{code or status}: {message}")
        self.status, self.code, self.message, self.suggestion = status, code, message, suggestion
        self.retry_after = retry_after


class LambdaUnreachable(Exception):
    """The API endpoint did not answer (DNS, connection refused, timeout)."""


def _parse_error(status: int, raw: bytes, headers) -> LambdaApiError:
    retry_after = None
    try:
        retry_after = float(headers.get("Retry-After")) if headers and headers.get("Retry-After") else None
    except ValueError:
        retry_after = None
    try:
        body = json.loads(raw.decode("utf-8") or "{}")
        err = body.get("error") or {}
        if isinstance(err, dict) and (err.get("code") or err.get("message")):
            return LambdaApiError(status, err.get("code"), err.get("message") or "", err.get("suggestion"), retry_after)
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    text = raw.decode("utf-8", "replace").strip()[:300]
    return LambdaApiError(status, None, text or f"HTTP {status}", None, retry_after)


def request(method: str, path: str, body: dict | None = None, *, launch: bool = False):
    """One API call; returns the response's `data`. Retries in place while rate limited (429) up to
    BROKER_LAMBDA_RETRIES times; a launch waits out BROKER_LAMBDA_LAUNCH_INTERVAL since the previous one
    first (Lambda's launch rate limit)."""
    from ...errors import CredentialsError, Place

    key, where = api_key_source()
    if not key:
        raise CredentialsError(f"no Lambda Cloud credentials: {where}", Place("lambda"), code="NoApiKey",
                               hint=f"set {ENV_KEY} or put `api_key = <key>` in ~/.lambda_cloud/lambda_keys")
    retries = int(_float_env("BROKER_LAMBDA_RETRIES", 5))
    backoff = _float_env("BROKER_LAMBDA_BACKOFF", 2.0)
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(retries + 1):
        try:
            if launch:  # one launch at a time, at least the interval after the previous one was answered
                with _launch_lock:
                    _pace_launch()
                    try:
                        return _once(method, path, data, key)
                    finally:
                        _last_launch[0] = time.monotonic()
            return _once(method, path, data, key)
        except LambdaApiError as err:
            if err.status != 429 or attempt == retries:
                raise
            _sleep(err.retry_after if err.retry_after is not None else backoff * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _sleep(seconds: float) -> None:
    """Wait before a call (launch pacing, a 429's backoff); a provisioning worker whose caller was interrupted
    (Ctrl-C) stops waiting and sends nothing more (provision.cancelled), so no instance is launched after it."""
    from ...errors import Interrupted
    from ...provision import cancelled

    end = time.monotonic() + seconds
    while True:
        if cancelled():
            raise Interrupted("provisioning cancelled")
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def _once(method: str, path: str, data: bytes | None, key: str):
    req = urllib.request.Request(endpoint() + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Accept", "application/json")
    req.add_header("User-Agent", "skybroker")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            raw = resp.read()
        return (json.loads(raw.decode("utf-8")) if raw.strip() else {}).get("data")
    except urllib.error.HTTPError as exc:
        raise _parse_error(exc.code, exc.read() or b"", exc.headers) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LambdaUnreachable(f"cannot reach {endpoint()}: {reason}") from None


def _pace_launch() -> None:
    """Sleep until BROKER_LAMBDA_LAUNCH_INTERVAL has passed since the previous launch was answered
    (called with _launch_lock held)."""
    wait = _last_launch[0] + _float_env("BROKER_LAMBDA_LAUNCH_INTERVAL", 12.0) - time.monotonic()
    if wait > 0:
        _sleep(wait)


# -- the endpoints used ------------------------------------------------------------------------------
def list_instances() -> list[dict]:
    return request("GET", "/instances") or []


def launch(body: dict) -> list[str]:
    return (request("POST", "/instance-operations/launch", body, launch=True) or {}).get("instance_ids", [])


def terminate(ids: list[str]) -> list[dict]:
    return (request("POST", "/instance-operations/terminate", {"instance_ids": ids}) or {}).get(
        "terminated_instances", [])


def instance_types() -> dict:
    return request("GET", "/instance-types") or {}


def list_ssh_keys() -> list[dict]:
    return request("GET", "/ssh-keys") or []


def add_ssh_key(name: str, public_key: str) -> dict:
    return request("POST", "/ssh-keys", {"name": name, "public_key": public_key}) or {}


def list_firewall_rules() -> list[dict]:
    return request("GET", "/firewall-rules") or []


def set_firewall_rules(rules: list[dict]) -> list[dict]:
    return request("PUT", "/firewall-rules", {"data": rules}) or []
