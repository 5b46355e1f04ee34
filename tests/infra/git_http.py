"""A private git server over HTTP for tests: git's own smart-HTTP backend (`git http-backend`, the CGI
program real servers run behind Apache/nginx) behind a small stdlib HTTP server that demands Basic auth.

What it reproduces: the real smart-HTTP protocol (info/refs discovery, upload-pack POSTs, protocol v2 via
the Git-Protocol header), and a private repository's auth exchange as GitHub/GitLab do it — a request
without credentials, or with a wrong token, gets `401` with `WWW-Authenticate: Basic realm=...`, so git
asks its credential helper and retries; any username is accepted with the right token (as with personal
access tokens). Every Authorization header it received is recorded (`seen_auth`), so a test can check
that the token was sent and how. Not reproduced: TLS (plain http on 127.0.0.1), rate limits, LFS.
"""
from __future__ import annotations

import base64
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class GitHTTPServer:
    def __init__(self, project_root: str | Path, token: str):
        self.root, self.token = str(project_root), token
        self.seen_auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, *a):  # quiet
                pass

            def _authorized(self) -> bool:
                h = self.headers.get("Authorization", "")
                server.seen_auth.append(h)
                if not h.startswith("Basic "):
                    return False
                try:
                    _, _, pw = base64.b64decode(h[6:]).decode().partition(":")
                except ValueError:
                    return False
                return pw == server.token

            def _serve(self):
                if not self._authorized():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="private"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                env = {**os.environ, "GIT_PROJECT_ROOT": server.root, "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": "user", "REMOTE_ADDR": "127.0.0.1",
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    k, _, v = line.partition(":")
                    if k.lower() == "status":
                        status = int(v.strip().split()[0])
                    elif k:
                        headers.append((k, v.strip()))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def __enter__(self) -> "GitHTTPServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
