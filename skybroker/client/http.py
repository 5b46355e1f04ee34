"""The client's side of the wire: one HTTP request per api call (http.client, standard library).

    POST /api/v1/call/<fn>   body: {"args": [...], "kwargs": {...}} (wire.py encoding)
      → application/json      {"value": ...} or {"error": {message, hint, exit_code}} (4xx/5xx)
      → application/x-ndjson  a stream for calls with progress or output, one JSON object per line:
                              {"t": "event", "k", "m"} · {"t": "line", "r", "x"} · {"t": "raw", "x"} ·
                              {"t": "ping"} · then {"t": "result", "v"} or {"t": "error", "e": {...}}
    POST /api/v1/upload      body: a tar.gz of the task's local sources → {"id"}

Connections are kept alive between calls for up to KEEP_ALIVE seconds (the server keeps an idle one for
longer, SERVER_KEEP_ALIVE); a kept connection the server closed anyway (it restarted) is replaced, and
the call repeated, only for reads (READS), which are safe to send twice. One Client per thread.

The token travels in the Authorization header only; arguments (and so a task's secrets) only in the
request body, never in a URL. Errors come back as the BrokerError they were on the server (same message,
hint and exit code), so the CLI renders them identically.
"""
from __future__ import annotations

import http.client
import json
import os
import time

from urllib.parse import urlsplit

from .. import wire
from ..errors import AuthError, BrokerError
from . import leave_hint

READ_TIMEOUT = 120.0  # the server pings streams every few seconds: silence this long means it is gone
KEEP_ALIVE = 2.0  # reuse a connection idle for less than this
SERVER_KEEP_ALIVE = 30  # `broker server start` keeps an idle connection this long (uvicorn's default: 5)
READS = frozenset({"status", "jobs_queue", "cluster_exists", "get_cluster", "cluster_names", "daemons", "queue",
                   "events", "jobs_get", "cluster_costs", "job_costs", "stopped_hourly", "job_timeline",
                   "cost_report", "plan"})


def clean_token(token: str | None) -> str | None:
    """The token without the blanks around it (a line end copied with it, a file saved on Windows); a
    character a token never has inside it is an AuthError that does not show the token (it would go in a
    header that http.client refuses with a traceback quoting it)."""
    if token is None:
        return None
    token = token.strip()
    if any(not ("!" <= ch <= "~") for ch in token):
        raise AuthError("the API token has a character no token has (a space, a line break or a non-ASCII "
                        "letter inside it)", "copy it again: `broker login URL --token TOKEN`, or BROKER_API_TOKEN")
    return token


def _closed(conn) -> bool:
    """Whether the server closed an idle kept-alive connection (its socket reads as ready: EOF)."""
    import select

    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Client:
    def __init__(self, url: str, token: str | None):
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:  # "http://[::1", "http://host:abc"
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise BrokerError(f"the broker server URL {url!r} is not http(s)://HOST[:PORT]",
                              "`broker login http://HOST:46580 --token …`")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.token = clean_token(token)
        self._kept: http.client.HTTPConnection | None = None
        self._kept_at = 0.0

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def _conn(self) -> http.client.HTTPConnection:
        if self.https:
            import os
            import ssl

            ctx = ssl.create_default_context(cafile=os.environ.get("BROKER_API_CA") or None)
            return http.client.HTTPSConnection(self.host, self.port, timeout=READ_TIMEOUT, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=READ_TIMEOUT)

    def _send(self, path: str, body, content_type: str, method: str = "POST", retry: bool = False):
        """body: bytes, None, or a file open at its start (sent in chunks, with its length)."""
        if not self.token:
            raise AuthError(f"no token for the broker server {self.url}",
                            "`broker login URL --token TOKEN`, or set BROKER_API_TOKEN")
        conn, self._kept = self._kept, None
        reused = conn is not None and time.monotonic() - self._kept_at < KEEP_ALIVE and not _closed(conn)
        if not reused:
            if conn is not None:
                conn.close()
            conn = self._conn()
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                       "Accept": "application/json, application/x-ndjson"}
            if hasattr(body, "read"):
                headers["Content-Length"] = str(os.fstat(body.fileno()).st_size)
            conn.request(method, self.prefix + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused and retry and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                                     BrokenPipeError)):
                return self._send(path, body, content_type, method)  # a fresh connection, once
            raise self._unreachable(exc) from None

    def _keep(self, conn, resp) -> None:
        """After a plain answer read to its end: keep the connection for the next call."""
        if resp.will_close:
            conn.close()
        else:
            self._kept, self._kept_at = conn, time.monotonic()

    def _unreachable(self, exc) -> BrokerError:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        import ssl

        if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", "") == "WRONG_VERSION_NUMBER":
            # an https:// URL to a server that speaks plain HTTP (started without --certfile)
            return BrokerError(f"cannot reach the broker server at {self.url}: it does not speak TLS ({why})",
                               f"the server was started without a certificate: use "
                               f"{self.url.replace('https://', 'http://', 1)}, or start it with --certfile and --keyfile. "
                               f"{leave_hint()}")
        return BrokerError(f"cannot reach the broker server at {self.url}: {why}",
                           f"is it running (`broker server start`)? {leave_hint()}")

    def call(self, fn: str, *args, on_event=None, on_line=None, on_raw=None, **kwargs):
        body = wire.dumps({"args": list(args), "kwargs": kwargs}).encode()
        conn, resp = self._send(f"/api/v1/call/{fn}", body, "application/json", retry=fn in READS)
        keep = False
        try:
            ctype = resp.getheader("Content-Type", "")
            if ctype.startswith("application/x-ndjson"):
                return self._stream(resp, on_event, on_line, on_raw)
            data = resp.read()
            keep = True
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            if keep:
                self._keep(conn, resp)
            else:
                conn.close()  # a stream (or a broken answer): never reused
        return self._answer(resp.status, data)

    def whoami(self) -> dict:
        conn, resp = self._send("/api/v1/whoami", None, "application/json", method="GET")
        try:
            data = resp.read()
            obj = json.loads(data or b"{}") if resp.getheader("Content-Type", "").startswith("application/json") else None
        finally:
            conn.close()
        if obj is None:
            raise BrokerError(f"{self.url} does not look like a broker server (HTTP {resp.status})",
                              "check the URL and the port (default 46580)")
        if "error" in obj:
            raise wire.error_from(obj["error"])
        return obj

    def upload(self, data) -> str:
        """data: the tar.gz, bytes or a file open at its start."""
        conn, resp = self._send("/api/v1/upload", data, "application/gzip")
        try:
            return self._answer(resp.status, resp.read())["id"]
        finally:
            conn.close()

    def _answer(self, status: int, data: bytes):
        try:
            obj = json.loads(data or b"{}")
        except ValueError:
            raise BrokerError(f"the broker server answered HTTP {status} with something that is not JSON",
                              "is the URL a broker server? (`broker login` sets it)") from None
        if "error" in obj:
            raise wire.error_from(obj["error"])
        if status >= 400:
            raise BrokerError(f"the broker server answered HTTP {status}: {str(obj)[:200]}")
        return wire.load(obj.get("value"))

    def _stream(self, resp, on_event, on_line, on_raw):
        while True:
            raw = resp.readline()
            if not raw:
                raise BrokerError(f"the broker server at {self.url} closed the stream before the end",
                                  "it may have restarted: `broker status` / `broker jobs queue` show where things are")
            msg = json.loads(raw)
            t = msg.get("t")
            if t == "line" and on_line:
                on_line(msg["r"], msg["x"])
            elif t == "raw" and on_raw:
                on_raw(msg["x"])
            elif t == "event" and on_event:
                on_event(msg["k"], msg["m"])
            elif t == "result":
                return wire.load(msg.get("v"))
            elif t == "error":
                raise wire.error_from(msg["e"])
